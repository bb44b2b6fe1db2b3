"""Nearest-neighbour search over normalised gallery features, behind one small interface.

Every caller (the web demo, scripts) asks the same question — "the k gallery items with the
largest dot product with this query, optionally minus one item" — so the back-end can change
with the gallery's size without touching the caller:

- `ExactSearch`: torch matmul + top-k (the same code path as evaluation, `ranking.rank_gallery`).
  Exact, no build step; a query scans the whole gallery, which is fine up to ~10^5-10^6 items.
- `FaissSearch`: a `faiss-cpu` index (optional extra `clip-cir[faiss]`) for 10^5-10^7 items:
  `flat` (exact, BLAS), `ivf` (inverted lists; scans `nprobe` of `nlist` clusters) or `hnsw`
  (graph). Approximate indexes trade recall for latency; `benchmarks/search.py` measures both.

Scores are inner products, i.e. cosine similarities when queries and gallery are normalised.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

import numpy as np
import torch

from clip_cir.constants import FAISS_INDEXES, SEARCH_BACKENDS
from clip_cir.encoding.ranking import rank_gallery
from clip_cir.errors import CIRError

if TYPE_CHECKING:
    from clip_cir.config import SearchConfig


class SearchIndex(Protocol):
    """What a back-end offers: top-k by inner product, with one optional excluded item per query."""

    description: str
    """Human-readable back-end and parameters, shown by the demo and the benchmark."""

    def __len__(self) -> int: ...

    def search(self, queries: torch.Tensor, k: int,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [Q, k'], indices [Q, k']) best first, k' = min(k, gallery size minus exclusions).

        `exclude[q]` is a gallery index left out of query q's results (-1 for none).
        Approximate back-ends may find fewer than k' items: missing slots hold index -1 and
        score -inf.
        """
        ...


def _check_features(features: torch.Tensor) -> torch.Tensor:
    if features.ndim != 2 or features.shape[0] == 0:
        raise CIRError(f"a search index needs a non-empty [N, D] feature matrix, got shape {tuple(features.shape)}")
    return features.detach().float().cpu().contiguous()


def _check_query(queries: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    if queries.ndim == 1:
        queries = queries.unsqueeze(0)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise CIRError(f"queries must be [Q, {dim}], got shape {tuple(queries.shape)}")
    if k < 1:
        raise CIRError(f"k must be at least 1, got {k}")
    return queries.detach().float().cpu().contiguous()


class ExactSearch:
    """Brute force: every query against every gallery item, then top-k."""

    def __init__(self, features: torch.Tensor, chunk_size: int = 1024):
        self.features = _check_features(features)
        self.chunk_size = chunk_size
        self.description = "exact (torch matmul + top-k)"

    def __len__(self) -> int:
        return self.features.shape[0]

    def search(self, queries: torch.Tensor, k: int,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        queries = _check_query(queries, self.features.shape[1], k)
        return rank_gallery(queries, self.features, k, exclude, chunk_size=self.chunk_size)


def require_faiss() -> ModuleType:
    """The faiss module, or a one-line error saying how to install it (checked before any work by
    the commands that take --search faiss)."""
    try:
        import faiss
    except ImportError:
        raise CIRError("the FAISS back-end needs faiss-cpu: pip install 'clip-cir[faiss]'") from None
    return faiss


@contextmanager
def _single_thread(faiss) -> Iterator[None]:
    """One OpenMP thread for a single query: FAISS splits work across queries, so more threads only
    add start-up and spin-wait overhead next to torch's own OpenMP pool."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def default_nlist(n: int) -> int:
    """sqrt(N) inverted lists (at least 39 training points each): the usual starting point,
    cheap to train on two cores even at 10^6 items."""
    return max(1, min(round(math.sqrt(n)), n // 39))


class FaissSearch:
    """A FAISS inner-product index over the gallery.

    `nprobe` (IVF) and `ef_search` (HNSW) set the recall/latency trade-off at query time;
    `nprobe=nlist` or a large `ef_search` on a small gallery make the result exact.
    """

    def __init__(self, features: torch.Tensor, index: str = "ivf", *, nlist: int | None = None,
                 nprobe: int | None = None, hnsw_m: int = 32, ef_construction: int = 80,
                 ef_search: int = 128, train_size: int | None = None, seed: int = 0):
        faiss = require_faiss()
        data = _check_features(features).numpy()
        n, dim = data.shape
        if index == "flat":
            self.index = faiss.IndexFlatIP(dim)
            self.description = "faiss flat (exact)"
        elif index == "ivf":
            nlist = min(nlist or default_nlist(n), n)
            nprobe = min(nprobe or max(1, nlist // 8), nlist)
            self.quantizer = faiss.IndexFlatIP(dim)  # kept referenced: the IVF index does not own it
            self.index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = seed
            sample = data
            limit = train_size or 64 * nlist
            if n > limit:
                rows = np.random.default_rng(seed).choice(n, size=limit, replace=False)
                sample = data[np.sort(rows)]
            self.index.train(sample)
            self.index.nprobe = nprobe
            self.description = f"faiss IVF-Flat (nlist={nlist}, nprobe={nprobe})"
        elif index == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = ef_construction
            self.index.hnsw.efSearch = ef_search
            self.description = f"faiss HNSW-Flat (M={hnsw_m}, efSearch={ef_search})"
        else:
            raise CIRError(f"unknown FAISS index '{index}' (choose from {', '.join(FAISS_INDEXES)})")
        self.index.add(data)
        self.dim = dim
        self.faiss = faiss

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: torch.Tensor, k: int,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        queries = _check_query(queries, self.dim, k)
        n = len(self)
        k = min(k, n - (1 if exclude is not None else 0))
        if k < 1:
            return torch.empty(queries.shape[0], 0), torch.empty(queries.shape[0], 0, dtype=torch.long)
        fetch = min(k + (1 if exclude is not None else 0), n)
        with _single_thread(self.faiss) if queries.shape[0] == 1 else nullcontext():
            scores, indices = self.index.search(queries.numpy(), fetch)
        scores, indices = torch.from_numpy(scores), torch.from_numpy(indices).long()
        scores[indices < 0] = float("-inf")
        if exclude is None:
            return scores[:, :k], indices[:, :k]
        # Drop the excluded item where it was found, else the last extra slot; order is kept.
        exclude = exclude.view(-1, 1).long()
        drop = (indices == exclude) & (exclude >= 0)
        missing = ~drop.any(dim=1)
        drop[missing, -1] = True
        keep = ~drop
        return scores[keep].view(-1, fetch - 1)[:, :k], indices[keep].view(-1, fetch - 1)[:, :k]


def build_index(features: torch.Tensor, backend: str = "exact", **faiss_options) -> SearchIndex:
    """The back-end named by `--search` over (normalised) gallery features."""
    if backend == "exact":
        return ExactSearch(features)
    if backend == "faiss":
        return FaissSearch(features, **faiss_options)
    raise CIRError(f"unknown search back-end '{backend}' (choose from {', '.join(SEARCH_BACKENDS)})")


def index_factory(config: SearchConfig) -> Callable[[torch.Tensor], SearchIndex] | None:
    """`None` for exact search (evaluation's own chunked top-k), else a function that builds the
    chosen FAISS index over normalised gallery features. FAISS is imported here, so a missing
    faiss-cpu stops the command before any work."""
    if config.faiss_nprobe is not None and config.faiss_nprobe <= 0:
        raise CIRError(f"--faiss-nprobe must be positive, got {config.faiss_nprobe}")
    if config.search == "exact":
        return None
    require_faiss()
    return lambda gallery: build_index(gallery, config.search, index=config.faiss_index, nprobe=config.faiss_nprobe)
