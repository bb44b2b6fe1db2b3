"""Plumbing shared by the benchmarks (`stage1.py`, `stage2.py`, `stage2_loop.py`, `loading.py`,
`eval_cache.py`, `gpu.py`).

Why a module: the benchmarks compare the real programs against the way the work was done before
(the published reference code's, or the library's own earlier one) on the same model and data
in one process, and they need the same throw-away workspace with a cold feature cache, the
same quiet in-process runs, the same epoch timing rule and the same report; `gpu.py` repeats
the CPU benchmarks' measurements on real backbones, so each measurement lives here once.
Nothing here re-implements the library: data, model, transforms, datasets, sampler, loop and
losses all come from `clip_cir`; this file only times them (the published baseline's step is
the one exception, by design: that is the way of working being compared against).

Timing rule (the library's): an epoch's `seconds` run from before the first batch is asked of
the DataLoader to after the last optimizer step (`train_metrics.csv`), so worker start-up and
image decoding count, validation and checkpoint writes do not. The baselines here are timed
the same way. The first epoch is a warm-up; "steady state" is the median of the others. With
`--rounds R` the paths run R times, interleaved, and the medians pool every round's steady
epochs: load from other processes on a shared machine then hits all paths alike.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import open_clip
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clip_cir.data import load_splits
from clip_cir.data.synthetic import generate
from clip_cir.encoding import features
from clip_cir.models.clip import LoadedCLIP, load_clip
from clip_cir.models.transforms import ImageTransform
from clip_cir.params import transform_for
from clip_cir.training.datasets import EpochSampler, TrainingSet, TripletDataset
from clip_cir.training.run import seed_everything

if TYPE_CHECKING:
    from accelerate import Accelerator

SYNTH_SIZE = 64
"""Short side of the synthetic images: the tiny CLIP's input size, as in DESIGN.md §9."""
VAL_QUERIES = 50
"""The programs always validate after their last epoch; a small val split keeps that short
(validation is outside the epoch timings anyway)."""


def status(message: str) -> None:
    """One progress line on stderr: stdout stays the paste-able report."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def workspace(prefix: str) -> Iterator[Path]:
    """A temp dir for data, runs and a cold feature cache (`CLIP_CIR_CACHE`), removed at the end.

    Cold on purpose: with a warm cache from an earlier run the reuse path would skip its one-off
    feature extraction, and the benchmark would hide the cost it must report.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    previous = os.environ.get("CLIP_CIR_CACHE")
    os.environ["CLIP_CIR_CACHE"] = str(root / "cache")
    try:
        yield root
    finally:
        if previous is None:
            os.environ.pop("CLIP_CIR_CACHE", None)
        else:
            os.environ["CLIP_CIR_CACHE"] = previous
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def quiet() -> Iterator[None]:
    """Run library code with its prints, log lines and warnings captured (open_clip's "no
    pretrained weights", the programs' per-epoch log lines); they are replayed on stderr only if
    the code fails, so a broken run still explains itself.

    The training programs install their own root-logger handlers (stderr and RUN/log.txt);
    they are closed and the caller's logging restored afterwards, so one run's log file does
    not keep receiving the next run's lines.
    """
    buffer = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    ours = logging.getLogger("clip_cir")
    our_level = ours.level
    try:
        with warnings.catch_warnings(), redirect_stdout(buffer), redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        ours.setLevel(our_level)


def make_synthetic_cirr(root: Path, n_train: int, seed: int, n_val: int = VAL_QUERIES,
                        size: int = SYNTH_SIZE) -> Path:
    """Synthetic data in the CIRR layout (`clip_cir.data.synthetic`); returns the `--data-root`."""
    data_root = root / "data"
    with quiet():
        generate(data_root, n_train=n_train, n_val=n_val, n_test=0, size=size, seed=seed, progress=False)
    return data_root


@dataclass
class Call:
    """One timed call: what it was given (paths, texts, a checkpoint folder) and its duration."""

    given: object
    seconds: float


def _timed(fn: Callable, calls: list[Call], given: Callable[[tuple, dict], object]) -> Callable:
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            calls.append(Call(given(args, kwargs), time.perf_counter() - started))

    return wrapper


@contextmanager
def timed_feature_extraction() -> Iterator[dict[str, list[Call]]]:
    """Time every call of the library's two CLIP feature primitives, `clip_cir.encoding.features.
    encode_images` and `encode_texts`, made while the context is open; yields {"images": [...],
    "texts": [...]} with each call's input list.

    This is how a real run's one-off extraction is measured inside that run (rather than by a
    second, separate extraction). The primitives are replaced wherever a loaded `clip_cir`
    module holds them, so the timing survives refactors of which module calls them. A module
    first imported inside the context picks the replacement up from `clip_cir.encoding.features` itself;
    on exit every `clip_cir` module holding a replacement gets the original back, so a later
    context sees every call again. `training_extraction` then picks the calls on the training set.
    """
    calls: dict[str, list[Call]] = {"images": [], "texts": []}
    replaced: list[tuple[Callable, Callable]] = []  # (wrapper, the primitive it replaces)

    def clip_cir_modules() -> list[ModuleType]:
        return [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "clip_cir" and m is not None]

    for kind, name, arg in (("images", "encode_images", "paths"), ("texts", "encode_texts", "texts")):
        original = getattr(features, name)
        wrapper = _timed(original, calls[kind], lambda a, k, arg=arg: list(a[1] if len(a) > 1 else k.get(arg, [])))
        replaced.append((wrapper, original))
        for module in clip_cir_modules():
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, wrapper)
    try:
        yield calls
    finally:
        for module in clip_cir_modules():
            for attr, value in list(vars(module).items()):
                for wrapper, original in replaced:
                    if value is wrapper:
                        setattr(module, attr, original)


def training_extraction(calls: dict[str, list[Call]], data: TrainingSet, program: str, texts: bool) -> float:
    """Seconds spent encoding the training set's images (and, with `texts`, all its caption
    forms); validation galleries and captions are other inputs and are not counted. An error
    if the training images were never encoded: the benchmark no longer sees the extraction."""
    images = {str(p) for p in data.image_paths}
    captions = data.caption_table()[0]
    image_calls = [c for c in calls["images"] if {str(p) for p in c.given} == images]
    text_calls = [c for c in calls["texts"] if c.given == captions] if texts else []
    if not image_calls or (texts and not text_calls):
        raise RuntimeError(f"{program}: no call of clip_cir.encoding.features.encode_images/encode_texts on the "
                           f"training set was seen; the benchmark's timing hook needs updating")
    return sum(c.seconds for c in image_calls + text_calls)


@contextmanager
def timed_calls(owner: ModuleType | type, name: str,
                given: Callable[[tuple, dict], object] = lambda a, k: a[0] if a else None) -> Iterator[list[Call]]:
    """Time calls of `owner.name` (a function a module calls through its own global, or a
    method of a class), each with what `given(args, kwargs)` picks (default: the first
    argument); yields an empty list if there is no such function."""
    calls: list[Call] = []
    original = getattr(owner, name, None)
    if original is None:
        yield calls
        return
    setattr(owner, name, _timed(original, calls, given))
    try:
        yield calls
    finally:
        setattr(owner, name, original)


@dataclass
class Epochs:
    """Per-epoch timings and cumulative CLIP encode counts, as in `train_metrics.csv`."""

    seconds: list[float]
    steps: list[int]
    batch_size: int
    images_encoded: list[int] = field(default_factory=list)
    """Cumulative images through CLIP at the end of each epoch (process-wide, as the CSV logs it)."""

    @classmethod
    def from_run(cls, run_dir: Path, batch_size: int) -> "Epochs":
        frame = pd.read_csv(run_dir / "train_metrics.csv")
        return cls(seconds=frame["seconds"].tolist(), steps=frame["steps"].astype(int).tolist(),
                   batch_size=batch_size, images_encoded=frame["clip_images_encoded"].astype(int).tolist())

    @classmethod
    def pool(cls, runs: Sequence["Epochs"]) -> "Epochs":
        """Several rounds of one path as one: the first round's warm-up epoch, then every
        round's steady epochs (so `steady_seconds` is their median), the first round's counts."""
        first = runs[0]
        return cls(seconds=[first.seconds[0], *(s for run in runs for s in run.seconds[1:])],
                   steps=[first.steps[0], *(s for run in runs for s in run.steps[1:])],
                   batch_size=first.batch_size, images_encoded=first.images_encoded)

    @property
    def steady_seconds(self) -> float:
        """Median over the epochs after the first (the first pays warm-up: allocator, caches)."""
        return statistics.median(self.seconds[1:] or self.seconds)

    @property
    def triplets_per_epoch(self) -> int:
        return self.steps[-1] * self.batch_size  # drop_last: every step is a full batch

    @property
    def triplets_per_second(self) -> float:
        return self.triplets_per_epoch / self.steady_seconds

    @property
    def images_per_epoch(self) -> int:
        """Images through CLIP during epoch 2. The programs validate only after the last epoch
        here (which adds gallery encodes to that row) and epoch 1's row of a reuse run includes
        the one-off extraction, so epoch 2 of >= 3 is the clean one."""
        return self.images_encoded[1] - self.images_encoded[0]


def image_triplet_loader(data: TrainingSet, transform: ImageTransform, batch_size: int, num_workers: int,
                         seed: int) -> tuple[DataLoader, EpochSampler]:
    """The DataLoader the library itself builds when an image tower trains (stage 1 `--encoder
    both`): preprocessed reference and target images from worker processes, in the same
    (seed, epoch) order. The baselines load images through it every batch, as the published
    code does, so their data pipeline is the library's and only the CLIP work differs."""
    dataset = TripletDataset(data, seed, transform)
    sampler = EpochSampler(len(dataset), seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True)
    return loader, sampler


def time_epochs(loader: DataLoader, sampler: EpochSampler, step: Callable[[dict], int], epochs: int,
                batch_size: int) -> Epochs:
    """Run a baseline's epochs with the library loop's timing rule. `step(batch)` trains on
    one batch and returns how many images it put through CLIP."""
    result = Epochs(seconds=[], steps=[], batch_size=batch_size)
    encoded = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        steps = 0
        for batch in loader:
            encoded += step(batch)
            steps += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        result.seconds.append(time.perf_counter() - started)
        result.steps.append(steps)
        result.images_encoded.append(encoded)
    return result


def published_text_epochs(accelerator: "Accelerator", data_root: Path, model_name: str, seed: int, batch_size: int,
                          num_workers: int, epochs: int) -> Epochs:
    """Stage-1 `--encoder text` epochs as the published code trains it: reference and target
    images re-encoded by the frozen image tower (under no_grad) on every step, and captions
    encoded at the full context length.

    Same model, data, DataLoader (`image_triplet_loader`), loss, optimizer hyper-parameters as
    `clip_cir.training.stage1` (its own parser's defaults), and its precision handling through
    `accelerator` (autocast, the fp16 loss scaler). What differs: where the image features come
    from, the caption length, and the optimizer's kernel: `torch.optim.AdamW` as the published
    code builds it (torch's default implementation), where clip-cir asks for the fused one
    (`clip_cir.training.optim.make_optimizer`). Timed by `time_epochs`, the library loop's rule.
    """
    from clip_cir.models.combiner import element_wise_sum
    from clip_cir.training import stage1
    from clip_cir.training.losses import batch_contrastive_loss

    defaults = stage1.build_parser().parse_args(["--dataset", "cirr", "--data-root", str(data_root)])
    device = accelerator.device
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as the programs' start_run
    clip, transform = load_model(model_name, seed)
    model = clip.model.to(device)
    for name, param in model.named_parameters():  # the text tower trains, as with --encoder text
        param.requires_grad = not name.startswith("visual.") and name != "logit_scale"
    model.train()
    model.visual.eval()
    optimizer = accelerator.prepare(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                                      lr=defaults.lr, betas=(0.9, 0.999), eps=1e-7,
                                                      weight_decay=defaults.weight_decay))
    loader, sampler = image_triplet_loader(load_training_set(data_root), transform, batch_size, num_workers, seed)

    def step(batch: dict) -> int:
        with accelerator.autocast():
            with torch.no_grad():  # the frozen image tower, every batch
                reference = model.encode_image(transform.normalize(batch["reference_image"].to(device)))
                target = model.encode_image(transform.normalize(batch["target_image"].to(device)))
            text = model.encode_text(clip.tokenizer(batch["caption"]).to(device))  # full context length
            loss = batch_contrastive_loss(element_wise_sum(reference, text), F.normalize(target, dim=-1))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the published code reads the loss every step (its progress bar)
        return reference.shape[0] + target.shape[0]

    return time_epochs(loader, sampler, step, epochs, batch_size)


def baseline_device() -> torch.device:
    """Where Accelerate puts a single-process run (the real paths), so baselines match it.
    On CPU, flush denormals as the programs' `start_run` does: without it early steps are
    several times slower and the comparison would depend on which path ran first."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device


def load_training_set(data_root: Path) -> TrainingSet:
    """The CIRR training triplets exactly as the programs read them."""
    return TrainingSet.from_splits(load_splits("cirr", data_root, "train"))


def load_model(model_name: str, seed: int) -> tuple[LoadedCLIP, ImageTransform]:
    """The programs' model and preprocessing: `load_clip` seeded like their `seed_everything`,
    targetpad 1.25 (their default)."""
    seed_everything(seed)
    with quiet():
        clip = load_clip(model_name)
    return clip, transform_for(clip, "targetpad", 1.25)


def add_benchmark_args(parser: argparse.ArgumentParser, *, train: int, epochs: int, rounds: int,
                       image_size: int = SYNTH_SIZE, image_size_why: str = "the tiny CLIP's input") -> None:
    """The size options both training benchmarks share."""
    parser.add_argument("--train", type=int, default=train,
                        help="synthetic CIRR training triplets (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=epochs,
                        help="epochs per path and round, at least 3: epoch 1 is warm-up (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="triplets per step (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers for every path (default: each path's own: the programs' automatic "
                             "choice, none on a CPU-only machine and one per spare core with a GPU; every core for "
                             "the published code's way, as it does)")
    parser.add_argument("--rounds", type=int, default=rounds,
                        help="run every path this many times, interleaved, and pool their epochs: steadier "
                             "ratios on a busy machine (default: %(default)s)")
    parser.add_argument("--model", default="cir-tiny-vit",
                        help="open_clip model, random init (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=image_size,
                        help=f"short side of the synthetic images in px (default: %(default)s, {image_size_why}; "
                             "larger files cost more to decode, as the real datasets' 375-600 px ones do)")
    parser.add_argument("--seed", type=int, default=0, help="data and model seed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for every path (default: torch's own choice, what the "
                             "programs get). On a machine shared with other work, 1 avoids threads waiting "
                             "on each other and gives much steadier numbers")


def configure(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Validate the shared options and apply --threads (process-wide: the real programs run
    in this process, so every path gets the same setting)."""
    if (args.epochs < 3 or args.rounds < 1 or (args.num_workers is not None and args.num_workers < 0)
            or not 0 < args.batch_size <= args.train or args.image_size < 16):
        parser.error("need --epochs >= 3, --rounds >= 1, --num-workers >= 0, 0 < --batch-size <= --train and "
                     "--image-size >= 16")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)


def program_args(data_root: Path, cache_dir: Path, runs: Path, name: str, args: argparse.Namespace) -> list[str]:
    """Options of a real training program run: the benchmark's sizes, validation only after
    the last epoch, no progress bars, and its own feature and pixel cache folders (cold for
    every round). `args.num_workers` None leaves the program's automatic choice."""
    workers = [] if args.num_workers is None else ["--num-workers", str(args.num_workers)]
    return ["--dataset", "cirr", "--data-root", str(data_root), "--model", args.model, "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), *workers, "--validation-frequency", str(args.epochs),
            "--seed", str(args.seed), "--cache-dir", str(cache_dir), "--pixel-cache-dir", str(cache_dir / "pixels"),
            "--output-dir", str(runs), "--experiment-name", name, "--no-progress"]


def stage1_run(data_root: Path, root: Path, name: str, cache_dir: Path, args: argparse.Namespace,
               options: Sequence[str]) -> Path:
    """One run of the real stage-1 program (`clip_cir.training.stage1.main`, in this process, quiet)
    with the benchmark's sizes (`program_args`) plus `options`; returns its run directory."""
    from clip_cir.training import stage1

    with quiet():
        stage1.main([*options, *program_args(data_root, cache_dir, root / "runs", name, args)])
    return root / "runs" / name


def published_workers(args: argparse.Namespace) -> int:
    """The published code's DataLoader workers: every core (`multiprocessing.cpu_count()` there),
    unless --num-workers sets one value for every path."""
    return args.num_workers if args.num_workers is not None else (os.cpu_count() or 1)


def describe_workers(args: argparse.Namespace) -> str:
    if args.num_workers is not None:
        return f"{args.num_workers} DataLoader workers"
    from clip_cir.params import num_workers

    automatic = num_workers(argparse.Namespace(num_workers=None), torch.cuda.is_available())
    return (f"DataLoader workers: {automatic} in the programs (their automatic choice), {published_workers(args)} "
            f"in the published way (every core)")


def describe_setup(data: TrainingSet, args: argparse.Namespace, model_note: str = "") -> str:
    """The data / model / timing-rule line printed above each table."""
    rounds = f" x {args.rounds} interleaved rounds" if args.rounds > 1 else ""
    return (f"data: synthetic CIRR, {len(data.queries):,} training triplets over {len(data.image_paths):,} images of "
            f"{args.image_size} px; model {args.model} (random init){model_note}; batch {args.batch_size}, "
            f"{describe_workers(args)}, {args.epochs} epochs per path{rounds}; s/epoch = median of "
            f"epochs 2..{args.epochs}{' of every round' if args.rounds > 1 else ''}")


def describe_one_off(data: TrainingSet, what: str, seconds: float, args: argparse.Namespace) -> str:
    """The reuse path's one-off extraction line. It says how many of the encoded training-split
    images any triplet uses: the programs encode the whole split."""
    used = len({q.reference for q in data.queries} | {q.target for q in data.queries})
    return (f"{what} of the {len(data.image_paths):,} training-split images ({used:,} of them in a triplet) in "
            f"{'a median ' if args.rounds > 1 else ''}{duration(seconds)} (cached on disk: a second run on the "
            f"same CLIP skips it)")


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def header(title: str, argv: Sequence[str]) -> str:
    """Command line and machine facts: ratios are only comparable on the same machine, and a
    busy machine (shared cores) shows in the load average."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return "\n".join([
        f"# {title}",
        f"command: {shlex.join([Path(sys.executable).name, *argv])}",
        f"machine: {os.cpu_count()} cores ({usable} usable), {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"open_clip {open_clip.__version__}, device {device}",
        f"load average (1/5/15 min) at start: {load_average()}",
    ])


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """Seconds for short times, minutes/hours for projected schedules."""
    if seconds < 120:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- realistic image files and image loading (loading.py, gpu.py) ---------------------------

PHOTO_KINDS: dict[str, tuple[int, int, str]] = {"png": (500, 375, "PNG"), "jpeg": (400, 600, "JPEG")}
"""Width, height and format of the two real datasets' typical files: CIRR's (NLVR2) PNG photos
and FashionIQ's JPEG product shots."""


def render_photos(folder: Path, kind: str, count: int, seed: int, unique: int | None = None) -> list[Path]:
    """`count` photo-like files of one `PHOTO_KINDS` kind: a smooth random colour field, mid-scale
    texture and fine grain. Why not flat synthetic shapes: decoding cost grows with the
    compressed size, and these land where the real files do (PNG ~320 KB, CIRR's are 200-400 KB;
    JPEG at quality 90 ~50 KB, FashionIQ's are 30-60 KB). With `unique`, only that many are
    rendered and the rest are copies of them (rendering costs more than decoding; a copy costs
    the same to decode)."""
    import numpy as np
    from PIL import Image

    width, height, fmt = PHOTO_KINDS[kind]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        if unique is not None and i >= unique:
            path = folder / f"{kind}_{i:05d}{paths[i % unique].suffix}"
            shutil.copyfile(paths[i % unique], path)
            paths.append(path)
            continue

        def field(rows: int, cols: int, resample: int) -> np.ndarray:
            small = Image.fromarray(rng.uniform(0, 255, (rows, cols, 3)).astype(np.uint8))
            return np.asarray(small.resize((width, height), resample), dtype=np.float32)

        pixels = (0.6 * field(6, 8, Image.BICUBIC) + 0.4 * field(height // 16, width // 16, Image.BILINEAR)
                  + rng.normal(0.0, 4.0, (height, width, 3)))
        path = folder / f"{kind}_{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}"
        options = {"quality": 90} if fmt == "JPEG" else {}
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, fmt, **options)
        paths.append(path)
    return paths


def loader_rate(source: "torch.utils.data.Dataset", transform: ImageTransform, *, batch_size: int, num_workers: int,
                device: torch.device, repeats: int, normalize: bool = True) -> float:
    """Images per second through a DataLoader over uint8 `source` items (decoded files or the
    pixel cache), each batch moved to `device` and (with `normalize`) normalised there, as
    training and extraction do; the median of `repeats` full passes. Worker start-up counts: the
    library's loaders are not persistent, so every epoch pays it."""
    loader = DataLoader(source, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                        pin_memory=device.type == "cuda")
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        count = 0
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            if normalize:
                transform.normalize(batch)
            count += len(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


# --- stage 2 epochs on precomputed features (stage2_loop.py, gpu.py) ---------------------------

def synthetic_triplets(triplets: int, images: int, forms: int, seed: int) -> TrainingSet:
    """A training set of `triplets` queries over `images` image names (no files: stage 2 only
    indexes precomputed features), each with `forms` caption forms (CIRR 1, FashionIQ 4)."""
    from clip_cir.data.types import Query

    generator = torch.Generator().manual_seed(seed)
    pairs = torch.randint(images, (triplets, 2), generator=generator).tolist()
    names = [f"img{i:06d}" for i in range(images)]
    queries = [Query(qid=str(i), reference=names[r], captions=(f"caption {i}",),
                     train_captions=tuple(f"caption {i} form {f}" for f in range(forms)),
                     eval_caption=f"caption {i}", target=names[t]) for i, (r, t) in enumerate(pairs)]
    return TrainingSet(queries=queries, image_names=names, image_paths=[Path(n) for n in names])


def reset_accelerator_state() -> None:
    """Forget this process's Accelerate state, so that the next Accelerator (ours or a training
    program's) may use another mixed precision: Accelerate keeps one process-wide state and
    refuses a change otherwise (the test suite resets it the same way)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def fresh_accelerator(mixed_precision: str = "no", cpu: bool = False) -> "Accelerator":
    """An Accelerator with this precision even if an earlier one in this process had another
    (`reset_accelerator_state`), configured as the training programs' `start_run` does."""
    from accelerate import Accelerator, DataLoaderConfiguration

    reset_accelerator_state()
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


class ReplayedBatches:
    """Epoch 0's batches of a batch source, drawn once before any timing and handed out again
    every epoch: the same steps with no batch drawing at all, the floor against which the loop
    overhead of the real batch sources is measured."""

    def __init__(self, source: Iterable[dict]):
        self.batches = list(source)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.batches)


def stage2_epochs(accelerator: "Accelerator", data: TrainingSet, image_features: torch.Tensor,
                  text_features: torch.Tensor, offsets: torch.Tensor, *, batches: str, batch_size: int,
                  epochs: int, projection_dim: int, hidden_dim: int, seed: int, run_dir: Path) -> Epochs:
    """Stage-2 epochs through the library's own loop (`clip_cir.training.loop.fit`) and stage
    (`stage2.CombinerTraining`: `feature_forward` + `batch_contrastive_loss`), with the program's optimizer and
    defaults, timed by that loop into `run_dir/train_metrics.csv`. Only the batches differ: `batches="tensor"` is what
    `clip_cir.training.stage2` runs (`FeatureBatches`); `"dataloader"` is how it drew them before
    (a per-item `TripletDataset` behind a DataLoader over an `EpochSampler`, prepared by
    Accelerate), the baseline; `"replayed"` is `ReplayedBatches` of `FeatureBatches`. Validation
    is a no-op here, so the loop's one `last/` write after the final epoch is the only extra
    (outside the epoch times)."""
    from clip_cir.models.combiner import Combiner
    from clip_cir.training import stage2
    from clip_cir.training.datasets import FeatureBatches
    from clip_cir.training.loop import Selection, fit
    from clip_cir.training.optim import LRSchedule, make_optimizer
    from clip_cir.training.run import Run

    defaults = stage2.build_parser().parse_args(["--dataset", "cirr", "--data-root", "."])
    device = accelerator.device
    seed_everything(seed)
    combiner = Combiner(image_features.shape[1], projection_dim, hidden_dim).to(device)
    optimizer = make_optimizer(torch.optim.Adam, combiner.parameters(), lr=defaults.lr,
                               weight_decay=defaults.weight_decay)  # as clip_cir.training.stage2
    if batches in ("tensor", "replayed"):
        loader = FeatureBatches(data, batch_size, seed, device, accelerator.process_index, accelerator.num_processes)
        if batches == "replayed":
            loader = ReplayedBatches(loader)
        prepared, optimizer = accelerator.prepare(combiner, optimizer)
    elif batches == "dataloader":
        loader = DataLoader(TripletDataset(data, seed), batch_size=batch_size,
                            sampler=EpochSampler(len(data.queries), seed), num_workers=0, drop_last=True)
        prepared, optimizer, loader = accelerator.prepare(combiner, optimizer, loader)
    else:
        raise ValueError(f"unknown batches {batches!r}")
    features = [t.to(device) for t in (image_features, text_features, offsets)]

    class TimedCombinerTraining(stage2.CombinerTraining):
        """The program's stage (forward, loss, train mode) without validation or checkpoint metadata."""

        def validate(self, epoch: int) -> dict[str, float]:
            return {}

        def saved_modules(self, epoch: int, metrics: dict) -> dict:
            return {"combiner": (self.combiner, {})}

    stage = TimedCombinerTraining(combiner, prepared, optimizer, loader, *features, val_features=[], clip=None)
    stage.selection = Selection(keys=())
    run_dir.mkdir(parents=True, exist_ok=True)
    schedule = LRSchedule("const", defaults.lr, 0, epochs * len(loader))
    with quiet():
        fit(accelerator, Run(path=run_dir, is_main=True), stage, epochs, epochs, schedule, progress=False)
    return Epochs.from_run(run_dir, batch_size)
