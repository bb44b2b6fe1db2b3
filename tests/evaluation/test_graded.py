"""Graded metrics (CFQ) by hand, following yahoo/maaf's src/maaf/datasets/cfq.py as
src/maaf/actions/eval_cfq.py runs it: scikit-learn's ROC AUC (ties count half), average precision
(tied scores taken together) and nDCG (tied scores share their mean gain), MAAF's thresholds on the
mean votes, per-caption means leaving out one-class captions, relevance int(3 (acc + sim + 2)),
subsets weighted by distinct query images and nDCG pooled over captions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from clip_cir.data.types import CIRSplit, Query
from clip_cir.encoding.ranking import Ranking
from clip_cir.errors import CIRError
from clip_cir.evaluation.graded import (
    average_precision,
    combine_graded,
    format_graded,
    graded_split_metrics,
    ndcg,
    relevance,
    roc_auc,
)
from clip_cir.evaluation.metrics import format_metrics

LOG2 = math.log2


def test_roc_auc_counts_tied_pairs_half():
    labels = [True, False, True, False, False]
    scores = [0.9, 0.8, 0.8, 0.1, 0.3]
    # Positives 0.9 and 0.8 against negatives 0.8, 0.1, 0.3: 0.9 beats all three (3), 0.8 ties
    # one (0.5) and beats two (2): 5.5 of 6 pairs.
    assert roc_auc(labels, scores) == pytest.approx(5.5 / 6)
    assert roc_auc([True, True], [0.1, 0.2]) is None  # one class: left out by the caller
    assert roc_auc([False, False], [0.1, 0.2]) is None


def test_average_precision_takes_tied_scores_together():
    labels = [True, False, True, False, True]
    scores = [0.9, 0.9, 0.5, 0.4, 0.1]
    # Thresholds, best first, with 3 positives: 0.9 takes one positive and one negative
    # (recall +1/3 at precision 1/2), 0.5 a positive (+1/3 at 2/3), 0.4 a negative (+0),
    # 0.1 the last positive (+1/3 at 3/5).
    assert average_precision(labels, scores) == pytest.approx(1 / 3 * 1 / 2 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    assert average_precision([True, True], [0.3, 0.2]) is None
    assert average_precision([False, False, False], [0.3, 0.2, 0.1]) is None


def test_ndcg_averages_gains_over_tied_ranks():
    gains = [3, 0, 2, 1]
    scores = [0.2, 0.9, 0.9, 0.5]
    # Ranks 1-2 hold the tie at 0.9 (gains 0 and 2: mean 1 on both discounts), rank 3 gain 1,
    # rank 4 gain 3; discount of rank r is 1 / log2(r + 1).
    dcg = 1 * (1 / LOG2(2) + 1 / LOG2(3)) + 1 / LOG2(4) + 3 / LOG2(5)
    ideal = 3 / LOG2(2) + 2 / LOG2(3) + 1 / LOG2(4) + 0
    assert ndcg(gains, scores) == pytest.approx(dcg / ideal)
    assert ndcg([0, 0, 0], [0.3, 0.2, 0.1]) == 0.0  # nothing relevant scores 0
    assert ndcg([5], [0.1]) == 1.0


def test_relevance_truncates_three_times_the_shifted_sum():
    assert relevance(1, 1) == 12
    assert relevance(-1, -1) == 0
    assert relevance(-1, -1 / 3) == 2
    assert relevance(0.5, 0) == 7  # int(7.5): truncated, not rounded
    assert relevance(-0.5, 0) == 4  # int(4.5)


G = {f"g{i}": Path(f"/nowhere/g{i}.jpeg") for i in range(4)}


def _query(qid: str, reference: str, caption: str) -> Query:
    return Query(qid, reference, (caption,), (caption,), caption)


def _split(name: str, queries: list[Query], judgments: dict, gallery: dict = G) -> CIRSplit:
    return CIRSplit("cfq", name, "test", queries, dict(gallery), exclude_reference=False, recall_ks=(),
                    judgments=judgments)


def _ranking(rows: list[dict[str, float]], gallery: dict = G) -> Ranking:
    """Each query's scores by gallery name, ranked best first."""
    names = list(gallery)
    indices, scores = [], []
    for row in rows:
        order = sorted(row, key=lambda n: -row[n])
        indices.append([names.index(n) for n in order])
        scores.append([row[n] for n in order])
    return Ranking(indices=torch.tensor(indices), scores=torch.tensor(scores, dtype=torch.float64))


# Subset A: q0 and q1 share the caption "red" (one group), q1 and q2 share the image r1.
QUERIES_A = [_query("a/0", "r0", "red"), _query("a/1", "r1", "red"), _query("a/2", "r1", "blue")]
JUDGED_A = {
    "a/0": {"g0": (1.0, 1.0), "g1": (0.0, 0.0), "g2": (-1.0, -1 / 3)},
    "a/1": {"g3": (1 / 3, -1.0), "g0": (-1 / 3, 2 / 3)},
    "a/2": {"g1": (1.0, 1.0), "g2": (-1.0, -1.0)},
}
SCORES_A = [{"g0": 0.9, "g2": 0.7, "g1": 0.5, "g3": 0.1},
            {"g3": 0.8, "g0": 0.6, "g1": 0.3, "g2": 0.0},
            {"g2": 0.4, "g1": 0.2}]
SCORES_A_ROWS = [SCORES_A[0], SCORES_A[1], {**SCORES_A[2], "g0": 0.1, "g3": 0.0}]


def _subset_a():
    split = _split("a", QUERIES_A, JUDGED_A)
    return split, graded_split_metrics(split, _ranking(SCORES_A_ROWS))


def test_one_subset_by_hand():
    _, scores = _subset_a()
    m = scores.metrics
    # accurate_0: mean accurate > -0.01. Caption "blue": g2 (-1, score .4) then g1 (1, .2):
    # AP 1/2. Caption "red": .9 g0 (1) +, .8 g3 (1/3) +, .7 g2 (-1) -, .6 g0 (-1/3) -, .5 g1 (0) +:
    # AP (1/1 + 2/2 + 3/5) / 3. mAP: their mean.
    red, blue = (1 + 1 + 3 / 5) / 3, 1 / 2
    assert m["accurate_0_map"] == pytest.approx(100 * (red + blue) / 2)
    assert m["accurate_map"] == m["accurate_0_map"]
    # All 7 pairs at once: + .9, + .8, - .7, - .6, + .5, - .4, + .2.
    assert m["accurate_0_ap"] == pytest.approx(100 * (1 + 1 + 3 / 5 + 4 / 7) / 4)
    # AUC: .9 and .8 beat all 3 negatives, .5 beats .4, .2 none: 7 of 12 pairs.
    assert m["accurate_0_auc"] == pytest.approx(100 * 7 / 12)
    # Per caption AUC: blue 0 of 1; red: .9 and .8 beat both negatives (.7, .6), .5 neither: 4 of 6.
    assert m["accurate_0_mauc"] == pytest.approx(100 * (0 + 4 / 6) / 2)
    # accurate_m1_3 (> -0.34): -1/3 is now positive: red has one negative (.7), blue one (.4).
    # red: + .9, + .8, - .7, + .6, + .5: AP (1 + 1 + 3/4 + 4/5) / 4.
    assert m["accurate_m1_3_map"] == pytest.approx(100 * ((1 + 1 + 3 / 4 + 4 / 5) / 4 + 1 / 2) / 2)
    # similar_m2_3 (> -0.67): red: .9 g0 (1) +, .8 g3 (-1) -, .7 g2 (-1/3) +, .6 g0 (2/3) +, .5 g1 (0) +.
    red_sim = (1 + 2 / 3 + 3 / 4 + 4 / 5) / 4
    assert m["similar_map"] == pytest.approx(100 * (red_sim + 1 / 2) / 2)
    assert m["similar_m2_3_map"] == m["similar_map"]
    # accurate_1 (> 0.99): red has one positive (g0 at .9, first): AP 1; blue: g1 after g2: 1/2.
    assert m["accurate_1_map"] == pytest.approx(100 * (1 + 1 / 2) / 2)
    # accurate_m1 (> -1): blue's only negative is -1, red's is g2 (-1): red + .9 + .8 - .7 + .6 + .5
    assert m["accurate_m1_map"] == pytest.approx(100 * ((1 + 1 + 3 / 4 + 4 / 5) / 4 + 1 / 2) / 2)


def test_one_class_captions_are_left_out_of_the_means():
    _, scores = _subset_a()
    m = scores.metrics
    # similar_1 (> 0.99): red's positive g0 (sim 1, .9) first: AP 1; blue g1 (1) after g2: 1/2.
    assert m["similar_1_map"] == pytest.approx(100 * (1 + 1 / 2) / 2)
    # A split where one caption is a single class at some thresholds:
    split = _split("b", [_query("b/0", "r0", "red"), _query("b/1", "r1", "blue")],
                   {"b/0": {"g0": (1.0, 1.0), "g1": (-1.0, -1.0)}, "b/1": {"g2": (1.0, 1.0), "g3": (2 / 3, 1.0)}})
    m = graded_split_metrics(split, _ranking([{"g0": 0.2, "g1": 0.9, "g2": 0.5, "g3": 0.4},
                                              {"g0": 0.2, "g1": 0.9, "g2": 0.5, "g3": 0.4}])).metrics
    # accurate_0: "blue" is all positive (left out); "red": g1 (-) first, g0 (+): AP 1/2, AUC 0.
    assert m["accurate_0_map"] == pytest.approx(50.0)
    assert m["accurate_0_mauc"] == pytest.approx(0.0)
    # accurate_m1 (> -1): red's g1 (-1) is the only negative; blue still one class.
    assert m["accurate_m1_map"] == pytest.approx(50.0)
    # accurate_1 (> 0.99): blue has g2 (1) + at .5 before g3 (2/3) - at .4: AP 1; red: 1/2.
    assert m["accurate_1_map"] == pytest.approx(100 * (1 + 1 / 2) / 2)


def test_a_subset_of_one_class_has_no_all_pairs_auc():
    split = _split("c", [_query("c/0", "r0", "red")], {"c/0": {"g0": (1.0, 1.0), "g1": (1.0, 0.0)}})
    m = graded_split_metrics(split, _ranking([{"g0": 0.3, "g1": 0.1, "g2": 0.0, "g3": 0.0}])).metrics
    assert math.isnan(m["accurate_0_auc"]) and math.isnan(m["accurate_0_ap"])
    assert math.isnan(m["accurate_0_mauc"]) and math.isnan(m["accurate_map"])  # no caption with two classes


def test_ndcg_per_caption_by_hand():
    _, scores = _subset_a()
    # Relevance int(3 (acc + sim + 2)): a/0: g0 12, g1 6, g2 2; a/1: g3 4, g0 7; a/2: g1 12, g2 0.
    # blue: g2 (0) at .4 ranks first, g1 (12) second: 12 / log2(3) of an ideal 12.
    blue = (12 / LOG2(3)) / 12
    # red by score: 12 (.9), 4 (.8), 2 (.7), 7 (.6), 6 (.5); ideal 12, 7, 6, 4, 2.
    red = (12 + 4 / LOG2(3) + 2 / LOG2(4) + 7 / LOG2(5) + 6 / LOG2(6)) / \
        (12 + 7 / LOG2(3) + 6 / LOG2(4) + 4 / LOG2(5) + 2 / LOG2(6))
    assert scores.caption_ndcg["ndcg"] == pytest.approx({"blue": 100 * blue, "red": 100 * red})
    assert scores.metrics["ndcg"] == pytest.approx(100 * (blue + red) / 2)
    # Exponential gains 2^rel - 1.
    exp_blue = ((2 ** 12 - 1) / LOG2(3)) / (2 ** 12 - 1)
    assert scores.caption_ndcg["exp_ndcg"]["blue"] == pytest.approx(100 * exp_blue)
    assert scores.weight == 2  # images r0 and r1: three queries, two distinct query images


def test_subsets_weighted_by_query_images_and_ndcg_pooled_by_caption():
    split_a, a = _subset_a()
    # Subset B: one image (r5), two captions: weight 1. Its "red" shares the caption with A.
    split_b = _split("b", [_query("b/0", "r5", "red"), _query("b/1", "r5", "green")],
                     {"b/0": {"g0": (1.0, 1.0), "g1": (-1.0, -1.0)}, "b/1": {"g2": (-1.0, 0.0), "g3": (1.0, 0.0)}})
    b = graded_split_metrics(split_b, _ranking([{"g1": 0.9, "g0": 0.8, "g2": 0.0, "g3": 0.0},
                                                {"g2": 0.7, "g3": 0.6, "g0": 0.0, "g1": 0.0}]))
    # B's accurate_0: red: g1 (-) then g0 (+): 1/2; green: g2 (-) then g3 (+): 1/2.
    assert b.metrics["accurate_map"] == pytest.approx(50.0)
    out = combine_graded([(split_a, a), (split_b, b)])
    # Threshold metrics: weights 2 (A) and 1 (B).
    expected = (2 * a.metrics["accurate_0_map"] + 1 * 50.0) / 3
    assert out["accurate_map"] == pytest.approx(expected)
    assert out["accurate_0_map"] == out["accurate_map"]
    assert out["similar_m2_3_auc"] == pytest.approx((2 * a.metrics["similar_m2_3_auc"]
                                                     + b.metrics["similar_m2_3_auc"]) / 3)
    # nDCG: captions pooled across subsets, a shared caption's values summed, then the mean.
    # B red: relevances 12 (g0, .8) and 0 (g1, .9): 12 / log2(3) of 12. B green: 3 (g2 at .7), 9 (g3 at .6).
    b_red = 100 / LOG2(3)
    b_green = 100 * (3 + 9 / LOG2(3)) / (9 + 3 / LOG2(3))
    pooled = {"red": a.caption_ndcg["ndcg"]["red"] + b_red, "blue": a.caption_ndcg["ndcg"]["blue"], "green": b_green}
    assert out["ndcg"] == pytest.approx(sum(pooled.values()) / 3)
    # Each subset's own keys too, and the headline first.
    assert out["a_accurate_map"] == a.metrics["accurate_map"] and out["b_ndcg"] == pytest.approx((b_red + b_green) / 2)
    assert list(out)[:4] == ["accurate_map", "similar_map", "ndcg", "exp_ndcg"]


def test_a_ranking_that_misses_a_judged_candidate_is_refused():
    split = _split("a", QUERIES_A, JUDGED_A)
    short = Ranking(indices=torch.tensor([[0, 2], [3, 0], [2, 0]]), scores=torch.zeros(3, 2))
    with pytest.raises(CIRError, match="query a/0 does not reach its judged candidate 'g1'"):
        graded_split_metrics(split, short)


def test_table_of_the_headline_numbers():
    split_a, a = _subset_a()
    out = combine_graded([(split_a, a)])
    table = format_metrics(out, label="cfq")
    assert table == format_graded(out, "cfq")
    lines = table.splitlines()
    assert lines[0].split() == ["acc", "mAP", "sim", "mAP", "nDCG", "acc", "AUC", "sim", "AUC"]
    assert lines[1].split()[0] == "cfq" and lines[2].split()[0] == "a"
    assert float(lines[1].split()[1]) == pytest.approx(round(out["accurate_map"], 2))
    assert float(lines[2].split()[3]) == pytest.approx(round(out["a_ndcg"], 2))


def test_headline_thresholds_are_maafs_primary_ones():
    """accurate mAP at "accurate_0" (mean > -0.01) and similar mAP at "similar_-2/3" (mean > -0.67),
    on one caption whose seven candidates take every third from -1 to 1, worst scored best."""
    gallery = {f"k{k}": Path(f"/nowhere/k{k}.jpeg") for k in range(7)}
    means = {f"k{k}": (-1 + k / 3, -1 + k / 3) for k in range(7)}
    split = _split("t", [_query("t/0", "r0", "any")], {"t/0": means}, gallery)
    m = graded_split_metrics(split, _ranking([{f"k{k}": 1 - k / 10 for k in range(7)}], gallery)).metrics
    # similar > -0.67: k1..k6 (-2/3 counts), ranked after k0: precisions 1/2, 2/3, ..., 6/7.
    assert m["similar_map"] == pytest.approx(100 * sum(i / (i + 1) for i in range(1, 7)) / 6)
    # accurate > -0.01: k3..k6 (0 counts), ranked after three negatives: 1/4, 2/5, 3/6, 4/7.
    assert m["accurate_map"] == pytest.approx(100 * sum(i / (i + 3) for i in range(1, 5)) / 4)
    # Every threshold by its label: "m1_3" is > -0.34 (k2..k6), "2_3" is > 0.66 (k5, k6).
    assert m["similar_m1_3_map"] == pytest.approx(100 * sum(i / (i + 2) for i in range(1, 6)) / 5)
    assert m["accurate_2_3_map"] == pytest.approx(100 * sum(i / (i + 5) for i in range(1, 3)) / 2)
