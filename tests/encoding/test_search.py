"""The nearest-neighbour interface: both back-ends give the exact top-k (when asked to be exact),
handle the excluded reference the same way, and reject bad input with a clear message."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO

from clip_cir.encoding.search import ExactSearch, FaissSearch, build_index
from clip_cir.errors import CIRError

faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'clip-cir[faiss]')")

N, D, K = 600, 32, 10


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(N, D, generator=gen), dim=-1)
    queries = F.normalize(torch.randn(40, D, generator=gen), dim=-1)
    return gallery, queries


@pytest.fixture(scope="module")
def exact(data):
    return ExactSearch(data[0])


@pytest.fixture(scope="module")
def faiss_indexes(data) -> dict[str, FaissSearch]:
    """FAISS indexes set to search exhaustively: every one must reproduce exact search."""
    gallery = data[0]
    return {"flat": FaissSearch(gallery, "flat"),
            "ivf": FaissSearch(gallery, "ivf", nlist=8, nprobe=8),
            "hnsw": FaissSearch(gallery, "hnsw", hnsw_m=16, ef_construction=200, ef_search=N)}


def test_exact_search_is_brute_force_top_k(data, exact):
    gallery, queries = data
    scores, indices = exact.search(queries, K)
    expected = (queries @ gallery.T).topk(K, dim=1)
    assert torch.equal(indices, expected.indices)
    assert torch.allclose(scores, expected.values)
    assert len(exact) == N and "exact" in exact.description


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_agrees_with_exact_search(data, exact, faiss_indexes, kind):
    queries = data[1]
    index = faiss_indexes[kind]
    want_scores, want = exact.search(queries, K)
    got_scores, got = index.search(queries, K)
    assert torch.equal(got, want), f"{index.description} differs from exact search"
    assert torch.allclose(got_scores, want_scores, atol=1e-5)
    # The single-query path (one OpenMP thread) gives the same answer and restores the thread count.
    threads = faiss.omp_get_max_threads()
    _, one = index.search(queries[0], K)
    assert torch.equal(one, want[:1]) and faiss.omp_get_max_threads() == threads


def test_approximate_ivf_finds_most_neighbours_on_clustered_data():
    """Where approximate search is meant to work (clustered features), scanning 1/4 of the lists
    finds nearly all of the exact top 10."""
    gen = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(20, D, generator=gen), dim=-1)
    gallery = F.normalize(centres[torch.randint(20, (2000,), generator=gen)]
                          + 0.05 * torch.randn(2000, D, generator=gen), dim=-1)
    queries = F.normalize(gallery[:50] + 0.02 * torch.randn(50, D, generator=gen), dim=-1)
    _, want = ExactSearch(gallery).search(queries, K)
    index = FaissSearch(gallery, "ivf", nlist=20, nprobe=5)
    _, got = index.search(queries, K)
    found = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, want)) / want.numel()
    assert found > 0.9, index.description


@pytest.mark.parametrize("backend", ["exact", "flat", "ivf", "hnsw"])
def test_excluded_item_is_removed_and_order_kept(data, exact, faiss_indexes, backend):
    queries = data[1]
    index = exact if backend == "exact" else faiss_indexes[backend]
    # Exclude each query's own best match on even rows, nothing (-1) on odd rows.
    _, full = exact.search(queries, K + 1)
    exclude = torch.where(torch.arange(len(queries)) % 2 == 0, full[:, 0], torch.full((len(queries),), -1))
    scores, indices = index.search(queries, K, exclude)
    assert indices.shape == (len(queries), K)
    for row, (excluded, got) in enumerate(zip(exclude.tolist(), indices.tolist())):
        want = [i for i in full[row].tolist() if i != excluded][:K]
        assert got == want
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_k_larger_than_gallery_returns_everything(backend):
    gallery = F.normalize(torch.randn(5, 8), dim=-1)
    index = build_index(gallery, backend, index="flat") if backend == "faiss" else build_index(gallery)
    _, indices = index.search(gallery[:1], 50)
    assert sorted(indices[0].tolist()) == list(range(5))
    _, indices = index.search(gallery[:1], 50, exclude=torch.tensor([0]))
    assert sorted(indices[0].tolist()) == [1, 2, 3, 4]


def test_bad_inputs_are_clear_errors(data, exact):
    gallery, queries = data
    with pytest.raises(CIRError, match="k must be at least 1"):
        exact.search(queries, 0)
    with pytest.raises(CIRError, match=r"queries must be \[Q, 32\]"):
        exact.search(torch.randn(2, 7), 3)
    with pytest.raises(CIRError, match="non-empty"):
        ExactSearch(torch.empty(0, 4))
    with pytest.raises(CIRError, match="unknown search back-end 'annoy'"):
        build_index(gallery, "annoy")
    with pytest.raises(CIRError, match="unknown FAISS index 'pq'"):
        FaissSearch(gallery, "pq")
    with pytest.raises(CIRError, match=r"queries must be \[Q, 32\]"):
        FaissSearch(gallery, "flat").search(torch.randn(1, 3), 3)


def test_benchmark_prints_one_table(capsys):
    """benchmarks/search.py on a tiny gallery: one table, every back-end, exact rows agree 100%."""
    spec = importlib.util.spec_from_file_location("bench_search", REPO / "benchmarks" / "search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--sizes", "400", "--dim", "16", "--queries", "20", "--min-queries", "5"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("Nearest-neighbour search, random unit vectors, d=16")
    rows = [line for line in out[3:] if line.startswith("|")]
    assert len(rows) == len(out) - 3 == 4  # exact, faiss flat, IVF at two nprobe settings
    assert "exact (torch" in rows[0] and "100.0%" in rows[0]
    assert "faiss flat" in rows[1] and "100.0%" in rows[1]
    assert all("IVF-Flat" in row for row in rows[2:])
