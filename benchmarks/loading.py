"""Image loading per CPU core: decoding + preprocessing versus the pixel cache, on photo-sized files.

    python benchmarks/loading.py                    # defaults: well under a minute
    python benchmarks/loading.py --size 224         # ViT-B-16's input size instead of RN50x4's 288

Why: where an image tower trains, every epoch needs every training image's pixels again. The
published code decodes each file and preprocesses it every time; clip-cir's pixel cache stores
the preprocessed uint8 pixels once in a memory-mapped .npy and reads them back (the method has
no augmentation, so this is exact: the check below compares the tensors). How many images a
core can deliver decides how many cores a GPU step needs. This prints ONE table, all rows in
this run, on rendered photo-like files where the real datasets' files are:

  - 500x375 PNG, as CIRR's (NLVR2) photos, ~320 KB each (real ones: 200-400 KB);
  - 400x600 JPEG, as FashionIQ's product shots, ~50 KB each (real ones: 30-60 KB);

each through `--transform targetpad` (ratio 1.25) to `--size` px: decoding
(`clip_cir.encoding.pixels.DecodedPixels`: open, decode, pad, bicubic resize, crop, uint8) against the
pixel cache (`clip_cir.encoding.pixels.PixelCache` -> `PixelDataset`), both batched by a DataLoader in
the main process and normalised to the model's float input (`ImageTransform.normalize`), on
ONE thread: images/s per core. The median of `--repeats` passes; the cache file is in the page
cache after its write, as it is from a training run's second epoch on (if RAM holds it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from fixtures import PHOTO_KINDS, render_photos
from harness import quiet, status
from reporting import header, load_average, markdown_table
from timing import loader_rate
from torch.utils.data import Dataset

from clip_cir.encoding.pixels import DecodedPixels, PixelCache, PixelDataset
from clip_cir.models.transforms import ImageTransform, build_transform


def rates(source: Dataset, transform: ImageTransform, args: argparse.Namespace) -> tuple[float, float]:
    """Images/s per core of `source` as uint8 batches (what a GPU run's loader hands over; the
    GPU normalises) and normalised to float on this CPU (what a CPU run adds)."""
    return tuple(loader_rate(source, transform, batch_size=args.batch_size, num_workers=0, device=torch.device("cpu"),
                             repeats=args.repeats, normalize=normalize) for normalize in (False, True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="files of each kind (default: %(default)s)")
    parser.add_argument("--size", type=int, default=288,
                        help="model input size in px (default: %(default)s, RN50x4's; ViT-B-16: 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="DataLoader batch (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per path, median (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    if min(args.images, args.size, args.batch_size, args.repeats) < 1:
        parser.error("--images, --size, --batch-size and --repeats must be positive")
    torch.set_num_threads(1)  # per core: the DataLoader runs in this process (no workers) on one thread

    print(header("clip-cir image loading per core: decoding vs the pixel cache",
                 sys.argv if argv is None else ["benchmarks/loading.py", *argv]), flush=True)
    transform = build_transform("targetpad", args.size, target_ratio=1.25)
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="clip_cir_bench_loading_") as tmp:
        for kind, (width, height, fmt) in PHOTO_KINDS.items():
            status(f"rendering {args.images} {width}x{height} {fmt} files ...")
            paths = render_photos(Path(tmp) / kind, kind, args.images, args.seed)
            kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
            status(f"{fmt}: decoding ...")
            decoded = DecodedPixels(paths, transform)
            decode_rates = rates(decoded, transform, args)
            started = time.perf_counter()
            with quiet():
                cached = PixelCache(Path(tmp) / "pixels").get(paths, transform, progress=False)
            write_s = time.perf_counter() - started
            status(f"{fmt}: pixel cache ...")
            cache_rates = rates(PixelDataset(cached), transform, args)
            same = all(torch.equal(transform.normalize(decoded[i][None]), transform.normalize(cached[i][None]))
                       for i in range(len(paths)))
            files = f"{width}x{height} {fmt}, {kb:.0f} KB"
            for path, (uint8, normalised) in ((f"decode + targetpad to {args.size} px", decode_rates),
                                              ("pixel cache (memory map)", cache_rates)):
                rows.append([files, path, f"{1000 / uint8:.2f}", f"{uint8:,.0f}", f"{uint8 / decode_rates[0]:.1f}x",
                             f"{normalised:,.0f}", f"{normalised / decode_rates[1]:.1f}x"])
            notes.append(f"{fmt}: pixel cache written once in {write_s:.2f} s for {len(paths)} images "
                         f"({1000 * write_s / len(paths):.1f} ms each: one decode plus the write); model inputs "
                         f"identical to decoding: {'yes' if same else 'NO'}")
    print(f"{args.images} rendered files of each kind, targetpad 1.25 to {args.size} px, DataLoader batches of "
          f"{args.batch_size} in the main process, 1 torch thread; median of {args.repeats} passes; pixel cache "
          f"size: 3 x {args.size} x {args.size} bytes = {3 * args.size ** 2 / 1000:.0f} KB per image\n")
    print(markdown_table(["files", "path", "ms / image (uint8)", "images/s per core (uint8)", "vs decoding",
                          "images/s per core + normalise on the CPU", "vs decoding"], rows))
    print()
    print("\n".join(notes))
    print(f"load average (1/5/15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
