"""One loader for every CLIP a user may bring.

- an open_clip model name with a pretrained tag (downloaded when online; Hub-hosted weights
  through `hub_file`, so an unreachable Hub fails at once, with one line),
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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import open_clip
import torch
from open_clip.model import CLIP

from clip_cir.config import ModelConfig
from clip_cir.constants import DEFAULT_MODEL, DEFAULT_PRETRAINED
from clip_cir.errors import CIRError
from clip_cir.models.checkpoint_formats import (
    build_from_config,
    image_preprocess,
    infer_openai_config,
    is_openai_state_dict,
    load_state,
    preprocess_cfg,
    read_torch_file,
    set_preprocess_cfg,
    tokenizer_from_config,
    unwrap_checkpoint,
)
from clip_cir.models.extras import backbone_requirements, first_line
from clip_cir.models.files import read_safetensors
from clip_cir.models.grad_checkpointing import enable_grad_checkpointing
from clip_cir.models.hub import HUB_PREFIX, hub_file, hub_repo_id, snapshot_revision
from clip_cir.models.tiny_timm import register as register_tiny_timm_models
from clip_cir.models.towers import trim_tokens
from clip_cir.models.transforms import ImageTransform, build_transform

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)
register_tiny_timm_models()  # the timm image tower `cir-tiny-eva` names
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

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """open_clip's preprocessing settings for this model (mean/std, resize mode, interpolation:
        its pretrained tag's or Hub config's), saved with our checkpoints so they reload with them."""
        return preprocess_cfg(self.model)

    def describe(self) -> str:
        return f"{self.model_name} ({self.source})"

    @property
    def architecture(self) -> str:
        """What a stage-2 network trained on this CLIP's features depends on besides its weights:
        the tower types, the input size and the embedding size (the same for a CLIP however it
        was loaded: by name, from a checkpoint or from the Hub)."""
        text = getattr(self.model, "text", None)
        text_tower = type(text).__name__ if text is not None else "CLIP"
        return f"{type(self.model.visual).__name__} {self.input_size}px, {text_tower} text, {self.embed_dim}-d"

    def image_transform(self, name: str = ModelConfig.transform,
                        target_ratio: float = ModelConfig.target_ratio) -> ImageTransform:
        """The preprocessing `--transform NAME` (and `--target-ratio`) gives this model: its input
        size and normalisation; `clip` is its own open_clip preprocessing."""
        mean, std = self.mean_std
        return build_transform(name, self.input_size, mean, std, target_ratio, self.clip_preprocess)

    def enable_grad_checkpointing(self) -> dict[str, bool]:
        """Gradient checkpointing on every tower that allows it, ResNet ones included: {tower: checkpointed}."""
        return enable_grad_checkpointing(self.model)

    def tokenize(self, texts: list[str], remember: bool = False, length_multiple: int = 1) -> torch.Tensor:
        """Token ids, cut to the batch's longest caption where that is exact (`trim_tokens`, which
        also takes `length_multiple`).

        `remember`: for training, which sees the same captions every epoch while open_clip's BPE
        runs in Python: each caption's ids are kept after its first batch, up to
        `TOKEN_CACHE_ROWS` captions. Not for one-off encoding (evaluation, the demo's queries),
        nor for tokenizers that draw at random (open_clip's `reduction_mask`).
        """
        texts = list(texts)
        if not (remember and texts) or getattr(self.tokenizer, "reduction_fn", None) is not None:
            return trim_tokens(self.model, self.tokenizer(texts), length_multiple)
        missing = list(dict.fromkeys(t for t in texts if t not in self._token_rows))
        if len(self._token_rows) + len(missing) > TOKEN_CACHE_ROWS:
            return trim_tokens(self.model, self.tokenizer(texts), length_multiple)
        if missing:
            self._token_rows.update(zip(missing, self.tokenizer(missing).to(torch.int32)))
        return trim_tokens(self.model, torch.stack([self._token_rows[t] for t in texts]).long(), length_multiple)


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


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


def _finish(model: CLIP, name: str, source: str, config: dict, tokenizer: Callable | None = None) -> LoadedCLIP:
    model = model.float().eval()
    config = {**config, "quick_gelu": uses_quick_gelu(model)}
    return LoadedCLIP(model=model, tokenizer=tokenizer or _tokenizer_for(model, name),
                      model_name=name, source=source, clip_preprocess=image_preprocess(model), config=config)


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
    meta: dict = {}
    if path.suffix == ".safetensors":
        state_dict, meta = read_safetensors(path)
        config = meta.get("model_config")
        name = meta.get("model_name") or model_name
    else:
        obj = read_torch_file(path)
        state_dict, config, name = unwrap_checkpoint(obj, path), None, model_name
        if isinstance(obj, dict) and "CLIP" in obj:
            # The published fine-tuned checkpoints are OpenAI CLIPs: QuickGELU, whatever the name says.
            config = {**open_clip.get_model_config(name), "quick_gelu": True} if name else None
    tokenizer = None
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
            with backbone_requirements(name, config, "model"):
                model = build_from_config(config)
        except (TypeError, KeyError, ValueError) as e:
            raise CIRError(f"{path}: unusable model config ({e})") from None
        with backbone_requirements(name, config, "tokenizer"):
            tokenizer = tokenizer_from_config(config)
    if "preprocess_cfg" in meta:  # the pretrained tag's or Hub config's, kept by the run that saved it
        set_preprocess_cfg(model, meta["preprocess_cfg"])
    load_state(model, state_dict, str(path))
    return _finish(model, name, str(path), config, tokenizer)


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
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    quick_gelu = bool(tag_cfg.get("quick_gelu"))
    weights, tag_preprocess = _tag_weights(model_name, pretrained, tag_cfg)
    try:
        with _quiet_random_init(), backbone_requirements(model_name, open_clip.get_model_config(model_name), "model"):
            model = open_clip.create_model(model_name, pretrained=weights, force_quick_gelu=quick_gelu,
                                           force_preprocess_cfg=tag_preprocess)
    except RuntimeError as e:
        raise CIRError(f"could not load {model_name} weights '{pretrained}': {first_line(e)} "
                       f"(downloading pretrained weights needs internet access, or pass a local checkpoint "
                       f"file)") from None
    loaded = _finish(model, model_name, pretrained or "random-init", open_clip.get_model_config(model_name))
    if pretrained is None:
        text_model = (loaded.config.get("text_cfg") or {}).get("hf_model_name")
        text = f"; text tower from the Hugging Face model {text_model}" if text_model else ""
        logging.getLogger("clip_cir").info("%s: random initialisation (no pretrained weights%s)", model_name, text)
    return loaded


def _tag_weights(model_name: str, tag: str | None, tag_cfg: dict) -> tuple[str | None, dict | None]:
    """What to pass open_clip for a pretrained tag: the tag itself, or, for weights hosted on the
    Hugging Face Hub, the file `hub_file` fetched (or found in the cache) with the tag's
    preprocessing. open_clip's own download retries an unreachable Hub for a minute and fails with a
    message cut short; `hub_file` asks once and names the model and tag in one line."""
    if not tag or "file" in tag_cfg or not tag_cfg.get("hf_hub"):
        return tag, None
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(tag_cfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    # open_clip's order: a safetensors twin of the file first, the file itself after.
    safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else (
        f"{filename[:-4]}.safetensors" if filename.endswith((".bin", ".pth")) else None)
    path = hub_file(repo_id, [name for name in (safe, filename) if name], label=f"{model_name} '{tag}' weights")
    keys = {f.name for f in fields(open_clip.transform.PreprocessCfg)} - {"size"}  # the size is the model's
    preprocess = {key: value for key, value in tag_cfg.items() if key in keys and value is not None}
    return str(path), preprocess


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

    from clip_cir.models.files import read_safetensors

    name = f"{HUB_PREFIX}{repo_id}"
    config_path = hub_file(repo_id, HF_CONFIG_NAME)
    weights_path = hub_file(repo_id, (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME))
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))["model_cfg"]
        folder = f"local-dir:{config_path.parent}"
        with _quiet_random_init(), backbone_requirements(name, config, "model"):
            # pretrained_text=False: never fetch a text tower's base weights; ours come next.
            model = open_clip.create_model(folder, load_weights=False, pretrained_text=False)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise CIRError(f"{name}: {HF_CONFIG_NAME} does not describe an open_clip model "
                       f"({type(e).__name__}: {reason})") from None
    with backbone_requirements(name, config, "tokenizer"):
        # As open_clip's get_tokenizer("hf-hub:...") does: the Hugging Face tokenizer the config names
        # (often this repository itself), not files of this snapshot, which holds only what we read.
        tokenizer = tokenizer_from_config(config)
    if weights_path.suffix == ".safetensors":
        state_dict = read_safetensors(weights_path)[0]
    else:
        state_dict = unwrap_checkpoint(read_torch_file(weights_path), weights_path)
    load_state(model, state_dict, name)
    revision = snapshot_revision(weights_path)
    return _finish(model, name, f"{name}@{revision}" if revision else name, config, tokenizer)


