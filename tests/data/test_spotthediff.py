"""Spot-the-Diff as yahoo/maaf reads and scores it (datasets/spotthediff.py, test_retrieval.py).

maaf's rule, step by step: every record appends two gallery entries, `<img_id>.png` then
`<img_id>_2.png`, repeats included (an `img_id` seen before adds two more entries showing the
same files); each entry's label is its own index, so the one hit of a record's query is the
record's own `_2` entry; sims[q, the record's own first entry] = -10e10 (another entry showing
the same file is not masked); a query per non-empty sentence (`!= ""`), none for a record
without one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import stage1_options, stage2_options
from PIL import Image

import clip_cir
from clip_cir.data import load_splits
from clip_cir.data.images import ImageCheck
from clip_cir.data.synthetic.spotthediff import write_spotthediff
from clip_cir.encoding.extraction import encode_counts
from clip_cir.encoding.ranking import Ranking, rank_split
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import split_metrics

VAL_JSON = """[
  {"img_id": "7", "sentences": ["the car is gone", ""]},
  {"img_id": "12", "sentences": [""]},
  {"img_id": "7", "sentences": ["a person appears", "the car moved"]},
  {"img_id": 30, "sentences": [" no one on the stairs "]}
]"""
FILES = ("7", "7_2", "12", "12_2", "30", "30_2")
GALLERY = ["7", "7_2", "12", "12_2", "7#2", "7_2#2", "30", "30_2"]  # indices 0..7


def write_layout(root: Path, annotations: str = VAL_JSON, files: tuple[str, ...] = FILES) -> Path:
    base = root / "spot-the-diff" / "data"
    (base / "annotations").mkdir(parents=True)
    (base / "resized_images").mkdir()
    (base / "annotations" / "val.json").write_text(annotations, encoding="utf-8")
    for i, stem in enumerate(files):
        Image.new("RGB", (16, 12), (20 * i, 100, 200 - 20 * i)).save(base / "resized_images" / f"{stem}.png")
    return root


def test_val_split_as_maaf_reads_it(tmp_path):
    (split,) = load_splits("spotthediff", write_layout(tmp_path), "val")
    folder = (tmp_path / "spot-the-diff" / "data" / "resized_images").absolute()
    assert list(split.gallery) == GALLERY
    # The repeated record's entries show the first record's files under their own names.
    assert [split.gallery[n].name for n in GALLERY] == ["7.png", "7_2.png", "12.png", "12_2.png", "7.png",
                                                         "7_2.png", "30.png", "30_2.png"]
    assert split.gallery["7#2"] == split.gallery["7"] == folder / "7.png"
    # Record 1 has only "" (no query); "" sentences are skipped, others kept exactly as written.
    assert [(q.qid, q.reference, q.target, q.eval_caption) for q in split.queries] == [
        ("0/0", "7", "7_2", "the car is gone"),
        ("2/0", "7#2", "7_2#2", "a person appears"),
        ("2/1", "7#2", "7_2#2", "the car moved"),
        ("3/0", "30", "30_2", " no one on the stairs "),
    ]
    assert split.exclude_reference and split.recall_ks == (1, 5, 10, 50, 100)


def test_only_the_records_own_copy_is_a_hit(tmp_path):
    (split,) = load_splits("spotthediff", write_layout(tmp_path), "val")
    rows = [
        [5, 1, 2, 3, 4, 6, 7],  # "0/0" (target 7_2 = 1): 7_2#2, the same file, first: no hit at 1; rank 2.
        [1, 0, 2, 3, 6, 7, 5],  # "2/0" (target 7_2#2 = 5): the other copies first; its own at rank 7.
        [5, 1, 0, 2, 3, 6, 7],  # "2/1" (target 5): rank 1.
        [7, 0, 1, 2, 3, 4, 5],  # "3/0" (target 30_2 = 7): rank 1.
    ]
    metrics = split_metrics(split, Ranking(indices=torch.tensor(rows), scores=torch.zeros(4, 7)))
    # Ranks 2, 7, 1, 1: R@1 = 2/4, R@5 = 3/4, R@10 = 4/4.
    assert metrics == pytest.approx({"recall_at1": 50.0, "recall_at5": 75.0, "recall_at10": 100.0,
                                     "recall_at50": 100.0, "recall_at100": 100.0})


def maaf_recall(sims: torch.Tensor, sources: list[int], targets: list[int], k: int) -> float:
    """test_retrieval.py's rule: the source's own index set to -10e10, then target in the first k."""
    hits = 0
    for row, source, target in zip(sims.tolist(), sources, targets):
        row[source] = -10e10
        order = sorted(range(len(row)), key=lambda j: -row[j])
        hits += target in order[:k]
    return 100.0 * hits / len(sources)


def test_only_the_records_own_first_entry_is_masked(tmp_path):
    (split,) = load_splits("spotthediff", write_layout(tmp_path), "val")
    # One feature per file; entries showing the same file share it.
    files = torch.eye(6)  # 7, 7_2, 12, 12_2, 30, 30_2
    gallery = files[[0, 1, 2, 3, 0, 1, 4, 5]]
    # Each query is its reference's feature plus half its target's.
    queries = torch.stack([files[0] + 0.5 * files[1], files[0] + 0.5 * files[1], files[0] + 0.5 * files[1],
                           files[4] + 0.5 * files[5]])
    ranking = rank_split(split, queries, gallery, split.rank_depth)
    # "0/0" masks entry 0 (its own 7) but not 4 (7#2, the same file): 7#2 comes first, at 1.0.
    assert ranking.indices[0, 0] == 4 and 0 not in ranking.indices[0].tolist()
    # "2/0" and "2/1" mask 4 (their own 7#2): entry 0 comes first.
    assert ranking.indices[1, 0] == 0 and 4 not in ranking.indices[1].tolist()
    # The targets tie with their other copy at 0.5, at ranks 2-3: R@1 = 1/4 ("3/0" only), R@5 = 4/4.
    metrics = split_metrics(split, ranking)
    assert metrics["recall_at1"] == pytest.approx(25.0) and metrics["recall_at5"] == pytest.approx(100.0)
    sims = queries @ gallery.t()
    for k in split.recall_ks:
        assert metrics[f"recall_at{k}"] == pytest.approx(maaf_recall(sims, [0, 4, 4, 6], [1, 5, 5, 7], k))


def test_copies_of_one_file_get_the_same_features(tmp_path):
    """Features are per gallery entry: an entry repeating a file gets that file's features, and
    each file is encoded once."""
    from clip_cir.encoding.split_features import EncodeOptions, split_features
    from clip_cir.models.clip import load_clip

    (split,) = load_splits("spotthediff", write_layout(tmp_path), "val")
    clip = load_clip("cir-tiny-vit")
    options = EncodeOptions(transform=clip.image_transform("targetpad", 1.25), batch_size=3, progress=False)
    before = encode_counts["image"]
    features = split_features(clip, split, options)
    encoded = encode_counts["image"] - before
    assert len(FILES) < len(GALLERY) and encoded == len(FILES)  # once per file
    assert features.gallery.shape[0] == len(GALLERY)
    assert torch.equal(features.gallery[4], features.gallery[0])  # 7#2 and 7
    assert torch.equal(features.gallery[5], features.gallery[1])  # 7_2#2 and 7_2
    assert not torch.allclose(features.gallery[0], features.gallery[1], atol=1e-3)
    assert torch.equal(features.reference[1], features.gallery[4])  # "2/0" reads its own reference entry


@pytest.mark.parametrize("annotations, message", [
    ('[{"img_id": "7", "sentences": ["a"]},\n {"img_id": "8", "sentences": ["b"],}]',
     r"val\.json: malformed JSON \(.* at line 2 column"),
    ('{"img_id": "7", "sentences": ["a"]}', r"val\.json: the top level should be a JSON list, got dict"),
    ('[{"img_id": "7", "sentences": ["a"]}, {"img_id": "8"}]', r"val\.json: entry 1 has no field 'sentences'"),
    ('[{"img_id": "7", "sentences": "the car"}]', r"val\.json: entry 0 field 'sentences' should be a list of strings"),
    ('[{"img_id": "7", "sentences": ["a", null]}]', r"val\.json: entry 0 field 'sentences' should be a list of"),
    ('[{"img_id": null, "sentences": ["a"]}]', r"val\.json: entry 0 field 'img_id' should be an image id"),
    ('[{"img_id": true, "sentences": ["a"]}]', r"val\.json: entry 0 field 'img_id' should be an image id"),
    ('[{"img_id": "../7", "sentences": ["a"]}]', r"val\.json: entry 0 field 'img_id' should be an image id"),
    ("[]", r"val\.json: no records"),
])
def test_bad_annotations_are_one_line_naming_the_file(tmp_path, annotations, message):
    root = write_layout(tmp_path, annotations)
    with pytest.raises(CIRError, match=message) as error:
        load_splits("spotthediff", root, "val")
    assert "\n" not in str(error.value)


def test_missing_folders_and_splits(tmp_path):
    with pytest.raises(CIRError, match=r"spot-the-diff/data: Spot-the-Diff folder not found \(--data-root must "
                                       r"contain spot-the-diff/data/\)"):
        load_splits("spotthediff", tmp_path, "val")
    write_layout(tmp_path)
    with pytest.raises(CIRError, match=r"annotations/test\.json: Spot-the-Diff annotation file not found"):
        load_splits("spotthediff", tmp_path, "test")
    with pytest.raises(CIRError, match=r"unknown Spot-the-Diff split 'dev' \(choose from train, val, test\)"):
        load_splits("spotthediff", tmp_path, "dev")


def test_missing_image_stops_or_is_skipped(tmp_path):
    root = write_layout(tmp_path, files=("7", "12", "12_2", "30", "30_2"))  # 7_2.png is missing
    with pytest.raises(CIRError, match=r"7_2\.png: image '7_2' listed in val\.json is missing on disk; 1 more of "
                                       r"the 8 images listed .*--skip-missing-images") as error:
        load_splits("spotthediff", root, "val")
    assert "\n" not in str(error.value)
    images = ImageCheck(skip=True)
    (split,) = load_splits("spotthediff", root, "val", images=images)
    # Both entries showing 7_2.png go, and the three queries whose target is one of them.
    assert list(split.gallery) == ["7", "12", "12_2", "7#2", "30", "30_2"]
    assert [q.qid for q in split.queries] == ["3/0"]
    assert images.dropped == 3 and images.changed_evaluation() == ["spotthediff/spotthediff/val"]


def test_training_split_is_one_query_per_record(tmp_path):
    base = write_layout(tmp_path) / "spot-the-diff" / "data" / "annotations"
    # Record 1 now has a sentence of one space (not "", so maaf keeps it); a fifth record has no
    # sentence and no image files: no query uses it, so training never looks for its images.
    records = VAL_JSON.replace('"sentences": [""]', '"sentences": ["", " "]')
    records = records[:-2] + ',\n  {"img_id": "40", "sentences": [""]}\n]'
    (base / "train.json").write_text(records, encoding="utf-8")
    (split,) = load_splits("spotthediff", tmp_path, "train", images=ImageCheck.for_purpose("training"))
    assert [(q.qid, q.reference, q.target, q.train_captions) for q in split.queries] == [
        ("0", "7", "7_2", ("the car is gone",)),
        ("1", "12", "12_2", (" ",)),
        ("2", "7#2", "7_2#2", ("a person appears", "the car moved")),
        ("3", "30", "30_2", (" no one on the stairs ",)),
    ]
    assert list(split.gallery) == GALLERY


def test_synthetic_stand_in_reads_back(tmp_path):
    summary = write_spotthediff(tmp_path, seed=1, size=32)
    folder = tmp_path / "spot-the-diff" / "data"
    for split_name in ("train", "val", "test"):
        (split,) = load_splits("spotthediff", tmp_path, split_name)
        counts = summary[split_name]
        records = json.loads((folder / "annotations" / f"{split_name}.json").read_text())
        assert len(records) == counts["records"] and len(split.gallery) == 2 * counts["records"]
        assert len(set(split.gallery.values())) == counts["images"]
        if split_name == "train":
            assert sum(len(q.train_captions) for q in split.queries) == counts["queries"]
        else:
            assert len(split.queries) == counts["queries"]
            repeated = [n for n in split.gallery if n.endswith("#2")]
            assert len(repeated) == 2 and split.gallery[repeated[0]] == split.gallery[repeated[0][:-2]]
            assert records[-1]["sentences"] == [""]
    assert summary["train"] == {"records": 12, "queries": summary["train"]["queries"], "images": 24}
    before = Image.open(folder / "resized_images" / f"{records[0]['img_id']}.png")
    after = Image.open(folder / "resized_images" / f"{records[0]['img_id']}_2.png")
    assert before.size == after.size and min(before.size) == 32
    assert before.tobytes() != after.tobytes()


def test_stand_in_trains_both_stages_and_evaluates(tmp_path, cli):
    """Stage 1 and stage 2 train on the stand-in and validate on its val split; `clip-cir eval`
    reproduces stage 2's last validation and reads the test split with `--split test`."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    write_spotthediff(data, size=32)
    clip_cir.finetune(**stage1_options(data, runs, "s1", dataset="spotthediff", batch_size=6, epochs=1,
                                       encoder="text"))
    stage2 = clip_cir.train_combiner(**stage2_options(data, runs, "s2", dataset="spotthediff", batch_size=6, epochs=1,
                                                      pretrained=runs / "s1"))
    keys = [f"recall_at{k}" for k in (1, 5, 10, 50, 100)]
    assert all(key in stage2.metrics for key in keys)
    for split, out in (("val", tmp_path / "val.json"), ("test", tmp_path / "test.json")):
        result = cli("eval", "--dataset", "spotthediff", "--data-root", data, "--split", split, "--num-workers", "0",
                     "--model", "cir-tiny-vit", "--pretrained", runs / "s1", "--combiner", runs / "s2",
                     "--output", out)
        assert result.code == 0, result.err
    metrics = json.loads((tmp_path / "val.json").read_text())
    assert [metrics[key] for key in keys] == pytest.approx([stage2.metrics[key] for key in keys], abs=1e-3)
    # 14 val queries over 14 entries, one removed per query: R@50 and R@100 count every query.
    assert metrics["recall_at50"] == metrics["recall_at100"] == 100.0
    assert json.loads((tmp_path / "test.json").read_text())["recall_at100"] == 100.0
