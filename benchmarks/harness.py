"""How a benchmark runs: its throw-away workspace with a cold feature cache, library code run
quietly in this process, a fresh Accelerator per precision, the device baselines run on, and
progress lines on stderr (stdout stays the paste-able report).

Why shared: the benchmarks compare the real programs against the way the work was done before
(the published reference code's, or the library's own earlier one) on the same model and data in
one process, and `gpu.py` repeats the CPU benchmarks' measurements on real backbones, so each
piece lives once. Nothing in `benchmarks/` re-implements the library: data, model, transforms,
datasets, sampler, loop and losses all come from `clip_cir`; the scripts only time them (the
published baselines' steps in `baselines.py` are the one exception, by design: that is the way
of working being compared against).
"""

from __future__ import annotations

import io
import logging
import os
import resource
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator


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


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> None:
    """Linux: restart VmHWM (the peak resident set) from the current one, so what ran before
    (loading a model, which can peak higher than a small step) does not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim), so memory an earlier
    call freed counts again when a later call allocates it: otherwise the resident set measures
    whichever call ran first."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim, the peaks are just less comparable
        pass


def memory_measure(device: torch.device) -> str:
    """What `peak_memory_of` reports on `device`, for a report's setup line."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the call, above what was allocated at its start"
    return ("peak resident set (Linux VmHWM, reset at the call's start after freed heap pages were released) above "
            "the resident set then")


@contextmanager
def peak_memory_of(owner: object, name: str, device: torch.device) -> Iterator[list[int | None]]:
    """Measure every call of `owner.name` (a function a module calls through its own global) made
    while the context is open: yields a list that gets each call's peak memory above its start in
    bytes (`memory_measure`), or None where this system cannot tell (no /proc)."""
    peaks: list[int | None] = []
    original: Callable = getattr(owner, name)

    def measured(*args, **kwargs):
        cuda = device.type == "cuda"
        before = None
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            try:
                release_free_memory()
                reset_peak_rss()
                before = rss_bytes()
            except OSError:
                pass
        try:
            return original(*args, **kwargs)
        finally:
            if cuda:
                torch.cuda.synchronize(device)
                peaks.append(torch.cuda.max_memory_allocated(device) - before)
            else:
                peaks.append(None if before is None else peak_rss_bytes() - before)

    setattr(owner, name, measured)
    try:
        yield peaks
    finally:
        setattr(owner, name, original)


def reset_accelerator_state() -> None:
    """Forget this process's Accelerate state, so that the next Accelerator (ours or a training
    program's) may use another mixed precision: Accelerate keeps one process-wide state and
    refuses a change otherwise (the test suite resets it the same way)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def fresh_accelerator(mixed_precision: str = "no", cpu: bool = False) -> "Accelerator":
    """An Accelerator with this precision even if an earlier one in this process had another
    (`reset_accelerator_state`), configured as the training programs' `open_run` does (on CUDA:
    cuDNN benchmark mode and TF32, `set_cuda_speed`)."""
    from accelerate import Accelerator, DataLoaderConfiguration

    from clip_cir.training.run import set_cuda_speed

    reset_accelerator_state()
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    set_cuda_speed(accelerator.device, deterministic=False)
    return accelerator


def baseline_device() -> torch.device:
    """Where Accelerate puts a single-process run (the real paths), so baselines match it.
    On CPU, flush denormals as the programs' entry points do: without it early steps are
    several times slower and the comparison would depend on which path ran first."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device
