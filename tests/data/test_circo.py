"""CIRCO: mAP@K and Recall@K by hand, the reader, chunked ranking, submit-circo /
score-circo against eval, the feature cache and the demo on a CIRCO gallery.

Hand-computed values follow the official evaluation (miccunifi/CIRCO src/evaluation.py):
AP@K = sum_{i<=K} precision@i * rel_i / min(K, len(gt_img_ids)), rel_i = "item i is in
gt_img_ids" (np.isin), the divisor counts gt_img_ids as listed (a repeated id counts twice);
Recall@K counts target_img_id only; the reference is not removed from the ranking.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_cir.data import load_splits
from clip_cir.data.types import CIRSplit, Query, ReaderOptions
from clip_cir.encoding.ranking import Ranking, rank_gallery, rank_split
from clip_cir.evaluation.metrics import (
    average_precisions,
    format_metrics,
    mean_average_precision,
    split_metrics,
)

MODEL = ["--num-workers", "0", "--batch-size", "256"]
G = {f"{i}": Path(f"/nowhere/{i:012d}.jpg") for i in range(100, 130)}  # gallery names "100".."129"
IDX = {name: i for i, name in enumerate(G)}  # "100" -> 0, ..., "129" -> 29


# ----------------------------------------------------------------------------- mAP@K, by hand


def test_average_precision_by_hand():
    ranked = torch.tensor([
        [1, 5, 2, 6, 7, 3, 8, 9, 10, 11],     # q0: GTs {1,2,3}: hits at ranks 1, 3, 6
        [9, 4, 8, 7, 6, 5, 3, 2, 1, 0],       # q1: one GT {4} (fewer GTs than K): hit at rank 2
        [8, 0, 1, 2, 3, 4, 5, 6, 7, 9],       # q2: gt_img_ids [8, 8] (listed twice): hit at rank 1
        [0, 1, 2, 3, 4, 20, 5, 6, 7, 21],     # q3: 12 GTs 0..11 (more than K=5): ranks 1-5, 7-9
        [12, -1, -1, -1, -1, -1, -1, -1, -1, -1],  # q4: a short, padded ranking; GT {12} first
    ])
    gts = [[1, 2, 3], [4], [8, 8], list(range(12)), [12, 13]]
    # K=5: q0 (1/1 + 2/3)/3 = 5/9; q1 (1/2)/1; q2 1/min(5,2) = 1/2 (the repeat counts in the divisor);
    #      q3 5 hits of 5: 5/5 = 1; q4 (1/1)/2.
    assert average_precisions(ranked, gts, 5).tolist() == pytest.approx([5 / 9, 1 / 2, 1 / 2, 1.0, 1 / 2])
    # K=10: q0 adds 3/6: (1 + 2/3 + 1/2)/3 = 13/18; q3: ranks 1-5 precision 1, ranks 7,8,9 precisions
    #       6/7, 7/8, 8/9, divided by min(10, 12) = 10.
    q3 = (5 + 6 / 7 + 7 / 8 + 8 / 9) / 10
    assert average_precisions(ranked, gts, 10).tolist() == pytest.approx([13 / 18, 1 / 2, 1 / 2, q3, 1 / 2])
    # K=50 > ranking length: only what the ranking has counts; q3 now divides by min(50, 12) = 12.
    q3_50 = (5 + 6 / 7 + 7 / 8 + 8 / 9) / 12
    assert average_precisions(ranked, gts, 50).tolist() == pytest.approx([13 / 18, 1 / 2, 1 / 2, q3_50, 1 / 2])
    assert mean_average_precision(ranked, gts, 5) == pytest.approx(100 * (5 / 9 + 1 / 2 + 1 / 2 + 1 + 1 / 2) / 5)
    assert mean_average_precision(ranked[:0], [], 5) == 0.0


def test_gt_listed_twice_counts_twice_in_the_divisor_only():
    # [8] and [8, 8] mark the same single item relevant; only the divisor differs (1 vs 2).
    ranked = torch.tensor([[8, 1, 2, 3, 4]])
    assert average_precisions(ranked, [[8]], 5).item() == pytest.approx(1.0)
    assert average_precisions(ranked, [[8, 8]], 5).item() == pytest.approx(0.5)
    assert average_precisions(ranked, [[8, 8]], 1).item() == pytest.approx(1.0)  # min(1, 2) = 1


def _circo_split(queries: list[Query]) -> CIRSplit:
    return CIRSplit("circo", "circo", "val", queries, dict(G), exclude_reference=False, recall_ks=(5, 10, 25, 50),
                    map_ks=(5, 10, 25, 50), image_ids={name: int(name) for name in G})


def _q(qid: str, reference: str, gts: list[str], aspects: tuple[str, ...] = ()) -> Query:
    return Query(qid, reference, ("c",), ("c",), "c", target=gts[0], ground_truths=tuple(gts), aspects=aspects)


def _ranked(*rows: list[str]) -> Ranking:
    """Rankings given as gallery names, padded to the whole gallery with the rest in order."""
    full = []
    for row in rows:
        rest = [n for n in G if n not in row]
        full.append([IDX[n] for n in row + rest])
    indices = torch.tensor(full)
    return Ranking(indices=indices, scores=torch.zeros(indices.shape))


def test_split_metrics_recall_counts_target_only_and_aspects_by_hand():
    # q0: target 103 at rank 6, its other GT 104 at rank 1 -> R@5 miss, R@10 hit; AP@5 = 1/2; AP@10 = (1 + 2/6)/2.
    # q1: target 110 at rank 1, the only GT -> R@5 hit; AP@K = 1.
    # q2: GTs 120, 121, 122 (target 120), none in the top 50 -> 0 everywhere.
    split = _circo_split([_q("0", "100", ["103", "104"], ("addition",)),
                          _q("1", "101", ["110"], ("addition", "negation")),
                          _q("2", "102", ["120", "121", "122"], ("negation",))])
    ranking = _ranked(["104", "100", "101", "102", "105", "103"],
                      ["110"],
                      [n for n in G if n not in ("120", "121", "122")])
    metrics = split_metrics(split, ranking)
    assert metrics["recall_at5"] == pytest.approx(100 / 3)
    assert metrics["recall_at10"] == pytest.approx(200 / 3)
    ap10 = [(1 + 2 / 6) / 2, 1.0, 0.0]
    assert metrics["map_at5"] == pytest.approx(100 * (1 / 2 + 1 + 0) / 3)
    assert metrics["map_at10"] == pytest.approx(100 * sum(ap10) / 3)
    assert metrics["aspect_addition_map_at10"] == pytest.approx(100 * (ap10[0] + ap10[1]) / 2)
    assert metrics["aspect_negation_map_at10"] == pytest.approx(100 * (ap10[1] + ap10[2]) / 2)
    assert [k for k in metrics if k.startswith("aspect_")] == ["aspect_addition_map_at10", "aspect_negation_map_at10"]
    table = format_metrics(metrics, label="circo")
    header, main_row = table.splitlines()[:2]
    assert header.split() == ["mAP@5", "mAP@10", "mAP@25", "mAP@50", "R@5", "R@10", "R@25", "R@50"]
    assert main_row.split()[0] == "circo" and "aspect addition" in table and "aspect negation" in table


def test_split_metrics_without_aspects_reports_none():
    split = _circo_split([_q("0", "100", ["101"])])
    metrics = split_metrics(split, _ranked(["101"]))
    assert metrics["map_at50"] == pytest.approx(100.0) and metrics["recall_at5"] == pytest.approx(100.0)
    assert not any(k.startswith("aspect_") for k in metrics)


# ----------------------------------------------------------------------------- ranking


def test_chunked_ranking_equals_unchunked():
    gen = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(37, 16, generator=gen), dim=-1)
    gallery = torch.nn.functional.normalize(torch.randn(1000, 16, generator=gen), dim=-1)
    full = queries @ gallery.t()
    expected = full.topk(50, dim=1)
    for q_chunk, g_chunk in ((37, 1000), (5, 64), (1, 7), (64, 3)):
        scores, indices = rank_gallery(queries, gallery, 50, chunk_size=q_chunk, gallery_chunk_size=g_chunk)
        assert torch.equal(indices, expected.indices), (q_chunk, g_chunk)
        assert torch.allclose(scores, expected.values, atol=1e-6)
    # With one excluded item per query (the CIRR protocol), in any chunk.
    exclude = expected.indices[:, 0].clone()
    exclude[::3] = -1
    masked = full.clone()
    masked[torch.arange(37)[exclude >= 0], exclude[exclude >= 0]] = float("-inf")
    want = masked.topk(50, dim=1).indices
    for q_chunk, g_chunk in ((37, 1000), (4, 50), (3, 9)):
        _, indices = rank_gallery(queries, gallery, 50, exclude, chunk_size=q_chunk, gallery_chunk_size=g_chunk)
        assert torch.equal(indices, want), (q_chunk, g_chunk)
    # k larger than a gallery block, and a gallery smaller than k.
    _, indices = rank_gallery(queries, gallery[:30], 50, chunk_size=8, gallery_chunk_size=4)
    assert torch.equal(indices, (queries @ gallery[:30].t()).topk(30, dim=1).indices)


def test_faiss_flat_index_ranks_a_split_like_exact_search():
    pytest.importorskip("faiss")
    from clip_cir.encoding.search import build_index

    gen = torch.Generator().manual_seed(1)
    gallery = torch.nn.functional.normalize(torch.randn(len(G), 8, generator=gen), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    split = _circo_split([_q(str(i), "100", ["101"]) for i in range(3)])
    exact = rank_split(split, queries, gallery, 10)
    flat = rank_split(split, queries, gallery, 10, build_index(gallery, "faiss", index="flat"))
    assert torch.equal(exact.indices, flat.indices)


# ----------------------------------------------------------------------------- reader


def test_reader_on_synthetic_circo(synth_root):
    raw = json.loads((synth_root / "CIRCO" / "annotations" / "val.json").read_text())
    split = load_splits("circo", synth_root, "val")[0]
    assert split.exclude_reference is False and split.map_ks == (5, 10, 25, 50) and split.recall_ks == (5, 10, 25, 50)
    assert [q.qid for q in split.queries] == [str(e["id"]) for e in raw]
    for query, entry in zip(split.queries, raw):
        assert query.reference == str(entry["reference_img_id"])
        assert query.ground_truths == tuple(str(g) for g in entry["gt_img_ids"])
        assert query.target == query.ground_truths[0] and query.eval_caption == entry["relative_caption"]
        assert query.aspects == tuple(entry["semantic_aspects"])
    assert all(split.image_ids[name] == int(name) for name in split.gallery)
    assert all(path.name == f"{int(name):012d}.jpg" for name, path in split.gallery.items())
    concept = load_splits("circo", synth_root, "val", options=ReaderOptions(circo_query_text="concept-and-caption"))[0]
    assert concept.queries[0].eval_caption == (f"a photo of {raw[0]['shared_concept']} that "
                                               f"{raw[0]['relative_caption']}")
    test = load_splits("circo", synth_root, "test")[0]
    assert not test.has_targets and test.map_ks == () and list(test.gallery) == list(split.gallery)


# ----------------------------------------------------------------------------- commands


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_submit_val_then_score_equals_eval_and_gallery_is_encoded_once(cli, synth_root, tiny_checkpoint, tmp_path):
    from clip_cir.encoding.extraction import encode_counts

    model = ["--pretrained", tiny_checkpoint, *MODEL, "--cache-dir", tmp_path / "cache"]
    before = encode_counts["image"]
    result = cli("eval", "--dataset", "circo", "--data-root", synth_root, *model, "--output", tmp_path / "eval.json")
    assert result.code == 0, result.err
    split = load_splits("circo", synth_root, "val")[0]
    assert encode_counts["image"] - before == len(split.gallery)
    metrics = _read(tmp_path / "eval.json")
    assert {f"map_at{k}" for k in (5, 10, 25, 50)} | {f"recall_at{k}" for k in (5, 10, 25, 50)} <= set(metrics)
    assert {k for k in metrics if k.startswith("aspect_")} == {
        f"aspect_{a}_map_at10" for q in split.queries for a in q.aspects}
    assert "mAP@10" in result.out and "R@50" in result.out

    out = tmp_path / "sub"
    result = cli("submit-circo", "--data-root", synth_root, "--split", "val", "--name", "tiny", "--output-dir", out,
                 *model)
    assert result.code == 0, result.err
    assert encode_counts["image"] - before == len(split.gallery)  # the gallery came from the feature cache
    path = out / "circo_val_submission_tiny.json"
    assert result.out.strip() == str(path)
    text = path.read_text()
    assert "\n" not in text.rstrip("\n") and ": " not in text  # compact
    submission = json.loads(text)
    assert list(submission) == [q.qid for q in split.queries]
    assert all(len(v) == 50 and len(set(v)) == 50 and all(type(i) is int for i in v) for v in submission.values())

    result = cli("score-circo", "--data-root", synth_root, "--submission", path, "--output", tmp_path / "score.json")
    assert result.code == 0, result.err
    assert _read(tmp_path / "score.json") == metrics  # the same numbers, to the last rounded digit


def test_submit_circo_test_keeps_the_reference_in_the_ranking(cli, synth_root, tiny_checkpoint, tmp_path):
    """With the reference image alone as the query, every query's first result is its own
    reference: CIRCO (like SEARLE's submission code) does not remove it."""
    out = tmp_path / "sub"
    result = cli("submit-circo", "--data-root", synth_root, "--name", "img", "--output-dir", out, "--combining",
                 "image", "--pretrained", tiny_checkpoint, *MODEL)
    assert result.code == 0, result.err
    submission = _read(out / "circo_test_submission_img.json")
    test = load_splits("circo", synth_root, "test")[0]
    assert list(submission) == [q.qid for q in test.queries]
    assert all(submission[q.qid][0] == int(q.reference) for q in test.queries)
    result = cli("score-circo", "--data-root", synth_root, "--submission", out / "circo_test_submission_img.json",
                 "--split", "test")
    assert result.code == 2 and "has no ground truth to score against (use val)" in result.err


@pytest.fixture(scope="module")
def val_lists(synth_root):
    """A hand-built val submission: each query's ground truths in REVERSE order (target last),
    then other gallery ids. Every ground truth is in the top ranks, so AP@K = 1 for every K
    (a repeated listing aside: synthetic ids never repeat); the target sits at rank len(GTs), so
    Recall@K is the share of queries with at most K ground truths."""
    split = load_splits("circo", synth_root, "val")[0]
    submission = {}
    for q in split.queries:
        gts = [int(g) for g in reversed(q.ground_truths)]
        submission[q.qid] = gts + [split.image_ids[n] for n in split.gallery if split.image_ids[n] not in gts][
            :50 - len(gts)]
    return split, submission


def test_score_circo_hand_built_submission(cli, synth_root, val_lists, tmp_path):
    split, submission = val_lists
    path = tmp_path / "s.json"
    path.write_text(json.dumps(submission))
    result = cli("score-circo", "--data-root", synth_root, "--submission", path, "--output", tmp_path / "scores.json")
    assert result.code == 0, result.err
    scores = _read(tmp_path / "scores.json")
    n_gts = [len(q.ground_truths) for q in split.queries]
    assert len(set(n_gts)) > 1  # the synthetic world varies the number of ground truths
    for k in (5, 10, 25, 50):
        assert scores[f"map_at{k}"] == pytest.approx(100.0)
        assert scores[f"recall_at{k}"] == pytest.approx(100 * sum(n <= k for n in n_gts) / len(n_gts), abs=1e-3)


def _missing_id(sub, split):
    sub = dict(sub)
    del sub["3"]
    return sub, "1 query ids of val missing (first: 3)"


def _extra_id(sub, split):
    return {**sub, "9999": sub["0"]}, "query id 9999 is not a val query"


def _string_ids(sub, split):
    return {**sub, "2": [str(i) for i in sub["2"]]}, "query id 2: expected a list of integer image ids"


def _short_list(sub, split):
    return {**sub, "1": sub["1"][:49]}, "query id 1: 49 ids, expected 50"


def _repeated_id(sub, split):
    return {**sub, "4": sub["4"][:49] + sub["4"][:1]}, "query id 4: ids are not unique"


def _not_a_gallery_id(sub, split):
    return {**sub, "5": sub["5"][:49] + [999_999_999]}, "query id 5: 999999999 is not a val image"


def _bool_ids(sub, split):
    return {**sub, "0": [True] * 50}, "query id 0: expected a list of integer image ids"


SUBMISSION_CASES = [_missing_id, _extra_id, _string_ids, _short_list, _repeated_id, _not_a_gallery_id, _bool_ids]


@pytest.mark.parametrize("case", SUBMISSION_CASES, ids=[c.__name__.lstrip("_") for c in SUBMISSION_CASES])
def test_score_circo_rejects_malformed_submission(case, cli, synth_root, val_lists, tmp_path):
    split, submission = val_lists
    bad, reason = case(submission, split)
    _expect_rejection(cli, synth_root, tmp_path, json.dumps(bad), reason)


@pytest.mark.parametrize("text, reason", [
    ("[1, 2]", "a submission is a JSON object"),
    ('{"0": [1, 2', "malformed JSON"),
    ('{"0": [], "0": []}', "query id 0 appears more than once"),
])
def test_score_circo_rejects_malformed_files(text, reason, cli, synth_root, tmp_path):
    _expect_rejection(cli, synth_root, tmp_path, text, reason)


def _expect_rejection(cli, synth_root, tmp_path, text, reason):
    path = tmp_path / "submission.json"
    path.write_text(text)
    result = cli("score-circo", "--data-root", synth_root, "--submission", path, "--output", tmp_path / "scores.json")
    assert result.code == 2 and "Traceback" not in result.err
    assert len(result.error_lines) == 1 and result.error_lines[0].startswith(f"clip-cir: error: {path}: ")
    assert reason in result.error_lines[0], result.error_lines[0]
    assert not (tmp_path / "scores.json").exists()


# ----------------------------------------------------------------------------- demo


def test_demo_engine_serves_a_circo_gallery(synth_root, tiny_checkpoint, tmp_path):
    from clip_cir.apps.demo.engine import DemoEngine
    from clip_cir.encoding.extraction import FeatureCache
    from clip_cir.encoding.split_features import EncodeOptions
    from clip_cir.models.clip import load_clip
    from clip_cir.models.combiner import element_wise_sum

    clip = load_clip(None, str(tiny_checkpoint))
    encode = EncodeOptions(transform=clip.image_transform("targetpad", 1.25), image_cache=FeatureCache(tmp_path),
                           progress=False)
    splits = load_splits("circo", synth_root, "test")
    engine = DemoEngine.from_splits(clip, element_wise_sum, splits, encode, combining_name="sum")
    assert engine.info()["dataset"] == "circo" and engine.info()["gallery_size"] == len(splits[0].gallery)
    assert engine.info()["exclude_reference"] is False
    reference = splits[0].queries[0].reference
    result = engine.search("make it red", k=5, reference=reference)
    assert len(result.hits) == 5 and all(h.name in splits[0].gallery for h in result.hits)
