"""What a benchmark prints: its command line and the machine's facts, the setup line above a
table, markdown tables and durations."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Sequence

import open_clip
import torch
from options import published_workers

from clip_cir.training.datasets import TrainingSet


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


def describe_workers(args: argparse.Namespace) -> str:
    if args.num_workers is not None:
        return f"{args.num_workers} DataLoader workers"
    from clip_cir.encoding.pixels import loader_workers

    automatic = loader_workers(None, torch.cuda.is_available())
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
