"""TIRG (Vo et al., "Composing Text and Image for Image Retrieval - An Empirical Odyssey", CVPR
2019; google/tirg img_text_composition_models.py, class TIRG) on frozen CLIP features.

TIRG keeps what the caption does not ask to change by gating the reference image's feature, and
adds what it asks for through a residual: query = w_gate * sigmoid(gate(x)) * image + w_res *
residual(x), x = [image, text]. Here the image feature is CLIP's global image feature instead of
the fine-tuned ResNet-18's, the text feature CLIP's caption feature instead of an LSTM's, and the
MLPs are as wide as CLIP's embedding (2D -> D) instead of 512 (docs/compositors.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.errors import CIRError
from clip_cir.models.compositors.base import Compositor

TIRG_GATE_WEIGHT = 1.0
TIRG_RESIDUAL_WEIGHT = 10.0
"""TIRG's initial weights of the gated image and of the residual (its `self.a = [1.0, 10.0, ...]`;
the last two entries of that parameter are unused there)."""


class TIRG(Compositor):
    """Gate the reference image's feature and add a residual, both computed from the
    concatenated image and caption features; the two branches' weights are learned."""

    name = "tirg"
    uses_tokens = False

    def __init__(self, clip_feature_dim: int, initial_gate_weight: float = TIRG_GATE_WEIGHT,
                 initial_residual_weight: float = TIRG_RESIDUAL_WEIGHT):
        if clip_feature_dim < 1:
            raise CIRError(f"TIRG needs a positive CLIP feature dimension, got {clip_feature_dim}")
        super().__init__(clip_feature_dim, initial_gate_weight=initial_gate_weight,
                         initial_residual_weight=initial_residual_weight)
        dim = clip_feature_dim
        # TIRG's gated_feature_composer and res_info_composer, after its ConCatModule.
        self.gate = nn.Sequential(nn.BatchNorm1d(2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.residual = nn.Sequential(nn.BatchNorm1d(2 * dim), nn.ReLU(), nn.Linear(2 * dim, 2 * dim), nn.ReLU(),
                                      nn.Linear(2 * dim, dim))
        self.gate_weight = nn.Parameter(torch.tensor(float(initial_gate_weight)))
        self.residual_weight = nn.Parameter(torch.tensor(float(initial_residual_weight)))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Normalised query features [B, D] from raw reference-image and caption features [B, D]."""
        joint = torch.cat((image_features, text_features), dim=-1)
        gated = torch.sigmoid(self.gate(joint)) * image_features
        composed = self.gate_weight * gated + self.residual_weight * self.residual(joint)
        return F.normalize(composed, dim=-1)
