"""A CPU-sized EVA02 image tower for the tiny `cir-tiny-eva` config, registered with timm.

open_clip builds EVA image towers through timm by name (`timm_model_name`) and does not pass the
image size on, and timm's smallest EVA02 (`eva02_tiny_patch14_224`) reads 224-px images: minutes
per epoch on a CPU. `cir_eva02_pico_patch8_64` is the same architecture as open_clip's EVA02-CLIP
towers (`eva02_*_clip_224`: SwiGLU MLP with its scale norm, attention inner norm, separate q/k/v,
2-D rotary position embedding plus an absolute one, class-token pooling) at 64 px, width 64 and
2 blocks. It is registered when `clip_cir.models.clip` is imported (with the tiny configs), so a
model naming it loads wherever clip-cir is imported, not in plain open_clip.
"""

from __future__ import annotations

from typing import Any

TINY_EVA = "cir_eva02_pico_patch8_64"

default_cfgs = {TINY_EVA: {
    "url": "", "num_classes": 0, "input_size": (3, 64, 64), "pool_size": None, "crop_pct": 1.0,
    "interpolation": "bicubic", "fixed_input_size": True, "first_conv": "patch_embed.proj", "classifier": "head",
    "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}}
"""timm reads a registered model's default configuration from its module's `default_cfgs`."""


def cir_eva02_pico_patch8_64(pretrained: bool = False, **kwargs: Any):
    """EVA02-CLIP-style ViT: 64 px, patch 8, width 64, 2 blocks of 2 heads (no pretrained weights)."""
    from timm.models import build_model_with_cfg
    from timm.models.eva import Eva

    if pretrained:
        raise ValueError(f"{TINY_EVA} has no pretrained weights")
    args = dict(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4 * 2 / 3, qkv_fused=False,
                swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(8, 8),
                global_pool=kwargs.pop("global_pool", "token"))
    return build_model_with_cfg(Eva, TINY_EVA, pretrained=False, **dict(args, **kwargs))


def register() -> bool:
    """Register the tiny EVA with timm (once); False when timm is not installed."""
    try:
        from timm.models import is_model, register_model
    except ImportError:
        return False
    if not is_model(TINY_EVA):
        register_model(cir_eva02_pico_patch8_64)
    return True
