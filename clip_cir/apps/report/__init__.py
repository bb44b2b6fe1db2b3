"""`clip-cir report RUN_DIR`: PNG figures of a training run, to see at a glance what it learned.

Reads only what every training program writes (docs/training.md, "Run directory"): `config.json`,
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
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from clip_cir.apps.report.examples import TOP_RESULTS, has_checkpoint, plot_retrieval, retrieval_examples
from clip_cir.apps.report.figures import plot_training_loss, plot_validation
from clip_cir.apps.report.runs import read_run
from clip_cir.errors import CIRError

if TYPE_CHECKING:  # imported where used: importing this module stays cheap
    from clip_cir.encoding.extraction import FeatureCache

log = logging.getLogger("clip_cir")

FIGURE_NAMES = {"loss": "training_loss.png", "validation": "validation.png", "retrieval": "retrieval_examples.png"}


# ----------------------------------------------------------------------------- reading a run


# ----------------------------------------------------------------------------- curves


# ----------------------------------------------------------------------------- retrieval examples


# ----------------------------------------------------------------------------- entry points


def make_report(run_dir: str | Path, output_dir: str | Path | None = None, n_queries: int = 4, split: str | None = None,
                *, seed: int = 0, cache: FeatureCache | None = None, progress: bool = True) -> list[Path]:
    """Write the run's figures into `output_dir` (default RUN_DIR/report) and return their paths.

    `n_queries=0` skips the retrieval figure; it is also skipped for pretraining runs (no
    composed queries), zero-shot runs and runs without a checkpoint yet. `cache` is a
    `clip_cir.encoding.extraction.FeatureCache` (default: the user's feature cache; `FeatureCache(None)`
    for none): a stage-2 gallery is usually already there from training.
    """
    from clip_cir.encoding.extraction import FeatureCache, default_cache_dir

    if n_queries < 0:
        raise CIRError(f"--queries must be 0 or more, got {n_queries}")
    run = read_run(run_dir)
    output_dir = Path(output_dir) if output_dir is not None else run.path / "report"
    written = []
    if run.train is not None:
        written.append(plot_training_loss(run, output_dir / FIGURE_NAMES["loss"]))
    if run.validation is not None:
        written.append(plot_validation(run, output_dir / FIGURE_NAMES["validation"]))
    if run.kind in ("pretrain", "zero-shot") or n_queries == 0:  # no stage-1/2 checkpoint to rank with
        return written
    if not has_checkpoint(run):
        log.warning("%s: no checkpoint yet, so no retrieval examples", run.path)
        return written
    from clip_cir.data.registry import validation_split

    cache = cache if cache is not None else FeatureCache(default_cache_dir())
    split = split or validation_split(run.config.get("dataset"))
    examples, description = retrieval_examples(run, split, n_queries, seed, cache, progress)
    if not examples:
        raise CIRError(f"{run.config['dataset']} split '{split}' has no queries to show")
    title = f"{run.title}: {description}\n{run.config['dataset']} {split}, top {TOP_RESULTS} (target framed in green)"
    written.append(plot_retrieval(examples, output_dir / FIGURE_NAMES["retrieval"], title))
    return written


def run_report(args: argparse.Namespace) -> None:
    from clip_cir.config import CacheConfig
    from clip_cir.encoding.feature_store import feature_cache_for

    cache = feature_cache_for(CacheConfig(cache_dir=args.cache_dir, no_cache=args.no_cache))
    for path in make_report(args.run_dir, args.output_dir, args.queries, args.split, seed=args.seed, cache=cache):
        print(path)


def main(argv: list[str] | None = None, prog: str = "clip-cir report") -> None:
    from clip_cir.apps.entry import run_main, setup_logging
    from clip_cir.params import report_parser

    args = report_parser(prog).parse_args(argv)
    setup_logging()
    run_main(lambda: run_report(args), prog)


if __name__ == "__main__":
    main()
