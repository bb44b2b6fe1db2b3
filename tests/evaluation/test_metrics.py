"""Ranking and metrics against hand-built rankings whose answers are worked out by hand."""

import math
from pathlib import Path

import pytest
import torch

from clip_cir.data.types import CIRSplit, Query
from clip_cir.encoding.ranking import (
    Ranking,
    rank_gallery,
    rank_split,
    rank_subsets,
    subset_candidates,
)
from clip_cir.encoding.split_features import SplitFeatures
from clip_cir.evaluation.evaluate import metrics_from_features
from clip_cir.evaluation.metrics import (
    combine_benchmarks,
    format_metrics,
    geometric_mean,
    harmonic_mean,
    recall_at_k,
    selection_scores,
    soft_recall_at_k,
    split_metrics,
)

NAMES = [f"g{i}" for i in range(10)]
GALLERY = {n: Path(f"/nowhere/{n}.png") for n in NAMES}

CIRR_KEYS = ["recall_at1", "recall_at5", "recall_at10", "recall_at50",
             "recall_subset_at1", "recall_subset_at2", "recall_subset_at3"]


def _cirr_split(recall_ks=(1, 2, 3, 5)) -> CIRSplit:
    """Two CIRR-like queries over g0..g9.

    q0: reference g0, target g1, soft {g1: 1, g2: 0.5, g3: -1}, set g0..g5.
    q1: reference g6, target g7, soft {g8: 0.5, g9: -1} (target_hard is not a soft key), set g6..g9, g0, g1.
    """
    q0 = Query("0", "g0", ("c0",), ("c0",), "c0", target="g1",
               target_soft={"g1": 1.0, "g2": 0.5, "g3": -1.0}, members=("g0", "g1", "g2", "g3", "g4", "g5"))
    q1 = Query("1", "g6", ("c1",), ("c1",), "c1", target="g7",
               target_soft={"g8": 0.5, "g9": -1.0}, members=("g7", "g8", "g6", "g9", "g0", "g1"))
    return CIRSplit("cirr", "cirr", "val", [q0, q1], dict(GALLERY), exclude_reference=True,
                    recall_ks=recall_ks, subset_ks=(1, 2, 3))


# Query "features" that score gallery item i with q[i] (gallery features = identity).
Q0 = [10, 7, 9, 8, 6, 5, 0.4, 0.3, 0.2, 0.1]   # ref g0 best; then g2 g3 g1 g4 g5 g6 g7 g8 g9
Q1 = [4, 3, 0.5, 0.4, 0.3, 0.2, 10, 6, 7, 8]   # ref g6 best; then g9 g8 g7 g0 g1 ...


def _features():
    return torch.tensor([Q0, Q1], dtype=torch.float32), torch.eye(10)


def test_recall_at_k_by_hand():
    ranked = torch.tensor([[3, 1, 2], [0, 4, 5], [7, 8, 9], [2, 2, 2]])
    targets = torch.tensor([1, 0, 6, 2])
    assert recall_at_k(ranked, targets, 1) == pytest.approx(50.0)   # q1, q3
    assert recall_at_k(ranked, targets, 2) == pytest.approx(75.0)   # + q0
    assert recall_at_k(ranked, targets, 3) == pytest.approx(75.0)   # q2 never
    assert recall_at_k(ranked, targets, 10) == pytest.approx(75.0)  # k beyond the list
    assert recall_at_k(torch.empty(0, 3, dtype=torch.long), torch.empty(0, dtype=torch.long), 1) == 0.0


def test_soft_recall_by_hand():
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["n", "m", "t"]]
    soft = [{"b": 0.5, "c": 1.0}, {"x": -1.0, "z": 0.2}, {"t_hard_missing": 1.0}]
    # @1: 0, 0 (negative counts 0), 0 -> 0; @2: 0.5, 0, 0; @3: 1.0, 0.2, 0
    assert soft_recall_at_k(ranked, soft, 1) == pytest.approx(0.0)
    assert soft_recall_at_k(ranked, soft, 2) == pytest.approx(100 * 0.5 / 3)
    assert soft_recall_at_k(ranked, soft, 3) == pytest.approx(100 * 1.2 / 3)
    assert soft_recall_at_k([], [], 1) == 0.0


def test_rank_gallery_matches_full_sort_and_excludes():
    torch.manual_seed(0)
    q, g = torch.randn(37, 8), torch.randn(23, 8)
    scores, idx = rank_gallery(q, g, k=5, chunk_size=4)  # several chunks
    full = (q @ g.t()).argsort(dim=1, descending=True)[:, :5]
    assert torch.equal(idx, full)
    assert torch.allclose(scores, (q @ g.t()).gather(1, full))
    best = full[:, 0]
    _, idx2 = rank_gallery(q, g, k=50, exclude=best, chunk_size=10)
    assert idx2.shape == (37, 22)  # k clipped to the gallery minus the excluded item
    assert not (idx2 == best.unsqueeze(1)).any()
    assert torch.equal(idx2[:, :4], full[:, 1:5])


def test_rank_split_removes_reference_only_when_the_protocol_says_so():
    split = _cirr_split()
    queries, gallery = _features()
    ranking = rank_split(split, queries, gallery, k=5)
    assert ranking.indices.tolist() == [[2, 3, 1, 4, 5], [9, 8, 7, 0, 1]]
    # Subset ranking: members minus the reference, best first.
    assert ranking.subset_indices.tolist() == [[2, 3, 1, 4, 5], [9, 8, 7, 0, 1]]
    split.exclude_reference = False  # FashionIQ protocol: the reference stays in its ranking
    ranking = rank_split(split, queries, gallery, k=5)
    assert ranking.indices.tolist() == [[0, 2, 3, 1, 4], [6, 9, 8, 7, 0]]


def test_subset_candidates_are_members_minus_reference():
    split = _cirr_split()
    index = {n: i for i, n in enumerate(NAMES)}
    candidates = subset_candidates(split, index)
    assert candidates.tolist() == [[1, 2, 3, 4, 5], [7, 8, 9, 0, 1]]
    # A set that repeats a name or lacks the reference is padded with -1, never holds the reference.
    split.queries[0] = Query("0", "g0", ("c",), ("c",), "c", target="g1", members=("g1", "g2", "g2", "g0"))
    candidates = subset_candidates(split, index)
    assert candidates.tolist() == [[1, 2, -1, -1, -1], [7, 8, 9, 0, 1]]
    assert subset_candidates(CIRSplit("fashioniq", "dress", "val", [], {}, False, (10, 50)), index) is None


def test_subset_padding_ranks_last_even_where_gallery_item_0_scores_best():
    """Padding (-1) reads gallery row 0 for its score; that score must never place it: query 0
    scores g0 best (10), then g2 (9) > g1 (7); query 1 has g0 as a real candidate, ranked by its
    own score: g8 (7) > g7 (6) > g0 (4)."""
    queries, gallery = _features()
    candidates = torch.tensor([[1, 2, -1, -1], [7, 0, 8, -1]])
    assert rank_subsets(queries, gallery, candidates).tolist() == [[2, 1, -1, -1], [8, 7, 0, -1]]


def test_split_metrics_by_hand():
    split = _cirr_split()
    ranking = Ranking(indices=torch.tensor([[2, 3, 1, 4, 5], [9, 8, 7, 0, 1]]), scores=torch.zeros(2, 5),
                      subset_indices=torch.tensor([[3, 1, 2, 4, 5], [7, 8, 9, 0, 1]]))
    m = split_metrics(split, ranking)
    expected = {
        # targets at rank 3 for both queries
        "recall_at1": 0.0, "recall_at2": 0.0, "recall_at3": 100.0, "recall_at5": 100.0,
        # q0: g2 .5 | g3 -1 -> 0 | g1 1 ;  q1: g9 -1 -> 0 | g8 .5 | g7 (target_hard, no soft label) 0
        "soft_recall_at1": 25.0, "soft_recall_at2": 50.0, "soft_recall_at3": 75.0, "soft_recall_at5": 75.0,
        # subsets: q0 g3 g1 ..., q1 g7 first
        "recall_subset_at1": 50.0, "recall_subset_at2": 100.0, "recall_subset_at3": 100.0,
        "soft_recall_subset_at1": 0.0, "soft_recall_subset_at2": 75.0, "soft_recall_subset_at3": 75.0,
        # CIRR's Avg: (R@5 + Rs@1) / 2
        "recall_avg": (100.0 + 50.0) / 2,
    }
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key


def test_cirr_metric_keys_exactly_as_issue():
    split = _cirr_split(recall_ks=(1, 5, 10, 50))
    queries, gallery = _features()
    # With 10 images, R@10 and R@50 cover the whole gallery minus the reference: 100.
    features = SplitFeatures(split, gallery=gallery, reference=gallery[[0, 6]], text=queries - gallery[[0, 6]])
    m = metrics_from_features([features], lambda i, t: i + t)
    assert sorted(m) == sorted(CIRR_KEYS + [f"soft_{k}" for k in CIRR_KEYS] + ["recall_avg"])
    assert m["recall_at1"] == 0.0 and m["recall_at5"] == 100.0 and m["recall_at50"] == 100.0
    assert m["recall_subset_at1"] == 0.0 and m["recall_subset_at3"] == 100.0
    assert m["recall_avg"] == 50.0  # (100 + 0) / 2
    # The Avg is reported, not selected on: checkpoint selection averages the seven recalls only.
    from clip_cir.evaluation.metrics import selection_scores
    assert selection_scores(m)["score"] == sum(m[k] for k in CIRR_KEYS) / len(CIRR_KEYS)
    table = format_metrics(m, label="cirr").splitlines()
    assert table[0].split()[-1] == "Avg" and table[1].split()[-1] == "50.00"


def test_fashioniq_keys_and_averages():
    def fiq(name):
        return CIRSplit("fashioniq", name, "val", [], {}, exclude_reference=False, recall_ks=(10, 50))

    per_split = [(fiq("dress"), {"recall_at10": 10.0, "recall_at50": 40.0}),
                 (fiq("shirt"), {"recall_at10": 20.0, "recall_at50": 50.0}),
                 (fiq("toptee"), {"recall_at10": 60.0, "recall_at50": 90.0})]
    m = combine_benchmarks(per_split)
    assert m == {"dress_recall_at10": 10.0, "dress_recall_at50": 40.0, "shirt_recall_at10": 20.0,
                 "shirt_recall_at50": 50.0, "toptee_recall_at10": 60.0, "toptee_recall_at50": 90.0,
                 "average_recall_at10": pytest.approx(30.0), "average_recall_at50": pytest.approx(60.0)}
    # One category alone keeps its prefix (and an average equal to it).
    assert combine_benchmarks(per_split[1:2]) == {"shirt_recall_at10": 20.0, "shirt_recall_at50": 50.0,
                                                  "average_recall_at10": 20.0, "average_recall_at50": 50.0}
    scores = selection_scores(m)
    assert scores["score"] == pytest.approx(45.0)  # mean of the two averages
    assert scores["harmonic_mean"] == pytest.approx(2 / (1 / 30 + 1 / 60))
    assert scores["geometric_mean"] == pytest.approx(math.sqrt(30 * 60))


def test_selection_on_several_ground_truths_uses_map():
    """Queries with several ground truths (mAP@K) select checkpoints by mAP, not by the recall of
    their first target; several groups by the averages."""
    circo_like = {"map_at5": 10.0, "map_at10": 20.0, "map_at25": 30.0, "map_at50": 40.0, "recall_at5": 90.0,
                  "aspect_colour_map_at10": 99.0}
    scores = selection_scores(circo_like)
    assert scores["score"] == pytest.approx(25.0)
    assert scores["harmonic_mean"] == pytest.approx(4 / (1 / 10 + 1 / 20 + 1 / 30 + 1 / 40))
    grouped = {"a_map_at5": 0.0, "b_map_at5": 50.0, "average_map_at5": 25.0, "average_recall_at5": 80.0}
    assert selection_scores(grouped)["score"] == pytest.approx(25.0)


def test_means_with_a_zero_recall_do_not_crash():
    assert geometric_mean([0.0, 50.0]) == 0.0
    assert harmonic_mean([0.0, 50.0]) == 0.0
    assert geometric_mean([4.0, 9.0]) == pytest.approx(6.0)
    assert harmonic_mean([4.0, 12.0]) == pytest.approx(6.0)
    cirr = dict.fromkeys(CIRR_KEYS, 0.0) | {"recall_at50": 70.0, "soft_recall_at1": 3.0}
    scores = selection_scores(cirr)  # the soft ones do not take part
    assert scores == {"score": pytest.approx(10.0), "harmonic_mean": 0.0, "geometric_mean": 0.0}


def test_format_metrics_table():
    text = format_metrics({"recall_at1": 12.3456, "recall_subset_at1": 50.0, "soft_recall_at1": 1.0}, label="cirr")
    lines = text.splitlines()
    assert lines[0].split() == ["R@1", "Rs@1"]
    assert lines[1].split() == ["cirr", "12.35", "50.00"]
    assert lines[2].split() == ["cirr", "(soft)", "1.00"]
