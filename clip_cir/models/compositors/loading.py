"""Compositors by name, and back from their checkpoints.

A stage-2 checkpoint (`combiner.safetensors`) records which compositor it holds and the options
that size it, so every command rebuilds the right network from the file alone. Files without
that record are the Combiner's (ours before other compositors existed, and the published ones).
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from clip_cir.constants import COMPOSITORS
from clip_cir.errors import CIRError

COMPOSITOR_CLASSES = {"combiner": "clip_cir.models.combiner:Combiner",
                      "tirg": "clip_cir.models.compositors.tirg:TIRG",
                      "maaf": "clip_cir.models.compositors.maaf:MAAF",
                      "cosmo": "clip_cir.models.compositors.cosmo:CoSMo",
                      "lbf": "clip_cir.models.compositors.lbf:LBF"}
"""`--compositor NAME` -> the class (imported when asked for)."""
assert tuple(COMPOSITOR_CLASSES) == COMPOSITORS

COMBINER_FILE = "combiner.safetensors"
"""Stage 2's network in a checkpoint folder and in an exported (Hub) model folder, whichever compositor it is."""


def compositor_class(name: str) -> type[nn.Module]:
    if name not in COMPOSITOR_CLASSES:
        raise CIRError(f"unknown compositor {name!r} (choose from {', '.join(COMPOSITORS)})")
    module, _, attribute = COMPOSITOR_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def uses_tokens(combine: Any) -> bool:
    """True for a compositor that reads token features (its inputs are `TokenFeatures`)."""
    return bool(getattr(combine, "uses_tokens", False))


def reads_caption_tokens(combine: Any) -> bool:
    """For a compositor that reads tokens: whether it reads the caption's (CoSMo reads only the
    caption's global feature, so any text tower serves it)."""
    return uses_tokens(combine) and bool(getattr(combine, "reads_caption_tokens", True))


def _option_names(cls: type) -> list[str]:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, clip_feature_dim
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def parse_compositor_options(name: str, items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings as the compositor's keyword arguments: values read as JSON where they
    parse (`true`, `4`, `0.1`), else as text; unknown keys are a one-line error naming the known ones."""
    known = _option_names(compositor_class(name))
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CIRError(f"--compositor-options takes KEY=VALUE, got {item!r}")
        if key not in known:
            raise CIRError(f"{name} has no option {key!r} (its options: {', '.join(known) or 'none'})")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def build_compositor(name: str, clip_feature_dim: int, options: Mapping[str, Any]) -> nn.Module:
    """A new compositor for `clip_feature_dim`-d CLIP features; bad option values are one line."""
    cls = compositor_class(name)
    try:
        return cls(clip_feature_dim, **options)
    except (TypeError, ValueError) as e:
        raise CIRError(f"{name} compositor: {e}") from None


def compositor_from_state_dict(state_dict: dict[str, torch.Tensor], metadata: Mapping[str, Any],
                               source: str) -> nn.Module:
    """Rebuild a compositor from its weights and our metadata; without metadata, a Combiner (its
    sizes are in the weights' shapes)."""
    name = metadata.get("compositor", "combiner")
    if name == "combiner":
        try:
            dim = state_dict["text_projection_layer.weight"].shape[1]
            options = {"projection_dim": state_dict["text_projection_layer.weight"].shape[0],
                       "hidden_dim": state_dict["combiner_layer.weight"].shape[0]}
        except KeyError as e:
            raise CIRError(f"{source}: not a Combiner state dict (no {e.args[0]})") from None
    else:
        if name not in COMPOSITOR_CLASSES or "clip_feature_dim" not in metadata:
            raise CIRError(f"{source}: unknown compositor {name!r} in its metadata")
        dim, options = metadata["clip_feature_dim"], dict(metadata.get("compositor_options", {}))
    compositor = build_compositor(name, dim, options)
    try:
        compositor.load_state_dict({k: v.float() for k, v in state_dict.items()})
    except RuntimeError as e:
        raise CIRError(f"{source}: weights do not fit a {name} compositor ({str(e).splitlines()[0][:200]})") from None
    compositor.token_grid = metadata.get("token_grid")  # the grid its image tokens were pooled to
    return compositor.eval()


def resolve_compositor_checkpoint(path: Path) -> Path:
    if path.is_dir():
        for candidate in (f"best/{COMBINER_FILE}", f"last/{COMBINER_FILE}", COMBINER_FILE):
            if (path / candidate).is_file():
                return path / candidate
        raise CIRError(f"{path}: directory holds no stage-2 checkpoint (best/{COMBINER_FILE})")
    if not path.is_file():
        raise CIRError(f"{path}: stage-2 checkpoint not found")
    return path


def load_compositor(path: str | Path) -> nn.Module:
    """Stage 2's network from our safetensors file, a stage-2 run directory, a published
    `{"Combiner": ...}` file, or `hf-hub:ORG/NAME` (a repository written by `clip-cir export`)."""
    from clip_cir.models.clip import read_torch_file
    from clip_cir.models.files import read_safetensors
    from clip_cir.models.hub import hub_file, hub_repo_id

    repo_id = hub_repo_id(str(path))
    path = hub_file(repo_id, COMBINER_FILE) if repo_id else resolve_compositor_checkpoint(Path(path))
    metadata: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        state_dict, metadata = read_safetensors(path)
    else:
        obj = read_torch_file(path)
        if isinstance(obj, dict) and isinstance(obj.get("Combiner"), dict):
            state_dict = obj["Combiner"]
        elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state_dict = obj
        else:
            raise CIRError(f"{path}: no 'Combiner' state dict in this checkpoint")
    compositor = compositor_from_state_dict(state_dict, metadata, str(path))
    compositor.trained_on = (metadata.get("clip_model_name"), metadata.get("clip_architecture"))
    return compositor


def compositor_metadata(compositor: nn.Module, token_grid: int | None) -> dict[str, Any]:
    """What a checkpoint records so the file alone rebuilds the compositor."""
    dims = compositor.dims
    meta = {"kind": "combiner" if compositor.name == "combiner" else "compositor", "compositor": compositor.name,
            **dims, "compositor_options": {k: v for k, v in dims.items() if k != "clip_feature_dim"}}
    if compositor.uses_tokens:
        meta["token_grid"] = token_grid
    return meta


def check_compositor_fits(combine: Any, clip) -> None:
    """A compositor must take the features of the CLIP it is given (`clip`: a `LoadedCLIP`): the
    same feature size, for one that records its CLIP's architecture the same architecture, and
    for one that reads tokens a tower that has them (checked before any encoding)."""
    dims = getattr(combine, "dims", None)
    name = "Combiner" if getattr(combine, "name", "combiner") == "combiner" else f"{combine.name} compositor"
    if dims is not None and dims["clip_feature_dim"] != clip.embed_dim:
        raise CIRError(f"{name} expects {dims['clip_feature_dim']}-d CLIP features, "
                       f"but {clip.describe()} gives {clip.embed_dim}-d")
    model_name, architecture = getattr(combine, "trained_on", None) or (None, None)
    if architecture and architecture != clip.architecture:
        raise CIRError(f"{name} was trained on {model_name} features ({architecture}), not on those of "
                       f"{clip.describe()} ({clip.architecture}): load it with its CLIP")
    if uses_tokens(combine):
        from clip_cir.models.token_features import require_token_features

        require_token_features(clip.model, "image")
        if reads_caption_tokens(combine):
            require_token_features(clip.model, "text")


def load_combining(config, clip, device: torch.device | str | None = None) -> tuple[Any, str]:
    """The combining function `config` (a `CombiningConfig`) names for `clip`, checked to fit it
    and on `device` (a network; None: where it loaded), and its name for people: a zero-shot
    pseudo-word composition, a stage-2 checkpoint (the Combiner, ours or published, or another
    compositor) or a function. The one way every command, the demo and `clip_cir.load` build a
    query's composition."""
    if config.zero_shot:
        from clip_cir.models.zero_shot import zero_shot_composer

        composer = zero_shot_composer(clip, config.zero_shot, config.combining, config.prompt_template)
        return composer.to(device), f"{composer} ({config.zero_shot})"
    if config.combiner:
        network = load_compositor(config.combiner)
        check_compositor_fits(network, clip)
        label = "Combiner" if network.name == "combiner" else f"{network.name} compositor"
        return network.to(device), f"{label} ({config.combiner})"
    from clip_cir.models.combiner import combining_function

    return combining_function(config.combining, config.slerp_alpha)
