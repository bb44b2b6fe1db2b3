"""Shoes: a small copy of the released layout written by hand, read under VAL's and ARTEMIS's
protocols and scored step by step; bad input; missing images; the synthetic stand-in.

The protocols' rules, as the defining code has them (clip_cir/data/shoes.py cites the files):
- VAL (yanbeic/VAL generate_caption_pairs.py): for each name of the split's list, in order, every
  pair whose ImageName (target) or ReferenceImageName (reference) it is, in the file's order; the
  gallery is the list plus every other image those pairs name (generate_test_images_all_).
- ARTEMIS (naver/artemis prepare_data/prepare_shoes_data.py): the pairs with both images in the
  list, once; the gallery is the list.
- Both (test_val.py, evaluate.py): the reference is removed from its own ranking, a hit is the
  exact target image, R@1/10/50.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clip_cir.data import load_splits
from clip_cir.data.images import ImageCheck
from clip_cir.data.synthetic.shoes import write_shoes
from clip_cir.data.types import ReaderOptions
from clip_cir.encoding.ranking import rank_split
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import split_metrics

A, B, C, D = "img_womens_boots_1.jpg", "img_womens_boots_2.jpg", "img_womens_clogs_1.jpg", "img_womens_clogs_2.jpg"
X = "img_womens_pumps_9.jpg"  # on disk, in no list
T1, T2, T3 = "img_womens_flats_1.jpg", "img_womens_flats_2.jpg", "img_womens_flats_3.jpg"  # the train list
EVAL_LIST = [B, A, D, C]
PAIRS = [  # (reference, target, caption), in the file's order
    (A, B, "is black"),
    (C, A, " has laces "),    # stripped when read
    (X, D, "is taller"),       # reference in no list
    (T1, T2, "is red"),        # a train pair
    (D, T1, "is flat"),        # test reference, train target
    (B, B, "is the same"),     # target = reference
]
FOLDERS = {A: "womens_boots/0", B: "womens_boots/1", C: "womens_clogs/0", D: "womens_clogs/0",
           X: "womens_pumps/1", T1: "womens_flats/0", T2: "womens_flats/0", T3: "womens_flats/1"}


def _write_layout(root: Path, pairs=PAIRS, eval_list=EVAL_LIST) -> Path:
    base = root / "shoes"
    for name, folder in FOLDERS.items():
        (base / "attributedata" / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (30, 60, 90)).save(base / "attributedata" / folder / name)
    (base / "relative_captions_shoes.json").write_text(json.dumps(
        [{"ImageName": t, "ReferenceImageName": r, "RelativeCaption": c} for r, t, c in pairs]))
    (base / "eval_im_names.txt").write_text("".join(f"{n}\n" for n in eval_list))
    (base / "train_im_names.txt").write_text(f"{T1}\n{T2}\n{T3}\n")  # T3: in no pair
    return base


def _read(root: Path, protocol: str | None, split: str = "test", images: ImageCheck | None = None):
    splits = load_splits("shoes", root, split, images=images, options=ReaderOptions(shoes_protocol=protocol))
    assert len(splits) == 1
    return splits[0]


def _rank(split, rows: list[dict[str, float]]):
    """Rank with gallery features one-hot per image, so a query's scores are exactly its row
    (unnamed images score 0); the split's own protocol decides what is removed."""
    names = list(split.gallery)
    gallery = torch.eye(len(names))
    queries = torch.tensor([[row.get(n, 0.0) for n in names] for row in rows])
    return rank_split(split, queries, gallery, k=50)


# ----------------------------------------------------------------------------- VAL's protocol


def test_val_protocol_queries_gallery_and_recall_by_hand(tmp_path):
    _write_layout(tmp_path)
    split = _read(tmp_path, None)  # VAL's is the default
    # For each listed name in order (B, A, D, C), the pairs naming it, in the file's order:
    #   B: pair 0 (target B), pair 5 (target B = reference B: once)
    #   A: pair 0 (reference A), pair 1 (target A)
    #   D: pair 2 (target D), pair 4 (reference D)
    #   C: pair 1 (reference C)
    assert [q.qid for q in split.queries] == ["0/target", "5/target", "0/reference", "1/target", "2/target",
                                              "4/reference", "1/reference"]
    assert [(q.reference, q.target, q.eval_caption) for q in split.queries[:3]] == [
        (A, B, "is black"), (B, B, "is the same"), (A, B, "is black")]  # pair 0 twice
    assert split.queries[3].eval_caption == "has laces" and split.queries[3].captions == ("has laces",)
    assert all(q.train_captions == (q.eval_caption,) for q in split.queries)
    # Gallery: the list in its order, then X (pair 2's reference) and T1 (pair 4's target), in order of use.
    assert list(split.gallery) == [B, A, D, C, X, T1]
    assert split.gallery[X] == tmp_path.absolute() / "shoes" / "attributedata" / "womens_pumps" / "1" / X
    assert (split.dataset, split.name, split.split) == ("shoes", "shoes", "test")
    assert split.exclude_reference is True and split.recall_ks == (1, 10, 50)

    # Scores per query; each reference scores highest, so only its removal lets the target through.
    rows = [
        {A: 1.0, B: 0.9},                                  # 0/target: B first once A is removed -> hit@1
        {B: 1.0, A: 0.5},                                  # 5/target: the target is the reference -> never
        {A: 1.0, B: 0.9},                                  # 0/reference: the same pair again -> hit@1
        {C: 1.0, D: 0.8, A: 0.7},                          # 1/target: A second -> hit@10 only
        {X: 1.0, D: 0.9},                                  # 2/target: hit@1
        {D: 1.0, B: 0.9, A: 0.8, C: 0.7, X: 0.6, T1: 0.5},  # 4/reference: T1 fifth -> hit@10 only
        {C: 1.0, D: 0.8, A: 0.7},                          # 1/reference: as 1/target
    ]
    metrics = split_metrics(split, _rank(split, rows))
    # R@1: queries 0, 2, 4 of 7; R@10 = R@50: all but the self pair, 6 of 7.
    assert metrics == pytest.approx({"recall_at1": 100 * 3 / 7, "recall_at10": 100 * 6 / 7,
                                     "recall_at50": 100 * 6 / 7})


# ----------------------------------------------------------------------------- ARTEMIS's protocol


def test_artemis_protocol_queries_gallery_and_recall_by_hand(tmp_path):
    _write_layout(tmp_path)
    split = _read(tmp_path, "artemis")
    # Pairs with both images in {B, A, D, C}: 0 (A->B), 1 (C->A), 5 (B->B); 2 (X), 3 and 4 (T1) are not.
    assert [(q.qid, q.reference, q.target) for q in split.queries] == [("0", A, B), ("1", C, A), ("5", B, B)]
    assert list(split.gallery) == EVAL_LIST  # the list, nothing else
    assert split.exclude_reference is True and split.recall_ks == (1, 10, 50)
    rows = [{A: 1.0, B: 0.9}, {C: 1.0, D: 0.8, A: 0.7}, {B: 1.0, A: 0.5}]
    metrics = split_metrics(split, _rank(split, rows))
    # Query 0 hit@1; query 1 hit at rank 2; query 5 never (its target is its removed reference).
    assert metrics == pytest.approx({"recall_at1": 100 / 3, "recall_at10": 200 / 3, "recall_at50": 200 / 3})


def test_train_split_under_both_protocols(tmp_path):
    _write_layout(tmp_path)
    # VAL: T1 (listed first) brings pair 3 (reference) and pair 4 (target), T2 pair 3 again.
    val = _read(tmp_path, "val", "train")
    assert [q.qid for q in val.queries] == ["3/reference", "4/target", "3/target"]
    assert list(val.gallery) == [T1, T2, T3, D]  # D: pair 4's reference, in no train list
    artemis = _read(tmp_path, "artemis", "train")
    assert [q.qid for q in artemis.queries] == ["3"] and list(artemis.gallery) == [T1, T2, T3]
    # Training checks only the images its queries use: not T3.
    assert list(_read(tmp_path, "artemis", "train", ImageCheck.for_purpose("training")).gallery) == [T1, T2]
    assert list(_read(tmp_path, "val", "train", ImageCheck.for_purpose("training")).gallery) == [T1, T2, D]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, message", [
    ('[{"ImageName": "a.jpg", "ReferenceImageName": ]', r"relative_captions_shoes.json: malformed JSON \(.* line 1"),
    ('[{"ImageName": "a.jpg", "ReferenceImageName": "b.jpg"}]', "entry 0 has no field 'RelativeCaption'"),
    ('[{"ImageName": "a.jpg", "ReferenceImageName": 3, "RelativeCaption": "x"}]',
     "entry 0 field 'ReferenceImageName' should be a non-empty string, got 3"),
    ('[{"ImageName": "a.jpg", "ReferenceImageName": "b.jpg", "RelativeCaption": " "}]',
     "entry 0 field 'RelativeCaption' should be a non-empty string"),
    ('{"ImageName": "a.jpg"}', "the top level should be a JSON list, got dict"),
])
def test_malformed_captions_file_is_one_line(tmp_path, text, message):
    base = _write_layout(tmp_path)
    (base / "relative_captions_shoes.json").write_text(text)
    with pytest.raises(CIRError, match=message):
        _read(tmp_path, "artemis")


def test_a_pair_naming_an_unknown_image(tmp_path):
    pairs = [*PAIRS, ("img_womens_nowhere_1.jpg", C, "is green")]  # entry 6: a reference on no list, no file
    _write_layout(tmp_path, pairs=pairs)
    with pytest.raises(CIRError, match=r"relative_captions_shoes.json: entry 6 names image 'img_womens_nowhere_1.jpg' "
                                       r"\(ReferenceImageName\), which is not in eval_im_names.txt and has no file "
                                       r"under .*attributedata; pass --skip-missing-images"):
        _read(tmp_path, "val")
    # ARTEMIS never uses the pair (its reference is not listed), so it reads as before.
    assert len(_read(tmp_path, "artemis").queries) == 3
    # With --skip-missing-images VAL drops the pair's one query and says so.
    images = ImageCheck(skip=True)
    split = _read(tmp_path, "val", images=images)
    assert "6/target" not in [q.qid for q in split.queries] and len(split.queries) == 7
    assert images.skipped["img_womens_nowhere_1.jpg"].listed_in == "relative_captions_shoes.json"
    assert images.dropped_queries == {"shoes/shoes/test": 1}


def test_bad_lists_and_folders(tmp_path):
    base = _write_layout(tmp_path, eval_list=[B, A, B])
    with pytest.raises(CIRError, match=rf"eval_im_names.txt:3: image '{B}' is listed again \(first on line 1\)"):
        _read(tmp_path, "val")
    _write_layout(tmp_path)
    Image.new("RGB", (8, 8)).save(base / "attributedata" / "womens_pumps" / "1" / A)  # A also under pumps/
    with pytest.raises(CIRError, match=f"image name '{A}' also found at"):
        _read(tmp_path, "val")
    with pytest.raises(CIRError, match="unknown Shoes protocol 'tirg' \\(choose from val, artemis\\)"):
        _read(tmp_path, "tirg")
    with pytest.raises(CIRError, match="unknown Shoes split 'val' \\(choose from train, test\\)"):
        _read(tmp_path, "val", "val")
    (base / "eval_im_names.txt").unlink()
    with pytest.raises(CIRError, match="eval_im_names.txt: Shoes image list not found"):
        _read(tmp_path, "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CIRError, match="shoes: Shoes folder not found"):
        _read(tmp_path / "empty", "val")


# ----------------------------------------------------------------------------- missing images


def test_missing_listed_image_stops_or_is_skipped_with_its_queries(tmp_path):
    base = _write_layout(tmp_path)
    (base / "attributedata" / FOLDERS[C] / C).unlink()
    with pytest.raises(CIRError, match=f"image '{C}' listed in eval_im_names.txt is missing on disk; "
                                       "pass --skip-missing-images"):
        _read(tmp_path, "val")
    images = ImageCheck(skip=True)
    split = _read(tmp_path, "val", images=images)
    # Pair 1 (C -> A) was a query twice (for A and for C): both go; C leaves the gallery.
    assert [q.qid for q in split.queries] == ["0/target", "5/target", "0/reference", "2/target", "4/reference"]
    assert list(split.gallery) == [B, A, D, X, T1]
    assert images.dropped_queries == {"shoes/shoes/test": 2} and images.pruned_galleries == {"shoes/shoes/test": 1}
    artemis_images = ImageCheck(skip=True)
    artemis = _read(tmp_path, "artemis", images=artemis_images)
    assert [q.qid for q in artemis.queries] == ["0", "5"] and artemis_images.dropped_queries == {"shoes/shoes/test": 1}


def test_images_unpacked_directly_into_the_shoes_folder_are_found(tmp_path):
    base = _write_layout(tmp_path)
    (base / "attributedata").rename(base / "unpacked")  # no attributedata/: the whole folder is searched
    split = _read(tmp_path, "artemis")
    assert split.gallery[A] == tmp_path.absolute() / "shoes" / "unpacked" / FOLDERS[A] / A


# ----------------------------------------------------------------------------- the synthetic stand-in


def test_synthetic_shoes_read_back_with_the_expected_counts(tmp_path):
    summary = write_shoes(tmp_path, seed=3, size=32, n_train=8, n_test=6)
    base = tmp_path / "shoes"
    pairs = json.loads((base / "relative_captions_shoes.json").read_text())
    lists = {split: (base / f"{file}_im_names.txt").read_text().split() for split, file in
             (("train", "train"), ("test", "eval"))}
    assert not set(lists["train"]) & set(lists["test"])
    for split, n_pairs in (("train", 8), ("test", 6)):
        listed = set(lists[split])
        # VAL: one query per listed image of a pair; ARTEMIS: one per pair with both images listed.
        val_count = sum((p["ImageName"] in listed) + (p["ReferenceImageName"] in listed) for p in pairs)
        both = [p for p in pairs if p["ImageName"] in listed and p["ReferenceImageName"] in listed]
        with_one = [p for p in pairs if (p["ImageName"] in listed) != (p["ReferenceImageName"] in listed)]
        val, artemis = _read(tmp_path, "val", split), _read(tmp_path, "artemis", split)
        assert len(val.queries) == val_count == 2 * len(both) + len(with_one)
        assert len(artemis.queries) == len(both)
        assert summary[split]["pairs"] == n_pairs and summary[split]["images"] == len(listed)
        assert list(artemis.gallery) == lists[split]
        others = {n for p in with_one for n in (p["ImageName"], p["ReferenceImageName"])} - listed
        assert list(val.gallery)[:len(listed)] == lists[split] and set(list(val.gallery)[len(listed):]) == others
    # The test split has a pair whose reference is in no list (only VAL uses it); train has none.
    assert summary["test"]["unlisted_images"] == 1 and summary["train"]["unlisted_images"] == 0
    with Image.open(next(iter(_read(tmp_path, "val").gallery.values()))) as image:
        assert image.format == "JPEG" and min(image.size) == 32
    assert write_shoes(tmp_path / "again", seed=3, size=32, n_train=8, n_test=6) == {
        **summary, "root": str(tmp_path / "again" / "shoes")}
    assert (tmp_path / "again" / "shoes" / "relative_captions_shoes.json").read_text() == \
        (base / "relative_captions_shoes.json").read_text()
