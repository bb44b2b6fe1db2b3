"""GPU numbers: the method's backbones at full size, with mixed precision.

    python benchmarks/gpu.py                        # on a CUDA machine: RN50x4 and ViT-B-16, fp16 and bf16
    python benchmarks/gpu.py --models RN50x4 --precisions bf16
    python benchmarks/gpu.py --smoke                # tiny models and sizes: seconds on a CPU (the test suite runs it)

Why: the CPU benchmarks use a tiny CLIP, whose towers are so cheap that data handling weighs as
much as the model; on a GPU with a real backbone the balance is different (an RN50x4 step needs
thousands of images per second). This prints ONE table with a column per model and precision
(random init: speed does not depend on the weights; open_clip_torch must be installed), every
figure measured in this run:

  - stage 1 `--encoder text` triplets/s: the real program (`clip_cir.training.stage1`: image features
    reused, text trimmed) and the published code's way (images re-encoded every step, full-length
    text; `common.published_text_epochs`), with the ratio;
  - stage 1 `--encoder both` triplets/s: the real program with its pixel cache and with
    `--pixel-cache off` (decoding every epoch, `--num-workers` automatic), with the ratio. Both
    stage-1 rows train on synthetic CIRR data rendered at the largest input size, `--train`
    triplets, batch `--batch-size`; triplets/s from the steady epochs (2..N) of `train_metrics.csv`;
  - a stage-2 epoch on `--stage2-triplets` random-feature triplets at batch `--stage2-batch-size`,
    Combiner at its default size (4x/8x the embedding), through the library's loop and
    `FeatureBatches` (`common.stage2_epochs`; median of epochs 2..N);
  - gallery extraction images/s (`clip_cir.encoding.features.encode_images`, batch 64, no feature cache)
    on rendered 500x375 PNG photos (~320 KB, as CIRR's): decoding with the automatic number of
    workers, and from a warm pixel cache;
  - loader images/s on the same files, uint8 batches to the device and normalised there:
    decoding with the automatic workers vs the pixel cache (no workers, as the library reads
    it). It does not depend on the precision: measured once per model, shown in each of its
    columns.

"(Nx)" is a row's speed-up over the baseline row below it, measured in the same run and column.
Mixed precision goes through Accelerate as in the programs (autocast; fp16 with its loss
scaler). On a CPU only bf16 autocast exists: fp16 columns are skipped there with a note.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import (
    Epochs,
    fresh_accelerator,
    header,
    load_average,
    load_model,
    loader_rate,
    make_synthetic_cirr,
    markdown_table,
    published_text_epochs,
    published_workers,
    quiet,
    render_photos,
    reset_accelerator_state,
    stage1_run,
    stage2_epochs,
    status,
    synthetic_triplets,
    workspace,
)

from clip_cir.encoding.features import encode_images
from clip_cir.encoding.pixels import DecodedPixels, PixelCache, PixelDataset
from clip_cir.params import num_workers as automatic_workers

ROWS = (
    ("text", "stage 1 `--encoder text`, clip-cir: features reused, text trimmed (triplets/s)"),
    ("text_published", "stage 1 `--encoder text`, published way: images re-encoded, full-length text (triplets/s)"),
    ("both", "stage 1 `--encoder both`, clip-cir: pixel cache (triplets/s)"),
    ("both_decoded", "stage 1 `--encoder both`, `--pixel-cache off`: decoded every epoch (triplets/s)"),
    ("stage2", "stage 2 epoch, {stage2_triplets:,} triplets, batch {stage2_batch_size} (s)"),
    ("extract_cached", "gallery extraction, pixel cache (images/s)"),
    ("extract_decoded", "gallery extraction, decoding with {workers} workers (images/s)"),
    ("loader_cached", "loader, pixel cache (images/s)"),
    ("loader_decoded", "loader, decoding with {workers} workers (images/s)"),
)
"""Table rows: key and label. A row's ratio is against the next row with the same stem."""
BASELINES = {"text": "text_published", "both": "both_decoded", "extract_cached": "extract_decoded",
             "loader_cached": "loader_decoded"}
LOWER_IS_BETTER = {"stage2"}

SMOKE = dict(models=["cir-tiny-vit", "cir-tiny-rn"], precisions=["bf16"], train=4, val=2, batch_size=4, epochs=2,
             stage2_triplets=128, stage2_batch_size=64, stage2_epochs=2, images=8, repeats=1)
"""`--smoke`: the tiny CPU models and sizes small enough for a test (seconds)."""


@dataclass
class Column:
    model: str
    size: int
    precision: str
    values: dict[str, float] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.model} {self.size} px {self.precision}"


def stage1_rows(column: Column, data_root: Path, root: Path, args: argparse.Namespace) -> None:
    """The four stage-1 rows of one column: three real program runs and the published baseline."""
    run_args = argparse.Namespace(model=column.model, epochs=args.epochs, batch_size=args.batch_size,
                                  num_workers=None, seed=args.seed)
    for key, options in (("text", ["--encoder", "text"]), ("both", ["--encoder", "both"]),
                         ("both_decoded", ["--encoder", "both", "--pixel-cache", "off"])):
        status(f"{column.title}: stage 1 {' '.join(options)} ...")
        reset_accelerator_state()  # the program builds its own Accelerator with --mixed-precision
        name = f"{column.model}-{column.precision}-{key}"
        run = stage1_run(data_root, root, name, root / "cache" / name, run_args,
                         [*options, "--mixed-precision", column.precision])
        column.values[key] = Epochs.from_run(run, args.batch_size).triplets_per_second
    status(f"{column.title}: stage 1 --encoder text, the published way ...")
    with quiet():
        published = published_text_epochs(fresh_accelerator(column.precision), data_root, column.model, args.seed,
                                           args.batch_size, published_workers(run_args), args.epochs)
    column.values["text_published"] = published.triplets_per_second


def stage2_row(column: Column, embed_dim: int, root: Path, args: argparse.Namespace) -> None:
    status(f"{column.title}: stage 2 epochs ...")
    images = max(2, int(0.6 * args.stage2_triplets))  # CIRR's ratio: 28,225 triplets over 16,939 images
    data = synthetic_triplets(args.stage2_triplets, images, 1, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    image_features = torch.randn(images, embed_dim, generator=generator)
    text_features = torch.randn(args.stage2_triplets, embed_dim, generator=generator)
    epochs = stage2_epochs(fresh_accelerator(column.precision), data, image_features, text_features,
                           data.caption_table()[1], batches="tensor", batch_size=args.stage2_batch_size,
                           epochs=args.stage2_epochs, projection_dim=4 * embed_dim, hidden_dim=8 * embed_dim,
                           seed=args.seed, run_dir=root / "stage2" / column.title.replace(" ", "-"))
    column.values["stage2"] = epochs.steady_seconds


def extraction_rows(column: Column, clip, transform, photos: list[Path], pixels: PixelCache,
                    args: argparse.Namespace) -> None:
    """Gallery extraction images/s, decoding and from the (already written) pixel cache."""
    accelerator = fresh_accelerator(column.precision)
    device = accelerator.device
    clip.model.to(device)
    for key, cache in (("extract_decoded", None), ("extract_cached", pixels)):
        status(f"{column.title}: gallery extraction ({key}) ...")

        def encode(paths: list[Path]) -> None:
            with quiet():
                encode_images(clip, paths, transform, device=device, batch_size=64, num_workers=args.workers,
                              autocast=accelerator.autocast, precision=column.precision, progress=False,
                              pixel_cache=cache)
            if device.type == "cuda":
                torch.cuda.synchronize()

        encode(photos[:64])  # warm-up: kernels, allocator, workers
        rates = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            encode(photos)
            rates.append(len(photos) / (time.perf_counter() - started))
        column.values[key] = sorted(rates)[len(rates) // 2]


def loader_rows(columns: list[Column], transform, photos: list[Path], cached, device: torch.device,
                args: argparse.Namespace) -> None:
    """Loader images/s for one model's input size, shown in each of its columns."""
    status(f"{columns[0].model}: loader rates ...")
    decoded = loader_rate(DecodedPixels(photos, transform), transform, batch_size=64, num_workers=args.workers,
                          device=device, repeats=args.repeats)
    from_cache = loader_rate(PixelDataset(cached), transform, batch_size=64, num_workers=0, device=device,
                             repeats=args.repeats)
    for column in columns:
        column.values.update(loader_decoded=decoded, loader_cached=from_cache)


def cell(column: Column, key: str) -> str:
    value = column.values.get(key)
    if value is None:
        return "—"
    text = f"{value:.3f}" if key in LOWER_IS_BETTER else f"{value:,.0f}"
    base = column.values.get(BASELINES.get(key, ""))
    return f"{text} ({value / base:.1f}x)" if base else text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models (cir-tiny-vit, cir-tiny-rn), bf16, tiny sizes: a few seconds on a CPU; "
                             "overrides the size options")
    parser.add_argument("--models", nargs="+", default=["RN50x4", "ViT-B-16"],
                        help="open_clip models, random init (default: %(default)s)")
    parser.add_argument("--precisions", nargs="+", choices=("fp16", "bf16"), default=["fp16", "bf16"],
                        help="mixed precisions (default: %(default)s; a CPU runs bf16 only)")
    parser.add_argument("--train", type=int, default=1024,
                        help="stage-1 synthetic CIRR triplets (default: %(default)s)")
    parser.add_argument("--val", type=int, default=50,
                        help="synthetic val queries: the programs validate after their last epoch "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="stage-1 batch (default: %(default)s, published)")
    parser.add_argument("--epochs", type=int, default=3, help="stage-1 epochs per run, epoch 1 is warm-up "
                                                              "(default: %(default)s)")
    parser.add_argument("--stage2-triplets", type=int, default=28_000,
                        help="stage-2 random-feature triplets (default: %(default)s, CIRR's size)")
    parser.add_argument("--stage2-batch-size", type=int, default=4096, help="(default: %(default)s, published)")
    parser.add_argument("--stage2-epochs", type=int, default=4, help="(default: %(default)s)")
    parser.add_argument("--images", type=int, default=512,
                        help="rendered 500x375 PNG files for extraction and loading (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per extraction/loader figure, median "
                                                               "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if (args.epochs < 2 or args.stage2_epochs < 2 or min(args.train, args.val, args.batch_size, args.images,
                                                          args.repeats, args.stage2_triplets) < 1
            or args.batch_size > args.train or args.stage2_batch_size > args.stage2_triplets):
        parser.error("need --epochs and --stage2-epochs >= 2, positive sizes, and batches no larger than the data")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    on_gpu = torch.cuda.is_available()
    args.workers = automatic_workers(argparse.Namespace(num_workers=None), on_gpu)
    precisions = [p for p in args.precisions if on_gpu or p == "bf16"]
    skipped = [p for p in args.precisions if p not in precisions]
    if not precisions:
        sys.exit("gpu.py: no precision to run: a CPU has bf16 autocast only (add --precisions bf16)")
    if not on_gpu and not args.smoke:
        status("no CUDA device: running on the CPU, which takes long at these sizes (--smoke for a quick check)")
    print(header("clip-cir on a GPU: stage 1, stage 2, extraction and loading with mixed precision",
                 sys.argv if argv is None else ["benchmarks/gpu.py", *argv]), flush=True)
    device = torch.device("cuda" if on_gpu else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    columns: list[Column] = []
    with workspace("clip_cir_bench_gpu_") as root:
        models = {}
        for name in args.models:
            with quiet():
                clip, transform = load_model(name, args.seed)
            models[name] = (clip, transform)
        largest = max(clip.input_size for clip, _ in models.values())
        status(f"generating {args.train} synthetic CIRR triplets at {largest} px, rendering {args.images} photos ...")
        data_root = make_synthetic_cirr(root, args.train, args.seed, n_val=args.val, size=largest)
        photos = render_photos(root / "photos", "png", args.images, args.seed)
        for name, (clip, transform) in models.items():
            pixels = PixelCache(root / "pixels")
            with quiet():
                cached = pixels.get(photos, transform, num_workers=args.workers, progress=False)  # the one-off write
            model_columns = [Column(name, clip.input_size, precision) for precision in precisions]
            for column in model_columns:
                stage1_rows(column, data_root, root, args)
                stage2_row(column, clip.embed_dim, root, args)
                extraction_rows(column, clip, transform, photos, pixels, args)
            loader_rows(model_columns, transform, photos, cached, device, args)
            clip.model.cpu()
            columns += model_columns
            if on_gpu:
                torch.cuda.empty_cache()
    sizes = dict(stage2_triplets=args.stage2_triplets, stage2_batch_size=args.stage2_batch_size, workers=args.workers)
    print(f"device: {torch.cuda.get_device_name(0) if on_gpu else 'cpu'}; models random init; stage 1: synthetic CIRR, "
          f"{args.train:,} triplets at {largest} px, batch {args.batch_size}, {args.epochs} epochs per run, steady "
          f"epochs 2..{args.epochs}; stage 2: random {args.stage2_triplets:,} triplets, Combiner 4x/8x the embedding, "
          f"median of epochs 2..{args.stage2_epochs}; extraction and loader: {args.images} rendered 500x375 PNG files, "
          f"batch 64, median of {args.repeats}; (Nx) = speed-up over the baseline row below, same column\n")
    print(markdown_table(["measure"] + [c.title for c in columns],
                         [[label.format(**sizes)] + [cell(c, key) for c in columns] for key, label in ROWS]))
    if skipped:
        print(f"\nskipped: {', '.join(skipped)} (no CUDA device: CPU autocast has bf16 only)")
    print(f"\nload average (1/5/15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
