"""`clip-cir` end to end: synth -> eval (CIRR, FashionIQ) -> submit-cirr -> score-cirr, rank,
and score-cirr's rejection of malformed submissions.

Recalls are checked against an independent computation from features of the same weights
(full sort per query, reference removed for CIRR only), and the scores of the written val
submission files must equal what `eval` reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO

from clip_cir.data import load_splits
from clip_cir.data.io import load_image
from clip_cir.evaluation.submission import check_submission
from clip_cir.models.transforms import build_transform

FAST = ["--num-workers", "0", "--batch-size", "256"]
CIRR_KEYS = ["recall_at1", "recall_at5", "recall_at10", "recall_at50",
             "recall_subset_at1", "recall_subset_at2", "recall_subset_at3"]


def _read(path: Path):
    return json.loads(Path(path).read_text())


def _summed(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return F.normalize(image + text, dim=-1)


def _independent_recalls(model, tokenizer, split, compose=_summed) -> dict[str, float]:
    """The method's recalls from scratch: raw features, `compose` (the sum, normalised), full argsort."""
    transform = build_transform("targetpad", 64)
    names = list(split.gallery)
    with torch.no_grad():
        images = torch.stack([transform(load_image(p)) for p in split.gallery.values()])
        gallery = model.encode_image(images)
        text = model.encode_text(tokenizer([q.eval_caption for q in split.queries]))
    ref = torch.tensor([names.index(q.reference) for q in split.queries])
    queries = compose(gallery[ref], text)
    scores = queries @ F.normalize(gallery, dim=-1).t()
    out = {}
    for qi, query in enumerate(split.queries):
        order = [names[i] for i in scores[qi].argsort(descending=True).tolist()]
        if split.exclude_reference:
            order.remove(query.reference)
        for k in split.recall_ks:
            out[f"recall_at{k}"] = out.get(f"recall_at{k}", 0) + (query.target in order[:k])
        if split.subset_ks:
            subset = [n for n in order if n in query.members]
            for k in split.subset_ks:
                out[f"recall_subset_at{k}"] = out.get(f"recall_subset_at{k}", 0) + (query.target in subset[:k])
    return {k: 100.0 * v / len(split.queries) for k, v in out.items()}


def test_end_to_end_synth_eval_submit_score(cli, tmp_path, tiny_clip, tiny_checkpoint):
    root = tmp_path / "synth"
    # 1. synth
    result = cli("synth", "--root", root, "--train", "4", "--val", "40", "--test", "40", "--size", "64", "--seed", "3")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["cirr"]["val"]["queries"] == 40 and summary["cirr"]["test1"]["queries"] == 40
    assert len(_read(root / "cirr_dataset/cirr/captions/cap.rc2.val.json")) == 40
    model = ["--pretrained", tiny_checkpoint]  # a published-format checkpoint, no model name

    # 2. eval CIRR: the documented keys, values equal to an independent computation
    result = cli("eval", "--dataset", "cirr", "--data-root", root, *model, *FAST, "--output", tmp_path / "cirr.json")
    assert result.code == 0, result.err
    metrics = _read(tmp_path / "cirr.json")
    assert list(metrics) == ["recall_at1", "recall_at5", "recall_at10", "recall_at50",
                             "soft_recall_at1", "soft_recall_at5", "soft_recall_at10", "soft_recall_at50",
                             "recall_subset_at1", "recall_subset_at2", "recall_subset_at3",
                             "soft_recall_subset_at1", "soft_recall_subset_at2", "soft_recall_subset_at3",
                             "recall_avg"]
    val = load_splits("cirr", root, "val")[0]
    tokenizer = __import__("open_clip").get_tokenizer("cir-tiny-vit")
    expected = _independent_recalls(tiny_clip, tokenizer, val)
    for key in CIRR_KEYS:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-3), key
    assert 0 < metrics["recall_at50"] < 100  # a score that can tell a broken ranking apart
    assert metrics["recall_avg"] == pytest.approx((expected["recall_at5"] + expected["recall_subset_at1"]) / 2,
                                                  abs=1e-3)
    table = result.out.splitlines()
    assert table[1].split()[0] == "cirr" and table[1].split()[1] == f"{metrics['recall_at1']:.2f}"

    # 3. eval FashionIQ: per-category keys and averages, the reference not removed
    result = cli("eval", "--dataset", "fashioniq", "--data-root", root, *model, *FAST,
                 "--output", tmp_path / "fiq.json")
    assert result.code == 0, result.err
    fiq = _read(tmp_path / "fiq.json")
    assert sorted(fiq) == sorted([f"{c}_recall_at{k}" for c in ("dress", "shirt", "toptee") for k in (10, 50)]
                                 + ["average_recall_at10", "average_recall_at50"])
    for category in ("dress", "shirt", "toptee"):
        split = load_splits("fashioniq", root, "val", [category])[0]
        expected = _independent_recalls(tiny_clip, tokenizer, split)
        for k in (10, 50):
            assert fiq[f"{category}_recall_at{k}"] == pytest.approx(expected[f"recall_at{k}"], abs=1e-3)
    for k in (10, 50):
        mean = sum(fiq[f"{c}_recall_at{k}"] for c in ("dress", "shirt", "toptee")) / 3
        assert fiq[f"average_recall_at{k}"] == pytest.approx(mean, abs=1e-3)

    # 4. submit-cirr --split val, then score both files: the same numbers as eval
    out = tmp_path / "submissions"
    result = cli("submit-cirr", "--data-root", root, "--split", "val", "--name", "tiny", "--output-dir", out,
                 *model, *FAST)
    assert result.code == 0, result.err
    recall_file, subset_file = out / "recall_submission_tiny.json", out / "recall_subset_submission_tiny.json"
    assert sorted(p.name for p in out.iterdir()) == sorted([recall_file.name, subset_file.name])
    assert result.out.split() == [str(recall_file), str(subset_file)]
    for path, metric in ((recall_file, "recall"), (subset_file, "recall_subset")):
        result = cli("score-cirr", "--data-root", root, "--submission", path, "--output", tmp_path / f"{metric}.json")
        assert result.code == 0, result.err
        scores = _read(tmp_path / f"{metric}.json")
        ks = (1, 5, 10, 50) if metric == "recall" else (1, 2, 3)
        assert sorted(scores) == sorted([f"{metric}_at{k}" for k in ks] + [f"soft_{metric}_at{k}" for k in ks])
        for key, value in scores.items():
            assert value == metrics[key], key

    # 5. submit-cirr for test1: files the server's rules accept
    result = cli("submit-cirr", "--data-root", root, "--name", "test", "--output-dir", out, *model, *FAST)
    assert result.code == 0, result.err
    test1 = load_splits("cirr", root, "test1")[0]
    recall = _read(out / "recall_submission_test.json")
    subset = _read(out / "recall_subset_submission_test.json")
    assert check_submission(recall, test1) == "recall" and check_submission(subset, test1) == "recall_subset"
    assert recall["version"] == subset["version"] == "rc2"
    assert set(recall) - {"version", "metric"} == {q.qid for q in test1.queries}
    for query in test1.queries:
        assert len(recall[query.qid]) == 50 and query.reference not in recall[query.qid]
        assert len(subset[query.qid]) == 3
        assert set(subset[query.qid]) <= set(query.members) - {query.reference}
    # score-cirr refuses to score test1: no ground truth
    result = cli("score-cirr", "--data-root", root, "--submission", out / "recall_submission_test.json",
                 "--split", "test1")
    assert result.code == 2 and "has no ground truth to score against" in result.err


def _geodesic(image: torch.Tensor, text: torch.Tensor, alpha: float) -> torch.Tensor:
    """Slerp written with angles: from the unit image u, turn by αθ towards the caption, along the
    unit vector w of the caption's part orthogonal to u: cos(αθ)·u + sin(αθ)·w."""
    u, t = F.normalize(image.double(), dim=-1), F.normalize(text.double(), dim=-1)
    cos = (u * t).sum(-1, keepdim=True)
    theta = torch.arccos(cos)
    w = F.normalize(t - cos * u, dim=-1)
    return (torch.cos(alpha * theta) * u + torch.sin(alpha * theta) * w).float()


def test_eval_slerp_ends_at_the_image_and_the_caption_and_matches_its_formula(
        cli, synth_root, tiny_clip, tiny_checkpoint, tmp_path):
    """--slerp-alpha 0 scores exactly as --combining image; 1 as the caption alone; the default α
    as the geodesic point computed from scratch."""
    model = ["--model", "cir-tiny-vit", "--pretrained", tiny_checkpoint]

    def evaluate(name: str, *combining) -> dict[str, float]:
        result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, *model, *FAST, *combining,
                     "--output", tmp_path / f"{name}.json")
        assert result.code == 0, result.err
        return _read(tmp_path / f"{name}.json")

    image_only = evaluate("image", "--combining", "image")
    assert evaluate("slerp0", "--combining", "slerp", "--slerp-alpha", "0") == image_only
    val = load_splits("cirr", synth_root, "val")[0]
    tokenizer = __import__("open_clip").get_tokenizer("cir-tiny-vit")
    text_only = _independent_recalls(tiny_clip, tokenizer, val, lambda image, text: F.normalize(text, dim=-1))
    at_default = _independent_recalls(tiny_clip, tokenizer, val, lambda image, text: _geodesic(image, text, 0.8))
    summed = evaluate("sum")
    for name, expected, combining in (("slerp1", text_only, ["--slerp-alpha", "1"]), ("slerp", at_default, [])):
        metrics = evaluate(name, "--combining", "slerp", *combining)
        for key in CIRR_KEYS:
            assert metrics[key] == pytest.approx(expected[key], abs=1e-3), (name, key)
        assert metrics != image_only and metrics != summed, name


def test_slerp_alpha_outside_zero_one_stops_eval_with_one_line(cli, synth_root):
    result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, "--model", "cir-tiny-vit",
                 "--combining", "slerp", "--slerp-alpha", "1.5")
    assert result.code == 2
    assert result.error_lines == ["clip-cir: error: --slerp-alpha must be between 0 (the reference image alone) "
                                  "and 1 (the caption alone), got 1.5"] and "Traceback" not in result.err


def test_rank_records_slerp_and_its_alpha(cli, synth_root, tiny_checkpoint, tmp_path):
    output = tmp_path / "slerp_ranks.json"
    result = cli("rank", "--dataset", "cirr", "--data-root", synth_root, "--top-k", "3", "--model", "cir-tiny-vit",
                 "--pretrained", tiny_checkpoint, *FAST, "--combining", "slerp", "--slerp-alpha", "0.3",
                 "--output", output)
    assert result.code == 0, result.err
    ranking = _read(output)
    assert (ranking["combining"], ranking["slerp_alpha"]) == ("slerp", 0.3) and len(ranking["queries"]) == 60


def test_rank_fashioniq_test_writes_top_k(cli, synth_root, tiny_checkpoint, tmp_path):
    output = tmp_path / "ranks" / "fiq_test.json"
    result = cli("rank", "--dataset", "fashioniq", "--data-root", synth_root, "--split", "test", "--top-k", "7",
                 "--pretrained", tiny_checkpoint, *FAST, "--output", output)
    assert result.code == 0, result.err
    ranking = _read(output)
    assert (ranking["dataset"], ranking["split"], ranking["top_k"], ranking["combining"]) == \
        ("fashioniq", "test", 7, "sum")
    splits = load_splits("fashioniq", synth_root, "test")
    expected = [(s.name, q) for s in splits for q in s.queries]
    assert len(ranking["queries"]) == len(expected) == 60
    galleries = {s.name: set(s.gallery) for s in splits}
    for entry, (category, query) in zip(ranking["queries"], expected):
        assert (entry["qid"], entry["benchmark"], entry["reference"]) == (query.qid, category, query.reference)
        assert entry["caption"] == query.eval_caption and entry["target"] is None
        names = [r["name"] for r in entry["ranking"]]
        scores = [r["score"] for r in entry["ranking"]]
        assert len(names) == 7 == len(set(names)) and set(names) <= galleries[category]
        assert scores == sorted(scores, reverse=True)
    # FashionIQ keeps the reference in its ranking: with the sum of features it is usually first.
    firsts = sum(e["ranking"][0]["name"] == e["reference"] for e in ranking["queries"])
    assert firsts > 0
    assert f"rankings of 60 queries written to {output}" in result.out


def test_rank_cirr_removes_reference(cli, synth_root, tiny_checkpoint, tmp_path):
    output = tmp_path / "cirr_test1.json"
    result = cli("rank", "--dataset", "cirr", "--data-root", synth_root, "--split", "test1", "--top-k", "3",
                 "--pretrained", tiny_checkpoint, *FAST, "--output", output)
    assert result.code == 0, result.err
    queries = _read(output)["queries"]
    assert len(queries) == 60
    assert all(q["reference"] not in [r["name"] for r in q["ranking"]] for q in queries)


# --------------------------------------------------------------------- score-cirr rejections


@pytest.fixture(scope="module")
def valid_val_submissions(synth_root):
    """Well-formed val submissions built without a model: the recall list is the gallery in order
    minus the reference (target inserted first for even pairids), the subset list the first three
    of the image set minus the reference."""
    split = load_splits("cirr", synth_root, "val")[0]
    recall = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for query in split.queries:
        others = [n for n in split.gallery if n != query.reference]
        members = [m for m in query.members if m != query.reference]
        if int(query.qid) % 2 == 0:
            others = [query.target] + [n for n in others if n != query.target]
            members = [query.target] + [m for m in members if m != query.target]
        else:
            others = [n for n in others if n != query.target]
            members = [m for m in members if m != query.target]
        recall[query.qid] = others[:50]
        subset[query.qid] = members[:3]
    return split, recall, subset


def test_score_cirr_hand_built_submission(cli, synth_root, valid_val_submissions, tmp_path):
    split, recall, subset = valid_val_submissions
    for name, submission in (("recall", recall), ("recall_subset", subset)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(submission))
        result = cli("score-cirr", "--data-root", synth_root, "--submission", path, "--output", tmp_path / "s.json")
        assert result.code == 0, result.err
        scores = _read(tmp_path / "s.json")
        # Even pairids list the target first, odd ones never list it: 50% at every K.
        even = sum(int(q.qid) % 2 == 0 for q in split.queries) / len(split.queries) * 100
        ks = (1, 5, 10, 50) if name == "recall" else (1, 2, 3)
        for k in ks:
            assert scores[f"{name}_at{k}"] == pytest.approx(even, abs=1e-3)
            soft = [max([max(q.target_soft.get(n, 0.0), 0.0) for n in submission[q.qid][:k]])
                    for q in split.queries]
            assert scores[f"soft_{name}_at{k}"] == pytest.approx(100 * sum(soft) / len(soft), abs=1e-3)


def _dup_pairid(recall, subset):
    text = json.dumps(recall)
    first = next(k for k in recall if k not in ("version", "metric"))
    return text[:-1] + f', "{first}": {json.dumps(recall[first])}}}', f"pairid {first} appears more than once"


def _missing_pairid(recall, subset):
    recall = dict(recall)
    del recall["7"]
    return json.dumps(recall), "1 pairids of val missing (first: 7)"


def _reference_listed(recall, subset, split):
    recall = dict(recall)
    query = split.queries[3]
    recall[query.qid] = [query.reference] + recall[query.qid][:-1]
    return json.dumps(recall), f"pairid {query.qid}: lists its own reference image {query.reference}"


def _subset_outside_group(recall, subset, split):
    subset = dict(subset)
    query = split.queries[2]
    outsider = next(n for n in split.gallery if n not in query.members)
    subset[query.qid] = subset[query.qid][:2] + [outsider]
    return json.dumps(subset), f"pairid {query.qid}: '{outsider}' is not in the query's image set"


def _wrong_version(recall, subset):
    return json.dumps({**recall, "version": "rc1"}), "'version' must be \"rc2\", got 'rc1'"


def _wrong_metric(recall, subset):
    return json.dumps({**recall, "metric": "precision"}), "'metric' must be 'recall or recall_subset', got 'precision'"


def _malformed(recall, subset):
    return json.dumps(recall)[:-20], "malformed JSON"


def _short_list(recall, subset):
    recall = dict(recall)
    recall["5"] = recall["5"][:49]
    return json.dumps(recall), "pairid 5: 49 names, expected 50"


def _repeated_name(recall, subset):
    recall = dict(recall)
    recall["4"] = recall["4"][:49] + recall["4"][:1]
    return json.dumps(recall), "pairid 4: names are not unique"


def _unknown_pairid(recall, subset):
    return json.dumps({**recall, "99999": recall["0"]}), "pairid 99999 is not a val query"


def _not_a_val_image(recall, subset):
    recall = dict(recall)
    recall["6"] = recall["6"][:49] + ["train-0-0-img0"]
    return json.dumps(recall), "pairid 6: 'train-0-0-img0' is not a val image"


def _not_an_object(recall, subset):
    return json.dumps([recall]), "a submission is a JSON object"


SUBMISSION_CASES = [_dup_pairid, _missing_pairid, _reference_listed, _subset_outside_group, _wrong_version,
                    _wrong_metric, _malformed, _short_list, _repeated_name, _unknown_pairid, _not_a_val_image,
                    _not_an_object]


@pytest.mark.parametrize("case", SUBMISSION_CASES, ids=[c.__name__.lstrip("_") for c in SUBMISSION_CASES])
def test_score_cirr_rejects_malformed_submission(case, cli, synth_root, valid_val_submissions, tmp_path):
    split, recall, subset = valid_val_submissions
    import inspect
    args = (recall, subset, split) if "split" in inspect.signature(case).parameters else (recall, subset)
    text, reason = case(*args)
    path = tmp_path / "submission.json"
    path.write_text(text)
    result = cli("score-cirr", "--data-root", synth_root, "--submission", path, "--output", tmp_path / "scores.json")
    assert result.code == 2 and "Traceback" not in result.err
    assert len(result.error_lines) == 1 and result.err.strip().splitlines()[-1] == result.error_lines[0]
    assert result.error_lines[0].startswith(f"clip-cir: error: {path}: ")
    assert reason in result.error_lines[0]
    assert not (tmp_path / "scores.json").exists()


HELP_SCRIPT = """
import contextlib, io, sys
from clip_cir import params
from clip_cir.apps.cli import COMMANDS, main
for argv in (["--help"], *([name, "--help"] for name in [*COMMANDS, *params.PROGRAMS])):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0 and "usage: clip-cir" in out.getvalue(), (argv, e.code)
for build in (params.cli_parser, params.demo_parser, params.report_parser, params.stage1_parser,
              params.stage2_parser, params.pretrain_parser, params.quickstart_parser, params.zero_shot_parser):
    build().format_help()
print(" ".join(sorted(m for m in ("numpy", "pandas", "torch", "open_clip") if m in sys.modules)) or "none")
"""


def test_help_imports_no_numerical_package():
    """`clip-cir --help` and every program's parser and --help, in a fresh process: building the
    parsers imports neither pandas nor numpy nor torch (they cost most of a second)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", HELP_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["none"]
