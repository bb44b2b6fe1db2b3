"""Recall@K (the method's protocol), Recall_subset@K, CIRR's soft-credit variant and CIRCO's mAP@K.

Recalls and mAPs are percentages. Checkpoint selection uses the same numbers, so the aggregate
scores live here too. Every metric reads a split's ranking as gallery indices, so an evaluation
and a submission file scored offline go through the same functions.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import torch

from clip_cir.data.types import CIRSplit
from clip_cir.encoding.ranking import Ranking
from clip_cir.errors import CIRError
from clip_cir.evaluation.graded import format_graded, is_graded


def recall_at_k(ranked: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Percentage of queries whose target is among the first k ranked indices."""
    if len(targets) == 0:
        return 0.0
    hits = (ranked[:, :k] == targets.unsqueeze(1)).any(dim=1)
    return 100.0 * int(hits.sum()) / len(targets)


def label_recall_at_k(ranked: torch.Tensor, gallery_labels: torch.Tensor, target_labels: torch.Tensor,
                      k: int) -> float:
    """Percentage of queries with any of the first k ranked indices carrying the query's label, as
    tirg's evaluation counts a hit (`target_caption in captions_of_top_k`): labels are integer
    codes, `gallery_labels[i]` of gallery image i and `target_labels[q]` of query q (-1: none).
    Padding (-1) in `ranked` never hits."""
    if len(target_labels) == 0:
        return 0.0
    top = ranked[:, :k]
    labels = gallery_labels[top.clamp(min=0)]
    hits = ((labels == target_labels.unsqueeze(1)) & (top >= 0) & (target_labels.unsqueeze(1) >= 0)).any(dim=1)
    return 100.0 * int(hits.sum()) / len(target_labels)


def label_codes(split: CIRSplit, view: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's gallery labels and query target labels as integer codes (one code per distinct
    label; a target label no gallery image has gets -1), or of word `view` of each label (a label
    without that word matches nothing)."""
    def word(label: str | None) -> str | None:
        if label is None or view is None:
            return label
        words = label.split()
        return words[view] if view < len(words) else None

    gallery = [word(split.gallery_labels[name]) for name in split.gallery]
    codes = {label: i for i, label in enumerate(dict.fromkeys(g for g in gallery if g is not None))}
    gallery_codes = torch.tensor([codes.get(g, -2) if g is not None else -2 for g in gallery], dtype=torch.long)
    targets = [word(q.target_label) for q in split.queries]
    target_codes = torch.tensor([codes.get(t, -1) if t is not None else -1 for t in targets], dtype=torch.long)
    return gallery_codes, target_codes


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



ASPECT_MAP_K = 10
"""CIRCO reports mAP@10 per semantic aspect (the dataset's evaluation code)."""


def average_precisions(ranked: torch.Tensor, ground_truths: Sequence[Sequence[int]], k: int) -> torch.Tensor:
    """AP@k per query, as CIRCO's official evaluation computes it (a fraction, float64).

    AP@k = sum over ranks i <= k of precision@i * rel_i, divided by min(k, len(ground truths)).
    `rel_i` is whether the i-th item is any ground truth (a ground truth listed twice still
    marks one item), while the divisor counts the list as given, repeats included: the official
    code takes `np.isin(predictions, gt_img_ids)` and `len(gt_img_ids)`. Padding (-1) is never
    relevant; a ranking shorter than k counts only what it has.
    """
    ranked = ranked[:, :k]
    width = max((len(g) for g in ground_truths), default=0)
    gts = torch.tensor([list(g) + [-2] * (width - len(g)) for g in ground_truths], dtype=torch.long)
    relevant = (ranked.unsqueeze(2) == gts.reshape(len(ground_truths), 1, width)).any(dim=2) & (ranked >= 0)
    relevant = relevant.double()
    precision = relevant.cumsum(dim=1) / torch.arange(1, ranked.shape[1] + 1, dtype=torch.float64)
    divisor = torch.tensor([min(k, len(g)) for g in ground_truths], dtype=torch.float64)
    return (precision * relevant).sum(dim=1) / divisor


def mean_average_precision(ranked: torch.Tensor, ground_truths: Sequence[Sequence[int]], k: int) -> float:
    """mAP@k in percent (0 for no queries)."""
    if len(ground_truths) == 0:
        return 0.0
    return 100.0 * float(average_precisions(ranked, ground_truths, k).mean())


def _map_metrics(split: CIRSplit, ranked: torch.Tensor, index: Mapping[str, int]) -> dict[str, float]:
    """`map_at{k}` for the split's mAP cut-offs, and `aspect_<name>_map_at10` for every semantic
    aspect a query has (the mean over the queries that have it), aspects in alphabetical order."""
    ground_truths = [[index[g] for g in q.ground_truths] for q in split.queries]
    metrics = {f"map_at{k}": mean_average_precision(ranked, ground_truths, k) for k in split.map_ks}
    aspects = sorted({a for q in split.queries for a in q.aspects})
    if aspects:
        aps = average_precisions(ranked, ground_truths, ASPECT_MAP_K)
        for aspect in aspects:
            rows = torch.tensor([aspect in q.aspects for q in split.queries])
            metrics[f"aspect_{aspect}_map_at{ASPECT_MAP_K}"] = 100.0 * float(aps[rows].mean())
    return metrics


def target_indices(split: CIRSplit, index: Mapping[str, int]) -> torch.Tensor:
    """Each query's target as its gallery index (`index`: name -> index), the row recall compares with."""
    return torch.tensor([index[q.target] for q in split.queries], dtype=torch.long)


def recall_function(split: CIRSplit, index: Mapping[str, int],
                    view: int | None = None) -> Callable[[torch.Tensor, int, torch.Tensor | None], float]:
    """`recall(ranked, k, rows)`: recall@k of the queries `rows` selects (None: all) by the split's
    hit rule: the target image, or any image with the target's label where the split has labels
    (of word `view` of the labels for a diagnostic view)."""
    if split.gallery_labels is not None:
        gallery_codes, target_codes = label_codes(split, view)
        return lambda ranked, k, rows=None: label_recall_at_k(
            ranked if rows is None else ranked[rows], gallery_codes,
            target_codes if rows is None else target_codes[rows], k)
    targets = target_indices(split, index)
    return lambda ranked, k, rows=None: recall_at_k(ranked if rows is None else ranked[rows],
                                                    targets if rows is None else targets[rows], k)


def split_metrics(split: CIRSplit, ranking: Ranking) -> dict[str, float]:
    """All metrics the split supports: map_at{k} (and per-aspect mAP@10) where queries have
    several ground truths, recall_at{k}, recall_subset_at{k}, `soft_` ones and, with an image-set
    ranking, CIRR's `recall_avg`."""
    names = list(split.gallery)
    index = {name: i for i, name in enumerate(names)}
    recall = recall_function(split, index)
    soft = [q.target_soft for q in split.queries]
    has_soft = all(s is not None for s in soft)
    metrics: dict[str, float] = {}
    if split.map_ks and all(q.ground_truths for q in split.queries):
        metrics.update(_map_metrics(split, ranking.indices, index))
    rankings = [("recall", ranking.indices, split.recall_ks)]
    if ranking.subset_indices is not None:
        rankings.append(("recall_subset", ranking.subset_indices, split.subset_ks))
    for prefix, ranked, ks in rankings:
        for k in ks:
            metrics[f"{prefix}_at{k}"] = recall(ranked, k, None)
        if has_soft:
            ranked_names = [[names[i] for i in row if i >= 0] for row in ranked.tolist()]
            for k in ks:
                metrics[f"soft_{prefix}_at{k}"] = soft_recall_at_k(ranked_names, soft, k)
    if "recall_at5" in metrics and "recall_subset_at1" in metrics:
        metrics[AVG_KEY] = (metrics["recall_at5"] + metrics["recall_subset_at1"]) / 2
    for view, word in split.label_views:
        view_recall = recall_function(split, index, word)
        metrics.update({f"{view}_recall_at{k}": view_recall(ranking.indices, k, None) for k in split.recall_ks})
    return metrics


def recall_by_group(split: CIRSplit, ranking: Ranking, groups: Sequence[str],
                    ks: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """`recall_at{k}` (default: the split's cut-offs) over the queries of each group alone, so a
    benchmark can say which kinds of query a model gets right. `groups[i]` names query i's group;
    the ranking is the split's own (CIRR's with the reference removed), scored by `split_metrics`'
    rule. Groups in sorted order."""
    if len(groups) != len(split.queries):
        raise CIRError(f"{len(groups)} group names for the {len(split.queries)} queries of {split.dataset} "
                       f"{split.name} {split.split}")
    if not split.has_targets:
        raise CIRError(f"{split.dataset} split '{split.split}' has no targets to score")
    recall = recall_function(split, {name: i for i, name in enumerate(split.gallery)})
    ks = split.recall_ks if ks is None else tuple(ks)
    out: dict[str, dict[str, float]] = {}
    for group in sorted(set(groups)):
        rows = torch.tensor([g == group for g in groups], dtype=torch.bool)
        out[group] = {f"recall_at{k}": recall(ranking.indices, k, rows) for k in ks}
    return out


def primary_keys(metrics: Mapping[str, float]) -> list[str]:
    """The recalls of the method's protocol (not the soft, averaged or mAP ones)."""
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
    """The numbers checkpoint selection looks at: mAP@K where queries have several ground truths,
    else the method's recalls (CIRR's seven, FashionIQ's average R@10/R@50); averages over
    benchmarks where there are several."""
    averaged = {k: v for k, v in metrics.items() if k.startswith("average_")}
    maps = [v for k, v in (averaged or metrics).items() if k.startswith(("map_at", "average_map_at"))]
    if maps:
        return maps
    if averaged:
        return [v for k, v in averaged.items() if k.startswith("average_recall")]
    return [metrics[k] for k in primary_keys(metrics)]


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


METRIC_ORDER = {"map": 0, "recall": 1, "recall_subset": 2, "avg": 3}
COLUMN_TITLE = {"map": "mAP@{}", "recall": "R@{}", "recall_subset": "Rs@{}", "avg": "Avg"}


def _parse_key(key: str) -> tuple[str, bool, str, int] | None:
    """`dress_soft_recall_subset_at3` -> ("dress", True, "recall_subset", 3); `recall_avg` -> ("", False, "avg", 0);
    `aspect_viewpoint_map_at10` -> ("aspect_viewpoint", False, "map", 10)."""
    if key.endswith(AVG_KEY):
        return key[: -len(AVG_KEY)].rstrip("_"), False, "avg", 0
    head, sep, k = key.rpartition("_at")
    if not sep or not k.isdigit():
        return None
    metric = next((m for m in ("recall_subset", "recall", "map") if head.endswith(m)), None)
    if metric is None:
        return None
    rest = head[: -len(metric)].rstrip("_")
    soft = rest.endswith("soft")
    rest = rest[: -len("soft")].rstrip("_") if soft else rest
    return rest, soft, metric, int(k)


def format_metrics(metrics: Mapping[str, float], label: str = "") -> str:
    """A table with one row per benchmark (and soft variant, and CIRCO semantic aspect) and one
    column per metric: mAP@K, then R@K, then Rs@K; graded metrics (CFQ) as `graded.format_graded`."""
    if is_graded(metrics):
        return format_graded(metrics, label)
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
    columns.sort(key=lambda c: (METRIC_ORDER[c[0]], c[1]))
    names = {(b, s): _row_label(b, label) + (" (soft)" if s else "") for b, s in rows}
    width = max([len(n) for n in names.values()] + [8])
    header = " " * width + "".join(f"{COLUMN_TITLE[m].format(k):>8}" for m, k in columns)
    lines = [header]
    for row, values in rows.items():
        cells = "".join(f"{values[c]:8.2f}" if c in values else " " * 8 for c in columns)
        lines.append(f"{names[row]:<{width}}{cells}")
    return "\n".join(lines)


def _row_label(bench: str, label: str) -> str:
    if bench.startswith("aspect_"):
        return "  aspect " + bench[len("aspect_"):]
    return bench or label or "all"
