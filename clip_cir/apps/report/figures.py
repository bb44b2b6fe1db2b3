"""Figures of a run's training loss and validation recalls, on bare matplotlib Figures (no pyplot)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clip_cir.apps.report.runs import Run
from clip_cir.errors import CIRError

if TYPE_CHECKING:
    import pandas as pd


DPI = 100


TARGET_COLOR = "#1a9e2f"


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write atomically, so a report being regenerated never leaves a half-written PNG behind."""
    from clip_cir.models.files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata=metadata))
    return path


def _epoch_axis(ax, epochs: Sequence[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) == 1:  # one point: give it some room instead of a degenerate axis
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    ax.grid(alpha=0.3)


def plot_training_loss(run: Run, path: Path) -> Path:
    frame = run.train
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    ax.plot(frame["epoch"], frame["train_loss"], marker="o", color="C0", label="training loss")
    _epoch_axis(ax, list(frame["epoch"]))
    ax.set_ylabel("mean training loss per epoch")
    ax.set_title(f"{run.title}\ntraining loss", fontsize=11)
    ax.legend(loc="best")
    return _save(fig, path)


@dataclass
class Line:
    column: str
    label: str
    style: dict[str, Any]


@dataclass
class Panel:
    title: str
    ylabel: str
    lines: list[Line]


def _recall_label(column: str) -> str:
    """`recall_subset_at2` -> `R_subset@2`, `dress_recall_at10` -> `dress R@10`."""
    head, _, k = column.rpartition("_at")
    prefix, _, kind = head.rpartition("recall")
    name = f"R{kind}@{k}"
    return f"{prefix.rstrip('_').replace('average', 'avg')} {name}".strip()


def validation_panels(columns: Sequence[str]) -> list[Panel]:
    """Group the metric columns into panels by their names, so any dataset's CSV is plotted
    without knowing the dataset: held-out loss, R@K, Recall_subset@K, FashionIQ averages, and
    FashionIQ per category (colour = category, line style = K). Soft-credit recalls, selection
    scores and means are left out: they derive from the plotted recalls."""
    recall = [c for c in columns if c.startswith("recall_at")]
    subset = [c for c in columns if c.startswith("recall_subset_at")]
    average = [c for c in columns if c.startswith("average_recall_at")]
    per_category = [c for c in columns if "_recall_at" in c and not c.startswith(("average_", "soft_", "recall_"))]
    panels = []
    if "val_loss" in columns:
        panels.append(Panel("held-out loss", "loss", [Line("val_loss", "held-out loss", {"color": "C3"})]))
    if recall:
        panels.append(Panel("Recall@K (whole gallery)", "recall (%)", [Line(c, _recall_label(c), {}) for c in recall]))
    if subset:
        panels.append(Panel("Recall_subset@K (image set)", "recall (%)",
                            [Line(c, _recall_label(c), {}) for c in subset]))
    if average:
        panels.append(Panel("average over categories", "recall (%)", [Line(c, _recall_label(c), {}) for c in average]))
    if per_category:
        categories = list(dict.fromkeys(c.rsplit("_recall_at", 1)[0] for c in per_category))
        ks = list(dict.fromkeys(c.rsplit("_at", 1)[1] for c in per_category))
        lines = [Line(c, _recall_label(c), {"color": f"C{categories.index(c.rsplit('_recall_at', 1)[0])}",
                                             "linestyle": ("-", "--", ":", "-.")[ks.index(c.rsplit('_at', 1)[1]) % 4]})
                 for c in per_category]
        panels.append(Panel("per category", "recall (%)", lines))
    return panels


def _best_epoch(frame: pd.DataFrame) -> int | None:
    """The epoch the best checkpoint comes from (highest `score`, the first of equals)."""
    if "score" not in frame.columns or frame["score"].isna().all():
        return None
    return int(frame.loc[frame["score"].idxmax(), "epoch"])


def plot_validation(run: Run, path: Path) -> Path:
    frame = run.validation
    panels = validation_panels(list(frame.columns))
    if not panels:
        raise CIRError(f"{run.path / 'validation_metrics.csv'}: no recall or loss columns to plot "
                       f"(columns: {', '.join(map(str, frame.columns))})")
    fig = _new_figure(max(6.4, 5.2 * len(panels)), 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    best = _best_epoch(frame)
    for ax, panel in zip(axes, panels):
        for line in panel.lines:
            ax.plot(frame["epoch"], frame[line.column], marker="o", markersize=4, label=line.label, **line.style)
        if best is not None:
            ax.axvline(best, color="grey", linestyle=":", linewidth=1.5, label=f"best score (epoch {best})")
        _epoch_axis(ax, list(frame["epoch"]))
        if panel.ylabel.startswith("recall"):
            ax.set_ylim(bottom=0)
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title, fontsize=11)
        ax.legend(fontsize=8, ncol=2 if len(panel.lines) > 4 else 1, loc="best")
    fig.suptitle(f"{run.title}: validation", fontsize=12)
    return _save(fig, path)
