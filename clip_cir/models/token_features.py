"""Per-token CLIP features next to the global ones, for compositors that attend over image
regions or caption words.

Each function runs the model's own `encode_image` / `encode_text` once and reads the per-token
activations off the same forward pass (a hook on one module), so `pooled` is exactly the global
feature the rest of clip-cir uses, and the tokens are projected into the same D-dimensional space.

Image towers:

- open_clip `VisionTransformer`: the patch tokens (class token left out) after `ln_post` and the
  projection `proj`, the grid flattened row-major. A tower built with `final_ln_after_pool`
  applies `ln_post` to its pooled feature only; its tokens get `ln_post` here too, so every
  ViT's tokens are in the space its pooled feature is projected from. Patch dropout is inactive
  in eval mode; a tower that drops patches (train mode) is refused. Towers with an attentional
  pool (CoCa) are refused: their outputs are the pooler's queries, not image regions.
- open_clip `ModifiedResNet`: the last stage's grid through the attention pool's value
  projection and then its output projection (`c_proj(v_proj(x))`), as MaskCLIP does
  (chongzhou96/MaskCLIP, `MaskClipHead.forward` without `attn_pooling`: the backbone's last
  feature map goes straight into `v_proj`, with no positional embedding added). We follow it: no
  positional embedding. Unlike MaskCLIP we keep CLIP's own stride (no dilation), so the grid is the
  input size / 32.
- Any other image tower (timm towers, ...) is refused with one line: there is no one exact
  definition of their tokens in CLIP's space.

Text towers (tokens from the start token through the end-of-text (EOT) token, then padding with
`mask` False and zero features; L is the batch's longest caption, not the context length):

- open_clip `CLIP` and `CustomTextCLIP` with an open_clip `TextTransformer` that pools at the EOT
  token (`argmax` or `eos`): every token after the final layer norm, through the text projection;
  the EOT token's is the pooled feature's path. First/last-token pooling (SigLIP) and towers with
  an appended class token (CoCa) are refused: the model does not say where a caption ends, or
  the pooled token is not a caption token.
- Hugging Face towers (`HFTextEncoder`) that pool the first token's last hidden state: every
  token's hidden state through the tower's `proj`, the path of the pooled one; the real tokens
  are the non-padding ones (the attention mask the tower uses). Mean- and max-pooling towers
  (roberta, xlm-roberta, mt5 CLIPs) and a transformer pooler output are refused: the pooled
  feature is not the projection of any one token.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import TextTransformer, VisionTransformer

from clip_cir.errors import CIRError
from clip_cir.models.compositors.base import TokenFeatures
from clip_cir.models.towers import encode_text


@contextmanager
def _captured(module: torch.nn.Module, what: str) -> Iterator[list]:
    """The `input` (first positional argument) or `output` of every call of `module` inside."""
    seen: list = []
    if what == "input":
        handle = module.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _inputs, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


def _one(seen: list, where: str) -> object:
    if len(seen) != 1:
        raise RuntimeError(f"expected one call of {where} per forward pass, saw {len(seen)}")
    return seen[0]


def pool_grid(tokens: torch.Tensor, shape: tuple[int, int], grid: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Image tokens [B, rows*cols, D] (row-major) averaged into at most `grid` x `grid` cells with
    `adaptive_avg_pool2d` (in float32, returned in the tokens' dtype). Each side is pooled on its
    own: a side already at most `grid` cells long stays as it is, so a native grid smaller than
    `grid` x `grid` is returned unchanged and a non-square one (say 7 x 12 with grid 8) keeps its
    short side (7 x 8). Cell (i, j) of a side of n cells pooled to m averages the native cells
    floor(i*n/m) .. ceil((i+1)*n/m) - 1 (neighbouring cells overlap when m does not divide n)."""
    if grid < 1:
        raise CIRError(f"the token grid must be at least 1 cell a side, not {grid}")
    rows, cols = shape
    out = (min(rows, grid), min(cols, grid))
    if out == (rows, cols):
        return tokens, shape
    maps = tokens.float().transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], rows, cols)
    pooled = F.adaptive_avg_pool2d(maps, out).flatten(2).transpose(1, 2)
    return pooled.to(tokens.dtype), out


def _vit_tokens(visual: VisionTransformer, hidden: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    rows, cols = pixels.shape[-2] // visual.patch_size[0], pixels.shape[-1] // visual.patch_size[1]
    if hidden.shape[1] != rows * cols + 1:
        raise CIRError(f"the image tower returned {hidden.shape[1] - 1} patch tokens, not {rows} x {cols}: patch "
                       "dropout is active (put the model in eval mode for token features)")
    tokens = visual.ln_post(hidden[:, 1:])
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return tokens, (rows, cols)


def _resnet_tokens(visual: ModifiedResNet, grid_map: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    rows, cols = grid_map.shape[-2:]
    flat = grid_map.flatten(2).transpose(1, 2)  # [B, rows*cols, C], row-major
    return visual.attnpool.c_proj(visual.attnpool.v_proj(flat)), (rows, cols)


def _image_kind(visual: torch.nn.Module) -> str:
    """`vit` or `resnet`, or a one-line refusal for towers without exact token features."""
    if isinstance(visual, VisionTransformer):
        if visual.attn_pool is not None or visual.pool_type == "none":
            raise CIRError("token features are not available for VisionTransformer image towers with an attentional "
                           "pool (CoCa) or no pooling: their outputs are not image patches")
        return "vit"
    if isinstance(visual, ModifiedResNet):
        return "resnet"
    raise CIRError(f"token features are not available for {type(visual).__name__} image towers (only open_clip's "
                   "VisionTransformer and ModifiedResNet have an exact per-region feature in CLIP's space)")


def image_token_features(model: torch.nn.Module, pixels: torch.Tensor, grid: int | None = None) -> TokenFeatures:
    """Global and per-region features of normalised image batches `pixels` (what
    `model.encode_image` takes), in one forward pass: `pooled` is `model.encode_image(pixels)`,
    `tokens` [B, rows*cols, D] as the module docstring defines per tower, every `mask` entry
    True. `grid`: average the token grid into at most `grid` x `grid` cells (`pool_grid`)."""
    visual = model.visual
    if _image_kind(visual) == "vit":
        with _captured(visual.transformer, "output") as seen:
            pooled = model.encode_image(pixels)
        tokens, shape = _vit_tokens(visual, _one(seen, "the ViT transformer"), pixels)
    else:
        with _captured(visual.attnpool, "input") as seen:
            pooled = model.encode_image(pixels)
        tokens, shape = _resnet_tokens(visual, _one(seen, "the ResNet attention pool"))
    if grid is not None:
        tokens, shape = pool_grid(tokens, shape, grid)
    mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return TokenFeatures(pooled, tokens, mask, shape)


def _eot_lengths(tokens: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    """Tokens per caption from the start token through the EOT token, as the tower pools."""
    if pool_type == "argmax":
        return tokens.argmax(dim=-1) + 1
    return (tokens == eos_id).int().argmax(dim=-1) + 1


def _project(projection: torch.nn.Module | torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    if projection is None:
        return lambda x: x
    if isinstance(projection, torch.nn.Module):
        return projection
    return lambda x: x @ projection


def _text_tower(model: torch.nn.Module) -> tuple[torch.nn.Module, Callable, Callable[[torch.Tensor], torch.Tensor]]:
    """(module whose output holds every token's hidden state, its projection, token ids -> tokens
    per caption through EOT) for the model's text tower, or a one-line refusal."""
    if isinstance(model, CLIP):
        tower, pool, eos = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif isinstance(model, CustomTextCLIP) and isinstance(model.text, TextTransformer):
        tower, pool, eos = model.text, model.text.pool_type, model.text.eos_id
        if model.text.cls_emb is not None:
            raise CIRError("token features are not available for text towers with an appended class token (CoCa): "
                           "the pooled feature is not a caption token's")
    elif isinstance(model, CustomTextCLIP) and type(model.text).__name__ == "HFTextEncoder":
        return _hf_tower(model.text)
    else:
        text = getattr(model, "text", model)
        raise CIRError(f"token features are not available for {type(text).__name__} text towers")
    if pool not in ("argmax", "eos") or (pool == "eos" and eos is None):
        raise CIRError(f"token features are not available for text towers pooling the {pool!r} token: "
                       "the tower does not mark where a caption ends")
    return tower.ln_final, _project(tower.text_projection), lambda tokens: _eot_lengths(tokens, pool, eos)


def _hf_tower(text: torch.nn.Module) -> tuple[torch.nn.Module, Callable, Callable[[torch.Tensor], torch.Tensor]]:
    pooler = type(text.pooler).__name__
    if pooler not in ("ClsPooler", "ClsLastHiddenStatePooler") or getattr(text.pooler, "cls_token_position", 0) != 0:
        raise CIRError(f"token features are not available for Hugging Face text towers with a {pooler}: "
                       "the pooled feature is not the projection of any one token")

    def lengths(tokens: torch.Tensor) -> torch.Tensor:  # through the last non-padding token
        positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
        return ((tokens != text.config.pad_token_id) * positions).amax(dim=1)
    return text.transformer, text.proj, lengths


def require_token_features(model: torch.nn.Module, tower: str) -> None:
    """Raise the one-line `CIRError` that `image_token_features` (`tower="image"`) or
    `text_token_features` (`"text"`) would, before any input is read."""
    if tower == "image":
        _image_kind(model.visual)
    else:
        _text_tower(model)


def text_token_features(model: torch.nn.Module, tokens: torch.Tensor) -> TokenFeatures:
    """Global and per-token features of token id batches `tokens` [B, n] in one forward pass:
    `pooled` is `clip_cir.models.towers.encode_text(model, tokens)`; `tokens` [B, L, D] runs from
    the start token through each caption's EOT token (mask True), zeros after it (mask False); L
    is the longest caption's length. Passing ids already cut by `trim_tokens` saves the work on
    padding and gives the same features for causal towers."""
    module, project, eot_lengths = _text_tower(model)
    lengths = eot_lengths(tokens)
    with _captured(module, "output") as seen:
        pooled = encode_text(model, tokens)
    hidden = _one(seen, type(module).__name__)
    if not isinstance(hidden, torch.Tensor):  # a Hugging Face model output
        if getattr(hidden, "pooler_output", None) is not None and getattr(model.text.pooler, "use_pooler_output", 0):
            raise CIRError("token features are not available for Hugging Face text towers pooled by the transformer's "
                           "pooler: the pooled feature is not the projection of any one token")
        hidden = hidden.last_hidden_state
    length = int(lengths.max()) if len(lengths) else 0
    mask = torch.arange(length, device=hidden.device)[None, :] < lengths.to(hidden.device)[:, None]
    features = project(hidden[:, :length]).masked_fill(~mask[..., None], 0)
    return TokenFeatures(pooled, features, mask, None)
