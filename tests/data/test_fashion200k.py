"""Fashion200k as TIRG reads and scores it (google/tirg datasets.py `Fashion200k`, test_retrieval.py):
captions, modifier texts, the parent-caption training pairs, label hits with the source masked, bad
input, missing images and the shapes-world stand-in, each against values worked out by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import stage1_options, stage2_options
from PIL import Image

import clip_cir
from clip_cir.data import DATASETS, dataset_splits, load_splits
from clip_cir.data.fashion200k import caption_text, different_words, modifier_text, parent_caption
from clip_cir.data.images import ImageCheck
from clip_cir.data.registry import validation_split
from clip_cir.data.synthetic.fashion200k import write_fashion200k
from clip_cir.encoding.ranking import rank_split
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import split_metrics

CATEGORIES = ("dress", "jacket", "pants", "skirt", "top")

# The test split written by hand: (label file, path, description as in the file).
TEST_LINES = [
    ("dress", "women/dress/1/1_0.jpeg", "red lace dress"),        # 0
    ("dress", "women/dress/2/2_0.jpeg", "blue lace dress"),       # 1
    ("dress", "women/dress/3/3_0.jpeg", " blue lace dress "),     # 2 (stripped: same caption as 1)
    ("jacket", "women/jacket/4/4_0.jpeg", "red lace jacket"),     # 3
    ("skirt", "women/skirt/5/5_0.jpeg", "black & white skirt."),  # 4 -> "black andmark white skirtdotmark"
    ("skirt", "women/skirt/6/6_0.jpeg", "red lace dress"),        # 5 (a dress in the skirt file: same caption as 0)
    ("top", "women/top/7/7_0.jpeg", "blue lace dress"),           # 6 (same caption as 1)
    ("top", "women/top/8/8_0.jpeg", "green silk top"),            # 7
]
TEST_QUERIES = [(0, 1), (1, 0), (3, 0), (7, 6)]

# The training split: tirg's parents make 0-2 and 5-6 modifiable; "tan tank top" minus "tan" is
# "k top" (str.replace also cuts "tan" out of "tank"), so 4 has no partner; 3 has none either.
TRAIN_LINES = [
    ("dress", "women/dress/t0/t0_0.jpeg", "red lace dress"),     # 0
    ("dress", "women/dress/t1/t1_0.jpeg", "blue lace dress"),    # 1
    ("dress", "women/dress/t2/t2_0.jpeg", "blue lace dress"),    # 2
    ("skirt", "women/skirt/t3/t3_0.jpeg", "green silk skirt"),   # 3
    ("top", "women/top/t4/t4_0.jpeg", "tan tank top"),           # 4
    ("top", "women/top/t5/t5_0.jpeg", "pink tank top"),          # 5
    ("top", "women/top/t6/t6_0.jpeg", "black tank top"),         # 6
]


def _write_split(base: Path, split: str, lines: list[tuple[str, str, str]]) -> None:
    by_file: dict[str, str] = {c: "" for c in CATEGORIES}
    for i, (category, path, description) in enumerate(lines):
        by_file[category] += f"{path}\t0.{90 + i}\t{description}\n"
        (base / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(base / path, "JPEG")
    (base / "labels").mkdir(parents=True, exist_ok=True)
    for category, text in by_file.items():
        (base / "labels" / f"{category}_{split}_detect_all.txt").write_text(text, encoding="utf-8")


@pytest.fixture
def f200k(tmp_path) -> Path:
    """A data root holding Fashion200k/ with TEST_LINES, TEST_QUERIES and TRAIN_LINES written out."""
    base = tmp_path / "Fashion200k"
    _write_split(base, "test", TEST_LINES)
    _write_split(base, "train", TRAIN_LINES)
    rows = "".join(f"{TEST_LINES[s][1]} {TEST_LINES[t][1]}\n" for s, t in TEST_QUERIES)
    (base / "test_queries.txt").write_text(rows, encoding="utf-8")
    return tmp_path


def test_registered_with_train_and_test_validating_on_test():
    assert "fashion200k" in DATASETS and dataset_splits("fashion200k") == ("train", "test")
    assert validation_split("fashion200k") == "test"


# ----------------------------------------------------------------------------- text rules, by hand


def test_caption_text_strips_then_spells_out_marks():
    # strip() first, then . ? & * become words, in place (no spaces added).
    assert caption_text("  Black & white*dress. ?\n") == "Black andmark whitestarmarkdressdotmark questionmark"
    assert caption_text("red\tdress\n") == "red\tdress"


def test_modifier_from_the_first_words_not_shared():
    assert different_words("red lace dress", "blue lace dress") == ("red", "blue")
    assert modifier_text("long red lace dress", "long blue lace dress") == "replace red with blue"
    # All words shared (same words in another order): tirg's loops end on the last words.
    assert modifier_text("lace red dress", "red lace dress") == "replace dress with dress"
    # Several differences: the first of each.
    assert modifier_text("red silk top", "blue lace top") == "replace red with blue"


def test_parent_caption_cuts_the_word_everywhere_as_str_replace():
    assert parent_caption("red lace dress", "lace") == "red dress"
    assert parent_caption("red lace dress", "dress") == "red lace"
    assert parent_caption("tan tank top", "tan") == "k top"  # "tan" is cut out of "tank" too
    assert parent_caption("a  b c", "c") == "a b"


# ----------------------------------------------------------------------------- the test split


def _tirg_recalls(sims: np.ndarray, sources: list[int], captions: list[str], targets: list[str],
                  ks: tuple[int, ...]) -> dict[int, float]:
    """test_retrieval.py step by step: the source's similarity set to -10e10, gallery sorted by
    similarity, a hit when the target caption is among the top-k captions."""
    hits = {k: 0 for k in ks}
    for row, source, target in zip(sims.copy(), sources, targets):
        row[source] = -10e10
        order = np.argsort(-row, kind="stable")
        for k in ks:
            hits[k] += target in [captions[j] for j in order[:k]]
    return {k: 100.0 * hits[k] / len(sources) for k in ks}


def test_test_split_queries_gallery_and_labels(f200k):
    (split,) = load_splits("fashion200k", f200k, "test")
    names = [path for _, path, _ in TEST_LINES]
    assert list(split.gallery) == names  # label files in category order, lines in file order
    assert split.gallery[names[0]] == (f200k / "Fashion200k" / names[0]).absolute()
    captions = ["red lace dress", "blue lace dress", "blue lace dress", "red lace jacket",
                "black andmark white skirtdotmark", "red lace dress", "blue lace dress", "green silk top"]
    assert [split.gallery_labels[n] for n in names] == captions
    assert split.exclude_reference and split.recall_ks == (1, 5, 10, 50, 100) and split.name == "fashion200k"
    assert [(q.reference, q.target, q.target_label, q.eval_caption) for q in split.queries] == [
        (names[0], names[1], "blue lace dress", "replace red with blue"),
        (names[1], names[0], "red lace dress", "replace blue with red"),
        (names[3], names[0], "red lace dress", "replace jacket with dress"),
        (names[7], names[6], "blue lace dress", "replace green with blue"),
    ]
    assert [q.train_captions for q in split.queries][0] == ("replace red with blue",)


def test_recall_counts_any_image_with_the_target_caption_and_masks_the_source(f200k):
    (split,) = load_splits("fashion200k", f200k, "test")
    # One axis per gallery image; each query's scores set by hand (the source scored highest, so
    # only the mask keeps it out of the top).
    gallery = torch.eye(8)
    sims = np.array([
        # q0 source 0, target "blue lace dress" (images 1, 2, 6): ranked 0 | 5 3 6 ... -> hit at rank 3
        [1.0, 0.1, 0.2, 0.7, 0.0, 0.8, 0.5, 0.0],
        # q1 source 1, target "red lace dress" (images 0, 5): ranked 1 | 2 6 3 4 7 5 0 -> hit at rank 6
        [0.0, 1.0, 0.9, 0.6, 0.5, 0.2, 0.8, 0.4],
        # q2 source 3, target "red lace dress": 5 first -> hit at rank 1 through an image other than the target
        [0.3, 0.0, 0.0, 1.0, 0.0, 0.9, 0.0, 0.0],
        # q3 source 7, target "blue lace dress": ranked 7 | 0 3 4 5 then 1 -> hit at rank 5
        [0.9, 0.1, 0.0, 0.8, 0.7, 0.6, 0.0, 1.0],
    ], dtype=np.float32)
    ranking = rank_split(split, torch.from_numpy(sims), gallery, split.rank_depth)
    metrics = split_metrics(split, ranking)
    captions = [split.gallery_labels[n] for n in split.gallery]
    expected = _tirg_recalls(sims, [0, 1, 3, 7], captions, [q.target_label for q in split.queries], split.recall_ks)
    # By hand: first hits at ranks 3, 6, 1, 5 of the masked rankings.
    assert expected == {1: 25.0, 5: 75.0, 10: 100.0, 50: 100.0, 100: 100.0}
    assert {k: metrics[f"recall_at{k}"] for k in split.recall_ks} == pytest.approx(expected)
    assert not any(k.startswith(("adjective_", "noun_")) for k in metrics)


# ----------------------------------------------------------------------------- the training split


def test_training_pairs_follow_tirg_parents_and_a_seeded_draw(f200k):
    (split,) = load_splits("fashion200k", f200k, "train")
    names = [path for _, path, _ in TRAIN_LINES]
    # Modifiable: 0 ("lace dress" has children red/blue lace dress), 1, 2, 5 and 6 ("tank top"
    # has pink/black tank top); 3 and 4 have no parent shared with another caption.
    assert [q.qid for q in split.queries] == ["0", "1", "2", "5", "6"]
    by_qid = {q.qid: q for q in split.queries}
    assert (by_qid["1"].target, by_qid["1"].eval_caption) == (names[0], "replace blue with red")
    assert (by_qid["2"].target, by_qid["2"].target_label) == (names[0], "red lace dress")
    assert (by_qid["5"].target, by_qid["5"].eval_caption) == (names[6], "replace pink with black")
    assert (by_qid["6"].target, by_qid["6"].eval_caption) == (names[5], "replace black with pink")
    # Image 0's draw: parent "lace dress" (its only shared one), a child other than its own caption
    # (redrawn until so), then one of "blue lace dress"'s images, from Random("fashion200k:0").
    rng = random.Random("fashion200k:0")
    while True:
        rng.choice(["lace dress"])  # the parent
        if rng.choice(["red lace dress", "blue lace dress"]) != "red lace dress":
            break
    assert by_qid["0"].target == names[rng.choice([1, 2])]
    assert by_qid["0"].eval_caption == "replace red with blue"
    # Static: the same triplets on every read.
    (again,) = load_splits("fashion200k", f200k, "train")
    assert again.queries == split.queries


def test_training_draw_is_seeded_by_the_image_index(tmp_path):
    # One "red lace dress" and twelve "blue lace dress" images: image 0's target is one of twelve,
    # the one Random("fashion200k:0") draws by TIRG's rule.
    lines = [("dress", "r/0.jpeg", "red lace dress")]
    lines += [("top", f"b/{i}.jpeg", "blue lace dress") for i in range(1, 13)]
    _write_split(tmp_path / "Fashion200k", "train", lines)
    (split,) = load_splits("fashion200k", tmp_path, "train")
    rng = random.Random("fashion200k:0")
    while True:
        rng.choice(["lace dress"])  # image 0's only parent with two children
        if rng.choice(["red lace dress", "blue lace dress"]) != "red lace dress":
            break
    assert split.queries[0].target == f"b/{rng.choice(range(1, 13))}.jpeg"
    assert [q.target for q in split.queries[1:]] == ["r/0.jpeg"] * 12


# ----------------------------------------------------------------------------- bad input, missing images


def test_malformed_label_line_names_file_and_line(f200k):
    path = f200k / "Fashion200k" / "labels" / "jacket_test_detect_all.txt"
    path.write_text("women/jacket/4/4_0.jpeg\t0.9\tred lace jacket\n\nwomen/jacket/9/9_0.jpeg\t0.5\n")
    with pytest.raises(CIRError, match=r"jacket_test_detect_all\.txt:3: expected 'path<TAB>score<TAB>description', "
                                       r"got 2 tab-separated fields"):
        load_splits("fashion200k", f200k, "test")
    path.write_bytes(b"women/jacket/4/4_0.jpeg\t0.9\tred \xff jacket\n")
    with pytest.raises(CIRError, match=r"jacket_test_detect_all\.txt: not UTF-8 text"):
        load_splits("fashion200k", f200k, "test")
    # A form feed inside a description is not a line end (tirg's readlines splits at line ends only).
    path.write_text("women/jacket/4/4_0.jpeg\t0.9\tred\x0clace jacket\r\n", encoding="utf-8")
    (split,) = load_splits("fashion200k", f200k, "test")
    assert split.gallery_labels["women/jacket/4/4_0.jpeg"] == "red\x0clace jacket"


def test_query_naming_an_unknown_image_names_file_and_line(f200k):
    path = f200k / "Fashion200k" / "test_queries.txt"
    path.write_text(path.read_text() + "women/dress/1/1_0.jpeg women/dress/99/99_0.jpeg\n")
    with pytest.raises(CIRError, match=r"test_queries\.txt:5: image 'women/dress/99/99_0\.jpeg' is not listed"):
        load_splits("fashion200k", f200k, "test")
    path.write_text("women/dress/1/1_0.jpeg\n")
    with pytest.raises(CIRError, match=r"test_queries\.txt:1: expected 'source_path target_path', got 1 fields"):
        load_splits("fashion200k", f200k, "test")


def test_missing_files_and_splits(f200k):
    with pytest.raises(CIRError, match="unknown Fashion200k split 'val'"):
        load_splits("fashion200k", f200k, "val")
    (f200k / "Fashion200k" / "labels" / "pants_test_detect_all.txt").unlink()
    with pytest.raises(CIRError, match=r"pants_test_detect_all\.txt: Fashion200k label file not found"):
        load_splits("fashion200k", f200k, "test")


def test_missing_images_stop_or_are_skipped_with_their_queries(f200k):
    base = f200k / "Fashion200k"
    (base / TEST_LINES[2][1]).unlink()  # a second positive only: no query uses it as source or target
    (base / TEST_LINES[3][1]).unlink()  # the source of query 2
    with pytest.raises(CIRError, match=r"image 'women/dress/3/3_0\.jpeg' listed in dress_test_detect_all\.txt is "
                                       r"missing on disk.*--skip-missing-images"):
        load_splits("fashion200k", f200k, "test")
    check = ImageCheck(skip=True)
    (split,) = load_splits("fashion200k", f200k, "test", images=check)
    assert len(split.gallery) == 6 and TEST_LINES[2][1] not in split.gallery
    assert [q.qid for q in split.queries] == ["0", "1", "3"]
    assert check.dropped_queries == {"fashion200k/fashion200k/test": 1}
    assert check.pruned_galleries == {"fashion200k/fashion200k/test": 2}


def test_repeated_path_is_one_entry_per_line_and_queries_use_the_last(f200k):
    base = f200k / "Fashion200k"
    path = base / "labels" / "top_test_detect_all.txt"
    path.write_text(path.read_text() + "women/dress/1/1_0.jpeg\t0.5\tred lace dress\n")
    (split,) = load_splits("fashion200k", f200k, "test")
    assert list(split.gallery)[-1] == "women/dress/1/1_0.jpeg#2"
    assert split.gallery["women/dress/1/1_0.jpeg#2"] == split.gallery["women/dress/1/1_0.jpeg"]
    assert split.queries[0].reference == "women/dress/1/1_0.jpeg#2"  # tirg's file2imgid keeps the last


# ----------------------------------------------------------------------------- the shapes-world stand-in


def test_synthetic_stand_in_reads_back(tmp_path):
    summary = write_fashion200k(tmp_path / "a", seed=3, size=32)
    assert summary == {"train": {"images": 40}, "test": {"images": 24, "queries": 24}}
    (test,) = load_splits("fashion200k", tmp_path / "a", "test", images=ImageCheck(readable=True))
    (train,) = load_splits("fashion200k", tmp_path / "a", "train", images=ImageCheck(readable=True))
    assert (len(test.gallery), len(test.queries)) == (24, 24)
    assert len(train.gallery) == 40 and 0 < len(train.queries) <= 40
    for split in (test, train):
        for q in split.queries:
            source, target = split.gallery_labels[q.reference].split(), q.target_label.split()
            # One word apart; the text names the change. Test pairs keep the shape (the category).
            assert len(source) == 3 and sum(a != b for a, b in zip(source, target)) == 1
            assert split is train or source[2] == target[2]
            assert q.eval_caption == modifier_text(" ".join(source), " ".join(target))
    # Several gallery images share a caption, so some queries have more than one correct answer.
    labels = list(test.gallery_labels.values())
    assert any(labels.count(q.target_label) > 1 for q in test.queries)
    write_fashion200k(tmp_path / "b", seed=3, size=32)
    for name in ("labels/dress_train_detect_all.txt", "test_queries.txt"):
        assert (tmp_path / "a/Fashion200k" / name).read_bytes() == (tmp_path / "b/Fashion200k" / name).read_bytes()


def test_stand_in_trains_both_stages_and_evaluates(tmp_path, cli):
    """Stage 1 trains on the static training queries and validates on test; stage 2 trains on its
    CLIP's features; `clip-cir eval` (test by default) gives stage 2's last validation numbers."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    write_fashion200k(data, size=32)
    stage1 = clip_cir.finetune(**stage1_options(data, runs, "s1", dataset="fashion200k", batch_size=8, epochs=1,
                                                encoder="text"))
    stage2 = clip_cir.train_combiner(**stage2_options(data, runs, "s2", dataset="fashion200k", batch_size=8,
                                                      epochs=1, pretrained=runs / "s1"))
    keys = [f"recall_at{k}" for k in (1, 5, 10, 50, 100)]
    views = []
    assert all(key in stage1.metrics and key in stage2.metrics for key in keys + views)
    out = tmp_path / "test.json"
    result = cli("eval", "--dataset", "fashion200k", "--data-root", data, "--num-workers", "0", "--model",
                 "cir-tiny-vit", "--pretrained", runs / "s1", "--combiner", runs / "s2", "--output", out)
    assert result.code == 0, result.err
    metrics = json.loads(out.read_text())
    assert [metrics[key] for key in keys + views] == pytest.approx([stage2.metrics[key] for key in keys + views],
                                                                   abs=1e-3)
