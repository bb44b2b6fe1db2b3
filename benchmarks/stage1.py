"""Stage-1 training throughput: feature reuse + text trimming (`--encoder text`) and the pixel
cache (`--encoder both`), each against the way it was done before, in one run.

    python benchmarks/stage1.py                                # defaults: ~3 minutes on 2 idle cores
    python benchmarks/stage1.py --image-size 64                # the quickstart's 64-px images
    python benchmarks/stage1.py --rounds 3                     # paths interleaved 3 times: steadier ratios
    python benchmarks/stage1.py --train 2000 --epochs 4 --batch-size 64 --num-workers 0

Why: with `--encoder text` the image tower is frozen, so `clip_cir.training.stage1` computes the
reference and target image features once (through the feature cache) and every step encodes
only text, cut to the batch's longest caption (exact for CLIP's causal, EOT-pooled text
towers). The published reference code instead re-encodes both images with the frozen tower on
every batch (under no_grad) and encodes every caption at the full context length. With
`--encoder both` the images must go through the training image tower every step, but their
preprocessed pixels need not be decoded again every epoch: the pixel cache stores them once.
This prints ONE table, same tiny CLIP (`cir-tiny-vit`, random init: speed does not depend on
the weights) and same synthetic CIRR data in one process:

  (a) `--encoder text`, the real program (`stage1/finetune.py`'s entry point): features reused, text trimmed;
  (b) `--encoder text` the published way, implemented here: the library's image DataLoader,
      reference and target images through the frozen image tower under no_grad every step,
      captions at the full context length, then the same loss and an AdamW step as the published
      code builds it (torch's default kernel; clip-cir asks for the fused one);
  (c) `--encoder both`, the real program with its default pixel cache (`--pixel-cache auto`);
  (d) `--encoder both`, the real program with `--pixel-cache off`: decoded every epoch.

The speed-ups are (a) over (b) and (c) over (d). Triplets/s use the steady-state epoch time
(median of epochs 2..N of `train_metrics.csv`, pooled over `--rounds` interleaved rounds; the
baseline is timed by the same rule). One-off work before the first epoch, (a)'s image feature
extraction and (c)'s pixel cache write, is timed inside the real runs and reported on its own
lines, not spread over epochs. Below the table, one `--encoder text` step's CLIP work piece by
piece, for the tiny CLIP and (`--text-model`) a random-init RN50x4, whose 77-token context and
288-px image tower the tiny CLIP's 32 tokens and 64 px do not show: the text tower's
forward+backward at the full context length and trimmed, on the same caption batches, and the
frozen image tower's forward on the step's images, which only the published way pays; and the
AdamW update of the text tower's parameters with torch's default kernel and with the fused one.
Each path uses its own DataLoader workers unless `--num-workers` sets one value for all: the
programs' automatic choice (none on a CPU-only machine) and every core for the published way,
as the published code does. Everything is written under a temp dir (with a cold
`CLIP_CIR_CACHE`) that is removed at the end. Absolute numbers depend on the machine and on
whatever else runs on it (see the load average); the ratios, measured in the same run, are the
result.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from baselines import published_text_epochs
from fixtures import load_model, load_training_set, make_synthetic_cirr
from harness import baseline_device, fresh_accelerator, status, workspace
from options import add_benchmark_args, configure, published_workers, stage1_run
from reporting import describe_one_off, describe_setup, duration, header, load_average, markdown_table
from timing import Call, Epochs, timed_calls, timed_feature_extraction, training_extraction

from clip_cir.encoding.pixels import PixelCache
from clip_cir.models.combiner import element_wise_sum
from clip_cir.models.towers import encode_text
from clip_cir.training.datasets import TrainingSet
from clip_cir.training.losses import batch_contrastive_loss
from clip_cir.training.optim import make_optimizer

REAL_SHORT_SIDE = 288
"""Default short side of the rendered images: what is timed is decoding real photos (CIRR's and
FashionIQ's are mostly 375-600 px, so this still understates it); the quickstart's 64-px PNGs
decode in under a millisecond and would hide the cost both speed-ups remove."""
TRAINING_PIXELS = "training images (pixels)"
"""The `desc` under which `clip_cir.training.stage1` fills the pixel cache with its training images."""


def real_run(data_root: Path, root: Path, encoder: str, round_: int, args: argparse.Namespace,
             pixel_cache: str = "auto") -> Path:
    """One run of the real stage-1 program, validating only after its last epoch."""
    return stage1_run(data_root, root, f"stage1-{encoder}-pixels-{pixel_cache}-round{round_ + 1}",
                      root / "cache" / f"round{round_ + 1}", args, encoder=encoder, pixel_cache=pixel_cache)


def pixel_cache_write(calls: list[Call]) -> float:
    """Seconds the real run spent filling the pixel cache with its training images (an error if
    it never did: the benchmark would no longer see the one-off)."""
    writes = [c.seconds for c in calls if c.given == TRAINING_PIXELS]
    if not writes:
        raise RuntimeError("clip_cir.training.stage1 --encoder both: no PixelCache.get of the training images "
                           "was seen; "
                           "the benchmark's timing hook needs updating")
    return sum(writes)


@dataclass
class OptimizerWork:
    """One AdamW update of a text tower's trainable parameters, torch's default kernel against the
    fused one (`clip_cir.training.optim.make_optimizer`)."""

    model: str
    parameters: int
    default_seconds: float
    fused_seconds: float

    def describe(self) -> str:
        return (f"{self.model}: AdamW update of the text tower's {self.parameters / 1e6:.1f}M parameters "
                f"{1000 * self.default_seconds:,.1f} ms with torch's default kernel (the published code's), "
                f"{1000 * self.fused_seconds:,.1f} ms fused (clip-cir): "
                f"{self.default_seconds / self.fused_seconds:.1f}x")


def optimizer_work(model_name: str, seed: int, repeats: int = 10) -> OptimizerWork:
    """Median seconds of an AdamW step over the text tower's parameters (stage 1 `--encoder text`),
    with random gradients, for each kernel, after two warm-up steps each."""
    clip, _ = load_model(model_name, seed)
    device = baseline_device()
    params = [p for n, p in clip.model.to(device).named_parameters()
              if not n.startswith("visual.") and n != "logit_scale"]
    for p in params:
        p.grad = torch.randn_like(p)
    seconds = []
    for optimizer in (torch.optim.AdamW(params, lr=1e-9, eps=1e-7, weight_decay=0.01),
                      make_optimizer(torch.optim.AdamW, params, lr=1e-9, eps=1e-7, weight_decay=0.01)):
        times = []
        for _ in range(repeats + 2):
            started = time.perf_counter()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        seconds.append(statistics.median(times[2:]))
    return OptimizerWork(model_name, sum(p.numel() for p in params), *seconds)


@dataclass
class StepWork:
    """One step's CLIP work, piece by piece: the text tower's forward+backward on the same caption
    batches at full length and trimmed, and the frozen image tower's no_grad forward on the
    step's reference and target images (what the published way adds)."""

    model: str
    batch_size: int
    full_seconds: float
    trimmed_seconds: float
    images_seconds: float
    context: int
    mean_trimmed: float
    input_size: int

    def describe(self) -> str:
        published = self.images_seconds + self.full_seconds
        return (f"{self.model}, batch {self.batch_size}: text {1000 * self.full_seconds:,.0f} ms at the full "
                f"{self.context} tokens, {1000 * self.trimmed_seconds:,.0f} ms trimmed ({self.mean_trimmed:.1f} "
                f"tokens on average): {self.full_seconds / self.trimmed_seconds:.2f}x; the published way adds the "
                f"frozen image tower on {2 * self.batch_size} images at {self.input_size} px "
                f"({1000 * self.images_seconds:,.0f} ms), so its CLIP work per step is "
                f"{published / self.trimmed_seconds:.1f}x clip-cir's")


def step_work(model_name: str, captions: list[str], batch_size: int, seed: int, repeats: int = 5) -> StepWork:
    """Median seconds of one text forward+backward (the stage-1 loss on fixed image features, no
    optimizer step) over the first `repeats` batches of captions, at the full context length
    (`model.encode_text`, as published) and trimmed to the batch's longest caption
    (`clip_cir.models.clip.encode_text` on `LoadedCLIP.tokenize`, as `clip_cir.training.stage1`), the two
    alternating batch by batch after one warm-up batch each; then the faster of two no_grad
    forwards of the image tower on 2 x `batch_size` random inputs (the faster: the first pays
    warm-up, and a low figure for the published way's extra work can only understate the gain)."""
    clip, _ = load_model(model_name, seed)
    device = baseline_device()
    model = clip.model.to(device).eval()  # as the program's train_mode: eval mode, parameters trainable
    model.requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, batch_size, clip.embed_dim, generator=generator).to(device)
    batches = [captions[i:i + batch_size] for i in range(0, len(captions) - batch_size + 1, batch_size)]
    batches = (batches * (repeats + 1))[:repeats + 1]
    times: dict[bool, list[float]] = {False: [], True: []}
    lengths = []
    for i, batch in enumerate(batches):
        for trimmed in (False, True):
            tokens = (clip.tokenize(batch) if trimmed else clip.tokenizer(batch)).to(device)
            started = time.perf_counter()
            text = encode_text(model, tokens) if trimmed else model.encode_text(tokens)
            loss = batch_contrastive_loss(element_wise_sum(features[0], text), F.normalize(features[1], dim=-1))
            loss.backward()
            loss.item()
            if i:
                times[trimmed].append(time.perf_counter() - started)
                lengths += [tokens.shape[1]] if trimmed else []
            model.zero_grad(set_to_none=True)
    pixels = torch.randn(2 * batch_size, 3, clip.input_size, clip.input_size, generator=generator).to(device)
    image_times = []
    for _ in range(2):
        started = time.perf_counter()
        with torch.no_grad():
            model.encode_image(pixels).sum().item()
        image_times.append(time.perf_counter() - started)
    return StepWork(model_name, batch_size, statistics.median(times[False]), statistics.median(times[True]),
                    min(image_times), int(model.positional_embedding.shape[0]), statistics.mean(lengths),
                    clip.input_size)


def report(a: Epochs, b: Epochs, c: Epochs, d: Epochs, extraction_s: float, pixels_s: float,
           text: list[StepWork], optimizers: list[OptimizerWork], data: TrainingSet,
           args: argparse.Namespace) -> str:
    B = args.batch_size
    rows = [
        ("(a) `--encoder text`, image features reused, text trimmed, fused AdamW (clip-cir)",
         f"text fwd+bwd, {text[0].mean_trimmed:.0f} tokens (mean longest caption)", a, b),
        ("(b) `--encoder text`, images re-encoded every step, full-length text, torch's default AdamW "
         "(published code's way)",
         f"{2 * B} images no_grad + text fwd+bwd, {text[0].context} tokens", b, b),
        ("(c) `--encoder both`, pixel cache (clip-cir default)", f"{2 * B} images + text fwd+bwd; pixels read", c, d),
        ("(d) `--encoder both`, `--pixel-cache off`: images decoded every epoch",
         f"{2 * B} images + text fwd+bwd; images decoded", d, d),
    ]
    names = {id(b): "(b)", id(d): "(d)"}
    table = markdown_table(
        ["stage 1", "CLIP work per step", "CLIP images / epoch", "s / epoch", "triplets/s", "speed-up"],
        [[label, work, f"{e.images_per_epoch:,}", f"{e.steady_seconds:.2f}", f"{e.triplets_per_second:.0f}",
          f"{e.triplets_per_second / base.triplets_per_second:.2f}x"
          + ("" if e is base else f" over {names[id(base)]}")] for label, work, e, base in rows])
    saved = b.steady_seconds - a.steady_seconds
    payback = (f"; each (a) epoch saves {saved:.2f} s over (b), so it is repaid within "
               f"{extraction_s / saved:.2f} epoch(s)" if saved > 0 else "")
    return "\n".join([
        describe_setup(data, args),
        "",
        table,
        "",
        f"(a)/(b) speed-up: {a.triplets_per_second / b.triplets_per_second:.2f}x triplets/s; "
        f"(c)/(d): {c.triplets_per_second / d.triplets_per_second:.2f}x",
        "(a) one-off, before its first epoch: " + describe_one_off(data, "image features", extraction_s, args)
        + payback,
        f"(c) one-off, before its first epoch: the pixel cache of the {len(data.image_paths):,} training images "
        f"written in {'a median ' if args.rounds > 1 else ''}{duration(pixels_s)} (kept on disk: a later run on the "
        f"same files and preprocessing skips it)",
        "CLIP work of one `--encoder text` step, piece by piece (random init; text forward+backward, median of 5 "
        "batches, full context length vs trimmed to the batch's longest caption; no loader or optimizer):",
        *(f"- {step.describe()}" for step in text),
        "The same step's optimizer update (median of 10):",
        *(f"- {work.describe()}" for work in optimizers),
        f"load average (1/5/15 min) at end: {load_average()}",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_args(parser, train=800, epochs=3, rounds=2, image_size=REAL_SHORT_SIDE,
                       image_size_why="real photos' decoding cost, which the published way pays every step and the "
                                      "pixel cache once; --image-size 64 gives the quickstart's images")
    parser.add_argument("--text-model", default="RN50x4",
                        help="a second model (random init) whose step work is timed piece by piece below the "
                             "table: the tiny CLIP's text context is 32 tokens, OpenAI-format CLIPs' 77; 'none' "
                             "skips it (default: %(default)s)")
    parser.add_argument("--text-batch-size", type=int, default=8,
                        help="captions per batch for --text-model (default: %(default)s; on a CPU an RN50x4 batch "
                             "of 8 costs ~1.5 s of full-length text and ~7 s of images)")
    args = parser.parse_args(argv)
    configure(parser, args)

    print(header("clip-cir stage 1: training throughput (feature reuse, text trimming, pixel cache)",
                 sys.argv if argv is None else ["benchmarks/stage1.py", *argv]), flush=True)
    with workspace("clip_cir_bench_stage1_") as root:
        status(f"generating {args.train} synthetic CIRR triplets ...")
        data_root = make_synthetic_cirr(root, args.train, args.seed, size=args.image_size)
        data = load_training_set(data_root)
        a, b, c, d, extraction, pixels = [], [], [], [], [], []
        for round_ in range(args.rounds):
            status(f"round {round_ + 1}/{args.rounds}: (a) --encoder text, features reused "
                   "(clip_cir.training.stage1) ...")
            with timed_feature_extraction() as calls:
                run_a = real_run(data_root, root, "text", round_, args)
            extraction.append(training_extraction(calls, data, "clip_cir.training.stage1 --encoder text", texts=False))
            a.append(Epochs.from_run(run_a, args.batch_size))
            status(f"round {round_ + 1}/{args.rounds}: (b) --encoder text, images re-encoded every step, full-length "
                   f"text (published code's way) ...")
            b.append(published_text_epochs(fresh_accelerator(), data_root, args.model, args.seed, args.batch_size,
                                           published_workers(args), args.epochs))
            status(f"round {round_ + 1}/{args.rounds}: (c) --encoder both, pixel cache (clip_cir.training.stage1) ...")
            with timed_calls(PixelCache, "get", given=lambda a_, k: k.get("desc")) as gets:
                run_c = real_run(data_root, root, "both", round_, args)
            pixels.append(pixel_cache_write(gets))
            c.append(Epochs.from_run(run_c, args.batch_size))
            status(f"round {round_ + 1}/{args.rounds}: (d) --encoder both --pixel-cache off "
                   "(clip_cir.training.stage1) ...")
            d.append(Epochs.from_run(real_run(data_root, root, "both", round_, args, pixel_cache="off"),
                                     args.batch_size))
        captions = [q.train_captions[0] for q in data.queries]
        text, optimizers = [], []
        for model_name, batch_size in [(args.model, args.batch_size)] + ([(args.text_model, args.text_batch_size)]
                                                                        if args.text_model != "none" else []):
            status(f"one step's CLIP work ({model_name}): text full length vs trimmed, images, optimizer ...")
            text.append(step_work(model_name, captions, batch_size, args.seed))
            optimizers.append(optimizer_work(model_name, args.seed))
        print(report(Epochs.pool(a), Epochs.pool(b), Epochs.pool(c), Epochs.pool(d), statistics.median(extraction),
                     statistics.median(pixels), text, optimizers, data, args))


if __name__ == "__main__":
    main()
