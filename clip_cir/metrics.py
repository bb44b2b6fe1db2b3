"""Recall@K (the method's protocol), Recall_subset@K and CIRR's soft-credit variant.

Recalls are percentages. Checkpoint selection uses the same numbers, so the aggregate scores
live here too.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch

from clip_cir.data.types import CIRSplit
from clip_cir.ranking import Ranking


def recall_at_k(ranked: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Percentage of queries whose target is among the first k ranked indices."""
    if len(targets) == 0:
        return 0.0
    hits = (ranked[:, :k] == targets.unsqueeze(1)).any(dim=1)
    return 100.0 * int(hits.sum()) / len(targets)


def soft_recall_at_k(ranked_names: Sequence[Sequence[str]], target_soft: Sequence[Mapping[str, float]],
                     k: int) -> float:
    """Mean over queries of the best soft label within the top k (negative labels count 0)."""
    if not ranked_names:
        return 0.0
    credits = [max([max(soft.get(name, 0.0), 0.0) for name in names[:k]], default=0.0)
               for names, soft in zip(ranked_names, target_soft)]
    return 100.0 * sum(credits) / len(credits)


AVG_KEY = "recall_avg"
"""CIRR's headline number, (R@5 + Recall_subset@1) / 2 (the published code's `mean(R@5+R_s@1)`)."""


def split_metrics(split: CIRSplit, ranking: Ranking) -> dict[str, float]:
    """All metrics the split supports: recall_at{k}, recall_subset_at{k}, `soft_` ones and, with
    an image-set ranking, CIRR's `recall_avg`."""
    names = list(split.gallery)
    index = {name: i for i, name in enumerate(names)}
    targets = torch.tensor([index[q.target] for q in split.queries], dtype=torch.long)
    soft = [q.target_soft for q in split.queries]
    has_soft = all(s is not None for s in soft)
    metrics: dict[str, float] = {}
    rankings = [("recall", ranking.indices, split.recall_ks)]
    if ranking.subset_indices is not None:
        rankings.append(("recall_subset", ranking.subset_indices, split.subset_ks))
    for prefix, ranked, ks in rankings:
        for k in ks:
            metrics[f"{prefix}_at{k}"] = recall_at_k(ranked, targets, k)
        if has_soft:
            ranked_names = [[names[i] for i in row if i >= 0] for row in ranked.tolist()]
            for k in ks:
                metrics[f"soft_{prefix}_at{k}"] = soft_recall_at_k(ranked_names, soft, k)
    if "recall_at5" in metrics and "recall_subset_at1" in metrics:
        metrics[AVG_KEY] = (metrics["recall_at5"] + metrics["recall_subset_at1"]) / 2
    return metrics


def primary_keys(metrics: Mapping[str, float]) -> list[str]:
    """The recalls of the method's protocol (not the soft or averaged ones)."""
    return [k for k in metrics if k.startswith("recall") and k != AVG_KEY]


def combine_benchmarks(per_split: Sequence[tuple[CIRSplit, dict[str, float]]]) -> dict[str, float]:
    """Flat keys for a single benchmark (CIRR); `<name>_` keys plus `average_` ones for several
    (FashionIQ categories)."""
    if len(per_split) == 1 and per_split[0][0].name == per_split[0][0].dataset:
        return dict(per_split[0][1])
    out: dict[str, float] = {}
    for split, metrics in per_split:
        out.update({f"{split.name}_{k}": v for k, v in metrics.items()})
    for key in per_split[0][1]:
        out[f"average_{key}"] = sum(m[key] for _, m in per_split) / len(per_split)
    return out


def validation_recalls(metrics: Mapping[str, float]) -> list[float]:
    """The recalls checkpoint selection looks at: CIRR's seven, or FashionIQ's average R@10/R@50."""
    averaged = [v for k, v in metrics.items() if k.startswith("average_recall")]
    return averaged if averaged else [metrics[k] for k in primary_keys(metrics)]


def arithmetic_mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def harmonic_mean(values: Iterable[float]) -> float:
    values = list(values)
    return 0.0 if any(v <= 0 for v in values) else len(values) / sum(1.0 / v for v in values)


def geometric_mean(values: Iterable[float]) -> float:
    """Zero when any recall is zero (the published code crashes there)."""
    values = list(values)
    return 0.0 if any(v <= 0 for v in values) else math.exp(sum(math.log(v) for v in values) / len(values))


def selection_scores(metrics: Mapping[str, float]) -> dict[str, float]:
    """Scores checkpoints are kept by: `score` (arithmetic mean) and the harmonic and geometric means."""
    recalls = validation_recalls(metrics)
    return {"score": arithmetic_mean(recalls), "harmonic_mean": harmonic_mean(recalls),
            "geometric_mean": geometric_mean(recalls)}


def _parse_key(key: str) -> tuple[str, bool, str, int] | None:
    """`dress_soft_recall_subset_at3` -> ("dress", True, "recall_subset", 3); `recall_avg` -> ("", False, "avg", 0)."""
    if key.endswith(AVG_KEY):
        return key[: -len(AVG_KEY)].rstrip("_"), False, "avg", 0
    head, sep, k = key.rpartition("_at")
    if not sep or not k.isdigit():
        return None
    metric = "recall_subset" if head.endswith("recall_subset") else "recall"
    rest = head[: -len(metric)].rstrip("_")
    soft = rest.endswith("soft")
    rest = rest[: -len("soft")].rstrip("_") if soft else rest
    return rest, soft, metric, int(k)


def format_metrics(metrics: Mapping[str, float], label: str = "") -> str:
    """A table with one row per benchmark (and soft variant) and one column per recall."""
    rows: dict[tuple[str, bool], dict[tuple[str, int], float]] = {}
    columns: list[tuple[str, int]] = []
    for key, value in metrics.items():
        parsed = _parse_key(key)
        if parsed is None:
            continue
        bench, soft, metric, k = parsed
        rows.setdefault((bench, soft), {})[(metric, k)] = value
        if (metric, k) not in columns:
            columns.append((metric, k))
    columns.sort(key=lambda c: (c[0] != "recall", c[0] == "avg", c[1]))
    names = {(b, s): (b or label or "all") + (" (soft)" if s else "") for b, s in rows}
    width = max([len(n) for n in names.values()] + [8])
    titles = {"recall": "R@{}", "recall_subset": "Rs@{}", "avg": "Avg"}
    header = " " * width + "".join(f"{titles[m].format(k):>8}" for m, k in columns)
    lines = [header]
    for row, values in rows.items():
        cells = "".join(f"{values[c]:8.2f}" if c in values else " " * 8 for c in columns)
        lines.append(f"{names[row]:<{width}}{cells}")
    return "\n".join(lines)
