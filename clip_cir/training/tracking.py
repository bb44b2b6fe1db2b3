"""Experiment tracking through Accelerate's tracker API (comet_ml), online or offline.

Without an API key a run still tracks: comet_ml writes an offline experiment archive into the
run directory, to upload later with `comet upload`. CSV logs are written either way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from clip_cir.constants import TRACKERS
from clip_cir.errors import CIRError

log = logging.getLogger(__name__)


def comet_api_key_configured() -> bool:
    if os.environ.get("COMET_API_KEY"):
        return True
    try:
        import comet_ml

        return bool(comet_ml.config.get_config("comet.api_key"))
    except Exception:  # noqa: BLE001 - no readable comet config means no key
        return False


def tracker_setup(tracker: str, run_dir: Path, experiment_name: str) -> dict[str, Any]:
    """`init_kwargs` for `Accelerator.init_trackers`."""
    if tracker == "none":
        return {}
    if tracker != "comet_ml":
        raise CIRError(f"unknown tracker '{tracker}' (choose from {', '.join(TRACKERS)})")
    try:
        import comet_ml
    except ImportError:
        raise CIRError("--tracker comet_ml needs the comet-ml package (pip install comet-ml)") from None
    online = comet_api_key_configured()
    offline_dir = run_dir / "comet"
    config = comet_ml.ExperimentConfig(name=experiment_name, offline_directory=str(offline_dir),
                                       log_code=False, log_git_metadata=False, log_git_patch=False,
                                       auto_output_logging="simple", display_summary_level=0)
    if not online:
        log.info("comet_ml: no API key configured; logging an offline experiment to %s "
                 "(upload it later with `comet upload`)", offline_dir)
    return {"comet_ml": {"online": online, "experiment_config": config}}


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Tracker hyper-parameters must be scalars."""
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in config.items()}
