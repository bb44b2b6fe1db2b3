"""Stage-1 training throughput: what reusing frozen image features buys with `--encoder text`.

    python benchmarks/stage1.py                                # defaults: ~2 minutes on 2 idle cores
    python benchmarks/stage1.py --rounds 3                     # paths interleaved 3 times: steadier ratios
    python benchmarks/stage1.py --train 2000 --epochs 4 --batch-size 64 --num-workers 0

Why: with `--encoder text` the image tower is frozen, so `clip_cir.finetune` computes the
reference and target image features once (through the feature cache) and every step encodes
only text. The published reference code instead re-encodes both images with the frozen tower
on every batch (under no_grad). This prints ONE table, same tiny CLIP (`cir-tiny-vit`, random
init: speed does not depend on the weights) and same synthetic CIRR data in one process:

  (a) `--encoder text`, the real program (`clip_cir.finetune.main`), features reused;
  (b) `--encoder text` the published way, implemented here: the library's image DataLoader,
      reference and target images through the frozen image tower under no_grad every step,
      then the same loss and optimizer step on the text tower;
  (c) `--encoder both`, the real program (both towers train: images are encoded, with
      gradients, every step by necessity).

Triplets/s use the steady-state epoch time (median of epochs 2..N of `train_metrics.csv`,
pooled over `--rounds` interleaved rounds; the baseline is timed by the same rule). The
one-off extraction of (a) happens before its first epoch and is timed inside the real run; it
is reported on its own line, not spread over epochs. Everything is written under a temp dir
(with a cold `CLIP_CIR_CACHE`) that is removed at the end. Absolute numbers depend on the
machine and on whatever else runs on it (see the load average); the ratio against (b),
measured in the same run, is the result.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from clip_cir import finetune
from clip_cir.combiner import element_wise_sum
from clip_cir.composition import TrainingSet
from clip_cir.losses import batch_contrastive_loss
from common import (Epochs, add_benchmark_args, baseline_device, configure, describe_one_off,
                    describe_setup, header, image_triplet_loader, load_average, load_model, load_training_set,
                    make_synthetic_cirr, markdown_table, program_args, quiet, status, time_epochs,
                    timed_feature_extraction, training_extraction, workspace)


def real_run(data_root: Path, root: Path, encoder: str, round_: int, args: argparse.Namespace) -> Path:
    """One run of the real stage-1 program, validating only after its last epoch."""
    name = f"stage1-{encoder}-round{round_ + 1}"
    with quiet():
        finetune.main(["--encoder", encoder,
                       *program_args(data_root, root / "cache" / f"round{round_ + 1}", root / "runs", name, args)])
    return root / "runs" / name


def published_text_baseline(data_root: Path, args: argparse.Namespace) -> Epochs:
    """`--encoder text` as the published code trains it: images re-encoded every step.

    Same model, data, DataLoader, loss, optimizer and hyper-parameters as the real program
    (its own parser's defaults); only where the image features come from differs.
    """
    defaults = finetune.build_parser().parse_args(["--dataset", "cirr", "--data-root", str(data_root)])
    device = baseline_device()
    clip, transform = load_model(args.model, args.seed)
    model = clip.model.to(device)
    for name, param in model.named_parameters():  # the text tower trains, as with --encoder text
        param.requires_grad = not name.startswith("visual.") and name != "logit_scale"
    model.train()
    model.visual.eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=defaults.lr,
                                  betas=(0.9, 0.999), eps=1e-7, weight_decay=defaults.weight_decay)
    loader, sampler = image_triplet_loader(load_training_set(data_root), transform, args.batch_size,
                                           args.num_workers, args.seed)

    def step(batch: dict) -> int:
        with torch.no_grad():  # the frozen image tower, every batch
            reference = model.encode_image(batch["reference_image"].to(device))
            target = model.encode_image(batch["target_image"].to(device))
        text = model.encode_text(clip.tokenizer(batch["caption"]).to(device))
        loss = batch_contrastive_loss(element_wise_sum(reference, text), F.normalize(target, dim=-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the library's loop reads the loss every step too (progress bar)
        return reference.shape[0] + target.shape[0]

    return time_epochs(loader, sampler, step, args.epochs, args.batch_size)


def report(a: Epochs, b: Epochs, c: Epochs, extraction_s: float, data: TrainingSet,
           args: argparse.Namespace) -> str:
    B = args.batch_size
    rows = [
        ("(a) `--encoder text`, image features reused (clip-cir)", "text fwd+bwd", a),
        ("(b) `--encoder text`, images re-encoded every step (published code's way)",
         f"{2 * B} images no_grad + text fwd+bwd", b),
        ("(c) `--encoder both` (clip-cir)", f"{2 * B} images + text, fwd+bwd", c),
    ]
    table = markdown_table(
        ["stage 1", "CLIP work per step", "CLIP images / epoch", "s / epoch", "triplets/s", "vs (b)"],
        [[label, work, f"{e.images_per_epoch:,}", f"{e.steady_seconds:.2f}", f"{e.triplets_per_second:.0f}",
          f"{e.triplets_per_second / b.triplets_per_second:.2f}x"] for label, work, e in rows])
    saved = b.steady_seconds - a.steady_seconds
    payback = (f"; each (a) epoch saves {saved:.2f} s over (b), so it is repaid within "
               f"{extraction_s / saved:.2f} epoch(s)" if saved > 0 else "")
    return "\n".join([
        describe_setup(data, args),
        "",
        table,
        "",
        f"(a)/(b) speed-up: {a.triplets_per_second / b.triplets_per_second:.2f}x triplets/s",
        "(a) one-off, before its first epoch: " + describe_one_off(data, "image features", extraction_s, args)
        + payback,
        f"load average (1/5/15 min) at end: {load_average()}",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(parser, train=800, epochs=3, rounds=2)
    args = parser.parse_args(argv)
    configure(parser, args)

    print(header("clip-cir stage 1: training throughput with and without feature reuse",
                 sys.argv if argv is None else ["benchmarks/stage1.py", *argv]), flush=True)
    with workspace("clip_cir_bench_stage1_") as root:
        status(f"generating {args.train} synthetic CIRR triplets ...")
        data_root = make_synthetic_cirr(root, args.train, args.seed)
        data = load_training_set(data_root)
        a, b, c, extraction = [], [], [], []
        for round_ in range(args.rounds):
            status(f"round {round_ + 1}/{args.rounds}: (a) --encoder text, features reused (clip_cir.finetune) ...")
            with timed_feature_extraction() as calls:
                run_a = real_run(data_root, root, "text", round_, args)
            extraction.append(training_extraction(calls, data, "clip_cir.finetune --encoder text", texts=False))
            a.append(Epochs.from_run(run_a, args.batch_size))
            status(f"round {round_ + 1}/{args.rounds}: (b) --encoder text, images re-encoded every step "
                   f"(published code's way) ...")
            b.append(published_text_baseline(data_root, args))
            status(f"round {round_ + 1}/{args.rounds}: (c) --encoder both (clip_cir.finetune) ...")
            c.append(Epochs.from_run(real_run(data_root, root, "both", round_, args), args.batch_size))
        print(report(Epochs.pool(a), Epochs.pool(b), Epochs.pool(c), statistics.median(extraction), data, args))


if __name__ == "__main__":
    main()
