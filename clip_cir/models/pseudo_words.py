"""Captions with a pseudo-word: a vector put in place of the input embedding of a placeholder
token ("$") before the text transformer, so an image can be "said" in CLIP's language.

This is what the zero-shot composed retrieval methods run their text tower with (Pic2Word:
google-research/composed_image_retrieval, `model/model.py` `encode_text_img_retrieval`; SEARLE:
miccunifi/SEARLE, `src/encode_with_pseudo_tokens.py`; LinCIR: navervision/lincir,
`encode_with_pseudo_tokens.py`). Our own version, adapted to every text tower open_clip builds:

- The placeholder's embedding is replaced wherever its token occurs (`torch.where` over the
  sequence, as LinCIR does), not by concatenation at the first occurrence (Pic2Word) or by
  indexing the first occurrence of each row (SEARLE): no per-sample Python control flow, so the
  function compiles with `torch.compile(fullgraph=True)` and every row may hold its placeholder
  anywhere. A row without the placeholder is plain `encode_text`; callers that need exactly one
  check the ids before (`count_placeholders`).
- After the swap the tower runs as open_clip runs it: open_clip `CLIP` (token embedding, plus
  positional embedding, transformer with its causal mask, `ln_final`, the pooling its
  `text_pool_type` names: argmax/EOT, eos, first or last token, then the text projection);
  `CustomTextCLIP` with an open_clip `TextTransformer` (the same, plus its padding mask and an
  appended class token (CoCa) where it has them). Token ids cut by `towers.trim_tokens` work: the
  positional embedding and the causal mask are cut to the ids' length (open_clip's own
  `encode_text` only takes full-length ids).
- Hugging Face text towers (`open_clip.hf_model.HFTextEncoder`): the swapped embeddings go in as
  `inputs_embeds` with the attention mask open_clip builds, then the tower's pooler and
  projection. With `inputs_embeds` a RoBERTa-style model would number positions as if no token
  were padding; where its embeddings define padding-aware positions and its forward takes
  `position_ids`, we pass the positions its `input_ids` path computes, so features equal
  open_clip's exactly. (An M2M100/NLLB encoder takes no `position_ids`: there only padding
  positions are numbered differently, and padding is masked out of every real token and pool.)
  A Hugging Face model whose forward takes no `inputs_embeds` is refused with one line.
"""

from __future__ import annotations

import inspect

import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import TextTransformer, text_global_pool

from clip_cir.errors import CIRError

DEFAULT_PLACEHOLDER = "$"
"""The placeholder SEARLE and LinCIR write in their prompts (Pic2Word writes "*"; any word that
tokenises to one token serves, as its embedding is replaced)."""

POOL_TYPES = ("argmax", "eos", "first", "last")
"""open_clip text pooling types a pseudo-word run supports (`none` returns every token: no caption feature)."""


def placeholder_token_id(tokenizer, placeholder: str = DEFAULT_PLACEHOLDER) -> int:
    """The one token id `placeholder` gets after a word and a space ("a $"), as in every prompt
    template here: `tokenizer(["a", "a $"])` must differ by exactly one inserted id, not the
    tokenizer's unknown token. Otherwise a one-line error: the placeholder must be one token."""
    rows = tokenizer(["a", f"a {placeholder}"])
    without, with_ = [int(t) for t in rows[0]], [int(t) for t in rows[1]]
    first = next((i for i, (x, y) in enumerate(zip(without, with_)) if x != y), None)
    unknown = getattr(getattr(tokenizer, "tokenizer", None), "unk_token_id", None)
    if (first is None or with_[first + 1:] != without[first:len(without) - 1]
            or with_[first] in without or with_[first] == unknown):
        raise CIRError(f"placeholder {placeholder!r} is not one token of this tokenizer (choose a placeholder word "
                       "that tokenises to a single, known token)")
    return with_[first]


def count_placeholders(token_ids: torch.Tensor, placeholder_id: int) -> torch.Tensor:
    """[B] how many times each row of token ids holds the placeholder."""
    return (token_ids == placeholder_id).sum(dim=-1)


def _hf_text(model: torch.nn.Module) -> torch.nn.Module | None:
    text = getattr(model, "text", None)
    return text if isinstance(model, CustomTextCLIP) and type(text).__name__ == "HFTextEncoder" else None


def require_pseudo_words(model: torch.nn.Module) -> str:
    """The kind of text tower (`clip`, `text-transformer`, `hf`), or the one-line refusal
    `encode_with_pseudo_words` would raise, before any input is read."""
    if isinstance(model, CLIP):
        pool = model.text_pool_type
        kind = "clip"
    elif isinstance(model, CustomTextCLIP) and isinstance(model.text, TextTransformer):
        pool = "last" if model.text.cls_emb is not None else model.text.pool_type
        kind = "text-transformer"
    elif _hf_text(model) is not None:
        forward = inspect.signature(model.text.transformer.forward).parameters
        if "inputs_embeds" not in forward:
            raise CIRError(f"pseudo-words are not available for Hugging Face text towers of type "
                           f"{type(model.text.transformer).__name__}: its forward takes no inputs_embeds")
        return "hf"
    else:
        text = getattr(model, "text", model)
        raise CIRError(f"pseudo-words are not available for {type(text).__name__} text towers (open_clip's CLIP, "
                       "TextTransformer and Hugging Face text towers have them)")
    if pool not in POOL_TYPES:
        raise CIRError(f"pseudo-words are not available for text towers pooling {pool!r}: "
                       "the tower gives no one caption feature")
    return kind


def token_embedding_dim(model: torch.nn.Module) -> int:
    """Width of the text tower's input token embeddings: the size of a pseudo-word vector."""
    kind = require_pseudo_words(model)
    if kind == "clip":
        return int(model.token_embedding.embedding_dim)
    if kind == "text-transformer":
        return int(model.text.token_embedding.embedding_dim)
    return int(model.text.transformer.get_input_embeddings().embedding_dim)


def token_embedding_table(model: torch.nn.Module) -> torch.Tensor:
    """[vocabulary, W] the text tower's input token embeddings (the real words' vectors)."""
    kind = require_pseudo_words(model)
    if kind == "clip":
        return model.token_embedding.weight
    if kind == "text-transformer":
        return model.text.token_embedding.weight
    embeddings = model.text.transformer.get_input_embeddings()
    # Scaled word embeddings (M2M100/NLLB) multiply their table by `embed_scale`: a pseudo-word
    # takes the place of the scaled vector, so the table is given in that space.
    return embeddings.weight * getattr(embeddings, "embed_scale", 1.0)


def _swap(embeddings: torch.Tensor, token_ids: torch.Tensor, pseudo: torch.Tensor, placeholder_id: int) -> torch.Tensor:
    """`embeddings` [B, L, W] with row b's placeholder positions replaced by `pseudo[b]`."""
    where = (token_ids == placeholder_id).unsqueeze(-1)
    return torch.where(where, pseudo.to(embeddings.dtype).unsqueeze(1), embeddings)


def _project(x: torch.Tensor, projection: torch.nn.Module | torch.Tensor | None) -> torch.Tensor:
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Module) else x @ projection


def _encode_clip(model: CLIP, token_ids: torch.Tensor, pseudo: torch.Tensor, placeholder_id: int) -> torch.Tensor:
    """open_clip `CLIP.encode_text` with the swap, at the ids' length."""
    cast_dtype = model.transformer.get_cast_dtype()
    length = token_ids.shape[1]
    x = _swap(model.token_embedding(token_ids).to(cast_dtype), token_ids, pseudo, placeholder_id)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.ln_final(model.transformer(x, attn_mask=mask))
    x = text_global_pool(x, token_ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return _project(x, model.text_projection)


def _encode_text_transformer(text: TextTransformer, token_ids: torch.Tensor, pseudo: torch.Tensor,
                             placeholder_id: int) -> torch.Tensor:
    """open_clip `TextTransformer.forward` (its `_embeds` included) with the swap, at the ids' length."""
    cast_dtype = text.transformer.get_cast_dtype()
    batch, length = token_ids.shape
    x = _swap(text.token_embedding(token_ids).to(cast_dtype), token_ids, pseudo, placeholder_id)
    if text.cls_emb is not None:
        x = torch.cat([x, text.cls_emb.view(1, 1, -1).expand(batch, -1, -1).to(x.dtype)], dim=1)
        length += 1
    mask = text.attn_mask[:length, :length] if text.attn_mask is not None else None
    if text.use_pad_mask or text.cls_emb is not None:
        padding = text._build_additive_mask(token_ids, length, x.dtype)  # open_clip's own padding + class mask
        mask = padding if mask is None else mask.unsqueeze(0) + padding
    x = x + text.positional_embedding[:length].to(cast_dtype)
    x = text.transformer(x, attn_mask=mask)
    if text.cls_emb is not None:  # the appended class token, normalised after pooling (CoCa)
        pooled = text.ln_final(x[:, -1])
    else:
        pooled = text_global_pool(text.ln_final(x), token_ids, text.pool_type, eos_token_id=text.eos_id)
    return _project(pooled, text.text_projection)


def _encode_hf(text: torch.nn.Module, token_ids: torch.Tensor, pseudo: torch.Tensor,
               placeholder_id: int) -> torch.Tensor:
    """open_clip `HFTextEncoder.forward` with the swapped embeddings as `inputs_embeds`."""
    transformer = text.transformer
    attention = (token_ids != text.config.pad_token_id).long()
    x = _swap(transformer.get_input_embeddings()(token_ids), token_ids, pseudo, placeholder_id)
    extra = {}
    embeddings = getattr(transformer, "embeddings", None)
    if (hasattr(embeddings, "create_position_ids_from_input_ids")
            and "position_ids" in inspect.signature(transformer.forward).parameters):
        extra["position_ids"] = embeddings.create_position_ids_from_input_ids(token_ids, embeddings.padding_idx)
    out = transformer(inputs_embeds=x, attention_mask=attention, **extra)
    return text.proj(text.pooler(out, attention))


def encode_with_pseudo_words(model: torch.nn.Module, token_ids: torch.Tensor, pseudo: torch.Tensor,
                             placeholder_id: int) -> torch.Tensor:
    """[B, D] caption features, unnormalised like `encode_text`, of token ids [B, L] (full length
    or cut by `trim_tokens`) in which every occurrence of `placeholder_id` in row b has the input
    embedding `pseudo[b]` ([B, W], W = `token_embedding_dim(model)`) instead of its own."""
    kind = require_pseudo_words(model)
    if pseudo.ndim != 2 or pseudo.shape[0] != token_ids.shape[0]:
        raise CIRError(f"pseudo-words must be one vector per caption: got {tuple(pseudo.shape)} for "
                       f"{token_ids.shape[0]} captions")
    if kind == "clip":
        return _encode_clip(model, token_ids, pseudo, placeholder_id)
    if kind == "text-transformer":
        return _encode_text_transformer(model.text, token_ids, pseudo, placeholder_id)
    return _encode_hf(model.text, token_ids, pseudo, placeholder_id)
