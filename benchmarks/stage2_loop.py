"""Stage-2 loop overhead: what an epoch costs when the Combiner's math is almost nothing.

    python benchmarks/stage2_loop.py                           # defaults: well under a minute
    python benchmarks/stage2_loop.py --forms 4                 # FashionIQ's four caption forms
    python benchmarks/stage2_loop.py --triplets 28000 --batch-size 4096 --projection-dim 2560 --hidden-dim 5120

Why: stage 2 trains the Combiner for 300 epochs on precomputed features, so whatever the loop
spends per epoch besides the Combiner is paid 300 times. With the Combiner shrunk to 8/8
(projection/hidden) the epoch time is that overhead. This prints ONE table, both rows measured
in this run through the library's own loop (`clip_cir.training.loop.fit`), loss
(`stage2.feature_forward` + `batch_contrastive_loss`), Combiner, optimizer and timing
(`train_metrics.csv`), on the same random features:

  (a) batches as tensor work, what `clip_cir.training.stage2` runs: `FeatureBatches` draws a
      permutation and the caption forms once per epoch and slices them;
  (b) the per-item path it replaced (the baseline): `TripletDataset` items (a Python call and a
      dict per triplet) collated by a DataLoader over an `EpochSampler`, prepared by Accelerate;
  (c) the floor: (a)'s first-epoch batches drawn before timing and replayed every epoch, so the
      same steps run with no batch drawing at all.

"Loop overhead" is a row's epoch time minus (c)'s: what drawing the batches costs on top of
the Combiner, loss, backward and optimizer steps (which a bigger Combiner or feature size
makes dominant). ms/epoch is the median of epochs 2..N pooled over `--rounds` interleaved
rounds. The features are random (the loop never looks at their values); `--dim` is the tiny
CLIP's width by default (RN50x4: 640). The 300-epoch column projects the epoch to CIRR's
28,225 training triplets.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from baselines import stage2_epochs
from fixtures import synthetic_triplets
from harness import baseline_device, fresh_accelerator, status
from reporting import header, load_average, markdown_table
from timing import Epochs

CIRR_TRIPLETS = 28_225
SCHEDULE = 300


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triplets", type=int, default=5000, help="training triplets (default: %(default)s)")
    parser.add_argument("--images", type=int, default=None,
                        help="distinct images (default: 0.6 x triplets, CIRR's train ratio)")
    parser.add_argument("--forms", type=int, default=1,
                        help="caption forms per triplet: 1 as CIRR, 4 as FashionIQ (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=128,
                        help="CLIP feature size (default: %(default)s, cir-tiny-vit's; RN50x4's is 640)")
    parser.add_argument("--projection-dim", type=int, default=8, help="Combiner projection size (default: %(default)s)")
    parser.add_argument("--hidden-dim", type=int, default=8, help="Combiner hidden size (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="triplets per step (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs per path and round, at least 2: epoch 1 is warm-up (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both paths (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    images = args.images or max(2, int(0.6 * args.triplets))
    if args.epochs < 2 or args.rounds < 1 or args.forms < 1 or not 0 < args.batch_size <= args.triplets:
        parser.error("need --epochs >= 2, --rounds >= 1, --forms >= 1 and 0 < --batch-size <= --triplets")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(header("clip-cir stage 2: loop overhead per epoch", sys.argv if argv is None else
                 ["benchmarks/stage2_loop.py", *argv]), flush=True)
    device = baseline_device()
    accelerator = fresh_accelerator(cpu=device.type == "cpu")
    data = synthetic_triplets(args.triplets, images, args.forms, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    image_features = torch.randn(images, args.dim, generator=generator)
    text_features = torch.randn(args.triplets * args.forms, args.dim, generator=generator)
    offsets = data.caption_table()[1]
    paths = {"tensor": "(a) `FeatureBatches`: permutation + forms per epoch, sliced (clip-cir)",
             "dataloader": "(b) per-item `TripletDataset` + DataLoader (before)",
             "replayed": "(c) floor: (a)'s batches drawn once, replayed"}
    runs: dict[str, list[Epochs]] = {key: [] for key in paths}
    with tempfile.TemporaryDirectory(prefix="clip_cir_bench_stage2_loop_") as tmp:
        for round_ in range(args.rounds):
            for key in paths:
                status(f"round {round_ + 1}/{args.rounds}: {key} batches ...")
                runs[key].append(stage2_epochs(accelerator, data, image_features, text_features, offsets,
                                               batches=key, batch_size=args.batch_size, epochs=args.epochs,
                                               projection_dim=args.projection_dim, hidden_dim=args.hidden_dim,
                                               seed=args.seed, run_dir=Path(tmp) / f"{key}-{round_}"))
    pooled = {key: Epochs.pool(r) for key, r in runs.items()}
    base, floor = pooled["dataloader"].steady_seconds, pooled["replayed"].steady_seconds
    rows = []
    for key, label in paths.items():
        e = pooled[key]
        steps = e.steps[-1]
        per_epoch = e.steady_seconds
        projected = SCHEDULE * per_epoch * CIRR_TRIPLETS / e.triplets_per_epoch
        overhead = "—" if key == "replayed" else f"{1000 * (per_epoch - floor):.1f}"
        rows.append([label, f"{steps}", f"{1000 * per_epoch:.1f}", f"{1000 * per_epoch / steps:.2f}", overhead,
                     f"{base / per_epoch:.1f}x", f"{projected:.1f} s"])
    print(f"data: {args.triplets:,} random triplets over {images:,} images, {args.forms} caption form(s), "
          f"{args.dim}-d features; Combiner {args.projection_dim}/{args.hidden_dim} (projection/hidden); batch "
          f"{args.batch_size}; device {device}; ms/epoch = median of epochs 2..{args.epochs} of {args.rounds} "
          f"interleaved round(s)\n")
    print(markdown_table(["stage 2 loop", "steps / epoch", "ms / epoch", "ms / step", "loop overhead ms / epoch",
                          "vs (b)",
                          f"{SCHEDULE} epochs at CIRR's {CIRR_TRIPLETS:,} triplets (projected)"], rows))
    print(f"\nload average (1/5/15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
