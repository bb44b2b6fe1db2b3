"""CFQ: the reader on a hand-written copy of the layout yahoo/maaf's src/maaf/datasets/cfq.py
reads (judgments.tsv, equivalent_captions.json, images/<hash>.jpeg), its graded metrics through a
hand-made ranking, bad input, missing images, the synthetic stand-in, `clip-cir eval` and the
training programs' refusal."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import stage1_args, stage2_args
from PIL import Image

from clip_cir.data import load_splits
from clip_cir.data.convert import convert
from clip_cir.data.images import ImageCheck
from clip_cir.data.synthetic.cfq import satisfies, similarity_grade, write_cfq
from clip_cir.data.synthetic.world import Edit, Obj
from clip_cir.encoding.ranking import Ranking
from clip_cir.errors import CIRError
from clip_cir.evaluation.graded import combine_graded, graded_split_metrics

LOG2 = math.log2
HEADER = "worker\tsubset\tquery_hash\tcaption\tcatalog_hash\taccurate\tsimilar"
LINES = [  # an extra column first: the reader finds its columns by the header's names
    "w1\tbroad\tq1\tmake it red\tc1\tYes\tReasonable",
    "w2\tbroad\tq1\tmake it red\tc1\tyes\tsomewhat reasonable",
    "w1\tbroad\tq1\tmake it red\tc2\tNo\tNot reasonable",
    "w2\tbroad\tq1\tmake it red\tc2\tNot sure\treasonable",
    "w1\tbroad\tq2\tmake it red\tc3\tYES\tReasonable",
    "w1\tbroad\tq2\tmake it red\tc1\tno\tNot reasonable",
    "w1\ttight\tq1\tadd a belt\tc4\tYes\tReasonable",
    "w1\ttight\tq1\tadd a belt\tc1\tNo\tSomewhat reasonable",
    "w1\ttight\tq3\tin blue\tc5\tYes\tReasonable",
    "w2\ttight\tq3\tin blue\tc1\tNo\tNot reasonable",
]
PARAPHRASES = {"make it red": ["turn it red", "red instead"], "add a belt": ["with a belt", "belted"]}
IMAGES = ("q1", "q2", "q3", "c1", "c2", "c3", "c4", "c5")


def _write(root: Path, lines: list[str] = LINES, header: str = HEADER, paraphrases: object = PARAPHRASES) -> Path:
    base = root / "cfq"
    (base / "images").mkdir(parents=True)
    (base / "judgments.tsv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    (base / "equivalent_captions.json").write_text(json.dumps(paraphrases), encoding="utf-8")
    for i, name in enumerate(IMAGES):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(base / "images" / f"{name}.jpeg", "JPEG")
    return base


def test_reader_on_the_hand_written_layout(tmp_path):
    base = _write(tmp_path)
    broad, tight = load_splits("cfq", tmp_path, "test")
    assert (broad.dataset, broad.name, broad.split, tight.name) == ("cfq", "broad", "test", "tight")
    # Queries: distinct (query_hash, caption) per subset, in file order; paraphrases after the caption.
    assert [(q.qid, q.reference, q.eval_caption) for q in broad.queries] == [
        ("broad/0", "q1", "make it red"), ("broad/1", "q2", "make it red")]
    assert broad.queries[0].captions == ("make it red", "turn it red", "red instead")
    assert tight.queries[1].captions == ("in blue",)  # no paraphrases listed for it
    # Gallery: the subset's judged catalog images in file order; query images kept apart.
    assert list(broad.gallery) == ["c1", "c2", "c3"] and list(tight.gallery) == ["c4", "c1", "c5"]
    assert broad.gallery["c2"] == (base / "images" / "c2.jpeg").absolute()
    assert dict(broad.query_images) == {"q1": base.absolute() / "images" / "q1.jpeg",
                                        "q2": base.absolute() / "images" / "q2.jpeg"}
    assert not broad.exclude_reference and broad.has_targets
    # Judgements: mean votes, yes/not sure/no and reasonable/somewhat/not as 1/0/-1 in any case.
    assert broad.judgments == {"broad/0": {"c1": (1.0, 0.5), "c2": (-0.5, 0.0)},
                               "broad/1": {"c3": (1.0, 1.0), "c1": (-1.0, -1.0)}}
    assert tight.judgments["tight/0"] == {"c4": (1.0, 1.0), "c1": (-1.0, 0.0)}


def _ranking(split, rows: list[dict[str, float]]) -> Ranking:
    names = list(split.gallery)
    order = [sorted(row, key=lambda n: -row[n]) for row in rows]
    return Ranking(indices=torch.tensor([[names.index(n) for n in o] for o in order]),
                   scores=torch.tensor([[row[n] for n in o] for row, o in zip(rows, order)], dtype=torch.float64))


def test_graded_metrics_of_the_hand_written_layout(tmp_path):
    _write(tmp_path)
    broad, tight = load_splits("cfq", tmp_path, "test")
    scored = [(broad, graded_split_metrics(broad, _ranking(broad, [{"c1": 0.2, "c2": 0.6, "c3": 0.0},
                                                                   {"c3": 0.5, "c1": 0.4, "c2": 0.0}]))),
              (tight, graded_split_metrics(tight, _ranking(tight, [{"c4": 0.9, "c1": 0.1, "c5": 0.0},
                                                                   {"c5": 0.3, "c1": 0.7, "c4": 0.0}])))]
    out = combine_graded(scored)
    # broad, one caption for both queries: .6 c2 (acc -1/2) -, .5 c3 (1) +, .4 c1 (-1) -, .2 c1 (1) +.
    # accurate_0 AP: (1/2 + 2/4) / 2 = 1/2. tight: "add a belt" c4 + first: 1; "in blue" c1 - first: 1/2.
    broad_map, tight_map = 1 / 2, (1 + 1 / 2) / 2
    assert out["broad_accurate_map"] == pytest.approx(100 * broad_map)
    assert out["tight_accurate_map"] == pytest.approx(100 * tight_map)
    # Weights: broad has query images q1 and q2, tight q1 and q3: 2 and 2.
    assert out["accurate_map"] == pytest.approx(100 * (2 * broad_map + 2 * tight_map) / 4)
    # nDCG: relevance int(3 (acc + sim + 2)): c1 of q1 int(10.5) = 10, c2 int(4.5) = 4, c3 12, c1 of q2 0.
    # By score: 4 (.6), 12 (.5), 0 (.4), 10 (.2); ideal 12, 10, 4, 0.
    red = (4 + 12 / LOG2(3) + 0 + 10 / LOG2(5)) / (12 + 10 / LOG2(3) + 4 / LOG2(4))
    belt = 1.0  # 12 (c4, .9) before 3 (c1, .1): ideal order
    blue = (0 + 12 / LOG2(3)) / 12  # c1 (0) at .7 before c5 (12) at .3
    assert out["ndcg"] == pytest.approx(100 * (red + belt + blue) / 3)


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.joinpath("judgments.tsv").write_text(HEADER.replace("\tsimilar", "") + "\n", encoding="utf-8"),
     "judgments.tsv: no column 'similar' in the header"),
    (lambda b: b.joinpath("judgments.tsv").write_text(
        "\n".join([HEADER, LINES[0], "w1\tbroad\tq1\tmake it red\tc1\tYes"]) + "\n", encoding="utf-8"),
     "judgments.tsv:3: 6 tab-separated fields, the header has 7"),
    (lambda b: b.joinpath("judgments.tsv").write_text(
        "\n".join([HEADER, LINES[0].replace("Yes", "maybe")]) + "\n", encoding="utf-8"),
     "judgments.tsv:2: column 'accurate' is 'maybe'"),
    (lambda b: b.joinpath("judgments.tsv").write_text(
        "\n".join([HEADER, LINES[0], LINES[1].replace("make it red", "")]) + "\n", encoding="utf-8"),
     "judgments.tsv:3: column 'caption' is empty"),
    (lambda b: b.joinpath("judgments.tsv").write_text(HEADER + "\n", encoding="utf-8"),
     "judgments.tsv: no judgements below the header"),
    (lambda b: b.joinpath("judgments.tsv").unlink(), "judgments.tsv: CFQ judgements file not found"),
    (lambda b: b.joinpath("equivalent_captions.json").unlink(),
     "equivalent_captions.json: CFQ paraphrase file not found"),
    (lambda b: b.joinpath("equivalent_captions.json").write_text('{"make it red": "turn it red"}'),
     "equivalent_captions.json: the paraphrases of 'make it red' should be a list of strings"),
    (lambda b: b.joinpath("equivalent_captions.json").write_text('{"a": ["x", "y"], "b": ["z"]}'),
     "equivalent_captions.json: 'b' has 1 paraphrases, fewer than the 2 of the first caption"),
], ids=["column", "fields", "verdict", "empty", "no-rows", "no-file", "no-paraphrases", "paraphrase-type",
        "paraphrase-count"])
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, edit, message):
    base = _write(tmp_path)
    edit(base)
    with pytest.raises(CIRError, match=re.escape(message)):
        load_splits("cfq", tmp_path, "test")


def test_splits_and_folder(tmp_path):
    with pytest.raises(CIRError, match=re.escape(f"{tmp_path / 'cfq'}: CFQ folder not found")):
        load_splits("cfq", tmp_path, "test")
    _write(tmp_path)
    with pytest.raises(CIRError, match=re.escape("unknown CFQ split 'val' (CFQ has one split: test)")):
        load_splits("cfq", tmp_path, "val")
    with pytest.raises(CIRError, match="CFQ is an evaluation set"):
        load_splits("cfq", tmp_path, "train")
    with pytest.raises(CIRError, match="cfq: graded judgements .* have no place in the triplet layout"):
        convert("cfq", tmp_path, tmp_path / "out")


def test_missing_images_stop_or_are_skipped(tmp_path):
    base = _write(tmp_path)
    for name in ("c2", "q2", "c5"):
        (base / "images" / f"{name}.jpeg").unlink()
    with pytest.raises(CIRError, match=re.escape("image 'c2' listed in judgments.tsv is missing on disk; "
                                                 "2 more of the 8 images listed")):
        load_splits("cfq", tmp_path, "test")
    images = ImageCheck(skip=True)
    broad, tight = load_splits("cfq", tmp_path, "test", images=images)
    # c2 missing: broad/0 keeps only c1. q2 missing: broad/1 dropped. c5 missing: tight/1 keeps c1.
    assert broad.judgments == {"broad/0": {"c1": (1.0, 0.5)}}
    assert [q.qid for q in broad.queries] == ["broad/0"] and list(broad.gallery) == ["c1", "c3"]
    assert dict(broad.query_images) == {"q1": base.absolute() / "images" / "q1.jpeg"}
    assert tight.judgments == {"tight/0": {"c4": (1.0, 1.0), "c1": (-1.0, 0.0)}, "tight/1": {"c1": (-1.0, -1.0)}}
    assert images.dropped_queries == {"cfq/broad/test": 1}
    assert images.pruned_galleries == {"cfq/broad/test": 1, "cfq/tight/test": 1}
    # A query none of whose judged candidates is left is dropped too.
    (base / "images" / "c1.jpeg").unlink()
    images = ImageCheck(skip=True)
    broad, tight = load_splits("cfq", tmp_path, "test", images=images)
    assert broad.queries == [] and [q.qid for q in tight.queries] == ["tight/0"]
    assert images.dropped_queries == {"cfq/broad/test": 2, "cfq/tight/test": 1}
    assert "left out 4 missing and 0 unreadable images and the 3 queries" in images.summary()


def test_synthetic_verdicts_come_from_the_scenes():
    red = Obj("circle", "red", "small", 0)
    blue = red._replace(colour="blue")
    square = Obj("square", "green", "large", 4)
    edit = Edit(red, blue)  # recolour the circle
    assert satisfies((blue, square), edit) and not satisfies((red, square), edit)
    move = Edit(red, red._replace(cell=1))
    assert satisfies((red._replace(cell=1),), move) and not satisfies((red, red._replace(cell=1)), move)
    assert satisfies((square,), Edit(red, None))  # a removal: satisfied when the object is absent
    target = (blue, square)
    assert similarity_grade(target, target) == 2
    assert similarity_grade((blue, square, Obj("star", "pink", "small", 8)), target) == 1  # 2/3
    assert similarity_grade((blue,), target) == 1  # 1/2
    assert similarity_grade((red,), target) == 0


def test_synthetic_cfq_reads_back(tmp_path):
    summary = write_cfq(tmp_path / "a", n_queries=6, size=24)
    write_cfq(tmp_path / "b", n_queries=6, size=24)
    for name in ("judgments.tsv", "equivalent_captions.json"):
        assert (tmp_path / "a" / "cfq" / name).read_bytes() == (tmp_path / "b" / "cfq" / name).read_bytes()
    assert summary["images"] == 6 * 7 and summary["paraphrased_captions"] == 6
    splits = load_splits("cfq", tmp_path / "a", "test")
    assert [s.name for s in splits] == ["broad", "focused"]
    for split in splits:
        assert len(split.queries) == 3 and len(split.gallery) == 18 and len(split.query_images) == 3
        assert all(len(q.captions) == 3 for q in split.queries)
        judged = [grade for query in split.queries for grade in split.judgments[query.qid].values()]
        assert len(judged) == summary["subsets"][split.name]["candidates"] == 18
        assert all(round(3 * v) == 3 * v for grade in judged for v in grade)  # thirds: three judges
        # The target (each query's first candidate) is accurate and similar for every judge but noise.
        firsts = [next(iter(split.judgments[q.qid].values())) for q in split.queries]
        assert all(a >= 0 and s >= 0 for a, s in firsts)


def test_eval_prints_the_graded_table(tmp_path, cli):
    write_cfq(tmp_path, n_queries=4, size=24)
    result = cli("eval", "--dataset", "cfq", "--data-root", tmp_path, "--split", "test", "--model", "cir-tiny-vit",
                 "--num-workers", "0", "--output", tmp_path / "m.json")
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert lines[0].split() == ["acc", "mAP", "sim", "mAP", "nDCG", "acc", "AUC", "sim", "AUC"]
    assert [line.split()[0] for line in lines[1:]] == ["cfq", "broad", "focused"]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert list(metrics)[:3] == ["accurate_map", "similar_map", "ndcg"]
    assert float(lines[1].split()[1]) == pytest.approx(metrics["accurate_map"], abs=0.006)
    assert 0 <= metrics["ndcg"] <= 100 and "broad_accurate_0_auc" in metrics


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_training_on_cfq_is_refused_in_one_line(tmp_path, capsys, stage):
    from clip_cir.apps.train import finetune_main, train_combiner_main

    _write(tmp_path)
    main, args, prog = {"stage1": (finetune_main, stage1_args, "stage1/finetune.py"),
                        "stage2": (train_combiner_main, stage2_args, "stage2/train_combiner.py")}[stage]
    with pytest.raises(SystemExit) as exit_info:
        main(args(tmp_path, tmp_path / "runs", "cfq", "--dataset", "cfq"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: CFQ is an evaluation set"), err
    assert not (tmp_path / "runs" / "cfq").exists()
