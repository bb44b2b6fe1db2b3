"""One loader for every CLIP a user may bring.

- an open_clip model name with a pretrained tag (downloaded by open_clip when online),
- a local open_clip checkpoint (with `--model`),
- an OpenAI-format state dict, or a published fine-tuned `{"epoch": n, "CLIP": state_dict}`,
  whose architecture is inferred from the weights (no model name needed),
- our own checkpoints (safetensors + JSON metadata, or a run directory),
- the tiny configs shipped in `clip_cir/models/configs` for CPU runs and tests,
- a Hugging Face Hub repository in open_clip's layout (`hf-hub:ORG/NAME`, through the HF cache).

Weights are loaded in float32 whatever they were saved in (float16 upcasts exactly), so a
float32 fine-tuned checkpoint never passes through float16; mixed precision is Accelerate's job.
Nothing is loaded with pickle: torch files go through `weights_only=True`.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from clip_cir.constants import DEFAULT_MODEL, DEFAULT_PRETRAINED
from clip_cir.errors import CIRError
from clip_cir.models.checkpointing import enable_grad_checkpointing
from clip_cir.models.checkpoints import read_safetensors
from clip_cir.models.extras import backbone_requirements
from clip_cir.models.hub import HUB_PREFIX, hub_file, hub_repo_id, snapshot_revision
from clip_cir.models.tiny_timm import register as register_tiny_timm_models
from clip_cir.models.towers import trim_tokens

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)
register_tiny_timm_models()  # the timm image tower `cir-tiny-eva` names
OPENAI_STRIP_KEYS = ("input_resolution", "context_length", "vocab_size")
TOKEN_CACHE_ROWS = 100_000
"""Training captions whose token ids `LoadedCLIP.tokenize(..., remember=True)` keeps: about 1 KB
each at 77 tokens (int32 ids, the caption string, the dict slot), so CIRR's 28k training
captions take ~30 MB and FashionIQ's 72k caption forms ~80 MB, in each process."""


@dataclass
class LoadedCLIP:
    """A CLIP with what must travel with it: tokenizer, preprocessing facts and provenance."""

    model: CLIP
    tokenizer: Callable[[list[str]], torch.Tensor]
    model_name: str
    """open_clip config name, or `openai-inferred` when the architecture came from the weights."""
    source: str
    """What was loaded: `random-init`, a pretrained tag, or a checkpoint path."""
    clip_preprocess: Callable
    config: dict[str, Any] = field(default_factory=dict)
    """The architecture config, saved with our checkpoints so they load without a name."""
    _token_rows: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    """caption -> its full-length token ids (see `tokenize`)."""

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def signature(self) -> str:
        """Architecture facts the weights do not carry (activation, pooling...): part of feature cache keys."""
        return f"{type(self.model).__name__}:{json.dumps(self.config, sort_keys=True, default=str)}"

    @property
    def input_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        return tuple(cfg["mean"]), tuple(cfg["std"])

    def describe(self) -> str:
        return f"{self.model_name} ({self.source})"

    def enable_grad_checkpointing(self) -> dict[str, bool]:
        """Gradient checkpointing on every tower that allows it, ResNet ones included: {tower: checkpointed}."""
        return enable_grad_checkpointing(self.model)

    def tokenize(self, texts: list[str], remember: bool = False) -> torch.Tensor:
        """Token ids, cut to the batch's longest caption where that is exact (`trim_tokens`).

        `remember`: for training, which sees the same captions every epoch while open_clip's BPE
        runs in Python: each caption's ids are kept after its first batch, up to
        `TOKEN_CACHE_ROWS` captions. Not for one-off encoding (evaluation, the demo's queries),
        nor for tokenizers that draw at random (open_clip's `reduction_mask`).
        """
        texts = list(texts)
        if not (remember and texts) or getattr(self.tokenizer, "reduction_fn", None) is not None:
            return trim_tokens(self.model, self.tokenizer(texts))
        missing = list(dict.fromkeys(t for t in texts if t not in self._token_rows))
        if len(self._token_rows) + len(missing) > TOKEN_CACHE_ROWS:
            return trim_tokens(self.model, self.tokenizer(texts))
        if missing:
            self._token_rows.update(zip(missing, self.tokenizer(missing).to(torch.int32)))
        return trim_tokens(self.model, torch.stack([self._token_rows[t] for t in texts]).long())


class _NoRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("No pretrained weights loaded") or "initialized randomly" in message)


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    """open_clip's factory warns "No pretrained weights loaded ... Model initialized randomly"
    whenever it builds a model without a tag, also just before we load a checkpoint into it.
    We say ourselves what was loaded (`LoadedCLIP.describe`, and a line for a real random init)."""
    quiet = _NoRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _close_matches(name: str, choices: list[str]) -> str:
    matches = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(matches)}?" if matches else ""


def check_model_name(name: str) -> None:
    if name not in open_clip.list_models():
        raise CIRError(f"unknown open_clip model '{name}'{_close_matches(name, open_clip.list_models())} "
                       f"(see open_clip.list_models(); tiny CPU models: {', '.join(tiny_model_names())})")


def tiny_model_names() -> list[str]:
    """The tiny configs shipped in `clip_cir/models/configs` (registered with open_clip at import)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def _tokenizer_for(model: CLIP, name: str | None) -> Callable:
    """open_clip's tokenizer for a registered name; CLIP's own BPE for architectures from a config."""
    if name is not None and name in open_clip.list_models():
        with backbone_requirements(name, open_clip.get_model_config(name), "tokenizer"):
            return open_clip.get_tokenizer(name)
    return open_clip.SimpleTokenizer(context_length=model.context_length)


def _preprocess_for(model: CLIP) -> Callable:
    cfg = open_clip.get_model_preprocess_cfg(model)
    if "mean" not in cfg:
        # Built from a config / inferred from weights rather than by open_clip's factory, which is
        # what attaches the preprocessing config: give it open_clip's defaults (OpenAI mean/std).
        from dataclasses import asdict

        from open_clip.model import set_model_preprocess_cfg
        from open_clip.transform import PreprocessCfg

        set_model_preprocess_cfg(model, {**asdict(PreprocessCfg()), "size": model.visual.image_size})
        cfg = open_clip.get_model_preprocess_cfg(model)
    return open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                                     interpolation=cfg.get("interpolation"), resize_mode=cfg.get("resize_mode"))


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


def _finish(model: CLIP, name: str, source: str, config: dict, tokenizer: Callable | None = None) -> LoadedCLIP:
    model = model.float().eval()
    config = {**config, "quick_gelu": uses_quick_gelu(model)}
    return LoadedCLIP(model=model, tokenizer=tokenizer or _tokenizer_for(model, name),
                      model_name=name, source=source, clip_preprocess=_preprocess_for(model), config=config)


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


def build_from_config(config: dict) -> CLIP:
    return CLIP(config["embed_dim"], vision_cfg=CLIPVisionCfg(**config["vision_cfg"]),
                text_cfg=CLIPTextCfg(**config["text_cfg"]), quick_gelu=config.get("quick_gelu", False))


def _load_state(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    state_dict = {k: v for k, v in state_dict.items() if k not in OPENAI_STRIP_KEYS}
    if next(iter(state_dict), "").startswith("module."):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    if "logit_scale" in state_dict and state_dict["logit_scale"].ndim != model.logit_scale.ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:2]
        raise CIRError(f"{source}: weights do not fit the model ({' '.join(first)[:300]})") from None


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


def _unwrap_checkpoint(obj: Any, path: Path) -> dict:
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


def resolve_clip_checkpoint(path: Path) -> Path:
    """A run directory means its best CLIP checkpoint (else its last one)."""
    if path.is_dir():
        for candidate in ("best/clip.safetensors", "last/clip.safetensors", "clip.safetensors"):
            if (path / candidate).is_file():
                return path / candidate
        raise CIRError(f"{path}: directory holds no CLIP checkpoint (best/clip.safetensors or last/clip.safetensors)")
    return path


def load_clip_checkpoint(path: Path, model_name: str | None) -> LoadedCLIP:

    path = resolve_clip_checkpoint(path)
    if path.suffix == ".safetensors":
        state_dict, meta = read_safetensors(path)
        config = meta.get("model_config")
        name = meta.get("model_name") or model_name
    else:
        obj = read_torch_file(path)
        state_dict, config, name = _unwrap_checkpoint(obj, path), None, model_name
        if isinstance(obj, dict) and "CLIP" in obj:
            # The published fine-tuned checkpoints are OpenAI CLIPs: QuickGELU, whatever the name says.
            config = {**open_clip.get_model_config(name), "quick_gelu": True} if name else None
    # A registered name rebuilds from open_clip's config; `openai-inferred` and names open_clip does
    # not know (a model first loaded from the Hub) rebuild from the config saved with the weights.
    if name is not None and name != "openai-inferred" and (config is None or name in open_clip.list_models()):
        check_model_name(name)
        quick_gelu = (config or {}).get("quick_gelu", False)
        # pretrained_text=False: a Hugging Face text tower's base weights are not needed, ours come next.
        with _quiet_random_init(), backbone_requirements(name, open_clip.get_model_config(name), "model"):
            model = open_clip.create_model(name, force_quick_gelu=quick_gelu, pretrained_text=False)
        config = config or open_clip.get_model_config(name)
    else:
        if config is None:
            if not is_openai_state_dict(state_dict):
                raise CIRError(f"{path}: cannot infer the architecture from these weights; pass --model NAME")
            config, name = infer_openai_config(state_dict), "openai-inferred"
        try:
            model = build_from_config(config)
        except (TypeError, KeyError, ValueError) as e:
            raise CIRError(f"{path}: unusable model config ({e})") from None
    _load_state(model, state_dict, str(path))
    return _finish(model, name, str(path), config)


def load_clip(model_name: str | None = None, pretrained: str | None = None) -> LoadedCLIP:
    """Load a CLIP from a name and/or a pretrained tag, checkpoint file or run directory.

    With neither, the method's reference backbone (RN50x4, OpenAI weights) is used. An
    `hf-hub:ORG/NAME` in either argument is a Hub repository in open_clip's layout.
    """
    repo_id = hub_repo_id(pretrained) or hub_repo_id(model_name)
    if repo_id is not None:
        other = model_name if hub_repo_id(pretrained) else pretrained
        if other is not None and hub_repo_id(other) != repo_id:
            logging.getLogger("clip_cir").warning("'%s' ignored: %s%s defines the architecture and the weights",
                                                  other, HUB_PREFIX, repo_id)
        return load_hub_clip(repo_id)
    if pretrained is not None and (os.path.sep in pretrained or Path(pretrained).exists()
                                   or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        path = Path(pretrained)
        if not path.exists():
            raise CIRError(f"{path}: checkpoint not found")
        return load_clip_checkpoint(path, model_name)
    if model_name is None:
        model_name, pretrained = DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED
    check_model_name(model_name)
    if pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise CIRError(f"unknown pretrained tag '{pretrained}' for {model_name} and no such file "
                           f"(known tags: {', '.join(tags) or 'none'})")
    # open_clip only warns when a tag's weights were trained with QuickGELU (OpenAI's) and the
    # config says GELU; building the model with the activation its weights expect is our job.
    quick_gelu = bool(pretrained and open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu"))
    try:
        with _quiet_random_init(), backbone_requirements(model_name, open_clip.get_model_config(model_name), "model"):
            model = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except RuntimeError as e:
        raise CIRError(f"could not load {model_name} weights '{pretrained}': {str(e).splitlines()[0][:300]} "
                       f"(downloading pretrained weights needs internet)") from None
    loaded = _finish(model, model_name, pretrained or "random-init", open_clip.get_model_config(model_name))
    if pretrained is None:
        text_model = (loaded.config.get("text_cfg") or {}).get("hf_model_name")
        text = f"; text tower from the Hugging Face model {text_model}" if text_model else ""
        logging.getLogger("clip_cir").info("%s: random initialisation (no pretrained weights%s)", model_name, text)
    return loaded


def load_hub_clip(repo_id: str) -> LoadedCLIP:
    """A CLIP from a Hub repository in open_clip's layout, as plain open_clip builds it.

    The architecture and preprocessing come from `open_clip_config.json` through open_clip's own
    factory (any model class it knows); the weights are read by our safe readers and must fit
    exactly — open_clip itself would fall back to random weights with only a warning. Files come
    from huggingface_hub's cache, so a repository downloaded once works offline.
    """
    from open_clip.constants import (
        HF_CONFIG_NAME,
        HF_SAFE_WEIGHTS_NAME,
        HF_WEIGHTS_NAME,
    )

    from clip_cir.models.checkpoints import read_safetensors

    name = f"{HUB_PREFIX}{repo_id}"
    config_path = hub_file(repo_id, HF_CONFIG_NAME)
    weights_path = hub_file(repo_id, (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME))
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))["model_cfg"]
        folder = f"local-dir:{config_path.parent}"
        with _quiet_random_init(), backbone_requirements(name, config, "model"):
            # pretrained_text=False: never fetch a text tower's base weights; ours come next.
            model = open_clip.create_model(folder, load_weights=False, pretrained_text=False)
        with backbone_requirements(name, config, "tokenizer"):
            tokenizer = open_clip.get_tokenizer(folder)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise CIRError(f"{name}: {HF_CONFIG_NAME} does not describe an open_clip model "
                       f"({type(e).__name__}: {reason})") from None
    if weights_path.suffix == ".safetensors":
        state_dict = read_safetensors(weights_path)[0]
    else:
        state_dict = _unwrap_checkpoint(read_torch_file(weights_path), weights_path)
    _load_state(model, state_dict, name)
    revision = snapshot_revision(weights_path)
    return _finish(model, name, f"{name}@{revision}" if revision else name, config, tokenizer)


