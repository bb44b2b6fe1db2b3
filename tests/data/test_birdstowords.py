"""Birds-to-Words as yahoo/maaf reads and scores it (datasets/birdstowords.py, test_retrieval.py).

maaf's rule, step by step: the lines whose third-last tab field (after stripping the line) is the
split; an image is its URL's last `/` part; the gallery is the split's image names, sorted, once
each; a val/test query per description, pairs in sorted `<left>_<right>` order; sims = queries x
gallery, the query's own reference set to -10e10; a hit at K is the target's gallery index among
the first K of the descending order. Training: one query per pair, plus each pair reversed with
the whole words "animal1" and "animal2" swapped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import stage1_options, stage2_options
from PIL import Image

import clip_cir
from clip_cir.data import load_splits
from clip_cir.data.birdstowords import swap_animals
from clip_cir.data.images import ImageCheck
from clip_cir.data.synthetic.birdstowords import write_birdstowords
from clip_cir.encoding.ranking import Ranking, rank_split
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import split_metrics

HEADER = ("img1ObservationURL\timg1ImgURL\timg1Species\timg1Selection\timg2ObservationURL\timg2ImgURL\t"
          "img2Species\timg2Selection\tsplit\tannN\tdescription")
T6 = "animal1  is larger than animal2 . animal2, not animal1s , has stripes"
T7 = "Animal1 has a shorter beak than animal2"


def line(left: int, right: int, split: str, n: int, text: str) -> str:
    """One TSV line as the dataset writes it: photo `left` (animal1) and photo `right` (animal2)."""
    return "\t".join([f"https://www.inaturalist.org/observations/{left}",
                      f"https://static.inaturalist.org/photos/{left}/medium.jpg?{left}", "Turdus migratorius", "base",
                      f"https://www.inaturalist.org/observations/{right}",
                      f"https://static.inaturalist.org/photos/{right}/medium.jpg?{right}", "Turdus merula",
                      "sameGenus", split, str(n), text])


LINES = [
    HEADER,                                                 # line 1
    line(14, 12, "val", 1, "animal1 is browner ."),         # line 2
    line(13, 12, "val", 1, "animal2 has a red breast"),     # line 3
    line(14, 12, "val", 2, "animal2 is smaller ."),         # line 4: the pair of line 2 again
    line(11, 14, "val", 1, "animal1 has a longer tail"),    # line 5
    line(21, 22, "train", 1, T6),                           # line 6
    line(22, 21, "train", 1, T7),                           # line 7: line 6's pair reversed
    line(31, 32, "test", 1, "animal2 is rounder"),          # line 8
    line(15, 16, "val", 1, "animal2 has white wingbars"),   # line 9
    line(17, 15, "val", 1, "animal1 is paler"),             # line 10
    line(13, 12, "val", 3, ""),                             # line 11: empty description (maaf drops it)
]


def write_layout(root: Path, lines: list[str] = LINES, images: tuple[int, ...] | None = None) -> Path:
    base = root / "birds-to-words"
    (base / "images").mkdir(parents=True)
    (base / "birds-to-words-v1.0.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for photo in images or (11, 12, 13, 14, 15, 16, 17, 21, 22, 31, 32):
        Image.new("RGB", (8, 8), (photo, 0, 0)).save(base / "images" / f"medium.jpg?{photo}", "JPEG")
    return root


def name(photo: int) -> str:
    return f"medium.jpg?{photo}"


def test_val_split_as_maaf_reads_it(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="clip_cir"):
        (split,) = load_splits("birdstowords", write_layout(tmp_path), "val")
    # The gallery: the val lines' images, sorted by name, once each.
    assert list(split.gallery) == [name(p) for p in (11, 12, 13, 14, 15, 16, 17)]
    assert split.gallery[name(13)] == (tmp_path / "birds-to-words" / "images" / "medium.jpg?13").absolute()
    # Queries: pairs by sorted key "11_14" < "13_12" < "14_12" < "15_16" < "17_15", descriptions
    # in file order; the line-11 description is empty and left out, as maaf's stripping leaves it.
    assert [q.qid for q in split.queries] == ["5", "3", "2", "4", "9", "10"]
    assert [(q.reference, q.target) for q in split.queries] == [
        (name(11), name(14)), (name(13), name(12)), (name(14), name(12)), (name(14), name(12)),
        (name(15), name(16)), (name(17), name(15))]
    assert [q.eval_caption for q in split.queries] == [
        "animal1 has a longer tail", "animal2 has a red breast", "animal1 is browner .", "animal2 is smaller .",
        "animal2 has white wingbars", "animal1 is paler"]
    assert split.exclude_reference and split.recall_ks == (1, 5, 10, 50, 100)
    assert "1 lines with an empty description left out" in caplog.text


def maaf_recall(scores: list[list[float]], sources: list[int], targets: list[int], k: int) -> float:
    """test_retrieval.py's rule: mask the source, sort by descending similarity, target in the first k."""
    hits = 0
    for row, source, target in zip(scores, sources, targets):
        sims = list(row)
        sims[source] = -10e10
        order = sorted(range(len(sims)), key=lambda j: -sims[j])
        hits += target in order[:k]
    return 100.0 * hits / len(scores)


def test_ranking_scored_by_maafs_rule(tmp_path):
    (split,) = load_splits("birdstowords", write_layout(tmp_path), "val")
    # Gallery features are one-hot, so a query's features are its similarities to the 7 images
    # 11, 12, 13, 14, 15, 16, 17 (indices 0..6).
    scores = [
        [0.99, 0.1, 0.2, 0.9, 0.3, 0.4, 0.5],   # "5": 11 -> 14. Its reference (0.99) is masked: 14 first, a hit at 1.
        [0.6, 0.5, 0.95, 0.4, 0.3, 0.2, 0.1],   # "3": 13 -> 12. 13 masked; 11 then 12: rank 2.
        [0.9, 0.1, 0.8, 0.99, 0.7, 0.6, 0.5],   # "2": 14 -> 12. 14 masked; 11, 13, 15, 16, 17, then 12: rank 6.
        [0.1, 0.9, 0.2, 0.3, 0.4, 0.5, 0.6],    # "4": 14 -> 12. 12 first: rank 1.
        [0.5, 0.4, 0.3, 0.2, 0.95, 0.1, 0.6],   # "9": 15 -> 16. 15 masked; 17, 11, 12, 13, 14, then 16: rank 6.
        [0.1, 0.2, 0.3, 0.4, 0.8, 0.5, 0.9],    # "10": 17 -> 15. 17 masked: 15 first, rank 1.
    ]
    ranking = rank_split(split, torch.tensor(scores), torch.eye(7), split.rank_depth)
    assert ranking.indices.shape == (6, 6)  # every image but the masked reference
    assert ranking.indices[2].tolist() == [0, 2, 4, 5, 6, 1]
    metrics = split_metrics(split, ranking)
    # Ranks 1, 2, 6, 1, 6, 1: R@1 = 3/6, R@5 = 4/6, R@10 and beyond = 6/6.
    assert metrics == pytest.approx({"recall_at1": 50.0, "recall_at5": 400 / 6, "recall_at10": 100.0,
                                     "recall_at50": 100.0, "recall_at100": 100.0})
    index = {n: i for i, n in enumerate(split.gallery)}
    sources = [index[q.reference] for q in split.queries]
    targets = [index[q.target] for q in split.queries]
    for k in split.recall_ks:
        assert metrics[f"recall_at{k}"] == pytest.approx(maaf_recall(scores, sources, targets, k))


def test_hand_ranking_counts_only_the_target_image(tmp_path):
    (split,) = load_splits("birdstowords", write_layout(tmp_path), "val")
    # A ranking per query as gallery indices, best first (split_metrics scores any ranking it is given).
    rows = [[3, 0, 1, 2, 4, 5], [0, 2, 4, 5, 6, 1], [1, 0, 2, 4, 5, 6], [6, 0, 1, 2, 3, 4],
            [5, 0, 1, 2, 3, 6], [0, 1, 2, 3, 5, 6]]
    metrics = split_metrics(split, Ranking(indices=torch.tensor(rows), scores=torch.zeros(6, 6)))
    # Targets 14 (3), 12 (1), 12 (1), 12 (1), 16 (5), 15 (4): ranks 1, 6, 1, 3, 1, absent.
    assert metrics["recall_at1"] == pytest.approx(300 / 6)
    assert metrics["recall_at5"] == pytest.approx(400 / 6)
    assert metrics["recall_at10"] == pytest.approx(500 / 6)


def test_training_pairs_and_their_reversed_copies(tmp_path):
    (split,) = load_splits("birdstowords", write_layout(tmp_path), "train")
    assert list(split.gallery) == [name(21), name(22)]
    # Line 6 (21 -> 22) adds 21_22 and, reversed, 22_21; line 7 (22 -> 21) joins 22_21 and adds
    # its reverse to 21_22. Only whole words "animal1"/"animal2" swap; spaces are kept.
    swapped_t6 = "animal2  is larger than animal1 . animal2, not animal1s , has stripes"
    swapped_t7 = "Animal1 has a shorter beak than animal1"
    assert swap_animals(T6) == swapped_t6 and swap_animals(T7) == swapped_t7
    assert [(q.qid, q.reference, q.target, q.train_captions) for q in split.queries] == [
        (f"{name(21)}_{name(22)}", name(21), name(22), (T6, swapped_t7)),
        (f"{name(22)}_{name(21)}", name(22), name(21), (swapped_t6, T7)),
    ]


def test_test_split_is_the_files_own(tmp_path):
    (split,) = load_splits("birdstowords", write_layout(tmp_path), "test")
    assert list(split.gallery) == [name(31), name(32)]
    assert [(q.qid, q.reference, q.target, q.eval_caption) for q in split.queries] == [
        ("8", name(31), name(32), "animal2 is rounder")]


@pytest.mark.parametrize("bad, message", [
    (lambda lines: lines[:2] + ["\t".join(lines[2].split("\t")[:9])] + lines[3:],
     r"birds-to-words-v1\.0\.tsv:3: 9 tab-separated columns, expected 11 \(img1ObservationURL, "),
    (lambda lines: lines[:4] + [lines[4].replace("\tval\t", "\tdev\t")] + lines[5:],
     r"birds-to-words-v1\.0\.tsv:5: split 'dev' is not one of train, val, test$"),
    (lambda lines: lines[:1] + [lines[1].replace("medium.jpg?14\tTurdus", "\tTurdus")] + lines[2:],
     r"birds-to-words-v1\.0\.tsv:2: img1ImgURL 'https://static\.inaturalist\.org/photos/14/' ends without a file name"),
    (lambda lines: lines[:6] + [""] + lines[6:],
     r"birds-to-words-v1\.0\.tsv:7: 1 tab-separated columns, expected 11"),
    (lambda lines: [line_ for line_ in lines if "\tval\t" not in line_],
     r"birds-to-words-v1\.0\.tsv: no lines of split 'val'"),
])
def test_bad_tsv_is_one_line_naming_file_and_line(tmp_path, bad, message):
    root = write_layout(tmp_path, bad(list(LINES)))
    with pytest.raises(CIRError, match=message) as error:
        load_splits("birdstowords", root, "val")
    assert "\n" not in str(error.value)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(CIRError, match=r"birds-to-words: Birds-to-Words folder not found \(--data-root must contain"):
        load_splits("birdstowords", tmp_path, "val")
    (tmp_path / "birds-to-words").mkdir()
    with pytest.raises(CIRError, match=r"birds-to-words-v1\.0\.tsv: Birds-to-Words TSV not found"):
        load_splits("birdstowords", tmp_path, "val")
    (tmp_path / "birds-to-words" / "birds-to-words-v1.0.tsv").write_bytes(HEADER.encode() + b"\n\xff\xfe\n")
    with pytest.raises(CIRError, match=r"birds-to-words-v1\.0\.tsv: not UTF-8 text"):
        load_splits("birdstowords", tmp_path, "val")
    with pytest.raises(CIRError, match=r"unknown Birds-to-Words split 'dev' \(choose from train, val, test\)"):
        load_splits("birdstowords", tmp_path, "dev")


def test_missing_image_stops_or_is_skipped(tmp_path):
    root = write_layout(tmp_path, images=(11, 12, 13, 14, 15, 17))  # 16 was never downloaded
    with pytest.raises(CIRError, match=r"medium\.jpg\?16: image 'medium\.jpg\?16' listed in birds-to-words-v1\.0\.tsv "
                                       r"is missing on disk.*--skip-missing-images") as error:
        load_splits("birdstowords", root, "val")
    assert "\n" not in str(error.value)
    images = ImageCheck(skip=True)
    (split,) = load_splits("birdstowords", root, "val", images=images)
    # As maaf leaves out a file it cannot find and the pairs that use it: query "9" (15 -> 16) goes.
    assert list(split.gallery) == [name(p) for p in (11, 12, 13, 14, 15, 17)]
    assert [q.qid for q in split.queries] == ["5", "3", "2", "4", "10"]
    assert images.dropped == 1 and images.changed_evaluation() == ["birdstowords/birdstowords/val"]
    assert "left out 1 missing and 0 unreadable images and the 1 queries" in images.summary()


def test_synthetic_stand_in_reads_back(tmp_path):
    summary = write_birdstowords(tmp_path, seed=3, size=32)
    splits = {s: load_splits("birdstowords", tmp_path, s)[0] for s in ("train", "val", "test")}
    for split_name, split in splits.items():
        counts = summary[split_name]
        assert len(split.gallery) == counts["images"] and all(p.is_file() for p in split.gallery.values())
        if split_name == "train":  # each pair and its reverse (the stand-in lists no pair both ways)
            assert len(split.queries) == 2 * counts["pairs"]
            assert sum(len(q.train_captions) for q in split.queries) == 2 * counts["descriptions"]
        else:
            assert len(split.queries) == counts["descriptions"]
    assert summary["train"]["images"] == 18 and summary["val"]["pairs"] == 6
    with Image.open(next(iter(splits["val"].gallery.values()))) as image:
        assert image.format == "JPEG" and min(image.size) == 32
    forward = splits["train"].queries[0]
    back = next(q for q in splits["train"].queries if (q.reference, q.target) == (forward.target, forward.reference))
    assert sorted(back.train_captions) == sorted(swap_animals(t) for t in forward.train_captions)
    with pytest.raises(ValueError, match="exists and is not empty"):
        write_birdstowords(tmp_path)


def test_stand_in_trains_both_stages_and_evaluates(tmp_path, cli):
    """Stage 1 trains on the pairs and their reversed copies, stage 2 on its CLIP's features; both
    validate on val, and `clip-cir eval` gives stage 2's last validation numbers."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    write_birdstowords(data, size=32)
    stage1 = clip_cir.finetune(**stage1_options(data, runs, "s1", dataset="birdstowords", batch_size=8, epochs=1,
                                                encoder="text"))
    stage2 = clip_cir.train_combiner(**stage2_options(data, runs, "s2", dataset="birdstowords", batch_size=8,
                                                      epochs=1, pretrained=runs / "s1"))
    keys = [f"recall_at{k}" for k in (1, 5, 10, 50, 100)]
    assert all(key in stage1.metrics and key in stage2.metrics for key in keys)
    out = tmp_path / "val.json"
    result = cli("eval", "--dataset", "birdstowords", "--data-root", data, "--num-workers", "0", "--model",
                 "cir-tiny-vit", "--pretrained", runs / "s1", "--combiner", runs / "s2", "--output", out)
    assert result.code == 0, result.err
    metrics = json.loads(out.read_text())
    assert [metrics[key] for key in keys] == pytest.approx([stage2.metrics[key] for key in keys], abs=1e-3)
    assert metrics["recall_at10"] == 100.0  # 9 val images, the reference removed: 8 ranked
