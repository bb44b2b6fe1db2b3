"""The modules whose forward DDP wraps when CLIP towers train: CLIP's two encoders behind one
forward (stage 1, and pretraining's subclass), optionally through torch.compile."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from clip_cir.encoding import extraction
from clip_cir.models.towers import COMPILED_LENGTH_MULTIPLE, encode_text


class ClipEncoder(nn.Module):
    """CLIP's two encoders behind one forward, so DDP sees every training forward pass.

    `compile`: the two towers' encoders go through `torch.compile` (static shapes: training
    batches have one size, and `COMPILED_LENGTH_MULTIPLE` keeps caption lengths few). The
    compiled functions share the model's parameters and are not submodules, so the model's
    saved keys stay its own; validation calls the model itself, uncompiled."""

    def __init__(self, clip_model: nn.Module, compile: bool = False):
        super().__init__()
        self.clip = clip_model
        self.compiled = compile
        encoders = (clip_model.encode_image, partial(encode_text, clip_model))
        self._encoders = tuple(torch.compile(f, dynamic=False) for f in encoders) if compile else encoders

    @property
    def length_multiple(self) -> int:
        """Caption batches are padded to a multiple of this (`LoadedCLIP.tokenize`)."""
        return COMPILED_LENGTH_MULTIPLE if self.compiled else 1

    def forward(self, images: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        image_features = text_features = None
        if images is not None:
            image_features = self._encoders[0](images)
            extraction.encode_counts["image"] += images.shape[0]
        if tokens is not None:
            text_features = self._encoders[1](tokens)
            extraction.encode_counts["text"] += tokens.shape[0]
        return image_features, text_features
