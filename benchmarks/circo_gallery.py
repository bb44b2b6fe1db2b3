"""A CIRCO-sized gallery (~120k images): encoding and ranking time and peak memory.

    python benchmarks/circo_gallery.py                  # 120,000 x 640 gallery, 800 queries, top 50
    python benchmarks/circo_gallery.py --gallery 20000 --encode-images 128   # a quick look

Why: CIRCO ranks 800 test (220 val) queries against the 123k COCO 2017 unlabeled images, 50x
CIRR's gallery. This prints ONE table, every row measured in this run on the same synthetic
gallery (d=640, RN50x4's width; `--data clustered` CLIP-like vectors by default):

- encoding: the feature cache's write and read of the whole [N, 640] float32 matrix (what every
  run after the first does instead of encoding), and the tiny CPU CLIP's encode rate through
  `clip_cir.encoding.extraction.encode_images` on `--encode-images` real (synthetic) image files, whose
  time for N images is PROJECTED from that rate (marked as such; a real backbone belongs on a GPU);
- ranking (`--queries` x N, top `--k`): the baseline, one [queries x N] score matrix then
  top-k (what a naive evaluation does), against clip-cir's exact search chunked over queries
  and gallery (`clip_cir.encoding.ranking.rank_gallery`, what `clip-cir eval` / `submit-circo` run), and
  FAISS flat (exact) and IVF (approximate; build time on its own row) through
  `clip_cir.encoding.search.FaissSearch` (`--search faiss`).

Peak memory is the rise of the process's resident set (Linux VmHWM, reset before each step)
over its size before the step, so the gallery itself (N x 640 x 4 bytes) is not counted.
Ranking times are the median of `--repeats`. Needs faiss-cpu; about 1-2 minutes and ~2 GB RAM
on two cores with the defaults.
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from harness import quiet, status
from reporting import header, load_average, markdown_table
from safetensors.torch import save_file
from search import make_data

from clip_cir.encoding.extraction import FeatureCache, encode_images
from clip_cir.encoding.ranking import rank_gallery
from clip_cir.encoding.search import FaissSearch


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


@contextmanager
def peak_memory() -> Iterator[dict]:
    """Yields a dict whose "mb" is, afterwards, the step's peak resident memory above the
    resident size before it. Resets the kernel's high-water mark first (/proc/self/clear_refs)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    result: dict = {}
    try:
        yield result
    finally:
        result["mb"] = max(0, _status_kb("VmHWM") - before) / 1024


@dataclass
class Row:
    part: str
    what: str
    seconds: float
    peak_mb: float
    note: str = ""
    projected: bool = False


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[float, float, object]:
    """(median seconds, largest peak MB, last result) over `repeats` calls."""
    times, peaks, result = [], [], None
    for _ in range(repeats):
        result = None
        with peak_memory() as memory:
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        peaks.append(memory["mb"])
    return statistics.median(times), max(peaks), result


def agreement(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact))
    return 100.0 * hits / exact.numel()


def encoding_rows(gallery: torch.Tensor, args: argparse.Namespace, work: Path) -> list[Row]:
    n = gallery.shape[0]
    cache = FeatureCache(work / "cache")
    key = cache.key("benchmark", str(n))
    write_s, write_mb, _ = timed(lambda: cache.save(key, gallery))
    chunks = list((work / "cache" / key).iterdir())
    size_mb = sum(chunk.stat().st_size for chunk in chunks) / 2 ** 20
    # An entry as earlier versions wrote it, one file (still read): what the chunks cost on reading.
    single = cache.key("benchmark single", str(n))
    save_file({"features": gallery.contiguous()}, str(work / "cache" / f"{single}.safetensors"))

    def read(key: str) -> torch.Tensor:
        features = cache.load(key, n)
        features.sum()  # touch every page: a lazily mapped file would otherwise time nothing
        return features

    read_s, read_mb, loaded = timed(lambda: read(key))
    assert torch.equal(loaded, gallery)
    del loaded
    single_s, single_mb, loaded = timed(lambda: read(single))
    assert torch.equal(loaded, gallery)
    del loaded
    rows = [Row("encoding", f"feature cache write, {n:,} x {gallery.shape[1]} float32 ({size_mb:.0f} MB, "
                f"{len(chunks)} chunk files)", write_s, write_mb, "atomic safetensors, one per chunk"),
            Row("encoding", "feature cache read (every later eval, submit-circo, demo start)", read_s, read_mb,
                "instead of encoding (chunks in the page cache, copied into one tensor)"),
            Row("encoding", "feature cache read, one-file entry (earlier versions' format)", single_s, single_mb,
                "memory-mapped, no copy")]
    if args.encode_images:
        rows += tiny_encode_rows(n, args, work)
    return rows


def tiny_encode_rows(n: int, args: argparse.Namespace, work: Path) -> list[Row]:
    """Measure the tiny CLIP's encode rate on real image files from a synthetic CIRCO world, and
    project the time for the whole gallery from it."""
    from clip_cir.constants import TINY_MODEL
    from clip_cir.data.synthetic import generate
    from clip_cir.models.clip import load_clip

    count = args.encode_images
    with quiet():
        generate(work / "data", n_train=0, n_val=0, n_test=0, n_circo=max(1, count // 20), circo_distractors=count,
                 progress=False)
        clip = load_clip(TINY_MODEL)
    paths = sorted((work / "data" / "CIRCO" / "COCO2017_unlabeled" / "unlabeled2017").iterdir())[:count]
    transform = clip.image_transform("targetpad", 1.25)
    encode = lambda: encode_images(clip, paths, transform, batch_size=64, num_workers=args.num_workers,  # noqa: E731
                                   progress=False)
    encode()  # warm-up: worker start-up, first-batch allocations
    seconds, peak, _ = timed(encode)
    rate = count / seconds
    return [Row("encoding", f"tiny CLIP ({TINY_MODEL}, 64 px) encode, {count:,} image files", seconds, peak,
                f"{rate:.0f} images/s measured"),
            Row("encoding", f"tiny CLIP encode, {n:,} images (projected from that rate)", n / rate,
                peak + n * clip.embed_dim * 4 / 2 ** 20, "projected: rate x N; memory + the N x d output",
                projected=True)]


def ranking_rows(gallery: torch.Tensor, queries: torch.Tensor, args: argparse.Namespace) -> list[Row]:
    k, repeats = args.k, args.repeats
    n, q = gallery.shape[0], queries.shape[0]

    def unchunked():
        return (queries @ gallery.t()).topk(k, dim=1).indices

    base_s, base_mb, exact = timed(unchunked, repeats)
    rows = [Row("ranking", f"baseline: one {q:,} x {n:,} score matrix + top-{k}", base_s, base_mb, "100.0%")]
    chunk_s, chunk_mb, chunked = timed(lambda: rank_gallery(queries, gallery, k)[1], repeats)
    rows.append(Row("ranking", "clip-cir exact, chunked 1,024 queries x 16,384 images", chunk_s, chunk_mb,
                    f"{agreement(chunked, exact):.1f}%"))
    build_s, build_mb, flat = timed(lambda: FaissSearch(gallery, "flat"))
    rows.append(Row("ranking", f"faiss flat build (add {n:,}: the index keeps its own copy)", build_s, build_mb,
                    "one-off"))
    flat_s, flat_mb, found = timed(lambda: flat.search(queries, k)[1], repeats)
    rows.append(Row("ranking", flat.description, flat_s, flat_mb, f"{agreement(found, exact):.1f}%"))
    flat = None  # the index's copy of the gallery is freed before the next rows
    gc.collect()
    build_s, build_mb, ivf = timed(lambda: FaissSearch(gallery, "ivf", nprobe=args.nprobe))
    rows.append(Row("ranking", f"faiss IVF-Flat build (train + add {n:,})", build_s, build_mb, "one-off"))
    ivf_s, ivf_mb, found = timed(lambda: ivf.search(queries, k)[1], repeats)
    rows.append(Row("ranking", ivf.description, ivf_s, ivf_mb, f"{agreement(found, exact):.1f}%"))
    return rows


def format_rows(rows: list[Row]) -> str:
    baseline = next((r for r in rows if r.what.startswith("baseline")), None)
    body = []
    for r in rows:
        ratio = (f"{baseline.seconds / r.seconds:.2f}x / {r.peak_mb / baseline.peak_mb:.2f}x"
                 if baseline and r.part == "ranking" and not r.note == "one-off" and baseline.peak_mb > 0 else "")
        seconds = f"{r.seconds:.2f}" if r.seconds < 600 else f"{r.seconds / 60:.1f} min"
        body.append([r.part, r.what, ("~" if r.projected else "") + seconds,
                     ("~" if r.projected else "") + f"{r.peak_mb:,.0f}", r.note, ratio])
    return markdown_table(["step", "what", "seconds", "peak MB", "recall@k vs exact / note",
                           "speed / memory vs baseline"], body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=120_000, help="gallery size (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=640, help="feature dimension (default: %(default)s, RN50x4's)")
    parser.add_argument("--queries", type=int, default=800, help="queries (default: %(default)s, CIRCO test)")
    parser.add_argument("--k", type=int, default=50, help="results per query (default: %(default)s, CIRCO's)")
    parser.add_argument("--data", choices=("random", "clustered"), default="clustered",
                        help="random unit vectors or clustered CLIP-like ones (default: %(default)s)")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists scanned (default: nlist/8)")
    parser.add_argument("--repeats", type=int, default=3, help="ranking runs per row, median (default: %(default)s)")
    parser.add_argument("--encode-images", type=int, default=512,
                        help="image files the tiny CLIP encodes to measure its rate; 0 skips it (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers for encoding, as the "
                                                                    "commands' default (default: %(default)s)")
    parser.add_argument("--no-ranking", action="store_true", help="only the encoding rows (feature cache write and "
                                                                   "read, the tiny CLIP's rate)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.gallery <= args.k or min(args.dim, args.queries, args.k, args.repeats) < 1:
        parser.error("the gallery must exceed k, and dim, queries, k and repeats must be positive")
    torch.set_flush_denormal(True)
    print(header(f"CIRCO-sized gallery: encoding and ranking, {args.gallery:,} x {args.dim}", sys.argv))
    status(f"data: {args.data} {args.gallery:,} x {args.dim}, {args.queries} queries")
    gallery, queries = make_data(args.data, args.gallery, args.dim, args.queries, args.seed)
    with tempfile.TemporaryDirectory(prefix="circo_bench_") as tmp:
        status("encoding rows")
        rows = encoding_rows(gallery, args, Path(tmp))
    if not args.no_ranking:
        status("ranking rows")
        rows += ranking_rows(gallery, queries, args)
    print(f"{args.data} unit vectors, d={args.dim}; ranking: {args.queries} queries, top {args.k}, median of "
          f"{args.repeats}; peak MB = resident memory above the process's size before the step (the "
          f"{args.gallery * args.dim * 4 / 2 ** 20:.0f} MB gallery itself not counted); ~ = projected, not measured\n")
    print(format_rows(rows))
    print(f"\nload average (1/5/15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
