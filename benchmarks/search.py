"""Nearest-neighbour back-ends on large synthetic galleries: latency and agreement with exact search.

    python benchmarks/search.py                      # 10k, 100k, 1M random unit vectors, d=640
    python benchmarks/search.py --sizes 10000 --dim 128 --data clustered

Why: the demo (and any script) ranks a gallery per query; past ~10^5 images a brute-force scan
costs tens to hundreds of milliseconds, and an approximate FAISS index trades some recall for
speed. This prints ONE table: for each gallery size and back-end, build time, single-query
latency (median and 95th percentile) and recall@10 agreement = |top-10 ∩ exact top-10| / 10,
averaged over the queries.

`--data random` (default) draws gallery and queries uniformly on the unit sphere. That is the
worst case for any approximate index: in high dimension a random query's top 10 are barely
closer than the rest, so an index that scans a fraction f of the gallery finds about f of them.
`--data clustered` draws points around random centres (as real CLIP features are clustered by
content) and queries near gallery points, which is where approximate search is meant to work.
Needs `faiss-cpu` (`pip install 'clip-cir[faiss]'`); ~3 minutes and ~7 GB RAM for the defaults
on two cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from clip_cir.encoding.search import (
    ExactSearch,
    FaissSearch,
    SearchIndex,
    default_nlist,
)


def unit(x: torch.Tensor) -> torch.Tensor:
    """In-place L2 normalisation (a 1M x 640 gallery is 2.6 GB: no copies)."""
    return x.div_(x.norm(dim=1, keepdim=True))


def make_data(kind: str, n: int, dim: int, n_queries: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        return unit(torch.randn(n, dim, generator=gen)), unit(torch.randn(n_queries, dim, generator=gen))
    centres = unit(torch.randn(max(1, n // 100), dim, generator=gen))
    gallery = torch.randn(n, dim, generator=gen).mul_(0.5 / dim ** 0.5)
    gallery += centres[torch.randint(len(centres), (n,), generator=gen)]
    unit(gallery)
    near = gallery[torch.randint(n, (n_queries,), generator=gen)]
    queries = unit(near + torch.randn(n_queries, dim, generator=gen) * (0.3 / dim ** 0.5))
    return gallery, queries


def timed_search(index: SearchIndex, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, list[float]]:
    """One query at a time, as the demo asks them: per-query latency in ms, and the results."""
    index.search(queries[:1], k)  # warm-up (first call allocates)
    found, latencies = [], []
    for i in range(queries.shape[0]):
        start = time.perf_counter()
        _, indices = index.search(queries[i:i + 1], k)
        latencies.append((time.perf_counter() - start) * 1000)
        found.append(indices)
    return torch.cat(found), latencies


def agreement(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact))
    return hits / exact.numel()


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def build(kind: str, gallery: torch.Tensor) -> SearchIndex:
    if kind == "exact":
        return ExactSearch(gallery)
    if kind == "flat":
        return FaissSearch(gallery, "flat")
    return FaissSearch(gallery, "ivf", nlist=default_nlist(gallery.shape[0]))


def queries_for(n: int, args: argparse.Namespace) -> int:
    """Fewer queries on big galleries, where one exact query scans gigabytes."""
    return min(args.queries, max(args.min_queries, int(args.query_budget // n)))


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n in args.sizes:
        n_queries = queries_for(n, args)
        start = time.perf_counter()
        gallery, queries = make_data(args.data, n, args.dim, n_queries, args.seed)
        print(f"[{n:,} x {args.dim}] data in {time.perf_counter() - start:.1f}s, {n_queries} queries",
              file=sys.stderr, flush=True)

        kinds = ["exact"] + ([] if args.no_flat else ["flat"]) + ["ivf"]
        exact = None
        for kind in kinds:
            start = time.perf_counter()
            index = build(kind, gallery)
            build_s = time.perf_counter() - start
            backend = "exact" if kind == "exact" else "faiss"
            settings = [None]
            if isinstance(index, FaissSearch) and hasattr(index.index, "nprobe"):
                nlist = index.index.nlist
                settings = sorted({max(1, min(nlist, round(nlist * f))) for f in args.nprobe_fractions})
            for nprobe in settings:
                if nprobe is not None:
                    index.index.nprobe = nprobe
                    index.description = f"faiss IVF-Flat (nlist={index.index.nlist}, nprobe={nprobe})"
                found, latencies = timed_search(index, queries, args.k)
                if exact is None:
                    exact = found
                rows.append({"n": n, "backend": backend, "index": index.description, "build_s": build_s,
                             "queries": n_queries, "p50_ms": statistics.median(latencies),
                             "p95_ms": p95(latencies), "recall": agreement(found, exact)})
                print(f"  {index.description}: {rows[-1]['p50_ms']:.2f} ms, agreement {rows[-1]['recall']:.3f}",
                      file=sys.stderr, flush=True)
            del index
        del gallery, queries
    return rows


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    header = ["gallery", "back-end", "index", "build s", "queries", "p50 ms", "p95 ms",
              f"recall@{args.k} vs exact"]
    body = [[f"{r['n']:,}", r["backend"], r["index"], f"{r['build_s']:.1f}", str(r["queries"]),
             f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{100 * r['recall']:.1f}%"] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    title = (f"Nearest-neighbour search, {args.data} unit vectors, d={args.dim}, k={args.k}, "
             f"single-query latency, {torch.get_num_threads()} threads")
    lines = [title,
             "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |" for b in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="gallery sizes (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=640, help="feature dimension (default: %(default)s, RN50x4's)")
    parser.add_argument("--data", choices=("random", "clustered"), default="random",
                        help="random unit vectors (worst case for approximate search) or clustered ones")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=200, help="queries per gallery at most (default: %(default)s)")
    parser.add_argument("--min-queries", type=int, default=50,
                        help="queries per gallery at least (default: %(default)s)")
    parser.add_argument("--query-budget", type=float, default=5e7,
                        help="queries x gallery size to aim for; bounds the time of exact search on big "
                             "galleries (default: %(default)g)")
    parser.add_argument("--nprobe-fractions", type=float, nargs="+", default=[1 / 16, 1 / 4],
                        help="IVF nprobe as fractions of nlist, one row each (default: 1/16 1/4)")
    parser.add_argument("--no-flat", action="store_true", help="skip the exact FAISS flat index")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if min(args.sizes) < args.k + 1 or args.dim < 1 or args.k < 1 or args.queries < 1:
        parser.error("sizes must exceed k, and dim, k and queries must be positive")
    print(format_table(run(args), args))


if __name__ == "__main__":
    main()
