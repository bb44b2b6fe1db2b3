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
    full-length text; `baselines.published_text_epochs`);
  - stage1-both: stage 1 `--encoder both` triplets/s, the real program with its pixel cache and
    `--channels-last auto`, then `--channels-last off`, then also `--pixel-cache off` (decoding
    every epoch, `--num-workers` automatic);
  - stage1-compile (only when asked for): `--encoder text --compile` and `--encoder both
    --compile`, each against its uncompiled row (epoch 1, which compiles, is not timed);
  - stage1-deterministic (only when asked for): `--encoder both --deterministic`, without the
    cuDNN benchmark mode and TF32 the programs set on CUDA, against `--encoder both`.
    Stage-1 rows train on synthetic CIRR data rendered at the largest input size, `--train`
    triplets, batch `--batch-size`; triplets/s from the steady epochs (2..N) of
    `train_metrics.csv`;
  - stage2: a stage-2 epoch on `--stage2-triplets` random-feature triplets at batch
    `--stage2-batch-size`, Combiner at its default size (4x/8x the embedding), through the
    library's loop and `FeatureBatches` (`baselines.stage2_epochs`; median of epochs 2..N);
  - tower: the image tower alone on random pixels already on the device (`compute.tower_rate`):
    forward at the inference batch (`--inference-batch-size`, extraction's) and forward+backward
    at `--tower-batch-size`, each channels-last and in the default layout: the ceiling for the
    extraction and stage-1 rows; all with the programs' CUDA speed settings (cuDNN benchmark
    mode, TF32), and (tower-deterministic, only when asked for) the forward+backward without;
  - extraction: gallery extraction images/s (`clip_cir.encoding.extraction.encode_images`, no
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
import signal
import sys
import time
from pathlib import Path

import torch
from baselines import published_text_epochs, stage2_epochs
from compute import matmul_peak, measure_flops, tower_rate, trimmed_caption_length
from fixtures import load_model, load_training_set, make_synthetic_cirr, render_photos, synthetic_triplets
from gpu_report import DEFAULT_GROUPS, GROUPS, ROWS, STAGE1, Column, print_report
from harness import fresh_accelerator, quiet, reset_accelerator_state, status, workspace
from options import published_workers, stage1_run
from reporting import header, load_average
from timing import Epochs, loader_rate

from clip_cir.encoding.extraction import INFERENCE_BATCH_SIZE, encode_images
from clip_cir.encoding.pixels import DecodedPixels, PixelCache, PixelDataset, loader_workers
from clip_cir.models.towers import set_memory_format, tower_input

SMOKE = {"models": ["cir-tiny-vit", "cir-tiny-rn"], "precisions": ["bf16"], "train": 4, "val": 2, "batch_size": 4,
         "epochs": 2, "stage2_triplets": 128, "stage2_batch_size": 64, "stage2_epochs": 2, "images": 8,
         "decode_images": 8, "unique_photos": 4, "repeats": 1, "inference_batch_size": 4, "tower_batch_size": 2,
         "tower_steps": 1, "peak_size": 128}
"""`--smoke`: the tiny CPU models and sizes small enough for a test (seconds)."""


def stage1_rows(column: Column, keys: list[str], data_root: Path, root: Path, args: argparse.Namespace) -> None:
    """The stage-1 rows of one column asked for: real program runs and the published baseline."""
    run_args = argparse.Namespace(model=column.model, epochs=args.epochs, batch_size=args.batch_size,
                                  num_workers=None, seed=args.seed)
    runs = {"text": dict(encoder="text"), "both": dict(encoder="both"),
            "both_nchw": dict(encoder="both", channels_last="off"),
            "both_decoded": dict(encoder="both", pixel_cache="off", channels_last="off"),
            "text_compiled": dict(encoder="text", compile=True), "both_compiled": dict(encoder="both", compile=True),
            "both_deterministic": dict(encoder="both", deterministic=True)}
    for key in [k for k in runs if k in keys]:
        flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in runs[key].items())
        status(f"{column.title}: stage 1 {flags} ...")
        reset_accelerator_state()  # the program builds its own Accelerator with its mixed precision
        name = f"{column.model}-{column.precision}-{key}"
        run = stage1_run(data_root, root, name, root / "cache" / name, run_args, **runs[key],
                         mixed_precision=column.precision)
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
    """The bare image tower: forward at the inference batch, forward+backward at the training one,
    with the training programs' CUDA speed settings (and, for the `_deterministic` rows, without)."""
    from clip_cir.training.run import set_cuda_speed

    accelerator = fresh_accelerator(column.precision)
    for key, train, batch in (("tower_forward", False, args.inference_batch_size),
                              ("tower_train", True, args.tower_batch_size)):
        for suffix, channels_last in (("", True), ("_nchw", False)):
            for deterministic in (False, True):
                row = key + suffix + ("_deterministic" if deterministic else "")
                if row not in args.keys:
                    continue
                status(f"{column.title}: image tower {key[6:]}{suffix or ' channels-last'}"
                       f"{' deterministic' if deterministic else ''} ...")
                set_cuda_speed(accelerator.device, deterministic)
                column.values[row] = tower_rate(clip, accelerator.device, accelerator.autocast, batch_size=batch,
                                                channels_last=channels_last, train=train, steps=args.tower_steps)
    set_cuda_speed(accelerator.device, deterministic=False)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models (cir-tiny-vit, cir-tiny-rn, unless --models), bf16, tiny sizes: a few "
                             "seconds on a CPU; overrides the size options")
    parser.add_argument("--models", nargs="+", default=None,
                        help="open_clip models, random init (default: RN50x4 ViT-B-16; with --smoke: the tiny ones)")
    parser.add_argument("--precisions", nargs="+", choices=("fp16", "bf16"), default=["fp16", "bf16"],
                        help="mixed precisions (default: %(default)s; a CPU runs bf16 only)")
    parser.add_argument("--rows", nargs="+", choices=[*GROUPS, *(key for key, _ in ROWS)], default=DEFAULT_GROUPS,
                        metavar="ROWS", help=f"row groups ({', '.join(GROUPS)}) or single rows "
                                             f"({', '.join(key for key, _ in ROWS)}) to measure (default: all "
                                             "groups but stage1-compile, stage1-deterministic and tower-deterministic)")
    parser.add_argument("--train", type=int, default=1024,
                        help="stage-1 synthetic CIRR triplets (default: %(default)s)")
    parser.add_argument("--val", type=int, default=50,
                        help="synthetic val queries: the benchmark validates after its last epoch "
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


class Stopped(Exception):
    """SIGTERM (a time limit such as `timeout`'s): the rows measured so far are still printed."""


def _stop(signum, frame) -> None:
    raise Stopped()


def measure(args: argparse.Namespace, device: torch.device, precisions: list[str], peaks: dict[str, float],
            columns: list[Column]) -> None:
    """Every asked-for row of every model and precision, into `columns` as they are measured."""
    keys = set(args.keys)
    stage1 = keys & STAGE1
    files = keys & set(GROUPS["extraction"] + GROUPS["loader"])
    with workspace("clip_cir_bench_gpu_") as root:
        models = {}
        for name in args.models:
            with quiet():
                clip, transform = load_model(name, args.seed)
            models[name] = (clip, transform)
        args.largest = max(clip.input_size for clip, _ in models.values())
        data_root = photos = None
        captions: list[str] = []
        if stage1:
            status(f"generating {args.train} synthetic CIRR triplets at {args.largest} px ...")
            data_root = make_synthetic_cirr(root, args.train, args.seed, n_val=args.val, size=args.largest)
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
            columns += model_columns
            for column in model_columns:
                if stage1:
                    stage1_rows(column, args.keys, data_root, root, args)
                if "stage2" in keys:
                    stage2_row(column, clip.embed_dim, root, args)
                if keys & set(GROUPS["tower"] + GROUPS["tower-deterministic"]):
                    tower_rows(column, clip, args)
                if keys & set(GROUPS["extraction"]):
                    extraction_rows(column, clip, transform, photos, pixels, args)
                clip.model.cpu()
            if keys & set(GROUPS["loader"]):
                loader_rows(model_columns, transform, photos, cached, device, args)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    on_gpu = torch.cuda.is_available()
    args.workers = loader_workers(None, on_gpu)
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
    peak_size = args.peak_size if on_gpu else min(args.peak_size, 1024)  # a CPU takes minutes for 8192
    peaks = {p: matmul_peak(device, p, peak_size) for p in precisions}
    columns: list[Column] = []
    signal.signal(signal.SIGTERM, _stop)
    stopped = False
    try:
        measure(args, device, precisions, peaks, columns)
    except Stopped:
        stopped = True
        status("gpu.py: stopped (SIGTERM): printing the rows measured so far")
    print_report(args, columns, device, peaks, peak_size)
    if skipped:
        print(f"\nskipped: {', '.join(skipped)} (no CUDA device: CPU autocast has bf16 only)")
    if stopped:
        print("\nSTOPPED by SIGTERM (a time limit): rows shown as — were not measured")
    print(f"\nload average (1/5/15 min) at end: {load_average()}")
    if stopped:
        sys.exit(124)


if __name__ == "__main__":
    main()
