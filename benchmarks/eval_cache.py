"""A second `clip-cir eval` of the same model: what the feature cache saves.

    python benchmarks/eval_cache.py                 # defaults: about a minute on 2 idle cores
    python benchmarks/eval_cache.py --val 200       # a quick look

Why: evaluation is repeated (after every stage, for every combining function, for a report or
a demo), and a frozen CLIP gives the same gallery and caption features every time. clip-cir
caches them on disk, keyed by the tower's weights, the preprocessing and the inputs, so the
second evaluation of a model encodes nothing. This prints ONE table: the same `clip-cir eval`
command (`clip_cir.apps.cli.main`, in this process) twice on the synthetic CIRR val split, first
with an empty feature cache, then again; wall time of each (imports excluded: they are the
same for both), the images and captions it put through CLIP, and the speed-up of the second.
The model is the tiny CLIP (`cir-tiny-vit`, random init) saved once as a checkpoint, so both
runs load the same weights. Both must print the same metrics (checked). Everything goes under
a temp dir with its own cache, removed at the end.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from contextlib import redirect_stdout

import torch
from fixtures import load_model, make_synthetic_cirr
from harness import quiet, status, workspace
from reporting import header, load_average, markdown_table

from clip_cir.apps import cli
from clip_cir.data import load_splits
from clip_cir.encoding import extraction


def timed_eval(command: list[str]) -> tuple[float, int, int, str]:
    """Seconds, images and captions encoded, and the printed metrics of one `clip-cir eval`."""
    before = dict(extraction.encode_counts)
    out = io.StringIO()
    started = time.perf_counter()
    with quiet(), redirect_stdout(out):
        cli.main(command)
    seconds = time.perf_counter() - started
    return (seconds, extraction.encode_counts["image"] - before.get("image", 0),
            extraction.encode_counts["text"] - before.get("text", 0), out.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val", type=int, default=1000,
                        help="synthetic CIRR val queries, 3 gallery images each (default: %(default)s, the "
                             "quickstart's)")
    parser.add_argument("--model", default="cir-tiny-vit", help="open_clip model, random init (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="eval's --batch-size (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="eval's --num-workers (default: its automatic choice)")
    parser.add_argument("--seed", type=int, default=0, help="data and model seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.val < 1 or args.batch_size < 1:
        parser.error("--val and --batch-size must be positive")

    print(header("clip-cir eval: first run vs a second run of the same model (feature cache)",
                 sys.argv if argv is None else ["benchmarks/eval_cache.py", *argv]), flush=True)
    with workspace("clip_cir_bench_eval_") as root:
        status(f"generating {args.val} synthetic CIRR val queries ...")
        data_root = make_synthetic_cirr(root, 0, args.seed, n_val=args.val)
        gallery = len(load_splits("cirr", data_root, "val")[0].gallery)
        clip, _ = load_model(args.model, args.seed)
        checkpoint = root / "clip.pt"
        torch.save({"CLIP": clip.model.state_dict()}, checkpoint)
        command = ["eval", "--dataset", "cirr", "--data-root", str(data_root), "--split", "val",
                   "--pretrained", str(checkpoint), "--batch-size", str(args.batch_size),
                   "--cache-dir", str(root / "cache" / "features"),
                   *([] if args.num_workers is None else ["--num-workers", str(args.num_workers)])]
        runs = []
        for label in ("first `clip-cir eval` (empty feature cache)", "second `clip-cir eval`, same model"):
            status(f"{label} ...")
            runs.append((label, *timed_eval(command)))
    first_s, first_metrics = runs[0][1], runs[0][4]
    rows = [[label, f"{seconds:.2f}", f"{images:,}", f"{texts:,}", f"{first_s / seconds:.1f}x"]
            for label, seconds, images, texts, _ in runs]
    print(f"data: synthetic CIRR val, {args.val:,} queries over a {gallery:,}-image gallery of 64 px; model "
          f"{args.model} (random init, saved as a checkpoint); eval --batch-size {args.batch_size}, "
          f"{'automatic' if args.num_workers is None else args.num_workers} DataLoader workers; wall time in "
          f"this process, imports excluded\n")
    print(markdown_table(["`clip-cir eval`", "seconds", "images encoded", "captions encoded", "speed-up"], rows))
    print(f"\nsame metrics printed by both: {'yes' if runs[1][4] == first_metrics else 'NO'}")
    print(f"load average (1/5/15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
