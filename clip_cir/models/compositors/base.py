"""What every compositor takes and gives, so the stage-2 loop, evaluation and serving drive any of
them the same way.

A compositor turns frozen CLIP features of a reference image and a caption into one normalised
query vector in CLIP's embedding space, ranked against the targets' global image features.
Compositors that read only the global features (the Combiner, TIRG) take two tensors [B, D];
those that read local features (`uses_tokens`) take two `TokenFeatures`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class TokenFeatures:
    """Raw (un-normalised) CLIP features of a batch of images or captions, global and per token.

    Image tokens are the grid cells in row-major order (`grid` = (rows, cols), every `mask` entry
    True); caption tokens run from the start token up to and including the end-of-text token,
    then padding (`mask` False, `grid` None)."""

    pooled: torch.Tensor
    """[B, D] the global feature (what the sum and the Combiner take)."""
    tokens: torch.Tensor
    """[B, L, D] the token features, projected into the same D-dimensional space."""
    mask: torch.Tensor
    """[B, L] bool, True where a token is real."""
    grid: tuple[int, int] | None = None
    """(rows, cols) of an image's token grid, L = rows * cols; None for captions."""

    def __len__(self) -> int:
        return self.pooled.shape[0]

    def __getitem__(self, rows: slice | torch.Tensor) -> "TokenFeatures":
        return TokenFeatures(self.pooled[rows], self.tokens[rows], self.mask[rows], self.grid)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TokenFeatures":
        """On `device`; the floating features in `dtype` when given (the mask stays bool)."""
        return TokenFeatures(self.pooled.to(device, dtype), self.tokens.to(device, dtype),
                             self.mask.to(device), self.grid)


class Compositor(nn.Module):
    """A trainable image + caption -> query network. Subclasses set `name` and `uses_tokens`,
    take the CLIP embedding dimension first and their own sizes as keyword arguments, and keep
    those keyword arguments in `options` (saved with the weights so a checkpoint rebuilds its
    network without flags)."""

    name: ClassVar[str]
    uses_tokens: ClassVar[bool] = False
    reads_caption_tokens: ClassVar[bool] = True
    """With `uses_tokens`: whether the caption's tokens are read, or only its global feature (the
    caption's `TokenFeatures` then hold no tokens)."""

    def __init__(self, clip_feature_dim: int, **options: Any):
        super().__init__()
        self.clip_feature_dim = clip_feature_dim
        self.options = dict(options)

    @property
    def dims(self) -> dict[str, Any]:
        """What the checkpoint records: the CLIP dimension and the sizes that rebuild the network."""
        return {"clip_feature_dim": self.clip_feature_dim, **self.options}
