"""Attribute-manipulation metrics as amzn/fashion-attribute-disentanglement's src/eval.py defines them
(with src/utils.py's compute_DCG and compute_NDCG): top-k accuracy and three NDCG@k.

- The gallery is the whole test catalogue, the query's reference included (eval.py searches every
  indexed image); each query's k nearest gallery images by cosine similarity (eval.py: L2 distance
  between L2-normalised features, the same order) are scored. k defaults to eval.py's 30; with
  fewer gallery images than k every image is ranked (eval.py would read faiss's -1 padding).
- Top-k accuracy: the fraction of queries with a hit among the k, a hit being an image whose whole
  label vector equals the target (the new value, every other attribute unchanged; a missing label
  matches only a missing one, as equal all-zero blocks do).
- NDCG@k = DCG / IDCG with DCG = sum over ranks i = 0..k-1 of (2^rel_i - 1) / ln(i + 2) and IDCG
  the DCG of k items of relevance 1 (eval.py's `compute_DCG(np.ones_like(...))`: the ideal is
  every retrieved image fully relevant, not the sorted relevances; the log base cancels). The
  relevance of an image: NDCG, the fraction of the A attributes whose label equals the target's;
  NDCG_target, 1 if the manipulated attribute's label equals the target's, else 0; NDCG_others,
  the fraction of the A - 1 other attributes that do (NaN with a single attribute, where eval.py
  divides by zero). Each is averaged over queries.

All are fractions in [0, 1], as eval.py prints them. Computed in float64 (eval.py sums in
float32: the numbers agree to about 1e-7).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clip_cir.constants import ADDE_TOP_K
from clip_cir.data.attributes import AttributeCatalogue, AttributeQuery
from clip_cir.encoding.ranking import rank_gallery
from clip_cir.errors import CIRError


def rank_attribute_gallery(query_features: torch.Tensor, gallery_features: torch.Tensor,
                           k: int = ADDE_TOP_K) -> torch.Tensor:
    """[Q, min(k, N)] gallery indices by cosine similarity of the L2-normalised features, best first."""
    _, indices = rank_gallery(F.normalize(query_features.float(), dim=-1),
                              F.normalize(gallery_features.float(), dim=-1), k)
    return indices


def _targets(queries: Sequence[AttributeQuery]) -> np.ndarray:
    return np.array([q.target for q in queries], dtype=np.int64)


def top_k_accuracy(ranked: torch.Tensor, queries: Sequence[AttributeQuery], gallery_labels: np.ndarray,
                   k: int = ADDE_TOP_K) -> float:
    """Fraction of queries with an image among the first k whose labels all equal the target's."""
    if not queries:
        return 0.0
    retrieved = gallery_labels[ranked[:, :k].cpu().numpy()]  # [Q, k, A]
    hits = (retrieved == _targets(queries)[:, None, :]).all(axis=2).any(axis=1)
    return float(hits.mean())


def dcg(relevances: np.ndarray) -> np.ndarray:
    """Discounted cumulative gain of each row: sum_i (2^rel_i - 1) / ln(i + 2)."""
    discounts = np.log(np.arange(relevances.shape[-1], dtype=np.float64) + 2)
    return ((np.power(2.0, relevances) - 1) / discounts).sum(axis=-1)


def ndcg(relevances: np.ndarray) -> np.ndarray:
    """DCG of each row over the DCG of as many items of relevance 1 (eval.py's ideal)."""
    return dcg(relevances) / dcg(np.ones(relevances.shape[-1]))


def ndcg_at_k(ranked: torch.Tensor, queries: Sequence[AttributeQuery], gallery_labels: np.ndarray,
              k: int = ADDE_TOP_K) -> dict[str, float]:
    """`ndcg`, `ndcg_target` and `ndcg_others` at k, each the mean over queries."""
    if not queries:
        return {"ndcg": 0.0, "ndcg_target": 0.0, "ndcg_others": 0.0}
    n_attributes = gallery_labels.shape[1]
    equal = gallery_labels[ranked[:, :k].cpu().numpy()] == _targets(queries)[:, None, :]  # [Q, k, A]
    changed = np.array([q.attribute for q in queries])
    is_target = np.zeros((len(queries), 1, n_attributes), dtype=bool)
    is_target[np.arange(len(queries)), 0, changed] = True
    target = (equal & is_target).any(axis=2).astype(np.float64)
    others_matched = (equal & ~is_target).sum(axis=2)
    others = others_matched / (n_attributes - 1) if n_attributes > 1 else np.full(target.shape, math.nan)
    return {"ndcg": float(ndcg(equal.sum(axis=2) / n_attributes).mean()),
            "ndcg_target": float(ndcg(target).mean()),
            "ndcg_others": float(ndcg(others).mean())}


def attribute_manipulation_metrics(query_features: torch.Tensor, gallery_features: torch.Tensor,
                                   gallery: AttributeCatalogue, queries: Sequence[AttributeQuery],
                                   k: int = ADDE_TOP_K) -> dict[str, float]:
    """`top{k}_accuracy` and the three NDCG@k of manipulated query features [Q, D] against the
    features [N, D] of `gallery`'s images, in its order."""
    if len(query_features) != len(queries) or len(gallery_features) != len(gallery.images):
        raise CIRError(f"{len(query_features)} query features for {len(queries)} queries and "
                       f"{len(gallery_features)} gallery features for {len(gallery.images)} images of {gallery.source}")
    if k < 1:
        raise CIRError(f"top-k needs k >= 1, got {k}")
    ranked = rank_attribute_gallery(query_features, gallery_features, k)
    metrics = {f"top{k}_accuracy": top_k_accuracy(ranked, queries, gallery.labels, k)}
    metrics.update({f"{name}_at{k}": value for name, value in ndcg_at_k(ranked, queries, gallery.labels, k).items()})
    return metrics
