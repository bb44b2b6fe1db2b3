"""Recall restricted to groups of queries (`recall_by_group`), against rankings worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip_cir.data.types import CIRSplit, Query
from clip_cir.encoding.ranking import rank_split
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import recall_by_group, split_metrics

NAMES = [f"g{i}" for i in range(6)]
GALLERY = {n: Path(f"/nowhere/{n}.png") for n in NAMES}
# (reference, target, score of each gallery item g0..g5); gallery features are the identity.
QUERIES = [
    ("g0", "g1", [10, 9, 5, 4, 3, 2]),   # reference removed: target 1st; kept: 2nd
    ("g2", "g3", [1, 2, 10, 8, 9, 3]),   # removed: g4 g3 -> 2nd; kept: g2 g4 g3 -> 3rd
    ("g4", "g5", [5, 4, 3, 2, 10, 1]),   # removed: 5th of 5; kept: 6th (outside the top 5)
    ("g1", "g0", [9, 10, 1, 2, 3, 4]),   # removed: 1st; kept: 2nd
    ("g3", "g2", [9, 8, 7, 10, 1, 2]),   # removed: g0 g1 g2 -> 3rd; kept: 4th
]
GROUPS = ["colour", "add", "colour", "move", "add"]
KS = (1, 2, 3, 5)


def _split(exclude_reference: bool, with_targets: bool = True) -> CIRSplit:
    queries = [Query(str(i), ref, (f"c{i}",), (f"c{i}",), f"c{i}", target=tgt if with_targets else None)
               for i, (ref, tgt, _) in enumerate(QUERIES)]
    return CIRSplit("cirr" if exclude_reference else "fashioniq", "cirr" if exclude_reference else "dress", "val",
                    queries, dict(GALLERY), exclude_reference=exclude_reference, recall_ks=KS)


def _ranking(split: CIRSplit):
    scores = torch.tensor([s for _, _, s in QUERIES], dtype=torch.float32)
    return rank_split(split, scores, torch.eye(len(NAMES)), k=5)


def _recalls(r1, r2, r3, r5):
    return {"recall_at1": r1, "recall_at2": r2, "recall_at3": r3, "recall_at5": r5}


def test_cirr_rule_reference_removed_by_hand():
    # Target ranks with the reference removed: 1, 2, 5, 1, 3.
    # colour = queries 0, 2 (ranks 1, 5); add = 1, 4 (ranks 2, 3); move = 3 (rank 1).
    split = _split(exclude_reference=True)
    by_group = recall_by_group(split, _ranking(split), GROUPS, KS)
    assert by_group == {"add": _recalls(0.0, 50.0, 100.0, 100.0), "colour": _recalls(50.0, 50.0, 50.0, 100.0),
                        "move": _recalls(100.0, 100.0, 100.0, 100.0)}
    assert list(by_group) == ["add", "colour", "move"]


def test_fashioniq_rule_reference_kept_by_hand():
    # Target ranks with the reference kept: 2, 3, 6 (not in the top 5), 2, 4.
    split = _split(exclude_reference=False)
    by_group = recall_by_group(split, _ranking(split), GROUPS, KS)
    assert by_group == {"add": _recalls(0.0, 0.0, 50.0, 100.0), "colour": _recalls(0.0, 50.0, 50.0, 50.0),
                        "move": _recalls(0.0, 100.0, 100.0, 100.0)}


def test_default_cut_offs_are_the_splits():
    split = _split(exclude_reference=True)
    assert recall_by_group(split, _ranking(split), GROUPS)["colour"] == _recalls(50.0, 50.0, 50.0, 100.0)
    assert recall_by_group(split, _ranking(split), GROUPS, [2])["add"] == {"recall_at2": 50.0}


@pytest.mark.parametrize("exclude_reference", [True, False])
def test_groups_weighted_by_size_give_the_overall_recall(exclude_reference):
    generator = torch.Generator().manual_seed(3)
    n_gallery, n_queries = 40, 97
    names = [f"i{i}" for i in range(n_gallery)]
    pairs = torch.randint(n_gallery, (n_queries, 2), generator=generator).tolist()
    queries = [Query(str(q), names[r], ("c",), ("c",), "c", target=names[t]) for q, (r, t) in enumerate(pairs)]
    split = CIRSplit("cirr", "cirr", "val", queries, {n: Path(n) for n in names}, exclude_reference=exclude_reference,
                     recall_ks=(1, 5, 10, 20))
    ranking = rank_split(split, torch.randn(n_queries, 8, generator=generator),
                         torch.randn(n_gallery, 8, generator=generator), k=20)
    kinds = ["colour", "shape", "size", "add", "remove", "move"]
    groups = [kinds[int(i)] for i in torch.randint(len(kinds), (n_queries,), generator=generator)]
    by_group = recall_by_group(split, ranking, groups)
    overall = split_metrics(split, ranking)
    sizes = {g: groups.count(g) for g in by_group}
    assert sorted(by_group) == sorted(kinds)
    for k in split.recall_ks:
        weighted = sum(sizes[g] * by_group[g][f"recall_at{k}"] for g in by_group) / n_queries
        assert weighted == pytest.approx(overall[f"recall_at{k}"])
    assert 0 < overall["recall_at10"] < 100  # neither all hits nor none: the check means something


def test_one_group_name_per_query():
    split = _split(exclude_reference=True)
    with pytest.raises(CIRError, match="^4 group names for the 5 queries of cirr cirr val$"):
        recall_by_group(split, _ranking(split), GROUPS[:4])


def test_split_without_targets():
    split = _split(exclude_reference=True, with_targets=False)
    with pytest.raises(CIRError, match="^cirr split 'val' has no targets to score$"):
        recall_by_group(split, _ranking(split), GROUPS)
