"""`clip-cir report RUN_DIR`: PNG figures of a training run, to see at a glance what it learned.

Reads only what every training program writes (see `clip_cir.training.loop`): `config.json`,
`train_metrics.csv`, `validation_metrics.csv` and the best checkpoint. Writes:

- `training_loss.png`   training loss per epoch;
- `validation.png`      validation recalls per epoch (CIRR: R@K and Recall_subset@K; FashionIQ:
                        averages and per-category R@10/R@50; pretrain: held-out loss), with the
                        epoch the best checkpoint comes from marked;
- `retrieval_examples.png` (stage 1 and stage 2 runs) a few validation queries: reference image,
                        caption, top-5 results with the target framed in green, and the target
                        itself with its rank. The queries are ranked exactly as evaluation ranks
                        them (`rank_features`: whole split gallery, CIRR reference removed), with
                        the run's best CLIP + element-wise sum (stage 1) or best Combiner on top
                        of its CLIP (stage 2), and the run's dataset, data root and preprocessing.

Figures are drawn on bare `matplotlib.figure.Figure`s (Agg canvas, no pyplot): no display is
needed and no global backend state is changed for programs that import this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_cir.errors import CIRError

if TYPE_CHECKING:  # imported where used: importing this module stays cheap
    import pandas as pd

    from clip_cir.data import CIRSplit
    from clip_cir.encoding.features import FeatureCache
    from clip_cir.models.clip import LoadedCLIP
    from clip_cir.models.combiner import CombiningFunction

log = logging.getLogger("clip_cir")

TOP_RESULTS = 5
"""Results shown per query in the retrieval figure."""
RANK_DEPTH = 50
"""How deep the target is searched for, to print its rank when it is not in the top 5."""
DPI = 100
TARGET_COLOR = "#1a9e2f"
FIGURE_NAMES = {"loss": "training_loss.png", "validation": "validation.png", "retrieval": "retrieval_examples.png"}
QUERIES_METADATA_KEY = "clip-cir queries"
"""PNG text chunk of the retrieval figure: JSON list of the query ids shown, one per row."""

KIND_LABELS = {"pretrain": "pretraining", "stage1": "stage 1: CLIP fine-tuning", "stage2": "stage 2: Combiner"}


# ----------------------------------------------------------------------------- reading a run


@dataclass
class Run:
    """What a report needs from a run directory, read and checked once."""

    path: Path
    config: dict[str, Any]
    kind: str
    """`pretrain`, `stage1` or `stage2` (see `run_kind`)."""
    train: pd.DataFrame | None
    validation: pd.DataFrame | None

    @property
    def title(self) -> str:
        return f"{self.path.name} ({KIND_LABELS[self.kind]})"


def _read_config(run_dir: Path) -> dict[str, Any]:
    from clip_cir.data.io import read_json

    if not run_dir.is_dir():
        raise CIRError(f"{run_dir}: not a run directory (no such directory)")
    if not (run_dir / "config.json").is_file():
        raise CIRError(f"{run_dir}: not a run directory (no config.json; expected a directory made by "
                       f"finetune, train-combiner or pretrain)")
    config = read_json(run_dir / "config.json", "run config")
    if not isinstance(config, dict):
        raise CIRError(f"{run_dir / 'config.json'}: run config should be a JSON object, got {type(config).__name__}")
    return config


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame | None:
    """The CSV sorted by epoch, or None when the run has not written it yet."""
    import pandas as pd

    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise CIRError(f"{path}: unreadable CSV ({str(e).splitlines()[0]})") from None
    if frame.empty:  # header only: the run was interrupted before its first row
        return None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CIRError(f"{path}: no column {', '.join(repr(c) for c in missing)} "
                       f"(columns: {', '.join(map(str, frame.columns))})")
    return frame.sort_values("epoch").reset_index(drop=True)


def run_kind(run_dir: Path, config: dict[str, Any]) -> str:
    """Which program made the run, as its config.json records."""
    kind = config.get("program")
    if kind not in ("pretrain", "stage1", "stage2"):
        raise CIRError(f"{run_dir / 'config.json'}: no 'program' of pretrain, stage1 or stage2 "
                       f"(not a clip-cir training run?)")
    return kind


def read_run(run_dir: str | Path) -> Run:
    """Config, kind and metric CSVs of a run; `CIRError` when it is not a (started) run."""
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    train = _read_csv(run_dir / "train_metrics.csv", ["epoch", "train_loss"])
    validation = _read_csv(run_dir / "validation_metrics.csv", ["epoch"])
    if train is None and validation is None:
        raise CIRError(f"{run_dir}: no train_metrics.csv or validation_metrics.csv yet "
                       f"(the run has not finished an epoch)")
    return Run(path=run_dir, config=config, kind=run_kind(run_dir, config), train=train,
               validation=validation)


# ----------------------------------------------------------------------------- curves


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write atomically, so a report being regenerated never leaves a half-written PNG behind."""
    from clip_cir.models.checkpoints import atomic_write

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


# ----------------------------------------------------------------------------- retrieval examples


@dataclass
class Example:
    """One query of the retrieval figure, with its top results by the run's model."""

    benchmark: str
    qid: str
    caption: str
    reference: Path
    results: list[tuple[str, Path, float]]
    """(name, file, cosine score) of the top results, best first."""
    target: str | None
    target_path: Path | None
    target_rank: int | None
    """1-based rank of the target in the whole ranking, None when beyond `RANK_DEPTH` or unknown."""
    reference_name: str = ""

    @property
    def label(self) -> str:
        """`cirr/24`, `dress/7`: FashionIQ query ids already start with their category."""
        return self.qid if self.qid.startswith(f"{self.benchmark}/") else f"{self.benchmark}/{self.qid}"


def _config_value(run: Run, key: str) -> Any:
    if run.config.get(key) is None:
        raise CIRError(f"{run.path / 'config.json'}: no '{key}' (needed to rebuild the run's retrieval)")
    return run.config[key]


def load_retrieval_model(run: Run) -> tuple[LoadedCLIP, CombiningFunction, str]:
    """(CLIP, combining function, description) exactly as the run's evaluation used them."""
    from clip_cir.models.clip import load_clip
    from clip_cir.models.combiner import element_wise_sum, load_combiner

    if run.kind == "stage1":
        clip = load_clip(run.config.get("model"), str(run.path))
        return clip, element_wise_sum, f"{clip.describe()} + element-wise sum"
    combiner = load_combiner(run.path)
    clip = load_clip(run.config.get("model"), _config_value(run, "pretrained"))
    if combiner.dims["clip_feature_dim"] != clip.embed_dim:
        raise CIRError(f"{run.path}: Combiner expects {combiner.dims['clip_feature_dim']}-d CLIP features, but "
                       f"its config's CLIP {clip.describe()} gives {clip.embed_dim}-d")
    return clip, combiner, f"Combiner on {clip.describe()}"


def has_checkpoint(run: Run) -> bool:
    from clip_cir.models.clip import resolve_clip_checkpoint
    from clip_cir.models.combiner import resolve_combiner_checkpoint

    resolve = resolve_combiner_checkpoint if run.kind == "stage2" else resolve_clip_checkpoint
    try:
        resolve(run.path)
        return True
    except CIRError:
        return False


def pick_queries(splits: Sequence[CIRSplit], n: int, seed: int) -> list[CIRSplit]:
    """`n` queries drawn with `seed` across all splits (FashionIQ categories), as sub-splits that
    hold only those queries: encoding then costs the gallery (usually cached) and n captions."""
    pool = [(i, j) for i, split in enumerate(splits) for j in range(len(split.queries))]
    chosen = sorted(random.Random(seed).sample(pool, min(n, len(pool))))
    subsplits = []
    for i, split in enumerate(splits):
        queries = [split.queries[j] for s, j in chosen if s == i]
        if queries:
            subsplits.append(dataclasses.replace(split, queries=queries))
    return subsplits


def retrieval_examples(run: Run, split: str, n_queries: int, seed: int, cache: FeatureCache | None,
                       progress: bool = True) -> tuple[list[Example], str]:
    """Rank `n_queries` queries of `split` with the run's model; returns them and the model's description."""
    import torch

    from clip_cir.data import load_splits
    from clip_cir.data.images import EVALUATION_HINT, ImageCheck
    from clip_cir.encoding.encode import EncodeOptions, split_features
    from clip_cir.evaluation.evaluate import rank_features
    from clip_cir.params import transform_for

    skip = bool(run.config.get("skip_missing_images"))  # as the run itself read the data
    splits = load_splits(_config_value(run, "dataset"), Path(_config_value(run, "data_root")), split,
                         run.config.get("fashioniq_categories"), ImageCheck(skip=skip, readable=skip, hint=EVALUATION_HINT))
    clip, combine, description = load_retrieval_model(run)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clip.model.to(device)
    if hasattr(combine, "to"):
        combine = combine.to(device)
    encode = EncodeOptions(transform=transform_for(clip, run.config.get("transform", "targetpad"),
                                                   float(run.config.get("target_ratio", 1.25))),
                           device=device, image_cache=cache, text_cache=None, progress=progress)
    # text_cache=None: a handful of captions is cheap, and caching each random selection would litter the cache
    examples = []
    for sub in pick_queries(splits, n_queries, seed):
        ranking = rank_features(split_features(clip, sub, encode), combine, k=RANK_DEPTH)
        names = list(sub.gallery)
        for query, top, scores in zip(sub.queries, ranking.indices.tolist(), ranking.scores.tolist()):
            ranked = [names[i] for i in top]
            examples.append(Example(
                benchmark=sub.name, qid=query.qid, caption=query.eval_caption, reference=sub.gallery[query.reference],
                results=[(names[i], sub.gallery[names[i]], s) for i, s in zip(top[:TOP_RESULTS], scores)],
                target=query.target, target_path=sub.gallery.get(query.target) if query.target else None,
                target_rank=ranked.index(query.target) + 1 if query.target in ranked else None,
                reference_name=query.reference))
    return examples, description


def _show_image(ax, path: Path, title: str, label: str, framed: bool, title_color: str = "black") -> None:
    """An image with its title above and a small label below; `framed` draws the target's green border."""
    from clip_cir.data.io import load_image

    image = load_image(path)
    ax.imshow(image)
    # Letterbox into a square tile: every tile the same size whatever the image's aspect ratio.
    width, height = image.size
    side = max(width, height)
    ax.set_xlim(-0.5 - (side - width) / 2, width - 0.5 + (side - width) / 2)
    ax.set_ylim(height - 0.5 + (side - height) / 2, -0.5 - (side - height) / 2)
    ax.set_box_aspect(1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9, color=title_color, fontweight="bold" if framed else "normal")
    ax.set_xlabel(label, fontsize=7)
    for spine in ax.spines.values():
        spine.set_edgecolor(TARGET_COLOR if framed else "#bbbbbb")
        spine.set_linewidth(5 if framed else 0.8)


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def _draw_example(subfig, example: Example) -> None:
    # columns: reference | gap | top-5 results | gap | ground-truth target
    ratios = [1, 0.12] + [1] * TOP_RESULTS + [0.12, 1]
    axes = subfig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
    for gap in (axes[1], axes[TOP_RESULTS + 2]):
        gap.set_axis_off()
    _show_image(axes[0], example.reference, "reference", _short(Path(example.reference).stem), framed=False)
    for rank, (ax, (name, path, score)) in enumerate(zip(axes[2:], example.results), start=1):
        is_target = name == example.target
        # FashionIQ keeps the reference in its own ranking (the protocol): say so when it shows up.
        title = f"{rank}  (target)" if is_target else f"{rank}  (reference)" if name == example.reference_name else f"{rank}"
        _show_image(ax, path, title, f"{_short(name)}\n{score:.3f}",
                    framed=is_target, title_color=TARGET_COLOR if is_target else "black")
    for ax in axes[2 + len(example.results):TOP_RESULTS + 2]:
        ax.set_axis_off()
    target_ax = axes[-1]
    if example.target_path is None:
        target_ax.set_axis_off()
        target_ax.set_title("target unknown", fontsize=9)
    else:
        where = f"rank {example.target_rank}" if example.target_rank else f"not in top {RANK_DEPTH}"
        _show_image(target_ax, example.target_path, f"target: {where}", _short(example.target), framed=True,
                    title_color=TARGET_COLOR)
    caption = textwrap.shorten(example.caption, 240, placeholder=" …")
    subfig.suptitle(textwrap.fill(f"query {example.label}:  \u201c{caption}\u201d", 120),
                    fontsize=10, ha="left", x=0.01)


def retrieval_figure_size(n_rows: int) -> tuple[float, float]:
    """Inches of the retrieval figure: a title band plus a fixed height per query row."""
    return 13.0, 0.7 + 2.3 * n_rows


def plot_retrieval(examples: Sequence[Example], path: Path, title: str) -> Path:
    """One row per query; the query ids go into the PNG's metadata so tools can tell what is shown."""
    fig = _new_figure(*retrieval_figure_size(len(examples)))
    fig.get_layout_engine().set(h_pad=0.08)  # air between a row's caption and its image titles
    rows = fig.subfigures(len(examples), 1, squeeze=False)[:, 0]
    for subfig, example in zip(rows, examples):
        _draw_example(subfig, example)
    fig.suptitle(title, fontsize=12)
    metadata = {QUERIES_METADATA_KEY: json.dumps([e.label for e in examples])}
    return _save(fig, path, metadata)


# ----------------------------------------------------------------------------- entry points


def make_report(run_dir: str | Path, output_dir: str | Path | None = None, n_queries: int = 4, split: str = "val",
                *, seed: int = 0, cache: FeatureCache | None = None, progress: bool = True) -> list[Path]:
    """Write the run's figures into `output_dir` (default RUN_DIR/report) and return their paths.

    `n_queries=0` skips the retrieval figure; it is also skipped for pretraining runs (no
    composed queries) and for runs without a checkpoint yet. `cache` is a
    `clip_cir.encoding.features.FeatureCache` (default: the user's feature cache; `FeatureCache(None)`
    for none): a stage-2 gallery is usually already there from training.
    """
    from clip_cir.encoding.features import FeatureCache, default_cache_dir

    if n_queries < 0:
        raise CIRError(f"--queries must be 0 or more, got {n_queries}")
    run = read_run(run_dir)
    output_dir = Path(output_dir) if output_dir is not None else run.path / "report"
    written = []
    if run.train is not None:
        written.append(plot_training_loss(run, output_dir / FIGURE_NAMES["loss"]))
    if run.validation is not None:
        written.append(plot_validation(run, output_dir / FIGURE_NAMES["validation"]))
    if run.kind == "pretrain" or n_queries == 0:
        return written
    if not has_checkpoint(run):
        log.warning("%s: no checkpoint yet, so no retrieval examples", run.path)
        return written
    cache = cache if cache is not None else FeatureCache(default_cache_dir())
    examples, description = retrieval_examples(run, split, n_queries, seed, cache, progress)
    if not examples:
        raise CIRError(f"{run.config['dataset']} split '{split}' has no queries to show")
    title = f"{run.title}: {description}\n{run.config['dataset']} {split}, top {TOP_RESULTS} (target framed in green)"
    written.append(plot_retrieval(examples, output_dir / FIGURE_NAMES["retrieval"], title))
    return written


def run_report(args: argparse.Namespace) -> None:
    from clip_cir.params import feature_cache

    for path in make_report(args.run_dir, args.output_dir, args.queries, args.split, seed=args.seed,
                            cache=feature_cache(args)):
        print(path)


def main(argv: list[str] | None = None, prog: str = "clip-cir report") -> None:
    from clip_cir.params import report_parser, run_main, setup_logging

    args = report_parser(prog).parse_args(argv)
    setup_logging()
    run_main(lambda: run_report(args), prog)


if __name__ == "__main__":
    main()
