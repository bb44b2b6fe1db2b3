"""Stage-2 (Combiner) epoch time: frozen CLIP features computed once versus every batch.

    python benchmarks/stage2.py                                # defaults: ~1 minute on 2 idle cores
    python benchmarks/stage2.py --rounds 3                     # paths interleaved 3 times: steadier ratios
    python benchmarks/stage2.py --train 2000 --epochs 5 --batch-size 256

Why: in stage 2 CLIP is frozen, so `clip_cir.training.stage2` computes every CLIP feature once
(through the feature cache) and an epoch is Combiner work only. The published reference code
instead pushes each batch's reference images, target images and captions through the frozen
CLIP (under no_grad) before the Combiner step, every epoch of a 300-epoch schedule. This
prints ONE table, same tiny CLIP (`cir-tiny-vit`, random init: speed does not depend on the
weights) and same synthetic CIRR data in one process:

  - features reused: the real program (`stage2/train_combiner.py`'s entry point);
  - re-encoded every batch, implemented here the published way: the library's image
    DataLoader, CLIP encodes under no_grad, then the same Combiner and loss, and an Adam step
    as the published code builds it (torch's default kernel; the real program asks for the
    fused one, `clip_cir.training.optim.make_optimizer`).

Seconds per epoch are steady-state (median of epochs 2..N, pooled over `--rounds` interleaved
rounds; `train_metrics.csv` for the real program, the same timing rule for the baseline). The
reuse path's one-off extraction of the training features happens before its first epoch, is
timed inside the real run and reported on its own. The real program also writes `RUN/last/`
(Combiner + optimizer state, so `--resume` works) after every epoch, outside the epoch time:
that is timed too and counted in its 300-epoch projection; validation (both paths need the
same gallery features once) is left out of both projections. Everything goes under a temp dir
(with a cold `CLIP_CIR_CACHE`), removed at the end. The `--batch-size` default (128) is far
below the published 4096 because the synthetic set is small; a bigger batch only shortens the
reuse path's epochs further.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from baselines import image_triplet_loader
from fixtures import load_model, load_training_set, make_synthetic_cirr
from harness import baseline_device, quiet, status, workspace
from options import add_benchmark_args, configure, program_options, published_workers
from reporting import describe_one_off, describe_setup, duration, header, load_average, markdown_table
from timing import Epochs, time_epochs, timed_calls, timed_feature_extraction, training_extraction

import clip_cir
from clip_cir.config import Stage2Config
from clip_cir.models.combiner import Combiner
from clip_cir.training import loop
from clip_cir.training.datasets import TrainingSet
from clip_cir.training.losses import batch_contrastive_loss

SCHEDULE = 300
"""Epochs of the published stage-2 schedule."""


def real_run(data: TrainingSet, data_root: Path, root: Path, round_: int, args: argparse.Namespace
             ) -> tuple[Epochs, float, list[float]]:
    """One run of the real stage-2 program, validating only after its last epoch.

    Returns its epochs, the one-off extraction of the training features in seconds (images
    and every caption form; the validation gallery is left out, as validation is), and the
    durations of its `last/` checkpoint writes (empty if they could not be seen)."""
    name = f"stage2-reuse-round{round_ + 1}"
    with timed_feature_extraction() as calls, timed_calls(loop, "save_checkpoint_dir") as saves, quiet():
        clip_cir.train_combiner(**program_options(data_root, root / "cache" / f"round{round_ + 1}", root / "runs", name,
                                                  args))
    extraction_s = training_extraction(calls, data, "clip_cir.training.stage2", texts=True)
    last = [c.seconds for c in saves if Path(str(c.given)).name == "last"]
    return Epochs.from_run(root / "runs" / name, args.batch_size), extraction_s, last


def published_baseline(data_root: Path, args: argparse.Namespace) -> Epochs:
    """The Combiner trained the published way: frozen CLIP encodes every batch.

    Same model, data, DataLoader, Combiner size, loss and optimizer hyper-parameters as the real
    program (its own parser's defaults). What differs: where the CLIP features come from, and
    the optimizer's kernel (torch's default here, as the published code; fused in the program).
    """
    defaults = Stage2Config()
    device = baseline_device()
    clip, transform = load_model(args.model, args.seed)
    model = clip.model.to(device).eval().requires_grad_(False)
    dim = clip.embed_dim
    combiner = Combiner(dim, defaults.projection_dim or 4 * dim, defaults.hidden_dim or 8 * dim).to(device).train()
    optimizer = torch.optim.Adam(combiner.parameters(), lr=defaults.training.lr,
                                 weight_decay=defaults.training.weight_decay)
    loader, sampler = image_triplet_loader(load_training_set(data_root), transform, args.batch_size,
                                           published_workers(args), args.seed)

    def step(batch: dict) -> int:
        with torch.no_grad():  # the frozen CLIP, every batch (images and captions, as published)
            reference = model.encode_image(transform.normalize(batch["reference_image"].to(device)))
            target = model.encode_image(transform.normalize(batch["target_image"].to(device)))
            text = model.encode_text(clip.tokenizer(batch["caption"]).to(device))
        loss = batch_contrastive_loss(combiner(reference, text), F.normalize(target, dim=-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the published code reads the loss every step (its progress bar)
        return reference.shape[0] + target.shape[0]

    return time_epochs(loader, sampler, step, args.epochs, args.batch_size)


def report(reuse: Epochs, baseline: Epochs, extraction_s: float, checkpoint_s: float | None, data: TrainingSet,
           args: argparse.Namespace) -> str:
    per_epoch = baseline.triplets_per_epoch
    reuse_total = extraction_s + SCHEDULE * (reuse.steady_seconds + (checkpoint_s or 0.0))
    baseline_total = SCHEDULE * baseline.steady_seconds
    table = markdown_table(
        ["stage 2", "CLIP work per epoch", "s / epoch", "speed-up", "one-off", "`last/` checkpoint s / epoch",
         f"{SCHEDULE} epochs (projected)"],
        [["features reused (clip-cir)", f"none ({reuse.images_per_epoch} images encoded)",
          f"{reuse.steady_seconds:.3f}", f"{baseline.steady_seconds / reuse.steady_seconds:.1f}x",
          duration(extraction_s), "n/a" if checkpoint_s is None else f"{checkpoint_s:.3f}", duration(reuse_total)],
         ["re-encoded every batch (published code's way)",
          f"{2 * per_epoch:,} images + {per_epoch:,} captions, no_grad", f"{baseline.steady_seconds:.3f}", "1.0x",
          "—", "—", duration(baseline_total)]])
    return "\n".join([
        describe_setup(data, args, ", Combiner at its default size"),
        "",
        table,
        "",
        f"speed-up per epoch: {baseline.steady_seconds / reuse.steady_seconds:.1f}x; over the {SCHEDULE}-epoch "
        f"schedule (reuse: one-off + epochs + `last/` checkpoints; validation left out of both): "
        f"{baseline_total / reuse_total:.1f}x",
        "reuse one-off, before its first epoch: "
        + describe_one_off(data, "CLIP features of every caption form and", extraction_s, args),
        f"load average (1/5/15 min) at end: {load_average()}",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(parser, train=1000, epochs=5, rounds=2)
    args = parser.parse_args(argv)
    configure(parser, args)

    print(header("clip-cir stage 2: Combiner epochs with and without feature reuse",
                 sys.argv if argv is None else ["benchmarks/stage2.py", *argv]), flush=True)
    with workspace("clip_cir_bench_stage2_") as root:
        status(f"generating {args.train} synthetic CIRR triplets ...")
        data_root = make_synthetic_cirr(root, args.train, args.seed, size=args.image_size)
        data = load_training_set(data_root)
        reuse, baseline, extraction, checkpoints = [], [], [], []
        for round_ in range(args.rounds):
            status(f"round {round_ + 1}/{args.rounds}: features reused (clip_cir.training.stage2) ...")
            epochs, extraction_s, last = real_run(data, data_root, root, round_, args)
            reuse.append(epochs)
            extraction.append(extraction_s)
            checkpoints += last
            status(f"round {round_ + 1}/{args.rounds}: re-encoded every batch (published code's way) ...")
            baseline.append(published_baseline(data_root, args))
        print(report(Epochs.pool(reuse), Epochs.pool(baseline), statistics.median(extraction),
                     statistics.median(checkpoints) if checkpoints else None, data, args))


if __name__ == "__main__":
    main()
