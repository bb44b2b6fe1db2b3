"""Facts about a CLIP's towers that callers rely on: a fingerprint of a tower's weights (feature
cache keys), whether a caption batch may be cut to its longest caption, exactly, and the memory
format a convolutional image tower runs fastest in."""

from __future__ import annotations

import hashlib
import logging

import torch
from open_clip.model import CLIP

from clip_cir.config import DeviceConfig

log = logging.getLogger("clip_cir")

COMPILED_LENGTH_MULTIPLE = 16
"""Under `--compile` a trimmed caption batch is padded up to a multiple of this many tokens, so a
77-token tower sees at most 5 lengths and compiles a graph for each once, instead of once per
distinct longest caption (the padding is after every EOT token: features are unchanged)."""

MEMORY_FORMATS = ("auto", "on", "off")
"""`--channels-last` choices: auto = channels-last for a convolutional image tower on a CUDA device."""


def tower_fingerprint(model: torch.nn.Module, tower: str) -> str:
    """Hash of one tower's weights: features are reusable exactly when these bytes are unchanged.

    `image` hashes `model.visual`; `text` hashes everything else (the text transformer,
    embeddings and projection).
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("visual.") != (tower == "image") or name == "logit_scale":
            continue
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def can_trim_text(model: torch.nn.Module) -> bool:
    """True when cutting token sequences after the batch's last end-of-text token cannot change
    the features: an open_clip `CLIP` text tower with a causal mask that pools at the EOT token.
    Other towers (no causal mask, first/last-token pooling such as SigLIP's, HF text towers) keep
    the full context length."""
    return (isinstance(model, CLIP) and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) in ("argmax", "eos")
            and (model.text_pool_type == "argmax" or getattr(model, "text_eos_id", None) is not None))


def trim_tokens(model: torch.nn.Module, tokens: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """`tokens` cut to the longest caption of the batch (through its EOT token), when exact;
    with `multiple`, to the next multiple of it (at most the full length).

    CLIP text towers are causal and pool at the EOT token, so positions after it never reach
    the output: captions of 10-30 tokens need not pay for 77.
    """
    if not can_trim_text(model) or tokens.ndim != 2 or not len(tokens):
        return tokens
    if model.text_pool_type == "argmax":
        eot = tokens.argmax(dim=-1)
    else:
        eot = (tokens == model.text_eos_id).int().argmax(dim=-1)
    length = -(-(int(eot.max()) + 1) // multiple) * multiple
    return tokens[:, : min(length, tokens.shape[1])]


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text` for token batches of any length up to the context length.

    open_clip's own `encode_text` adds the positional embedding at full length, so a trimmed
    batch goes through the same layers here with the embedding and the causal mask cut to its
    length. Full-length batches and towers that cannot be trimmed use open_clip's code.
    """
    length = tokens.shape[-1]
    if not can_trim_text(model) or length == model.positional_embedding.shape[0]:
        return model.encode_text(tokens)
    from open_clip.transformer import text_global_pool

    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x


def is_convolutional(visual: torch.nn.Module) -> bool:
    """True for an image tower built of convolutions (ResNet/ModifiedResNet, ConvNeXt, MobileCLIP's
    conv stages): more than one Conv2d. A ViT's single patch-embedding convolution does not count."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in visual.modules()) > 1


def use_channels_last(model: torch.nn.Module, device: torch.device | str,
                      choice: str = DeviceConfig.channels_last) -> bool:
    """Whether the image tower should run channels-last (NHWC): cuDNN's tensor-core convolutions
    work in that layout, so a default-layout (NCHW) tower pays a transpose around every one.
    `choice`: on, off, or auto (on for a convolutional tower on a CUDA device)."""
    if choice not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format choice {choice!r} (choose from {', '.join(MEMORY_FORMATS)})")
    if choice != "auto":
        return choice == "on"
    return torch.device(device).type == "cuda" and is_convolutional(model.visual)


def set_memory_format(model: torch.nn.Module, device: torch.device | str,
                      choice: str = DeviceConfig.channels_last) -> bool:
    """Put the image tower's 4-D weights in the layout `use_channels_last` picks (in place, the
    parameters stay the same objects) and return whether it is channels-last. Call it before an
    optimizer or DDP wraps the model; inputs follow with `tower_input`."""
    channels_last = use_channels_last(model, device, choice)
    model.visual.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if channels_last:
        log.info("image tower in channels-last memory format (--channels-last off: the default layout)")
    return channels_last


def is_channels_last(visual: torch.nn.Module) -> bool:
    """True when the tower's convolution weights are laid out channels-last (`set_memory_format`):
    read from the first convolution whose two layouts differ (more than one input channel and a
    kernel larger than 1x1)."""
    for module in visual.modules():
        if isinstance(module, torch.nn.Conv2d):
            weight = module.weight
            if weight.ndim == 4 and weight.shape[1] > 1 and weight.shape[2] * weight.shape[3] > 1:
                return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return False


def tower_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An image batch in the tower's layout. Convert uint8 pixels before normalising: a quarter of
    the bytes to move, and the element-wise normalisation keeps the layout."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last and images.ndim == 4 else images
