"""GPU numbers: the method's backbones at full size, with mixed precision.

    python benchmarks/gpu.py                        # on a CUDA machine: RN50x4 and ViT-B-16, fp16 and bf16
    python benchmarks/gpu.py --models RN50x4 --precisions bf16 --rows both tower extraction
    python benchmarks/gpu.py --smoke                # tiny models and sizes: seconds on a CPU (the test suite runs it)

Why: the CPU benchmarks use a tiny CLIP, whose towers are so cheap that data handling weighs as
much as the model; on a GPU with a real backbone the balance is different (an RN50x4 step needs
thousands of images per second). This prints ONE table with a column per model and precision
(random init: speed does not depend on the weights; open_clip_torch must be installed), each
followed by its TFLOP/s, every figure measured in this run. `--rows` picks groups or rows:

  - stage1-text: stage 1 `--encoder text` triplets/s, the real program (`clip_cir.training.stage1`: image
    features reused, text trimmed) and the published code's way (images re-encoded every step,
    full-length text; `common.published_text_epochs`);
  - stage1-both: stage 1 `--encoder both` triplets/s, the real program with its pixel cache and
    `--channels-last auto`, then `--channels-last off`, then also `--pixel-cache off` (decoding
    every epoch, `--num-workers` automatic). Stage-1 rows train on synthetic CIRR data rendered
    at the largest input size, `--train` triplets, batch `--batch-size`; triplets/s from the
    steady epochs (2..N) of `train_metrics.csv`;
  - stage2: a stage-2 epoch on `--stage2-triplets` random-feature triplets at batch
    `--stage2-batch-size`, Combiner at its default size (4x/8x the embedding), through the
    library's loop and `FeatureBatches` (`common.stage2_epochs`; median of epochs 2..N);
  - tower: the image tower alone on random pixels already on the device (`compute.tower_rate`):
    forward at the inference batch (`--inference-batch-size`, extraction's) and forward+backward
    at `--tower-batch-size`, each channels-last and in the default layout: the ceiling for the
    extraction and stage-1 rows;
  - extraction: gallery extraction images/s (`clip_cir.encoding.features.encode_images`, no
    feature cache, `--channels-last auto`) on rendered 500x375 PNG photos (~320 KB, as CIRR's):
    from a warm pixel cache (`--images` files) as a fraction of the bare forward in the same
    layout, and decoding with the automatic workers (`--decode-images` files, enough for the
    workers to reach a steady state);
  - loader: images/s on the same files, uint8 batches to the device and normalised there:
    decoding with the automatic workers vs the pixel cache (no workers, as the library reads
    it). It does not depend on the precision: measured once per model, shown in each of its
    columns.

"(Nx)" is a row's ratio to its baseline row (below it; extraction's is the bare forward),
measured in the same run and column. TFLOP/s = FLOPs per item (`compute.measure_flops`) times
the row's rate, with its share of a large matrix product's rate on the same device and precision
(`compute.matmul_peak`). Mixed precision goes through Accelerate as in the programs (autocast;
fp16 with its loss scaler). On a CPU only bf16 autocast exists: fp16 columns are skipped there.
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
    load_training_set,
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
from compute import Flops, matmul_peak, measure_flops, tower_rate, trimmed_caption_length

from clip_cir.encoding.encode import INFERENCE_BATCH_SIZE
from clip_cir.encoding.features import encode_images
from clip_cir.encoding.pixels import DecodedPixels, PixelCache, PixelDataset
from clip_cir.models.towers import set_memory_format, tower_input
from clip_cir.params import num_workers as automatic_workers

ROWS = (
    ("text", "stage 1 `--encoder text`, clip-cir: features reused, text trimmed (triplets/s)"),
    ("text_published", "stage 1 `--encoder text`, published way: images re-encoded, full-length text (triplets/s)"),
    ("both", "stage 1 `--encoder both`, clip-cir: pixel cache, `--channels-last auto` (triplets/s)"),
    ("both_nchw", "stage 1 `--encoder both`, pixel cache, `--channels-last off` (triplets/s)"),
    ("both_decoded", "stage 1 `--encoder both`, `--pixel-cache off --channels-last off`: decoded every epoch "
                     "(triplets/s)"),
    ("stage2", "stage 2 epoch, {stage2_triplets:,} triplets, batch {stage2_batch_size} (s)"),
    ("tower_forward", "image tower alone, forward, batch {inference_batch_size}, channels-last (images/s)"),
    ("tower_forward_nchw", "image tower alone, forward, batch {inference_batch_size}, default layout (images/s)"),
    ("tower_train", "image tower alone, forward+backward, batch {tower_batch_size}, channels-last (images/s)"),
    ("tower_train_nchw", "image tower alone, forward+backward, batch {tower_batch_size}, default layout (images/s)"),
    ("extract_cached", "gallery extraction, pixel cache, batch {inference_batch_size}, `--channels-last auto` "
                       "(images/s; x = of the bare forward)"),
    ("extract_decoded", "gallery extraction, decoding with {workers} workers, {decode_images:,} files (images/s)"),
    ("loader_cached", "loader, pixel cache (images/s)"),
    ("loader_decoded", "loader, decoding with {workers} workers, {decode_images:,} files (images/s)"),
)
"""Table rows: key and label."""
GROUPS = {"stage1-text": ("text", "text_published"), "stage1-both": ("both", "both_nchw", "both_decoded"),
          "stage2": ("stage2",),
          "tower": ("tower_forward", "tower_forward_nchw", "tower_train", "tower_train_nchw"),
          "extraction": ("extract_cached", "extract_decoded"), "loader": ("loader_cached", "loader_decoded")}
BASELINES = {"text": "text_published", "both": "both_nchw", "both_nchw": "both_decoded",
             "tower_forward": "tower_forward_nchw", "tower_train": "tower_train_nchw",
             "loader_cached": "loader_decoded"}
"""A row's ratio is to this row (`extract_cached`'s: the bare forward in the layout it ran in)."""
LOWER_IS_BETTER = {"stage2"}

SMOKE = {"models": ["cir-tiny-vit", "cir-tiny-rn"], "precisions": ["bf16"], "train": 4, "val": 2, "batch_size": 4,
         "epochs": 2, "stage2_triplets": 128, "stage2_batch_size": 64, "stage2_epochs": 2, "images": 8,
         "decode_images": 8, "unique_photos": 4, "repeats": 1, "inference_batch_size": 4, "tower_batch_size": 2,
         "tower_steps": 1, "peak_size": 128}
"""`--smoke`: the tiny CPU models and sizes small enough for a test (seconds)."""


@dataclass
class Column:
    model: str
    size: int
    precision: str
    values: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, str] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    flops: Flops | None = None
    peak: float = 0.0

    @property
    def title(self) -> str:
        return f"{self.model} {self.size} px {self.precision}"


def stage1_rows(column: Column, keys: list[str], data_root: Path, root: Path, args: argparse.Namespace) -> None:
    """The stage-1 rows of one column asked for: real program runs and the published baseline."""
    run_args = argparse.Namespace(model=column.model, epochs=args.epochs, batch_size=args.batch_size,
                                  num_workers=None, seed=args.seed)
    runs = {"text": ["--encoder", "text"], "both": ["--encoder", "both"],
            "both_nchw": ["--encoder", "both", "--channels-last", "off"],
            "both_decoded": ["--encoder", "both", "--pixel-cache", "off", "--channels-last", "off"]}
    for key in [k for k in runs if k in keys]:
        status(f"{column.title}: stage 1 {' '.join(runs[key])} ...")
        reset_accelerator_state()  # the program builds its own Accelerator with --mixed-precision
        name = f"{column.model}-{column.precision}-{key}"
        run = stage1_run(data_root, root, name, root / "cache" / name, run_args,
                         [*runs[key], "--mixed-precision", column.precision])
        column.values[key] = Epochs.from_run(run, args.batch_size).triplets_per_second
    if "text_published" in keys:
        status(f"{column.title}: stage 1 --encoder text, the published way ...")
        with quiet():
            published = published_text_epochs(fresh_accelerator(column.precision), data_root, column.model,
                                               args.seed, args.batch_size, published_workers(run_args), args.epochs)
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


def tower_rows(column: Column, clip, args: argparse.Namespace) -> None:
    """The bare image tower: forward at the inference batch, forward+backward at the training one."""
    accelerator = fresh_accelerator(column.precision)
    for key, train, batch in (("tower_forward", False, args.inference_batch_size),
                              ("tower_train", True, args.tower_batch_size)):
        for suffix, channels_last in (("", True), ("_nchw", False)):
            if key + suffix not in args.keys:
                continue
            status(f"{column.title}: image tower {key[6:]}{suffix or ' channels-last'} ...")
            column.values[key + suffix] = tower_rate(clip, accelerator.device, accelerator.autocast,
                                                     batch_size=batch, channels_last=channels_last, train=train,
                                                     steps=args.tower_steps)
    set_memory_format(clip.model, accelerator.device, "off")


def extraction_rows(column: Column, clip, transform, photos: list[Path], pixels: PixelCache,
                    args: argparse.Namespace) -> None:
    """Gallery extraction images/s from the (already written) pixel cache and decoding, in the
    layout the programs pick (`--channels-last auto`); then the cached run's features against a
    plain forward of its first batch (an asynchronous-copy bug would show there)."""
    accelerator = fresh_accelerator(column.precision)
    device = accelerator.device
    clip.model.to(device)
    channels_last = set_memory_format(clip.model, device, "auto")
    column.baselines["extract_cached"] = "tower_forward" if channels_last else "tower_forward_nchw"
    features = None
    for key, paths, cache in (("extract_decoded", photos[:args.decode_images], None),
                              ("extract_cached", photos[:args.images], pixels)):
        if key not in args.keys:
            continue
        status(f"{column.title}: gallery extraction ({key}) ...")

        def encode(paths: list[Path] = paths, cache: PixelCache | None = cache) -> torch.Tensor:
            with quiet():
                return encode_images(clip, paths, transform, device=device, batch_size=args.inference_batch_size,
                                     num_workers=args.workers, autocast=accelerator.autocast,
                                     precision=column.precision, progress=False, pixel_cache=cache)

        encode()  # warm-up: kernels, allocator, workers
        rates = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            features = encode()  # returns on the host: the device is done
            rates.append(len(paths) / (time.perf_counter() - started))
        column.values[key] = sorted(rates)[len(rates) // 2]
    if features is not None:
        first = pixels.get(photos[:args.images], transform, progress=False).rows(
            0, min(args.inference_batch_size, args.images))
        with torch.no_grad(), accelerator.autocast():
            direct = clip.model.eval().encode_image(transform.normalize(tower_input(first.to(device), channels_last)))
        difference = float((features[:len(first)] - direct.float().cpu()).abs().max() / direct.float().abs().max())
        column.checks.append(f"{column.title}: extraction vs a plain forward of its first batch: max difference "
                             f"{difference:.1e} of the largest feature{'' if difference < 1e-2 else '  <-- WRONG'}")
    set_memory_format(clip.model, device, "off")


def loader_rows(columns: list[Column], transform, photos: list[Path], cached, device: torch.device,
                args: argparse.Namespace) -> None:
    """Loader images/s for one model's input size, shown in each of its columns."""
    status(f"{columns[0].model}: loader rates ...")
    decoded = loader_rate(DecodedPixels(photos[:args.decode_images], transform), transform, batch_size=64,
                          num_workers=args.workers, device=device, repeats=args.repeats)
    from_cache = loader_rate(PixelDataset(cached), transform, batch_size=64, num_workers=0, device=device,
                             repeats=args.repeats)
    for column in columns:
        column.values.update(loader_decoded=decoded, loader_cached=from_cache)


def cell(column: Column, key: str) -> str:
    value = column.values.get(key)
    if value is None:
        return "—"
    text = f"{value:.3f}" if key in LOWER_IS_BETTER else f"{value:,.0f}" if value >= 10 else f"{value:.2f}"
    base = column.values.get(column.baselines.get(key) or BASELINES.get(key, ""))
    return f"{text} ({value / base:.2f}x)" if base else text


def tflops_cell(column: Column, key: str) -> str:
    """Achieved TFLOP/s of a row and its share of the matrix-product peak ('—' where no model runs)."""
    value = column.values.get(key)
    per_unit = column.flops.per_unit(key) if column.flops else None
    if value is None or per_unit is None:
        return "—"
    tflops = value * per_unit / 1e12
    return f"{tflops:.3g} ({100 * tflops / column.peak:.0f}%)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models (cir-tiny-vit, cir-tiny-rn, unless --models), bf16, tiny sizes: a few "
                             "seconds on a CPU; overrides the size options")
    parser.add_argument("--models", nargs="+", default=None,
                        help="open_clip models, random init (default: RN50x4 ViT-B-16; with --smoke: the tiny ones)")
    parser.add_argument("--precisions", nargs="+", choices=("fp16", "bf16"), default=["fp16", "bf16"],
                        help="mixed precisions (default: %(default)s; a CPU runs bf16 only)")
    parser.add_argument("--rows", nargs="+", choices=[*GROUPS, *(key for key, _ in ROWS)], default=list(GROUPS),
                        metavar="ROWS", help=f"row groups ({', '.join(GROUPS)}) or single rows "
                                             f"({', '.join(key for key, _ in ROWS)}) to measure (default: all)")
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
    parser.add_argument("--images", type=int, default=2048,
                        help="500x375 PNG files for extraction and loading from the pixel cache (default: "
                             "%(default)s)")
    parser.add_argument("--decode-images", type=int, default=2048,
                        help="files for the decoding rows: enough for the workers to reach a steady state "
                             "(default: %(default)s)")
    parser.add_argument("--unique-photos", type=int, default=256,
                        help="photos rendered; the other files are copies (default: %(default)s)")
    parser.add_argument("--inference-batch-size", type=int, default=INFERENCE_BATCH_SIZE,
                        help="extraction's batch and the bare forward's (default: %(default)s, the library's)")
    parser.add_argument("--tower-batch-size", type=int, default=128,
                        help="the bare forward+backward's batch (default: %(default)s)")
    parser.add_argument("--tower-steps", type=int, default=10,
                        help="timed batches per bare-tower figure, after 3 warm-up ones (default: %(default)s)")
    parser.add_argument("--peak-size", type=int, default=8192,
                        help="side of the square matrix product that measures the peak (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per extraction/loader figure, median "
                                                               "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    models = args.models
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.models = models or (SMOKE["models"] if args.smoke else ["RN50x4", "ViT-B-16"])
    if (args.epochs < 2 or args.stage2_epochs < 2
            or min(args.train, args.val, args.batch_size, args.images, args.decode_images, args.unique_photos,
                   args.repeats, args.stage2_triplets, args.inference_batch_size, args.tower_batch_size,
                   args.tower_steps, args.peak_size) < 1
            or args.batch_size > args.train or args.stage2_batch_size > args.stage2_triplets):
        parser.error("need --epochs and --stage2-epochs >= 2, positive sizes, and batches no larger than the data")
    args.keys = [key for key, _ in ROWS if any(key == r or key in GROUPS.get(r, ()) for r in args.rows)]
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
    print(header("clip-cir on a GPU: stage 1, stage 2, the image tower, extraction and loading with mixed precision",
                 sys.argv if argv is None else ["benchmarks/gpu.py", *argv]), flush=True)
    device = torch.device("cuda" if on_gpu else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    keys = set(args.keys)
    stage1 = keys & {"text", "text_published", "both", "both_nchw", "both_decoded"}
    files = keys & {"extract_cached", "extract_decoded", "loader_cached", "loader_decoded"}
    peak_size = args.peak_size if on_gpu else min(args.peak_size, 1024)  # a CPU takes minutes for 8192
    peaks = {p: matmul_peak(device, p, peak_size) for p in precisions}
    columns: list[Column] = []
    with workspace("clip_cir_bench_gpu_") as root:
        models = {}
        for name in args.models:
            with quiet():
                clip, transform = load_model(name, args.seed)
            models[name] = (clip, transform)
        largest = max(clip.input_size for clip, _ in models.values())
        data_root = photos = None
        captions: list[str] = []
        if stage1:
            status(f"generating {args.train} synthetic CIRR triplets at {largest} px ...")
            data_root = make_synthetic_cirr(root, args.train, args.seed, n_val=args.val, size=largest)
            captions = [q.train_captions[0] for q in load_training_set(data_root).queries]
        if files:
            count = max(args.images, args.decode_images)
            status(f"rendering {min(count, args.unique_photos)} photos, {count} files ...")
            photos = render_photos(root / "photos", "png", count, args.seed, unique=args.unique_photos)
        for name, (clip, transform) in models.items():
            pixels = PixelCache(root / "pixels")
            cached = None
            if files:
                with quiet():  # the one-off write
                    cached = pixels.get(photos[:args.images], transform, num_workers=args.workers, progress=False)
            length = trimmed_caption_length(clip, captions, args.batch_size, args.seed) if stage1 else 77
            flops = measure_flops(clip, device, length)
            clip.model.cpu()
            model_columns = [Column(name, clip.input_size, p, flops=flops, peak=peaks[p]) for p in precisions]
            for column in model_columns:
                if stage1:
                    stage1_rows(column, args.keys, data_root, root, args)
                if "stage2" in keys:
                    stage2_row(column, clip.embed_dim, root, args)
                if keys & set(GROUPS["tower"]):
                    tower_rows(column, clip, args)
                if keys & set(GROUPS["extraction"]):
                    extraction_rows(column, clip, transform, photos, pixels, args)
                clip.model.cpu()
            if keys & set(GROUPS["loader"]):
                loader_rows(model_columns, transform, photos, cached, device, args)
            columns += model_columns
            if on_gpu:
                torch.cuda.empty_cache()
    sizes = {"stage2_triplets": args.stage2_triplets, "stage2_batch_size": args.stage2_batch_size,
             "workers": args.workers, "inference_batch_size": args.inference_batch_size,
             "tower_batch_size": args.tower_batch_size, "decode_images": args.decode_images}
    print(f"device: {torch.cuda.get_device_name(0) if on_gpu else 'cpu'}; models random init; stage 1: synthetic CIRR, "
          f"{args.train:,} triplets at {largest} px, batch {args.batch_size}, {args.epochs} epochs per run, steady "
          f"epochs 2..{args.epochs}; stage 2: random {args.stage2_triplets:,} triplets, Combiner 4x/8x the embedding, "
          f"median of epochs 2..{args.stage2_epochs}; bare tower: {args.tower_steps} timed batches after 3 warm-up; "
          f"extraction and loader: rendered 500x375 PNG files ({args.images:,} from the pixel cache), median of "
          f"{args.repeats}; (Nx) = ratio to the baseline row, same column")
    print("matrix-product peak (TFLOP/s, {0}x{0} by {0}x{0}): {1}; TFLOP/s = FLOPs per item x rate, (%) = of that "
          "peak\n".format(peak_size, ", ".join(f"{p} {v:,.1f}" for p, v in peaks.items())))
    titles = [t for c in columns for t in (c.title, "TFLOP/s")]
    print(markdown_table(["measure", *titles],
                         [[label.format(**sizes)] + [x for c in columns for x in (cell(c, key), tflops_cell(c, key))]
                          for key, label in ROWS if key in keys]))
    for column in columns:
        if column.flops:
            f = column.flops
            text = (f"; per caption (forward+backward): {f.text_train_trimmed / 1e9:.3g} at {f.trimmed_length} tokens, "
                    f"{f.text_train_full / 1e9:.3g} at full length" if stage1 else "")
            print(f"\n{column.title}: GFLOPs per image: forward {f.image_forward / 1e9:.3g}, forward+backward "
                  f"{f.image_train / 1e9:.3g}{text}", end="")
    print()
    for check in (c for column in columns for c in column.checks):
        print(f"check: {check}")
    if skipped:
        print(f"\nskipped: {', '.join(skipped)} (no CUDA device: CPU autocast has bf16 only)")
    print(f"\nload average (1/5/15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
