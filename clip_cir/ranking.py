"""Nearest-neighbour ranking of query features against a gallery.

Only the top K matters to every metric and submission, so we keep `topk` per chunk of queries
instead of sorting the whole gallery for each query.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clip_cir.data.types import CIRSplit


@dataclass
class Ranking:
    """Top-K gallery indices (and scores) per query, plus the ranked subset candidates."""

    indices: torch.Tensor  # [Q, K] gallery indices, best first
    scores: torch.Tensor  # [Q, K]
    subset_indices: torch.Tensor | None = None  # [Q, S] gallery indices, best first; -1 = padding


def rank_gallery(query_features: torch.Tensor, gallery_features: torch.Tensor, k: int,
                 exclude: torch.Tensor | None = None, chunk_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k gallery items by dot product (cosine for normalised features).

    `exclude[q]` is a gallery index removed from query q's ranking (-1 for none): the CIRR
    protocol removes each query's own reference image.
    """
    k = min(k, gallery_features.shape[0] - (1 if exclude is not None else 0))
    gallery_t = gallery_features.float().t()
    all_scores, all_indices = [], []
    for start in range(0, query_features.shape[0], chunk_size):
        scores = query_features[start:start + chunk_size].float() @ gallery_t
        if exclude is not None:
            rows = exclude[start:start + chunk_size]
            keep = rows >= 0
            scores[torch.arange(len(rows), device=scores.device)[keep], rows[keep]] = float("-inf")
        top = scores.topk(k, dim=1)
        all_scores.append(top.values)
        all_indices.append(top.indices)
    return torch.cat(all_scores), torch.cat(all_indices)


def subset_candidates(split: CIRSplit, gallery_index: dict[str, int]) -> torch.Tensor | None:
    """Per query, its image set minus the reference, as gallery indices padded with -1."""
    if not split.subset_ks or any(q.members is None for q in split.queries):
        return None
    rows = [[gallery_index[m] for m in dict.fromkeys(q.members) if m != q.reference] for q in split.queries]
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long).reshape(len(rows), width)


def rank_subsets(query_features: torch.Tensor, gallery_features: torch.Tensor,
                 candidates: torch.Tensor) -> torch.Tensor:
    """Order each query's subset candidates by score; padding (-1) stays at the end."""
    gathered = gallery_features[candidates.clamp(min=0)].float()  # [Q, S, D]
    scores = torch.einsum("qd,qsd->qs", query_features.float(), gathered)
    scores[candidates < 0] = float("-inf")
    order = scores.argsort(dim=1, descending=True, stable=True)
    return candidates.gather(1, order)


def rank_split(split: CIRSplit, query_features: torch.Tensor, gallery_features: torch.Tensor,
               k: int) -> Ranking:
    """The method's ranking for one split: whole gallery (reference removed if the protocol
    says so) plus the CIRR subset ranking when the split has image sets."""
    gallery_index = {name: i for i, name in enumerate(split.gallery)}
    exclude = None
    if split.exclude_reference:
        exclude = torch.tensor([gallery_index[q.reference] for q in split.queries], dtype=torch.long)
    scores, indices = rank_gallery(query_features, gallery_features, k, exclude)
    candidates = subset_candidates(split, gallery_index)
    subset = rank_subsets(query_features, gallery_features, candidates) if candidates is not None else None
    return Ranking(indices=indices, scores=scores, subset_indices=subset)
