"""`clip_cir.load`: a CLIP and its combining function in one call, from anything the commands
take (a tag, a checkpoint, a stage-1, stage-2 or zero-shot run, `hf-hub:`), ready to encode, compose and
index (`CIRModel`)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from clip_cir.api.inference import CIRModel
from clip_cir.config import CombiningConfig, DeviceConfig, ModelConfig, check_slerp_alpha
from clip_cir.constants import TRANSFORMS, ZERO_SHOT_METHODS
from clip_cir.encoding.extraction import (
    INFERENCE_BATCH_SIZE,
    FeatureCache,
    default_cache_dir,
)
from clip_cir.encoding.split_features import EncodeOptions
from clip_cir.errors import CIRError
from clip_cir.models.clip import load_clip
from clip_cir.models.combiner import COMBINING_FUNCTIONS
from clip_cir.models.compositors.loading import COMBINER_FILE, load_combining
from clip_cir.models.hub import HUB_PREFIX, hub_repo_id
from clip_cir.models.towers import MEMORY_FORMATS, set_memory_format
from clip_cir.models.transforms import ImageTransform
from clip_cir.models.zero_shot import MAPPING_FILE

log = logging.getLogger("clip_cir")


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise CIRError(f"unknown device '{device}' ({str(e).splitlines()[0][:120]})") from None


def _feature_cache(cache: bool | str | os.PathLike | None) -> FeatureCache | None:
    if cache is True:
        return FeatureCache(default_cache_dir())
    if cache is None or cache is False:
        return None
    return FeatureCache(cache)


def _trained_run_config(source: str | None) -> dict[str, Any] | None:
    """The config.json of a stage-2 or zero-shot run directory (it names the run's CLIP), else None."""
    if source is None or hub_repo_id(source) is not None:
        return None
    path = Path(source) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CIRError(f"{path}: unreadable run config ({e})") from None
    return config if isinstance(config, dict) and config.get("program") in ("stage2", "zero-shot") else None


def _attributes_run_config(source: str | os.PathLike) -> dict[str, Any]:
    """A `clip-cir train-attributes` run's config.json ({} for a FLAM file)."""
    path = Path(source) / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CIRError(f"{path}: unreadable run config ({e})") from None
    return config if isinstance(config, dict) and config.get("program") == "attributes" else {}


def load(pretrained: str | os.PathLike | None = None, *, model: str | None = None,
         combiner: str | os.PathLike | None = None, combining: str | None = None, slerp_alpha: float | None = None,
         zero_shot: str | os.PathLike | None = None, prompt_template: str | None = None,
         attributes: str | os.PathLike | None = None, attribute_template: str | None = None,
         device: str | torch.device | None = None, transform: str | ImageTransform = ModelConfig.transform,
         target_ratio: float = ModelConfig.target_ratio, batch_size: int = INFERENCE_BATCH_SIZE, num_workers: int = 0,
         cache: bool | str | os.PathLike | None = True, channels_last: str = DeviceConfig.channels_last,
         progress: bool = True) -> CIRModel:
    """A CLIP and its combining function, ready to encode, compose and search.

    `pretrained` is anything `--pretrained` takes (an open_clip tag with `model`, a checkpoint
    file, a stage-1 run directory, `hf-hub:ORG/NAME`) or a stage-2 or zero-shot run directory,
    whose config.json names its CLIP: that CLIP and the run's Combiner or φ are loaded (with
    `combining` naming a function, that CLIP and the function). `combiner` is
    anything `--combiner` takes; an `hf-hub:` repository written by `clip-cir export` brings its
    own `combiner.safetensors`. `zero_shot` is anything `--zero-shot` takes (a `clip-cir zero-shot`
    run, a φ file, a published Pic2Word/SEARLE/LinCIR file): queries are then the pseudo-word
    prompt's text features (`prompt_template`: default φ's own; `combining`, if given, must name φ's
    method); an `hf-hub:` export with a `phi.safetensors` brings its φ. Otherwise queries combine by
    `combining`: "sum" (the default), "image" or "slerp" (with `slerp_alpha`, default
    `CombiningConfig.slerp_alpha`). With neither `pretrained` nor `model`: RN50x4 with OpenAI's
    weights, as the commands.

    `attributes` is a `clip-cir train-attributes` run or FLAM file: `manipulate(image, attribute,
    value)` then gives FLAM's query (refused unless the CLIP is the one it was trained on; with
    neither `pretrained` nor `model`, a run's own CLIP is loaded); without
    it, `manipulate` composes the caption `attribute_template` writes (default "change the
    {attribute} to {value}") with the combining function.

    `device`: None means CUDA when available, else the CPU. `transform`, `target_ratio`,
    `batch_size`, `num_workers`, `channels_last` are the encoding commands' options of those
    names; `cache`: True (the feature cache `clip-cir eval` uses), False, or a folder.
    """
    source = None if pretrained is None else os.fspath(pretrained)
    zero_shot = None if zero_shot is None else os.fspath(zero_shot)
    if combining is not None and combining not in COMBINING_FUNCTIONS and combining not in ZERO_SHOT_METHODS:
        raise CIRError(f"unknown combining '{combining}' (choose from {', '.join(COMBINING_FUNCTIONS)}, "
                       f"{', '.join(ZERO_SHOT_METHODS)} with zero_shot, or give a Combiner)")
    if combining in ZERO_SHOT_METHODS and zero_shot is None and hub_repo_id(source) is None:
        raise CIRError(f"combining='{combining}' needs zero_shot: a mapping network trained by "
                       f"`clip-cir zero-shot --method {combining}`")
    if combining is not None and combiner is not None:
        raise CIRError("give combiner or combining, not both")
    if zero_shot is not None and combiner is not None:
        raise CIRError("give combiner or zero_shot, not both")
    if zero_shot is not None and combining is not None and combining not in ZERO_SHOT_METHODS:
        raise CIRError(f"zero_shot gives the pseudo-word composition; combining may only name its method "
                       f"({', '.join(ZERO_SHOT_METHODS)}), not {combining!r}")
    if prompt_template is not None and zero_shot is None and combining not in ZERO_SHOT_METHODS:
        raise CIRError("prompt_template goes with zero_shot (the prompt of a pseudo-word composition)")
    if slerp_alpha is not None and combining != "slerp":
        raise CIRError(f"slerp_alpha goes with combining='slerp', not {combining!r}")
    slerp_alpha = check_slerp_alpha(CombiningConfig.slerp_alpha if slerp_alpha is None else slerp_alpha)
    if transform not in TRANSFORMS and not isinstance(transform, ImageTransform):
        raise CIRError(f"unknown transform {transform!r} (choose from {', '.join(TRANSFORMS)}, or an ImageTransform)")
    for name, value in (("batch_size", batch_size), ("target_ratio", target_ratio)):
        if value <= 0:
            raise CIRError(f"{name} must be positive, got {value}")
    if channels_last not in MEMORY_FORMATS:
        raise CIRError(f"channels_last must be one of {', '.join(MEMORY_FORMATS)}, got {channels_last!r}")
    if attributes is not None and (combiner is not None or combining is not None or zero_shot is not None):
        raise CIRError("attributes gives FLAM's manipulation; it does not go with combiner, combining or zero_shot")
    if attributes is not None and attribute_template is not None:
        raise CIRError("attribute_template writes captions for a combining; FLAM (attributes) reads no caption")
    from clip_cir.api.attributes import DEFAULT_ATTRIBUTE_TEMPLATE, check_attribute_template

    attribute_template = check_attribute_template(attribute_template or DEFAULT_ATTRIBUTE_TEMPLATE)
    device = _device(device)
    if attributes is not None and source is None and model is None:  # the CLIP the FLAM run trained on
        trained = _attributes_run_config(attributes)
        source, model = trained.get("pretrained"), trained.get("model")

    run = _trained_run_config(source)
    combiner_source = None if combiner is None else os.fspath(combiner)
    if run is not None:
        if combiner_source is not None:
            network = "mapping network" if run["program"] == "zero-shot" else "Combiner"
            raise CIRError(f"{source} is a {run['program']} run and brings its own {network}; to combine its CLIP "
                           f"with another, pass that CLIP as pretrained")
        clip = load_clip(model or run.get("model"), run.get("pretrained"))
        if run["program"] == "zero-shot" and (combining is None or combining in ZERO_SHOT_METHODS):
            zero_shot = zero_shot or source
        elif combining is None and zero_shot is None:
            combiner_source = source
    else:
        clip = load_clip(model, source)
        repo_id = hub_repo_id(source) or hub_repo_id(model)
        if zero_shot is None and combiner_source is None and repo_id is not None:
            if combining in ZERO_SHOT_METHODS or (combining is None and _hub_holds(repo_id, MAPPING_FILE)):
                zero_shot = f"{HUB_PREFIX}{repo_id}"
            elif combining is None and _hub_holds(repo_id, COMBINER_FILE):
                combiner_source = f"{HUB_PREFIX}{repo_id}"

    settings = CombiningConfig(combining=combining or CombiningConfig.combining, combiner=combiner_source,
                               slerp_alpha=slerp_alpha, zero_shot=zero_shot, prompt_template=prompt_template)
    combine, name = load_combining(settings, clip, device)
    clip.model.to(device)
    set_memory_format(clip.model, device, channels_last)
    if not isinstance(transform, ImageTransform):
        transform = clip.image_transform(transform, target_ratio)
    features = _feature_cache(cache)
    encode = EncodeOptions(transform=transform, device=device, batch_size=batch_size, num_workers=num_workers,
                           image_cache=features, text_cache=features, progress=progress)
    flam = None
    if attributes is not None:
        from clip_cir.models.flam_files import load_flam

        flam = load_flam(attributes, clip).to(device)
        name = f"FLAM ({flam.path})"
    log.info("model: %s | combining: %s | device: %s", clip.describe(), name, device)
    return CIRModel(clip, combine, encode, combining=name, attributes=flam, attribute_template=attribute_template)


def _hub_holds(repo_id: str, filename: str) -> bool:
    """Whether a `clip-cir export` repository holds `filename` (a Combiner's or φ's weights)."""
    from clip_cir.models.hub import hub_file

    try:
        hub_file(repo_id, filename)
    except CIRError as e:
        log.info("%s", e)
        return False
    return True


