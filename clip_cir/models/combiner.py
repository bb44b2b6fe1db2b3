"""How a reference image and a caption become one query vector.

`element_wise_sum` is stage 1's combining function (and the zero-shot baseline); `Combiner`
is the method's stage-2 network, one of the compositors (`clip_cir.models.compositors`). Its
parameter names match the published checkpoints, so `{"epoch": n, "Combiner": state_dict}` files
load into it unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.models.compositors.base import Compositor

CombiningFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def element_wise_sum(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """norm(f_I(r) + f_T(t)) on raw features."""
    return F.normalize(image_features + text_features, dim=-1)


class Combiner(Compositor):
    """Learns how much of the caption and of the image a query needs (the dynamic scalar)
    plus a residual correction, on top of frozen CLIP features."""

    name = "combiner"

    def __init__(self, clip_feature_dim: int, projection_dim: int | None = None, hidden_dim: int | None = None):
        projection_dim, hidden_dim = projection_dim or 4 * clip_feature_dim, hidden_dim or 8 * clip_feature_dim
        super().__init__(clip_feature_dim, projection_dim=projection_dim, hidden_dim=hidden_dim)
        self.text_projection_layer = nn.Linear(clip_feature_dim, projection_dim)
        self.image_projection_layer = nn.Linear(clip_feature_dim, projection_dim)
        self.dropout1 = nn.Dropout(0.5)
        self.dropout2 = nn.Dropout(0.5)
        self.combiner_layer = nn.Linear(projection_dim * 2, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, clip_feature_dim)
        self.dropout3 = nn.Dropout(0.5)
        self.dynamic_scalar = nn.Sequential(nn.Linear(projection_dim * 2, hidden_dim), nn.ReLU(), nn.Dropout(0.5),
                                            nn.Linear(hidden_dim, 1), nn.Sigmoid())

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Normalised query features from raw reference-image and caption features."""
        text_projected = self.dropout1(F.relu(self.text_projection_layer(text_features)))
        image_projected = self.dropout2(F.relu(self.image_projection_layer(image_features)))
        raw_combined = torch.cat((text_projected, image_projected), -1)
        combined = self.dropout3(F.relu(self.combiner_layer(raw_combined)))
        dynamic_scalar = self.dynamic_scalar(raw_combined)
        output = self.output_layer(combined) + dynamic_scalar * text_features + (1 - dynamic_scalar) * image_features
        return F.normalize(output, dim=-1)


def image_only(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Baseline that ignores the caption: the reference image alone is the query."""
    return torch.nn.functional.normalize(image_features, dim=-1)


COMBINING_FUNCTIONS: dict[str, tuple[CombiningFunction, str]] = {
    "sum": (element_wise_sum, "element-wise sum"),
    "image": (image_only, "image only (caption ignored)"),
}
"""`--combining NAME` -> (the fixed combining function, its name for people); a Combiner checkpoint
is the trained alternative."""
