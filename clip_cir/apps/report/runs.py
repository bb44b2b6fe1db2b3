"""A training run as the report reads it: its config and CSV logs, and which program wrote it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clip_cir.errors import CIRError

if TYPE_CHECKING:
    import pandas as pd


KIND_LABELS = {"pretrain": "pretraining", "stage1": "stage 1: CLIP fine-tuning", "stage2": "stage 2: Combiner",
               "zero-shot": "zero-shot mapping network"}


@dataclass
class Run:
    """What a report needs from a run directory, read and checked once."""

    path: Path
    config: dict[str, Any]
    kind: str
    """`pretrain`, `stage1`, `stage2` or `zero-shot` (see `run_kind`)."""
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
    if kind not in KIND_LABELS:
        raise CIRError(f"{run_dir / 'config.json'}: no 'program' of pretrain, stage1, stage2 or zero-shot "
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
