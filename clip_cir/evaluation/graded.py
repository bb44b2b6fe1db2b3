"""Metrics over graded judgements (CFQ): AUC, AP and mAP at MAAF's thresholds, and nDCG.

The rules are those of yahoo/maaf: `src/maaf/datasets/cfq.py` (`CFQ.compute_metrics`, the subset
weighting of `CFQSet.compute_metrics`, `get_primary_metrics`) as `src/maaf/actions/eval_cfq.py`
runs them, with scikit-learn's `roc_auc_score`, `average_precision_score` and `ndcg_score`
written out here. Each judged (query, candidate) pair of a split is scored by its cosine
similarity (the ranking's score); nothing else in the gallery counts.

- A pair is positive for `<judgement>_<t>` when its mean vote (accurate or similar, in [-1, 1])
  is above MAAF's threshold: -1, -0.67, -0.34, -0.01, 0.33, 0.66, 0.99, labelled by thirds
  (`m1`, `m2_3`, `m1_3`, `0`, `1_3`, `2_3`, `1`: `m` for minus).
- `_auc` and `_ap`: ROC AUC and average precision over all pairs of a subset; `_mauc` and `_map`:
  their means over the subset's captions, captions whose pairs are all one class left out. Pairs
  are grouped by caption text, as MAAF groups them (two queries with one caption are one group).
- `ndcg` (`exp_ndcg`): per caption, nDCG of the relevance int(3 (accurate + similar + 2)) (of
  2^relevance - 1), ties in score averaged, all-zero relevance scoring 0; its mean over captions.
- Several subsets: the threshold metrics are averaged weighted by each subset's number of
  distinct query images; the per-caption nDCGs of all subsets are pooled (a caption found in two
  subsets counts the sum of its two values) and averaged.
- Headline (`get_primary_metrics`): `accurate_map` (accurate_0_map), `similar_map`
  (similar_m2_3_map) and `ndcg`.

Values are percentages. Adaptations: where all pairs of a subset are one class, MAAF writes -1
for its `_auc`/`_ap` and averages that -1 into the weighted mean; we write NaN (and the mean is
NaN). A caption with one judged pair gets nDCG 1 or 0, where recent scikit-learn refuses to
score it. MAAF's R-precision (a count, not a precision, whose ties follow an unstable sort) is
not reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from clip_cir.data.types import CIRSplit
from clip_cir.encoding.ranking import Ranking
from clip_cir.errors import CIRError

THRESHOLDS = ((-1.0, "m1"), (-0.67, "m2_3"), (-0.34, "m1_3"), (-0.01, "0"), (0.33, "1_3"), (0.66, "2_3"),
              (0.99, "1"))
"""MAAF's thresholds on the mean vote, with the thirds they stand for as key labels."""
JUDGEMENTS = ("accurate", "similar")
THRESHOLD_METRICS = ("auc", "mauc", "ap", "map")
HEADLINE = {"accurate_map": "accurate_0_map", "similar_map": "similar_m2_3_map"}
NDCG_KEYS = ("ndcg", "exp_ndcg")


@dataclass(frozen=True)
class JudgedPair:
    """One judged (query, candidate) pair with its mean votes and the model's score."""

    caption: str
    candidate: str
    accurate: float
    similar: float
    score: float


@dataclass
class GradedScores:
    """One split's graded metrics, and what combining several splits needs."""

    metrics: dict[str, float]
    caption_ndcg: dict[str, dict[str, float]]
    """`ndcg` / `exp_ndcg` -> caption -> its nDCG in percent."""
    weight: int
    """Distinct query images: the split's weight in the threshold metrics' average."""


def relevance(accurate: float, similar: float) -> int:
    """MAAF's graded relevance of a pair: int(3 (accurate + similar + 2)), 0 to 12."""
    return int(3 * (accurate + similar + 2))


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (tied scores count half), None when only one class is present."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum = 0.0  # of the positives, 1-based, tied scores sharing their mean rank
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        mean_rank = (start + end) / 2 + 1
        rank_sum += mean_rank * sum(labels[order[i]] for i in range(start, end + 1))
        start = end + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _score_groups(scores: Sequence[float]) -> list[list[int]]:
    """Indices grouped by equal score, best score first."""
    groups: dict[float, list[int]] = {}
    for i, s in enumerate(scores):
        groups.setdefault(s, []).append(i)
    return [groups[s] for s in sorted(groups, reverse=True)]


def average_precision(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Sum over score thresholds (best first) of the recall gained times the precision there,
    tied scores taken together; None when only one class is present."""
    positives = sum(labels)
    if positives == 0 or positives == len(labels):
        return None
    found = seen = 0
    total = 0.0
    for group in _score_groups(scores):
        gained = sum(labels[i] for i in group)
        found += gained
        seen += len(group)
        total += gained / positives * (found / seen)
    return total


def ndcg(gains: Sequence[float], scores: Sequence[float]) -> float:
    """Normalised DCG with discount 1 / log2(rank + 1); tied scores share their mean gain over
    their ranks' discounts. 0 when every gain is 0."""
    discount = [1 / (math.log(i + 2) / math.log(2)) for i in range(len(gains))]
    ideal = sum(g * d for g, d in zip(sorted(gains, reverse=True), discount))
    if ideal == 0:
        return 0.0
    dcg, rank = 0.0, 0
    for group in _score_groups(scores):
        mean_gain = sum(gains[i] for i in group) / len(group)
        dcg += mean_gain * sum(discount[rank:rank + len(group)])
        rank += len(group)
    return dcg / ideal


def judged_pairs(split: CIRSplit, ranking: Ranking) -> list[JudgedPair]:
    """Every judged pair of the split with its score, read from the queries' rankings (which must
    reach every judged candidate)."""
    if split.judgments is None:
        raise CIRError(f"{split.dataset} {split.name} {split.split}: no graded judgements to score")
    if len(ranking.indices) != len(split.queries):
        raise CIRError(f"{split.dataset} {split.name}: a ranking of {len(ranking.indices)} queries for "
                       f"{len(split.queries)} queries")
    index = {name: i for i, name in enumerate(split.gallery)}
    pairs = []
    for query, row, scores in zip(split.queries, ranking.indices.tolist(), ranking.scores.tolist()):
        scored = dict(zip(row, scores))
        for candidate, (accurate, similar) in split.judgments[query.qid].items():
            position = index.get(candidate)
            if position not in scored:
                raise CIRError(f"{split.dataset} {split.name}: the ranking of query {query.qid} does not reach its "
                               f"judged candidate '{candidate}' (rank the whole gallery)")
            pairs.append(JudgedPair(query.eval_caption, candidate, accurate, similar, scored[position]))
    return pairs


def _percent(value: float | None) -> float:
    return math.nan if value is None else 100.0 * value


def _mean(values: Iterable[float | None]) -> float:
    """Mean in percent of the defined values (NaN when none is)."""
    kept = [v for v in values if v is not None]
    return 100.0 * sum(kept) / len(kept) if kept else math.nan


def _positives(pairs: Sequence[JudgedPair], judgement: str, threshold: float) -> list[bool]:
    """Whether each pair's mean `judgement` vote is above the threshold."""
    return [getattr(p, judgement) > threshold for p in pairs]


def graded_split_metrics(split: CIRSplit, ranking: Ranking) -> GradedScores:
    """The split's graded metrics (see the module's docstring for the keys)."""
    pairs = judged_pairs(split, ranking)
    by_caption: dict[str, list[JudgedPair]] = {}
    for pair in pairs:
        by_caption.setdefault(pair.caption, []).append(pair)
    groups = [by_caption[c] for c in sorted(by_caption)]  # pandas' groupby order
    scores = [p.score for p in pairs]
    metrics: dict[str, float] = {}
    for judgement in JUDGEMENTS:
        for threshold, label in THRESHOLDS:
            key = f"{judgement}_{label}"
            labels = _positives(pairs, judgement, threshold)
            metrics[f"{key}_auc"] = _percent(roc_auc(labels, scores))
            metrics[f"{key}_mauc"] = _mean(roc_auc(_positives(g, judgement, threshold), [p.score for p in g])
                                           for g in groups)
            metrics[f"{key}_ap"] = _percent(average_precision(labels, scores))
            metrics[f"{key}_map"] = _mean(average_precision(_positives(g, judgement, threshold),
                                                            [p.score for p in g]) for g in groups)
    caption_ndcg: dict[str, dict[str, float]] = {"ndcg": {}, "exp_ndcg": {}}
    for caption in sorted(by_caption):
        group = by_caption[caption]
        grades = [relevance(p.accurate, p.similar) for p in group]
        group_scores = [p.score for p in group]
        caption_ndcg["ndcg"][caption] = 100.0 * ndcg(grades, group_scores)
        caption_ndcg["exp_ndcg"][caption] = 100.0 * ndcg([2 ** g - 1 for g in grades], group_scores)
    for name, values in caption_ndcg.items():
        metrics[name] = sum(values.values()) / len(values) if values else math.nan
    metrics.update({headline: metrics[key] for headline, key in HEADLINE.items()})
    return GradedScores(metrics, caption_ndcg, len({q.reference for q in split.queries}))


def combine_graded(per_split: Sequence[tuple[CIRSplit, GradedScores]]) -> dict[str, float]:
    """The benchmark's keys: the headline and threshold metrics over all subsets (weighted by
    their query images; nDCG pooled over captions), then each subset's as `<subset>_<key>`."""
    total_weight = sum(scores.weight for _, scores in per_split)
    combined: dict[str, float] = {}
    for key in per_split[0][1].metrics:
        if key in NDCG_KEYS:
            pooled: dict[str, float] = {}
            for _, scores in per_split:
                for caption, value in scores.caption_ndcg[key].items():
                    pooled[caption] = pooled.get(caption, 0.0) + value
            combined[key] = sum(pooled.values()) / len(pooled) if pooled else math.nan
        else:
            weighted = sum(scores.weight * scores.metrics[key] for _, scores in per_split)
            combined[key] = weighted / total_weight if total_weight else math.nan
    combined.update({headline: combined[key] for headline, key in HEADLINE.items()})
    ordered = {key: combined[key] for key in (*HEADLINE, *NDCG_KEYS)}
    ordered.update(combined)
    for split, scores in per_split:
        ordered.update({f"{split.name}_{key}": value for key, value in scores.metrics.items()})
    return ordered


def is_graded(metrics: Mapping[str, float]) -> bool:
    """Whether a metric dictionary is `combine_graded`'s."""
    return all(key in metrics for key in (*HEADLINE, "ndcg"))


COLUMNS = (("acc mAP", "accurate_map"), ("sim mAP", "similar_map"), ("nDCG", "ndcg"),
           ("acc AUC", "accurate_0_auc"), ("sim AUC", "similar_m2_3_auc"))
"""The table's columns: the headline, and the all-pairs AUC at the headline thresholds."""


def format_graded(metrics: Mapping[str, float], label: str = "") -> str:
    """A table of the headline numbers: the benchmark's row, then one per subset."""
    subsets = [key[: -len("_accurate_map")] for key in metrics
               if key.endswith("_accurate_map") and key != "accurate_map"]
    rows = [(label or "all", "")] + [(f"  {name}", f"{name}_") for name in subsets]
    width = max([len(name) for name, _ in rows] + [8])
    lines = [" " * width + "".join(f"{title:>9}" for title, _ in COLUMNS)]
    for name, prefix in rows:
        cells = "".join(f"{metrics[prefix + key]:9.2f}" if prefix + key in metrics else " " * 9 for _, key in COLUMNS)
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)
