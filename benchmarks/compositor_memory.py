"""Peak memory of one stage-2 training step per compositor at a real CLIP's dimensions, and the
largest batch that fits a memory budget (default: a 24 GB CPU box).

Each (compositor, batch) runs in a fresh process: random inputs of the given shape (global
features [B, D]; for token compositors an image grid of rows x cols tokens and a caption of
`--caption-tokens` tokens, all real), one forward, the method's batch contrastive loss, backward
and an Adam step in float32. The peak resident memory of that process (`ru_maxrss`), less the
same process's before the step, is the step's memory; two batch sizes give its per-sample slope
and fixed part (after the loss's B x B logits, 12 bytes an entry), and the largest batch under
the budget follows (rounded down to a multiple of 64), then is run to check it (and shrunk while
it is over). On a CUDA device,
`torch.cuda.max_memory_allocated` replaces RSS.

    python benchmarks/compositor_memory.py                       # RN50x4: D 640, grid 9x9
    python benchmarks/compositor_memory.py --dim 512 --grid 14   # ViT-B-16 at 224 px
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

STEP = r"""
import json, resource, sys, torch
from clip_cir.models.compositors.base import TokenFeatures
from clip_cir.models.compositors.loading import build_compositor
from clip_cir.training.losses import batch_contrastive_loss
name, batch, dim, grid, words, device = json.loads(sys.argv[1])
device = torch.device(device)
torch.manual_seed(0)
model = build_compositor(name, dim, {}).to(device).train()
optimizer = torch.optim.Adam(model.parameters())
def rss():
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
image = TokenFeatures(torch.randn(batch, dim), torch.randn(batch, grid * grid, dim),
                      torch.ones(batch, grid * grid, dtype=torch.bool), (grid, grid)).to(device)
text = TokenFeatures(torch.randn(batch, dim), torch.randn(batch, words, dim),
                     torch.ones(batch, words, dtype=torch.bool)).to(device)
targets = torch.randn(batch, dim, device=device)
before = rss()
inputs = (image, text) if model.uses_tokens else (image.pooled, text.pooled)
loss = batch_contrastive_loss(model(*inputs), torch.nn.functional.normalize(targets, dim=-1))
loss.backward()
optimizer.step()
print(json.dumps({"step_bytes": rss() - before, "parameters": sum(p.numel() for p in model.parameters())}))
"""

COMPOSITORS = ("combiner", "tirg", "maaf", "cosmo", "lbf")
LOGIT_BYTES = 12
"""Bytes per entry of the loss's B x B logits: float32 logits, their softmax and its gradient."""


def measure(name: str, batch: int, args: argparse.Namespace) -> dict:
    spec = json.dumps([name, batch, args.dim, args.grid, args.caption_tokens, args.device])
    done = subprocess.run([sys.executable, "-c", STEP, spec], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compositors", default=",".join(COMPOSITORS))
    parser.add_argument("--dim", type=int, default=640, help="CLIP embedding size (RN50x4: 640)")
    parser.add_argument("--grid", type=int, default=9, help="image token grid side (RN50x4 at 288 px: 9)")
    parser.add_argument("--caption-tokens", type=int, default=32)
    parser.add_argument("--small", type=int, default=256, help="first batch size measured")
    parser.add_argument("--large", type=int, default=1024, help="second batch size measured")
    parser.add_argument("--budget-gb", type=float, default=24.0, help="memory to fit in (GB, 1e9 bytes)")
    parser.add_argument("--reserve-gb", type=float, default=4.0,
                        help="kept for everything else: the process, the features on the device, the OS")
    parser.add_argument("--max-batch", type=int, default=16_384,
                        help="largest batch tried (the table says >= above it)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-check", action="store_true", help="do not run the predicted largest batch")
    args = parser.parse_args(argv)
    budget = (args.budget_gb - args.reserve_gb) * 1e9
    print(f"one training step (forward, batch contrastive loss, backward, Adam), float32, {args.device}; "
          f"D {args.dim}, grid {args.grid}x{args.grid}, {args.caption_tokens} caption tokens; "
          f"budget {args.budget_gb:g} GB less {args.reserve_gb:g} GB reserve\n")
    print("| compositor | parameters | MiB per sample | fixed MiB | largest batch (multiple of 64) | checked |")
    print("|---|---|---|---|---|---|")
    for name in args.compositors.split(","):
        small, large = measure(name, args.small, args), measure(name, args.large, args)
        if "error" in small or "error" in large:
            print(f"| {name} | — | — | — | — | {small.get('error') or large.get('error')} |")
            continue
        # The loss's B x B logits (float32: the logits, their softmax and its gradient) grow with the
        # square of the batch; everything else with the batch.
        slope = max((large["step_bytes"] - small["step_bytes"] - LOGIT_BYTES * (args.large ** 2 - args.small ** 2))
                    / (args.large - args.small), 1.0)
        fixed = max(small["step_bytes"] - slope * args.small - LOGIT_BYTES * args.small ** 2, 0.0)
        largest = int((-slope + math.sqrt(slope ** 2 + 4 * LOGIT_BYTES * max(budget - fixed, 0.0)))
                      / (2 * LOGIT_BYTES)) // 64 * 64
        capped = largest > args.max_batch
        largest = min(largest, args.max_batch)
        checked = "—"
        attempts = 3 if not args.no_check and largest > 0 else 0
        for attempt in range(attempts):  # run it; shrink while over budget
            run = measure(name, largest, args)
            if "error" in run:
                checked = "error"
                break
            checked = f"{run['step_bytes'] / 1e9:.1f} GB"
            if run["step_bytes"] <= budget or largest <= 64:
                break
            if attempt == attempts - 1:
                checked += " (over the budget)"
                break
            largest, capped = max(int(largest * math.sqrt(budget / run["step_bytes"])) // 64 * 64, 64), False
        print(f"| {name} | {small['parameters']:,} | {slope / 2**20:.2f} | {fixed / 2**20:.0f} | "
              f"{'>= ' if capped else ''}{largest:,} | {checked} |")


if __name__ == "__main__":
    main()
