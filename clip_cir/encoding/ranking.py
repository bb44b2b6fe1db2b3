"""Nearest-neighbour ranking of query features against a gallery.

Only the top K matters to every metric and submission, so we keep `topk` per block of queries
and gallery instead of sorting the whole gallery for each query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from clip_cir.data.types import CIRSplit


@dataclass
class Ranking:
    """Top-K gallery indices (and scores) per query, plus the ranked subset candidates."""

    indices: torch.Tensor  # [Q, K] gallery indices, best first
    scores: torch.Tensor  # [Q, K]
    subset_indices: torch.Tensor | None = None  # [Q, S] gallery indices, best first; -1 = padding


QUERY_CHUNK = 1024
GALLERY_CHUNK = 16384
"""Score blocks are at most QUERY_CHUNK x GALLERY_CHUNK floats (64 MiB): a 123k-image gallery
(CIRCO) against its 800 test queries never needs the 400 MB full score matrix."""


def rank_gallery(query_features: torch.Tensor, gallery_features: torch.Tensor, k: int,
                 exclude: torch.Tensor | None = None, chunk_size: int = QUERY_CHUNK,
                 gallery_chunk_size: int = GALLERY_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k gallery items by dot product (cosine for normalised features), best first.

    `exclude[q]` is a gallery index removed from query q's ranking (-1 for none): the CIRR
    protocol removes each query's own reference image.

    Queries and gallery are both taken in chunks: each block's top k is merged into a running
    top k, so memory is bounded by one block whatever the gallery's size. The k best of the
    union of the blocks' k best are the k best overall, so the result is the same as one
    full matrix product (up to the order of exactly tied scores).
    """
    n_gallery = gallery_features.shape[0]
    k = max(0, min(k, n_gallery - (1 if exclude is not None else 0)))
    all_scores, all_indices = [], []
    for start in range(0, query_features.shape[0], chunk_size):
        queries = query_features[start:start + chunk_size].float()
        rows = exclude[start:start + chunk_size] if exclude is not None else None
        best_scores = torch.empty(len(queries), 0, device=queries.device)
        best_indices = torch.empty(len(queries), 0, dtype=torch.long, device=queries.device)
        for g_start in range(0, n_gallery, gallery_chunk_size):
            block = queries @ gallery_features[g_start:g_start + gallery_chunk_size].float().t()
            if rows is not None:
                local = rows - g_start
                hit = (rows >= 0) & (local >= 0) & (local < block.shape[1])
                block[torch.arange(len(rows), device=block.device)[hit], local[hit]] = float("-inf")
            top = block.topk(min(k, block.shape[1]), dim=1)
            del block  # freed before the next block is allocated: one block in memory, not two
            if g_start == 0:
                best_scores, best_indices = top.values, top.indices
                continue
            scores = torch.cat([best_scores, top.values], dim=1)
            indices = torch.cat([best_indices, top.indices + g_start], dim=1)
            merged = scores.topk(min(k, scores.shape[1]), dim=1)  # also orders blocks smaller than k
            best_scores, best_indices = merged.values, indices.gather(1, merged.indices)
        all_scores.append(best_scores)
        all_indices.append(best_indices)
    if not all_scores:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
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


class GallerySearch(Protocol):
    """A nearest-neighbour index over the (normalised) gallery: `search.SearchIndex`, e.g. FAISS."""

    def search(self, queries: torch.Tensor, k: int,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


def rank_split(split: CIRSplit, query_features: torch.Tensor, gallery_features: torch.Tensor,
               k: int, index: GallerySearch | None = None) -> Ranking:
    """The method's ranking for one split: whole gallery (reference, or the query's `excluded`
    entry, removed if the protocol says so) plus the CIRR subset ranking when the split has image sets.

    The global ranking is the exact chunked top-k unless `index` (built over the same gallery
    features) is given; approximate indexes may leave slots at -1."""
    gallery_index = {name: i for i, name in enumerate(split.gallery)}
    exclude = None
    if split.exclude_reference:
        exclude = torch.tensor([gallery_index[q.excluded or q.reference] for q in split.queries], dtype=torch.long)
    if index is None:
        scores, indices = rank_gallery(query_features, gallery_features, k, exclude)
    else:
        scores, indices = index.search(query_features, k, exclude)
    candidates = subset_candidates(split, gallery_index)
    subset = rank_subsets(query_features, gallery_features, candidates) if candidates is not None else None
    return Ranking(indices=indices, scores=scores, subset_indices=subset)
