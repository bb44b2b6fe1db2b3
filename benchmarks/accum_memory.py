"""Peak memory of one stage-1 `--encoder both` optimizer step at a fixed global batch, for
`--accum-steps` K = 1, 4, 16.

Why: fine-tuning both towers helps at large contrastive batches, which do not fit on common
GPUs. With K micro-batches the step's gradient is the whole batch's (tests/training/test_accumulation.py
checks the weights) while the activations held for backward are one micro-batch's. This prints
what that buys and what it costs (the feature pass runs every micro-batch twice).

Each K runs in a fresh process, so one K's allocator state cannot hide another's peak:
- on CPU: the process's peak resident set (VmHWM, reset just before the step) minus its resident
  set then, when the model, the optimizer state (allocated by a zero-gradient step) and the batch are
  already in memory;
- on CUDA: torch.cuda.max_memory_allocated during the step minus what was allocated before it.

The step is the library's (`clip_cir.training.accumulation.training_step`) on stage 1's forward (both
towers through `ClipEncoder`, norm(f_I(r) + f_T(t)) against norm(f_I(target))) and loss
(`batch_contrastive_loss`), with random-init weights and random pixels (speed and memory do not
depend on the values). Default: RN50 at 224 px, global batch 32 (64 images a step); about two
minutes on two CPU cores. `--model RN50x4` gives the method's backbone (288 px) on a GPU.

`--mixed-precision` goes through Accelerate as in the programs (autocast; fp16 with its loss
scaler). Accelerate applies no fp16 autocast on a CPU, so fp16 is refused there (bf16 works).
The image tower's layout follows `--channels-last` as in the programs (auto: channels-last for a
convolutional tower on a CUDA device).

    python benchmarks/accum_memory.py [--model RN50] [--batch-size 32] [--accum 1 4 16] [--mixed-precision bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def one_step(model_name: str, batch_size: int, accum: int, cpu: bool, seed: int, precision: str = "no",
             channels_last: str = "auto") -> dict:
    """Build, allocate the optimizer state, then measure one step. Runs in the child process."""
    import torch
    from compute import stage1_step
    from harness import peak_rss_bytes, reset_peak_rss, rss_bytes

    step = stage1_step(model_name, batch_size, cpu=cpu, seed=seed, precision=precision, channels_last=channels_last)
    accelerator, layout = step.accelerator, step.channels_last
    cuda = accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        before = rss_bytes()
    started = time.perf_counter()
    loss = step.run(accum)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_bytes()
    return {"accum": accum, "micro_batch": batch_size // accum, "seconds": time.perf_counter() - started,
            "before": before, "peak": peak, "loss": loss.item(), "device": str(accelerator.device),
            "measure": "torch.cuda.max_memory_allocated" if cuda else "peak RSS (VmHWM, reset before the step)",
            "gpu": torch.cuda.get_device_name() if cuda else "", "precision": accelerator.mixed_precision,
            "channels_last": layout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="RN50", help="open_clip model, random init (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (default: %(default)s)")
    parser.add_argument("--accum", type=int, nargs="+", default=[1, 4, 16], help="K values (default: 1 4 16)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                        help="autocast precision through Accelerate (default: %(default)s; fp16 needs a GPU)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="image tower layout, as the programs' option (default: %(default)s)")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even with a GPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_step(args.model, args.batch_size, args.child, args.cpu, args.seed, args.mixed_precision,
                                  args.channels_last)))
        return
    bad = [k for k in args.accum if k <= 0 or args.batch_size % k]
    if bad:
        parser.error(f"--batch-size {args.batch_size} does not split into {bad[0]} micro-batches")
    if args.mixed_precision == "fp16":
        import torch

        if args.cpu or not torch.cuda.is_available():
            print("accum_memory.py: error: --mixed-precision fp16 needs a CUDA device: Accelerate applies no fp16 "
                  "autocast on a CPU (bf16 works there)", file=sys.stderr)
            sys.exit(2)

    from harness import status
    from reporting import header, load_average, markdown_table

    print(header(f"Stage-1 `--encoder both` step memory vs --accum-steps ({args.model}, global batch "
                 f"{args.batch_size}, mixed precision {args.mixed_precision})", sys.argv))
    results = []
    for k in args.accum:
        status(f"K={k} ...")
        cmd = [sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
               "--seed", str(args.seed), "--child", str(k), "--mixed-precision", args.mixed_precision,
               "--channels-last", args.channels_last, *(["--cpu"] if args.cpu else [])]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"K={k} failed: {out.stderr.strip().splitlines()[-1]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = results[0]
    base_step = base["peak"] - base["before"]
    rows = []
    for r in results:
        step = r["peak"] - r["before"]
        rows.append([str(r["accum"]), str(r["micro_batch"]), f"{r['peak'] / 2 ** 30:.2f}",
                     f"{step / 2 ** 30:.2f}", f"{step / base_step:.2f}x", f"{r['seconds']:.1f}",
                     f"{r['seconds'] / base['seconds']:.2f}x", f"{r['loss']:.5f}"])
    where = base["gpu"] or "CPU"
    print(f"device: {where}; mixed precision: {base['precision']}; image tower "
          f"{'channels-last' if base['channels_last'] else 'in the default layout'}; memory: {base['measure']}\n")
    print(markdown_table(["K", "micro-batch", "peak GiB", "step GiB (peak - before)", "step vs K=1",
                          "step s", "time vs K=1", "loss"], rows))
    print(f"\nThe loss is the whole batch's for every K (equal up to the rounding of the micro-batches' features); "
          f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
