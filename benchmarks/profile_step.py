"""Where a stage-1 `--encoder both` step spends its device time, by kind of operation.

    python benchmarks/profile_step.py --model RN50x4 --mixed-precision bf16 --batch-size 128   # on a GPU
    python benchmarks/profile_step.py --model cir-tiny-rn --batch-size 8 --steps 2            # seconds on a CPU

Why: on an H100, stage 1 `--encoder both` on RN50x4 trains about as fast as its image tower's
forward+backward alone, at about a tenth of the bf16 matrix-product peak: the step is bound
inside the towers. This shows by what. It builds the program's step (`compute.stage1_step`: the
`ClipEncoder`, `training_step` and loss; random init, random pixels and fixed captions on the
device, no data loading), runs `--warmup` steps, then profiles `--steps` with `torch.profiler`
and prints ONE table: each kind of operation's share of the device time (self time of the
operators, so each kernel counts once for the operator that launched it: convolutions, matrix
products and attention, normalisation, element-wise and reductions, copies and layout changes,
the optimizer), then the operators that take the most. `--compile` profiles the compiled
towers (`--compile` of the programs; the compiling steps are in the warm-up).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from compute import stage1_step, synchronize
from harness import status
from reporting import header, markdown_table

KINDS = (
    ("compiled graphs (fused kernels)", ("compiled", "triton")),
    ("convolution", ("conv",)),
    ("matrix product, attention", ("mm", "matmul", "linear", "addmm", "bmm", "attention", "flash", "sdpa")),
    ("normalisation", ("batch_norm", "layer_norm", "group_norm", "norm")),
    ("pooling", ("pool",)),
    ("optimizer", ("adam", "foreach", "fused")),
    ("copies, layout, casts", ("copy", "contiguous", "_to_copy", "clone", "cat", "permute", "transpose", "view",
                               "reshape", "expand", "fill", "zero")),
    ("element-wise, reductions", ("add", "mul", "div", "sub", "relu", "gelu", "sigmoid", "silu", "exp", "sum",
                                  "mean", "max", "threshold", "where", "pow", "sqrt", "softmax", "log")),
)
"""Kinds of operators, by the first that names a part of the operator's name; the rest is `other`."""


def kind_of(name: str) -> str:
    name = name.lower()
    return next((kind for kind, parts in KINDS if any(part in name for part in parts)), "other")


def self_time(event, cuda: bool) -> float:
    """An averaged profiler event's own time (µs) on the device doing the work: the time of the
    CUDA kernels it launched itself on a GPU, its own CPU time on a CPU."""
    if not cuda:
        return float(event.self_cpu_time_total)
    return float(getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0) or 0)


def is_operator(name: str) -> bool:
    """ATen operators and compiled graphs: each kernel counts once, under what launched it (the
    profiler also lists kernels and Python ranges on their own)."""
    return name.startswith("aten::") or "Compiled" in name or name.startswith("triton_")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="RN50x4", help="open_clip model, random init (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="triplets per step (default: %(default)s)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="bf16",
                        help="autocast precision through Accelerate (default: %(default)s)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="image tower layout, as the programs' option (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the towers, as the programs' option")
    parser.add_argument("--warmup", type=int, default=3, help="steps before profiling (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (default: %(default)s)")
    parser.add_argument("--top", type=int, default=15, help="operators listed (default: %(default)s)")
    parser.add_argument("--cpu", action="store_true", help="profile on the CPU even with a GPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.top) < 1 or args.warmup < 0:
        parser.error("--batch-size, --steps and --top must be positive, --warmup not negative")

    status(f"building the stage-1 step ({args.model}, batch {args.batch_size}) ...")
    step = stage1_step(args.model, args.batch_size, cpu=args.cpu, seed=args.seed, precision=args.mixed_precision,
                       channels_last=args.channels_last, compile=args.compile)
    device = step.accelerator.device
    status(f"{args.warmup} warm-up steps ...")
    for _ in range(args.warmup):
        step.run()
    synchronize(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    status(f"profiling {args.steps} steps ...")
    started = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(args.steps):
            step.run()
        synchronize(device)
    seconds = (time.perf_counter() - started) / args.steps

    cuda = device.type == "cuda"

    def own(event) -> float:
        return self_time(event, cuda)

    events = [e for e in profile.key_averages() if is_operator(e.key) and own(e) > 0]
    total = sum(own(e) for e in events) or 1.0
    by_kind: dict[str, float] = {}
    for event in events:
        kind = kind_of(event.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + own(event)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(header(f"Stage-1 `--encoder both` step profile ({args.model}, batch {args.batch_size}, "
                 f"{args.mixed_precision}{', compiled' if args.compile else ''})", sys.argv if argv is None else argv))
    print(f"device: {where}; image tower {'channels-last' if step.channels_last else 'in the default layout'}; "
          f"{seconds * 1000:.1f} ms per step under the profiler ({args.batch_size / seconds:,.0f} triplets/s); "
          f"operator time counted {total / 1000 / args.steps:.1f} ms per step\n")
    rows = [[kind, f"{ms / 1000 / args.steps:.2f}", f"{100 * ms / total:.1f}%"]
            for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1])]
    print(markdown_table(["kind of operation", "ms per step", "share"], rows))
    print()
    top = sorted(events, key=lambda e: -own(e))[:args.top]
    print(markdown_table(["operator", "kind", "calls per step", "ms per step", "share"],
                         [[e.key, kind_of(e.key), f"{e.count / args.steps:g}",
                           f"{own(e) / 1000 / args.steps:.2f}",
                           f"{100 * own(e) / total:.1f}%"] for e in top]))


if __name__ == "__main__":
    main()
