"""Large triplet files: reading time and memory, and the time to the first training step.

    python benchmarks/large_data.py                          # 10^4, 10^5, 10^6 rows; ~3 minutes
    python benchmarks/large_data.py --rows 10000 100000      # fewer sizes
    python benchmarks/large_data.py --formats csv            # CSV only (JSONL is read row by row)

Why: a team with a million synthetic triplets (LaSCo, CoVR, MegaPairs style) pretrains stage 1 on
them. This prints ONE table, every row measured in this run:

  - reading: `load_triplets` of a CSV (and of the same rows as JSONL) with N rows (paths only: no
    image is opened, `ImageCheck(require_files=False)`), each in a fresh process: wall and CPU
    time, and the resident memory the read splits hold (RSS after reading minus RSS after
    imports), per row too;
  - first step: `stage1/finetune.py --encoder both --pixel-cache off` (images decoded by the
    loader, as where the pixel cache would not fit) on a `--first-step-rows`-row file naming
    each of `--distinct-images` files (hard links to `--images` rendered 500x375 PNG photos, so
    each is a file of its own to check), from the call of the program to the end of its first
    optimizer step (tiny CLIP, batch 32, no workers on this CPU). Before its first step the
    program checks every distinct image's header once: this row grows with the distinct images.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from fixtures import render_photos
from harness import status, workspace
from reporting import header, markdown_table

READ_SCRIPT = """
import json, sys, time
from pathlib import Path
from clip_cir.data.images import ImageCheck
from clip_cir.data.triplets import load_triplets
def rss_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
before = rss_kb()
start, cpu = time.perf_counter(), time.process_time()
# As the training programs read a training split (`used_only`): a repeated triplet is allowed there.
splits = load_triplets(Path(sys.argv[1]), "train", images=ImageCheck(require_files=False, used_only=("train",)))
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu": cpu, "kb": rss_kb() - before, "queries": len(splits[0].queries)}))
"""


def write_rows(path: Path, rows: int, images: list[str], seed: int, numbered: bool = False) -> None:
    """A CSV or JSONL (by suffix) of `rows` triplets over `images` (relative paths), captions of
    realistic length; `numbered` captions make every query distinct, as an evaluated split must be."""
    rng = random.Random(seed)
    colours = ("red", "blue", "green", "black", "white", "striped", "floral")
    with open(path, "w", encoding="utf-8") as f:
        if path.suffix == ".csv":
            f.write("reference,caption,target\n")
        for i in range(rows):
            reference, target = rng.sample(images, 2)
            caption = f"is {colours[i % 7]} with long sleeves and a {colours[(i * 3) % 7]} collar"
            caption += f" in view {i}" if numbered else ""
            f.write(f"{reference},{caption},{target}\n" if path.suffix == ".csv" else
                    json.dumps({"reference": reference, "caption": caption, "target": target}) + "\n")


class FirstStep(Exception):
    """Raised after the first optimizer step: the measurement is complete."""


def first_step_seconds(root: Path, rows: int, photos: list[Path], distinct: int, seed: int) -> float:
    names = []
    for i in range(distinct):
        link = root / "images" / f"{i // 1000:04d}" / f"{i:08d}.png"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.hardlink_to(photos[i % len(photos)])
        names.append(str(link.relative_to(root)))
    write_rows(root / "train.csv", rows, names, seed)
    write_rows(root / "val.csv", 64, names, seed + 1, numbered=True)
    import clip_cir
    from clip_cir.training import loop

    original = loop.training_step

    def step_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        raise FirstStep

    loop.training_step = step_then_stop
    start = time.perf_counter()
    try:
        clip_cir.finetune(dataset="triplets", data_root=root, model="cir-tiny-vit", encoder="both", pixel_cache="off",
                          batch_size=32, epochs=1, num_workers=0, output_dir=root / "runs",
                          experiment_name="first-step", no_progress=True, cache_dir=root / "cache")
    except FirstStep:
        return time.perf_counter() - start
    finally:
        loop.training_step = original
    raise RuntimeError("the run ended without a training step")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--formats", nargs="+", choices=("csv", "jsonl"), default=["csv", "jsonl"])
    parser.add_argument("--first-step-rows", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=256, help="rendered photos the first-step files link to")
    parser.add_argument("--distinct-images", type=int, nargs="+", default=[256, 100_000],
                        help="distinct image files the first-step file names, one first-step row each")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = []
    with workspace("clip_cir_large_data_") as root:
        images = [f"images/{i // 1000:04d}/{i:08d}.jpg" for i in range(max(args.rows))]
        for suffix in args.formats:
            for rows in args.rows:
                status(f"reading {rows:,} rows of {suffix.upper()} ...")
                folder = root / f"{suffix}{rows}"
                folder.mkdir()
                write_rows(folder / f"train.{suffix}", rows, images[:max(2, rows)], args.seed)
                out = subprocess.run([sys.executable, "-c", READ_SCRIPT, str(folder)], capture_output=True, text=True,
                                     check=True)
                result = json.loads(out.stdout)
                assert result["queries"] == rows
                table.append([f"read {rows:,} rows, {suffix.upper()}", f"{result['seconds']:.2f} s",
                              f"{result['cpu']:.2f} s", f"{result['kb'] / 1024:.0f} MB",
                              f"{1024 * result['kb'] / rows:.0f} B"])
        photos = render_photos(root / "photos", "png", args.images, args.seed)
        for distinct in args.distinct_images:
            status(f"first training step on {args.first_step_rows:,} rows over {distinct:,} images ...")
            seconds = first_step_seconds(root / f"first{distinct}", args.first_step_rows, photos, distinct, args.seed)
            table.append([f"stage 1 both, {args.first_step_rows:,} rows over {distinct:,} distinct images: call to "
                          "first step", f"{seconds:.1f} s", "", "", ""])
    print(header("Large triplet files", sys.argv[1:] if argv is None else argv))
    print(markdown_table(["measure", "time", "CPU time", "RSS added", "per row"], table))


if __name__ == "__main__":
    main()
