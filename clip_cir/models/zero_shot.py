"""Zero-shot composed retrieval with a mapping network φ: the reference image's CLIP feature
becomes a pseudo-word vector, which stands for the image in a prompt such as "a photo of $ that
{caption}"; the prompt's text feature is the query. Nothing is trained on triplets.

The networks, each sized as its authors' code sizes it (input: the CLIP feature size D; output:
the text tower's token embedding width W; the raw, unnormalised image feature goes in, as all
three feed theirs):

- `pic2word`: Pic2Word's IM2TEXT (google-research/composed_image_retrieval, `model/model.py`):
  `layers` blocks of Linear -> Dropout -> ReLU of width 512, then a Linear to W; dropout 0.1,
  2 blocks (`src/params.py` `--middle_dim`, `--n-layer`, `--droprate`). The hidden width stays
  512 whatever D, as in that code.
- `searle`: SEARLE's φ (miccunifi/SEARLE, `src/phi.py`, sized in `src/train_phi.py`): Linear(D, 4D)
  -> GELU -> Dropout -> Linear(4D, 4D) -> GELU -> Dropout -> Linear(4D, W), dropout 0.5.
- `lincir`: LinCIR's φ (navervision/lincir, `models.py`, sized in `train_phi.py`): SEARLE's
  network, the same sizes and dropout; it differs in what it is trained on (text features).

Parameter names match the published code's, so published φ files load: SEARLE's and LinCIR's
`{"Phi": state_dict}` (read as SEARLE's, the two are the same network and prompt) and Pic2Word's
`{"state_dict_img2text": ...}` (its DataParallel `module.` prefix dropped). Our own files are
safetensors with metadata (`save_mapping`): the method, the sizes, the prompt template and
placeholder it was trained with, and the CLIP it was trained on (model name, architecture and a
fingerprint of each tower's weights); `check_mapping_fits` refuses another CLIP with one line.

Prompt templates (`PROMPT_TEMPLATES`, each method's evaluation prompt in its code): Pic2Word
writes "a photo of * , {caption}" (`src/data.py`), with a space before the comma because CLIP's
tokenizer reads "*," as one word; we write its prompt with the default placeholder "$" (the
placeholder's own embedding is replaced, so which word it is does not change the query as long
as it is one token). SEARLE and LinCIR write "a photo of $ that {caption}" (`src/validate.py`,
`validate.py`). Occurrences of the placeholder inside a caption are removed before it enters
the prompt, as LinCIR's `clean_caption` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.constants import ZERO_SHOT_METHODS
from clip_cir.errors import CIRError
from clip_cir.models.pseudo_words import (
    DEFAULT_PLACEHOLDER,
    count_placeholders,
    encode_with_pseudo_words,
    placeholder_token_id,
    token_embedding_dim,
)

METHODS = ZERO_SHOT_METHODS
CAPTION_FIELD = "{caption}"
PROMPT_TEMPLATES = {"pic2word": "a photo of $ , {caption}",
                    "searle": "a photo of $ that {caption}",
                    "lincir": "a photo of $ that {caption}"}
"""Each method's query prompt, `$` the placeholder and `{caption}` the caption."""
PAIRED_CAPTIONS = {"pic2word": "reversed", "searle": "both", "lincir": "both"}
"""How each method's evaluation composes FashionIQ's two captions: Pic2Word's prompt holds them
reversed ("{cap2} and {cap1}", `src/data.py`); SEARLE and LinCIR average the normalised features of
both orders (`validate.py`). The captions are the method's cleaned forms ("C1 and c0": trailing
'.?, ' stripped, first letter capitalised; Pic2Word's code joins them as written)."""
MAPPING_FILE = "phi.safetensors"
"""φ in a checkpoint folder."""
COMPOSE_BATCH = 256


class PseudoWordMapping(nn.Module):
    """φ: raw CLIP image features [B, D] -> pseudo-word vectors [B, W]. Subclasses set `method`
    and keep their size keyword arguments in `options`, saved with the weights."""

    method: ClassVar[str]

    def __init__(self, clip_feature_dim: int, token_dim: int, **options: Any):
        super().__init__()
        self.clip_feature_dim, self.token_dim, self.options = clip_feature_dim, token_dim, dict(options)
        self.trained_on: dict[str, Any] | None = None
        """The CLIP it was trained on (`clip_identity`), when known."""
        self.prompt_template: str | None = None
        self.placeholder: str = DEFAULT_PLACEHOLDER

    @property
    def dims(self) -> dict[str, Any]:
        return {"clip_feature_dim": self.clip_feature_dim, "token_dim": self.token_dim, **self.options}


class Pic2WordMapping(PseudoWordMapping):
    """Pic2Word's IM2TEXT: `layers` x (Linear, Dropout, ReLU) of width `hidden_dim`, then `fc_out`."""

    method = "pic2word"

    def __init__(self, clip_feature_dim: int, token_dim: int, hidden_dim: int = 512, layers: int = 2,
                 dropout: float = 0.1):
        super().__init__(clip_feature_dim, token_dim, hidden_dim=hidden_dim, layers=layers, dropout=dropout)
        if layers < 1:
            raise ValueError(f"layers must be at least 1, not {layers}")
        widths = [clip_feature_dim] + [hidden_dim] * layers
        self.layers = nn.Sequential(*(nn.Sequential(nn.Linear(a, b), nn.Dropout(dropout), nn.ReLU())
                                      for a, b in zip(widths, widths[1:])))
        self.fc_out = nn.Linear(hidden_dim, token_dim)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.layers(image_features))


class PhiMapping(PseudoWordMapping):
    """SEARLE's φ: three Linear layers, GELU and Dropout between them, hidden width 4D by default."""

    method = "searle"

    def __init__(self, clip_feature_dim: int, token_dim: int, hidden_dim: int | None = None, dropout: float = 0.5):
        hidden_dim = hidden_dim or 4 * clip_feature_dim
        super().__init__(clip_feature_dim, token_dim, hidden_dim=hidden_dim, dropout=dropout)
        self.layers = nn.Sequential(nn.Linear(clip_feature_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden_dim, token_dim))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.layers(image_features)


class LinCIRMapping(PhiMapping):
    """LinCIR's φ: SEARLE's network, trained on noised caption features (`training.zero_shot_losses`)."""

    method = "lincir"


MAPPING_CLASSES: dict[str, type[PseudoWordMapping]] = {"pic2word": Pic2WordMapping, "searle": PhiMapping,
                                                       "lincir": LinCIRMapping}
assert tuple(MAPPING_CLASSES) == METHODS


def build_mapping(method: str, clip_feature_dim: int, token_dim: int, **options: Any) -> PseudoWordMapping:
    """A new φ of `method` for D-d CLIP features and W-d token embeddings; bad options are one line."""
    if method not in MAPPING_CLASSES:
        raise CIRError(f"unknown zero-shot method {method!r} (choose from {', '.join(METHODS)})")
    try:
        return MAPPING_CLASSES[method](clip_feature_dim, token_dim, **options)
    except (TypeError, ValueError) as e:
        raise CIRError(f"{method} mapping network: {e}") from None


def mapping_for(method: str, clip, **options: Any) -> PseudoWordMapping:
    """A new φ of `method` sized for `clip` (a `LoadedCLIP`): its feature size in, its token width out."""
    return build_mapping(method, clip.embed_dim, token_embedding_dim(clip.model), **options)


def clip_identity(clip) -> dict[str, Any]:
    """What φ depends on in the CLIP it was trained on: the name, the architecture and a
    fingerprint of each tower's weights (image features go in, token embeddings come out)."""
    from clip_cir.models.towers import tower_fingerprint

    return {"clip_model_name": clip.model_name, "clip_architecture": clip.architecture, "clip_source": clip.source,
            "clip_image_fingerprint": tower_fingerprint(clip.model, "image"),
            "clip_text_fingerprint": tower_fingerprint(clip.model, "text")}


def check_template(template: str, placeholder: str = DEFAULT_PLACEHOLDER) -> str:
    """`template` when it holds `{caption}` once and the placeholder once as a word of its own
    (spaces either side: CLIP's tokenizer reads "$," as one word); else a one-line error."""
    words = template.split()
    if placeholder not in template:
        raise CIRError(f"prompt template {template!r} has no {placeholder!r} (the placeholder the image stands in for)")
    if words.count(placeholder) != 1 or template.count(placeholder) != 1:
        raise CIRError(f"prompt template {template!r} must hold {placeholder!r} once, as a word of its own "
                       f"(spaces either side, e.g. 'a photo of {placeholder} , {CAPTION_FIELD}')")
    if template.count(CAPTION_FIELD) != 1:
        raise CIRError(f"prompt template {template!r} must hold {CAPTION_FIELD} once (where the caption goes)")
    return template


def mapping_metadata(mapping: PseudoWordMapping, identity: Mapping[str, Any], template: str | None = None,
                     placeholder: str | None = None) -> dict[str, Any]:
    """What a φ file records so it rebuilds without flags and knows its CLIP (`identity`:
    `clip_identity(clip)`, computed once per run)."""
    placeholder = placeholder or mapping.placeholder
    template = check_template(template or mapping.prompt_template or PROMPT_TEMPLATES[mapping.method], placeholder)
    return {"kind": "zero-shot-mapping", "method": mapping.method, "clip_feature_dim": mapping.clip_feature_dim,
            "token_dim": mapping.token_dim, "mapping_options": dict(mapping.options), "prompt_template": template,
            "placeholder": placeholder, **identity}


def save_mapping(path: str | Path, mapping: PseudoWordMapping, metadata: Mapping[str, Any]) -> None:
    """φ's weights as safetensors with `metadata` (`mapping_metadata`), atomically, JSON beside."""
    from clip_cir.models.files import save_weights

    save_weights(path, mapping.state_dict(), dict(metadata))


def _published(obj: Any, path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(method, state dict) of a published torch φ file."""
    if isinstance(obj, dict) and isinstance(obj.get("Phi"), dict):
        return "searle", obj["Phi"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict_img2text"), dict):
        state = obj["state_dict_img2text"]
        return "pic2word", {k.removeprefix("module."): v for k, v in state.items()}
    raise CIRError(f"{path}: no φ in this file (expected our safetensors, SEARLE's or LinCIR's {{'Phi': ...}} "
                   "or Pic2Word's {'state_dict_img2text': ...})")


def _sizes_from_weights(method: str, state: Mapping[str, torch.Tensor], path: Path) -> tuple[int, int, dict]:
    """(D, W, options) read off a published φ's weight shapes."""
    try:
        if method == "pic2word":
            layers = sum(1 for k in state if k.startswith("layers.") and k.endswith(".0.weight"))
            first, out = state["layers.0.0.weight"], state["fc_out.weight"]
            return first.shape[1], out.shape[0], {"hidden_dim": first.shape[0], "layers": layers}
        first, out = state["layers.0.weight"], state["layers.6.weight"]
        return first.shape[1], out.shape[0], {"hidden_dim": first.shape[0]}
    except KeyError as e:
        raise CIRError(f"{path}: not a {method} φ state dict (no {e.args[0]})") from None


def resolve_mapping_checkpoint(path: Path) -> Path:
    """A run directory means its best φ (else its last)."""
    if path.is_dir():
        for candidate in (f"best/{MAPPING_FILE}", f"last/{MAPPING_FILE}", MAPPING_FILE):
            if (path / candidate).is_file():
                return path / candidate
        raise CIRError(f"{path}: directory holds no zero-shot mapping network (best/{MAPPING_FILE})")
    if not path.is_file():
        raise CIRError(f"{path}: zero-shot mapping network not found")
    return path


def load_mapping(path: str | Path) -> PseudoWordMapping:
    """φ from our safetensors file, a run directory, `hf-hub:ORG/NAME` (a `clip-cir export` with φ),
    or a published torch file (weights only), in
    eval mode, with what it was trained on and with (`trained_on`, `prompt_template`, `placeholder`)."""
    from clip_cir.models.checkpoint_formats import read_torch_file
    from clip_cir.models.files import read_safetensors
    from clip_cir.models.hub import hub_file, hub_repo_id

    repo_id = hub_repo_id(str(path))
    path = hub_file(repo_id, MAPPING_FILE) if repo_id else resolve_mapping_checkpoint(Path(path))
    if path.suffix == ".safetensors":
        state, meta = read_safetensors(path)
        if meta.get("kind") != "zero-shot-mapping" or meta.get("method") not in METHODS:
            raise CIRError(f"{path}: not a zero-shot mapping network (its metadata names no method)")
        method, dim, token_dim = meta["method"], meta["clip_feature_dim"], meta["token_dim"]
        options = dict(meta.get("mapping_options", {}))
    else:
        meta = {}
        method, state = _published(read_torch_file(path), path)
        dim, token_dim, options = _sizes_from_weights(method, state, path)
    mapping = build_mapping(method, dim, token_dim, **options)
    try:
        mapping.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise CIRError(f"{path}: weights do not fit a {method} mapping network "
                       f"({str(e).splitlines()[0][:200]})") from None
    identity = {k: v for k, v in meta.items() if k.startswith("clip_") and k != "clip_feature_dim"}
    mapping.trained_on = identity or None
    mapping.prompt_template, mapping.placeholder = meta.get("prompt_template"), meta.get("placeholder",
                                                                                         DEFAULT_PLACEHOLDER)
    return mapping.eval()


def check_mapping_fits(mapping: PseudoWordMapping, clip) -> None:
    """φ must map `clip`'s features (a `LoadedCLIP`) into its token space, and when it records the
    CLIP it was trained on, that CLIP: the same architecture and the same weights of both towers."""
    if mapping.clip_feature_dim != clip.embed_dim or mapping.token_dim != token_embedding_dim(clip.model):
        raise CIRError(f"the {mapping.method} mapping network maps {mapping.clip_feature_dim}-d features to "
                       f"{mapping.token_dim}-d token embeddings, but {clip.describe()} has {clip.embed_dim}-d "
                       f"features and {token_embedding_dim(clip.model)}-d token embeddings")
    trained = mapping.trained_on
    if not trained:
        return
    here = clip_identity(clip)
    keys = ("clip_architecture", "clip_image_fingerprint", "clip_text_fingerprint")
    if any(trained.get(k) is not None and trained[k] != here[k] for k in keys):
        raise CIRError(f"the {mapping.method} mapping network was trained on {trained.get('clip_model_name')} "
                       f"({trained.get('clip_source')}, {trained.get('clip_architecture')}), not on "
                       f"{clip.describe()} ({clip.architecture}): load it with the CLIP it was trained on")


class ZeroShotComposer:
    """Reference image features + captions -> normalised query features: φ(image) is the
    placeholder's embedding in the method's prompt, and the prompt's text feature is the query."""

    reads_captions = True
    """Evaluation, the API and the demo hand it the captions, not their features."""

    def __init__(self, clip, mapping: PseudoWordMapping, template: str | None = None,
                 placeholder: str | None = None, batch_size: int = COMPOSE_BATCH):
        check_mapping_fits(mapping, clip)
        self.clip, self.mapping, self.batch_size = clip, mapping, batch_size
        self.placeholder = placeholder or mapping.placeholder
        self.template = check_template(template or mapping.prompt_template or PROMPT_TEMPLATES[mapping.method],
                                       self.placeholder)
        self.placeholder_id = placeholder_token_id(clip.tokenizer, self.placeholder)

    def __str__(self) -> str:
        return f"{self.mapping.method} pseudo-word ({self.template!r})"

    @property
    def name(self) -> str:
        return self.mapping.method

    def compose_caption_pair(self, image_features: torch.Tensor, forward: Sequence[str],
                             backward: Sequence[str]) -> torch.Tensor:
        """Queries from two captions joined both ways (FashionIQ's "C0 and c1", "C1 and c0"), as
        each method's evaluation code composes them (`PAIRED_CAPTIONS`)."""
        if PAIRED_CAPTIONS[self.mapping.method] == "reversed":
            return self(image_features, backward)
        return F.normalize(self(image_features, forward) + self(image_features, backward), dim=-1)

    def to(self, device: torch.device | str) -> "ZeroShotComposer":
        """φ onto `device` (the CLIP is placed by its owner, as for every combining function)."""
        self.mapping.to(device)
        return self

    def prompts(self, captions: Sequence[str]) -> list[str]:
        """Each caption in the template, its own placeholders removed."""
        return [self.template.replace(CAPTION_FIELD, " ".join(c.replace(self.placeholder, " ").split()))
                for c in captions]

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """Token ids of the captions' prompts; a prompt whose ids do not hold the placeholder once
        (cut off by the context length, or tokenised with its neighbours) is a one-line error."""
        prompts = self.prompts(captions)
        ids = self.clip.tokenize(prompts)
        counts = count_placeholders(ids, self.placeholder_id)
        bad = (counts != 1).nonzero()
        if len(bad):
            row = int(bad[0])
            raise CIRError(f"prompt {prompts[row]!r} holds the placeholder token {int(counts[row])} times after "
                           "tokenising, not once (a caption too long for the context, or a placeholder joined to "
                           "its neighbours)")
        return ids

    @torch.no_grad()
    def __call__(self, image_features: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """[Q, D] unit query vectors from raw reference image features [Q, D] and Q captions, in
        batches of `batch_size`; on the image features' device."""
        if len(captions) != len(image_features):
            raise CIRError(f"{len(image_features)} reference images but {len(captions)} captions")
        device = next(self.clip.model.parameters()).device
        mapping_device = next(self.mapping.parameters()).device
        queries = []
        for start in range(0, len(captions), self.batch_size):
            rows = slice(start, start + self.batch_size)
            ids = self.tokenize(captions[rows]).to(device)
            pseudo = self.mapping(image_features[rows].to(mapping_device, torch.float32)).to(device)
            features = encode_with_pseudo_words(self.clip.model, ids, pseudo, self.placeholder_id)
            queries.append(F.normalize(features.float(), dim=-1).to(image_features.device))
        if not queries:
            return image_features.new_zeros((0, image_features.shape[-1]), dtype=torch.float32)
        return torch.cat(queries)


def zero_shot_composer(clip, source: str | Path, method: str | None = None, template: str | None = None,
                       placeholder: str | None = None) -> ZeroShotComposer:
    """The pseudo-word composition `--zero-shot SOURCE [--combining METHOD] [--prompt-template T]`
    builds for `clip`: φ loaded and checked against the CLIP; `method`, when given, must be φ's."""
    mapping = load_mapping(source)
    # A published {"Phi": ...} file is SEARLE's or LinCIR's: the same network and prompt.
    published_phi = mapping.trained_on is None and {method, mapping.method} <= {"searle", "lincir"}
    if method is not None and method in METHODS and method != mapping.method and not published_phi:
        raise CIRError(f"{source} is a {mapping.method} mapping network, not {method} (drop --combining, or give "
                       f"--combining {mapping.method})")
    return ZeroShotComposer(clip, mapping, template, placeholder)
