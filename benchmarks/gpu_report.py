"""The table `gpu.py` prints: its rows, their baselines, the TFLOP/s beside each figure, and the
lines that say what the rows ran on."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch
from compute import Flops
from reporting import markdown_table

ROWS = (
    ("text", "stage 1 `--encoder text`, clip-cir: features reused, text trimmed (triplets/s)"),
    ("text_published", "stage 1 `--encoder text`, published way: images re-encoded, full-length text (triplets/s)"),
    ("both", "stage 1 `--encoder both`, clip-cir: pixel cache, `--channels-last auto` (triplets/s)"),
    ("both_nchw", "stage 1 `--encoder both`, pixel cache, `--channels-last off` (triplets/s)"),
    ("both_decoded", "stage 1 `--encoder both`, `--pixel-cache off --channels-last off`: decoded every epoch "
                     "(triplets/s)"),
    ("both_deterministic", "stage 1 `--encoder both --deterministic`: no cuDNN benchmark mode, no TF32 (triplets/s; "
                           "x = of `--encoder both`)"),
    ("text_compiled", "stage 1 `--encoder text --compile` (triplets/s; x = of `--encoder text`)"),
    ("both_compiled", "stage 1 `--encoder both --compile`, pixel cache, `--channels-last auto` (triplets/s; "
                      "x = of `--encoder both`)"),
    ("stage2", "stage 2 epoch, {stage2_triplets:,} triplets, batch {stage2_batch_size} (s)"),
    ("tower_forward", "image tower alone, forward, batch {inference_batch_size}, channels-last (images/s)"),
    ("tower_forward_nchw", "image tower alone, forward, batch {inference_batch_size}, default layout (images/s)"),
    ("tower_train", "image tower alone, forward+backward, batch {tower_batch_size}, channels-last (images/s)"),
    ("tower_train_nchw", "image tower alone, forward+backward, batch {tower_batch_size}, default layout (images/s)"),
    ("tower_train_deterministic", "image tower alone, forward+backward, channels-last, no cuDNN benchmark mode or "
                                  "TF32 (images/s; x = of the row with them)"),
    ("tower_train_nchw_deterministic", "image tower alone, forward+backward, default layout, no cuDNN benchmark "
                                       "mode or TF32 (images/s; x = of the row with them)"),
    ("extract_cached", "gallery extraction, pixel cache, batch {inference_batch_size}, `--channels-last auto` "
                       "(images/s; x = of the bare forward)"),
    ("extract_decoded", "gallery extraction, decoding with {workers} workers, {decode_images:,} files (images/s)"),
    ("loader_cached", "loader, pixel cache (images/s)"),
    ("loader_decoded", "loader, decoding with {workers} workers, {decode_images:,} files (images/s)"),
)
"""Table rows: key and label."""
GROUPS = {"stage1-text": ("text", "text_published"), "stage1-both": ("both", "both_nchw", "both_decoded"),
          "stage1-compile": ("text_compiled", "both_compiled"),
          "stage1-deterministic": ("both_deterministic",),
          "tower-deterministic": ("tower_train_deterministic", "tower_train_nchw_deterministic"),
          "stage2": ("stage2",),
          "tower": ("tower_forward", "tower_forward_nchw", "tower_train", "tower_train_nchw"),
          "extraction": ("extract_cached", "extract_decoded"), "loader": ("loader_cached", "loader_decoded")}
BASELINES = {"text": "text_published", "both": "both_nchw", "both_nchw": "both_decoded",
             "text_compiled": "text", "both_compiled": "both", "both_deterministic": "both",
             "tower_train_deterministic": "tower_train", "tower_train_nchw_deterministic": "tower_train_nchw",
             "tower_forward": "tower_forward_nchw", "tower_train": "tower_train_nchw",
             "loader_cached": "loader_decoded"}
"""A row's ratio is to this row (`extract_cached`'s: the bare forward in the layout it ran in)."""
LOWER_IS_BETTER = {"stage2"}
STAGE1 = set(GROUPS["stage1-text"] + GROUPS["stage1-both"] + GROUPS["stage1-compile"]
             + GROUPS["stage1-deterministic"])
"""The rows that train on synthetic CIRR data."""
DEFAULT_GROUPS = [g for g in GROUPS if g not in ("stage1-compile", "stage1-deterministic", "tower-deterministic")]
"""What `gpu.py` measures unless `--rows` says: compiling costs a minute or more per run."""


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


def describe(args: argparse.Namespace, device: torch.device, peaks: dict[str, float], peak_size: int) -> str:
    """What the asked-for rows ran on, and the peak they are read against."""
    keys = set(args.keys)
    parts = [f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; models random init"]
    if keys & STAGE1:
        parts.append(f"stage 1: synthetic CIRR, {args.train:,} triplets at {getattr(args, 'largest', '?')} px, batch "
                     f"{args.batch_size}, {args.epochs} epochs per run, steady epochs 2..{args.epochs}")
    if "stage2" in keys:
        parts.append(f"stage 2: random {args.stage2_triplets:,} triplets, Combiner 4x/8x the embedding, median of "
                     f"epochs 2..{args.stage2_epochs}")
    if keys & set(GROUPS["tower"]):
        parts.append(f"bare tower: {args.tower_steps} timed batches after 3 warm-up")
    if keys & set(GROUPS["extraction"] + GROUPS["loader"]):
        parts.append(f"extraction and loader: rendered 500x375 PNG files ({args.images:,} from the pixel cache), "
                     f"median of {args.repeats}")
    parts.append("(Nx) = ratio to the baseline row, same column")
    peak = ", ".join(f"{p} {v:.4g}" for p, v in peaks.items())  # 4 significant digits: a slow CPU's peak is not 0.0
    return ("; ".join(parts) + f"\nmatrix-product peak (TFLOP/s, {peak_size}x{peak_size} by {peak_size}x{peak_size}): "
            f"{peak}; TFLOP/s = FLOPs per item x rate, (%) = of that peak\n")


def print_report(args: argparse.Namespace, columns: list[Column], device: torch.device, peaks: dict[str, float],
                 peak_size: int) -> None:
    """The setup lines, the table (a TFLOP/s column after each model column), FLOPs and checks."""
    sizes = {"stage2_triplets": args.stage2_triplets, "stage2_batch_size": args.stage2_batch_size,
             "workers": args.workers, "inference_batch_size": args.inference_batch_size,
             "tower_batch_size": args.tower_batch_size, "decode_images": args.decode_images}
    print(describe(args, device, peaks, peak_size))
    titles = [t for c in columns for t in (c.title, "TFLOP/s")]
    print(markdown_table(["measure", *titles],
                         [[label.format(**sizes)] + [x for c in columns for x in (cell(c, key), tflops_cell(c, key))]
                          for key, label in ROWS if key in args.keys]))
    for column in columns:
        f = column.flops
        text = (f"; per caption (forward+backward): {f.text_train_trimmed / 1e9:.3g} at {f.trimmed_length} tokens, "
                f"{f.text_train_full / 1e9:.3g} at full length" if STAGE1 & set(args.keys) else "")
        print(f"\n{column.title}: GFLOPs per image: forward {f.image_forward / 1e9:.3g}, forward+backward "
              f"{f.image_train / 1e9:.3g}{text}", end="")
    print()
    for check in (c for column in columns for c in column.checks):
        print(f"check: {check}")
