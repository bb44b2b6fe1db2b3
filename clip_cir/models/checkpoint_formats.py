"""What a saved CLIP holds, read as open_clip reads it: the file itself (never unpickling code),
the architecture and tokenizer its config describes, its preprocessing, and its weights adapted to
the model the way open_clip's own `load_checkpoint` adapts them.

`clip_cir.models.clip` decides what to load; this module knows the formats.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from open_clip.model import CLIP

from clip_cir.errors import CIRError

OPENAI_STRIP_KEYS = ("input_resolution", "context_length", "vocab_size")
HF_POSITION_IDS = "text.transformer.embeddings.position_ids"
"""A Hugging Face text tower's position-id buffer: in checkpoints written with transformers < 4.31,
not in today's models (open_clip's loader drops it too)."""


def read_torch_file(path: Path) -> Any:
    """torch.load with weights_only=True: a checkpoint from the internet must not run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not a weights checkpoint
        text = str(e)
        if "Unsupported global:" in text:
            # torch's own message suggests weights_only=False (running the file's code): name the
            # offending object instead.
            culprit = text.split("Unsupported global:", 1)[1].split(" was not an allowed global")[0].strip()
            raise CIRError(f"{path}: refused to load: the checkpoint holds Python objects ({culprit}), not only "
                           f"weights, and unpickling them could run code (torch.load with weights_only=True)") from None
        if "WeightsUnpickler error:" in text:
            reason = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        else:
            reason = text.strip().splitlines()[0] if text.strip() else ""
        reason = reason[:200]
        reason = f"{type(e).__name__}: {reason}" if len(reason) < 40 else reason
        raise CIRError(f"{path}: not a readable weights checkpoint ({reason})") from None


def unwrap_checkpoint(obj: Any, path: Path) -> dict:
    """The state dict inside the formats we meet: published `{"CLIP": ...}`, open_clip's
    `{"state_dict": ...}`, or a bare state dict."""
    if not isinstance(obj, dict):
        raise CIRError(f"{path}: checkpoint holds a {type(obj).__name__}, expected a state dict")
    for key in ("CLIP", "state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CIRError(f"{path}: checkpoint has no 'CLIP' or 'state_dict' entry and is not a state dict "
                       f"(keys: {', '.join(list(obj)[:6])})")
    return obj


def is_openai_state_dict(state_dict: dict) -> bool:
    return all(k in state_dict for k in ("text_projection", "positional_embedding", "token_embedding.weight",
                                         "ln_final.weight")) and any(k.startswith("visual.") for k in state_dict)


def infer_openai_config(state_dict: dict) -> dict:
    """The architecture of an OpenAI-format CLIP state dict, as an open_clip model config.

    Mirrors `open_clip.model.build_model_from_openai_state_dict`, which we cannot call directly
    because it converts the model to float16 before loading (losing float32 fine-tuned weights).
    """
    if "visual.proj" in state_dict:
        width = state_dict["visual.conv1.weight"].shape[0]
        layers = len([k for k in state_dict if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        patch = state_dict["visual.conv1.weight"].shape[-1]
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = {"layers": layers, "width": width, "patch_size": patch, "image_size": patch * grid}
    else:
        counts = [len({k.split(".")[2] for k in state_dict if k.startswith(f"visual.layer{b}")}) for b in (1, 2, 3, 4)]
        out_width = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = {"layers": counts, "width": state_dict["visual.layer1.0.conv1.weight"].shape[0],
                  "patch_size": None, "image_size": out_width * 32}
    text_width = state_dict["ln_final.weight"].shape[0]
    text = {"context_length": state_dict["positional_embedding"].shape[0],
            "vocab_size": state_dict["token_embedding.weight"].shape[0], "width": text_width,
            "heads": text_width // 64,
            "layers": len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks")})}
    return {"embed_dim": state_dict["text_projection"].shape[1], "quick_gelu": True,
            "vision_cfg": vision, "text_cfg": text}


def build_from_config(config: dict) -> torch.nn.Module:
    """The model a config describes, of the class open_clip's factory picks for it (`CLIP`,
    `CustomTextCLIP` for `custom_text` configs and Hugging Face text towers, `CoCa` with a
    `multimodal_cfg`), with every setting the config holds (logit bias, QuickGELU...). No base
    weights are fetched for a timm or Hugging Face tower: the checkpoint's come next."""
    from open_clip.coca_model import CoCa
    from open_clip.model import CustomTextCLIP

    config = {**config, "vision_cfg": dict(config["vision_cfg"]), "text_cfg": dict(config["text_cfg"])}
    custom_text = config.pop("custom_text", False) or "hf_model_name" in config["text_cfg"]
    if "timm_model_name" in config["vision_cfg"]:
        config["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in config["text_cfg"]:
        config["text_cfg"]["hf_model_pretrained"] = False
    cls = (CoCa if "multimodal_cfg" in config else CustomTextCLIP) if custom_text else CLIP
    return cls(**config)


def tokenizer_from_config(config: dict) -> Callable:
    """The tokenizer open_clip's `get_tokenizer` gives a model with this config (a built-in name or
    a Hub repository): the Hugging Face tokenizer the text config names, else CLIP's BPE."""
    text = config.get("text_cfg") or {}
    context_length = text.get("context_length") or open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH
    kwargs = dict(text.get("tokenizer_kwargs") or {})
    if text.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(text["hf_tokenizer_name"], context_length=context_length,
                                               tokenizer_mode=text.get("tokenizer_mode"), **kwargs)
    return open_clip.SimpleTokenizer(context_length=context_length, **kwargs)


def preprocess_cfg(model: torch.nn.Module) -> dict[str, Any]:
    """The preprocessing settings open_clip attached to `model` (from its pretrained tag or Hub
    config), JSON-ready, without the size (the model's own)."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k != "size"}


def set_preprocess_cfg(model: torch.nn.Module, cfg: dict[str, Any] | None) -> None:
    """Attach preprocessing settings to `model` as open_clip's factory does; missing ones (all of
    them for a model built from a config or inferred from weights) are open_clip's defaults."""
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg

    set_model_preprocess_cfg(model, {**asdict(PreprocessCfg()), **_known_settings(cfg or {}),
                                     "size": model.visual.image_size})


def image_preprocess(model: torch.nn.Module) -> Callable:
    """open_clip's evaluation transform for `model` (what `create_model_and_transforms` returns)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = open_clip.get_model_preprocess_cfg(model)
    if "mean" not in cfg:
        set_preprocess_cfg(model, None)
        cfg = open_clip.get_model_preprocess_cfg(model)
    return image_transform_v2(PreprocessCfg(**_known_settings(cfg)), is_train=False)


def _known_settings(cfg: dict) -> dict:
    """The settings open_clip's `PreprocessCfg` has (configs may carry others)."""
    from open_clip.transform import PreprocessCfg

    known = {f.name for f in fields(PreprocessCfg)}
    return {k: v for k, v in cfg.items() if k in known}


def load_state(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load `state_dict` into `model` exactly (every key, every shape), in float32, after the
    adaptations open_clip's `load_checkpoint` makes: DDP's `module.` prefix, OpenAI's extra keys,
    third-party formats open_clip converts, old text-tower key names of custom-text models, a
    scalar or 1-d logit scale/bias, and a Hugging Face tower's stale `position_ids` buffer."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    state_dict = {k: v for k, v in state_dict.items() if k not in OPENAI_STRIP_KEYS}
    if next(iter(state_dict), "").startswith("module."):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    state_dict = convert_state_dict(model, state_dict)
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state_dict and target is not None and state_dict[key].ndim != target.ndim:
            state_dict[key] = state_dict[key].reshape(target.shape)
    if HF_POSITION_IDS in state_dict and HF_POSITION_IDS not in model.state_dict():
        del state_dict[HF_POSITION_IDS]
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:2]
        raise CIRError(f"{source}: weights do not fit the model ({' '.join(first)[:300]})") from None
