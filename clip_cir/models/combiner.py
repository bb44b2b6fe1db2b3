"""How a reference image and a caption become one query vector.

`element_wise_sum` is stage 1's combining function (and the zero-shot baseline); `slerp` is a
training-free alternative that walks the great circle from the image to the caption; `Combiner`
is the method's stage-2 network, one of the compositors (`clip_cir.models.compositors`). Its
parameter names match the published checkpoints, so `{"epoch": n, "Combiner": state_dict}` files
load into it unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.config import CombiningConfig, check_slerp_alpha
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


PARALLEL_SIN = 1e-4
"""Below this sin θ the two directions are parallel (or opposite) as far as float32 can tell, and
`slerp` interpolates linearly: the spherical weights' 0/0 would otherwise give NaN. (Linear and
spherical differ by O(θ²) there; opposite directions have no one great circle, and their
midpoint is the zero vector, which normalises to zero, not NaN.)"""


def slerp(image_features: torch.Tensor, text_features: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical linear interpolation of the normalised image and caption features (Jang et al.,
    ECCV 2024): the point a fraction `alpha` of the way along the great circle from the image
    (`alpha` 0) to the caption (`alpha` 1), normalised. Raw features in, like every combining function."""
    image, text = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    theta = torch.arccos((image * text).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    parallel = sin < PARALLEL_SIN
    sin = torch.where(parallel, torch.ones_like(sin), sin)  # no 0/0 in the branch `where` drops
    image_weight = torch.where(parallel, torch.full_like(sin, 1 - alpha), torch.sin((1 - alpha) * theta) / sin)
    text_weight = torch.where(parallel, torch.full_like(sin, alpha), torch.sin(alpha * theta) / sin)
    return F.normalize(image_weight * image + text_weight * text, dim=-1)


class Slerp:
    """`slerp` with its α fixed, the combining function `--combining slerp --slerp-alpha A` builds."""

    name = "slerp"

    def __init__(self, alpha: float = CombiningConfig.slerp_alpha):
        self.alpha = check_slerp_alpha(alpha)

    def __call__(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return slerp(image_features, text_features, self.alpha)

    def __str__(self) -> str:
        return f"slerp (α={self.alpha:g})"

    def __repr__(self) -> str:
        return f"Slerp(alpha={self.alpha!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Slerp) and self.alpha == other.alpha

    def __hash__(self) -> int:
        return hash((Slerp, self.alpha))


COMBINING_FUNCTIONS: dict[str, tuple[CombiningFunction, str]] = {
    "sum": (element_wise_sum, "element-wise sum"),
    "image": (image_only, "image only (caption ignored)"),
    "slerp": (Slerp(), str(Slerp())),
}
"""`--combining NAME` -> (the combining function, its name for people), Slerp at its default α
(`combining_function` builds it with another); a Combiner checkpoint is the trained alternative."""


def combining_function(name: str, slerp_alpha: float = CombiningConfig.slerp_alpha) -> tuple[CombiningFunction, str]:
    """The combining function `--combining NAME` names, with its options, and its name for people:
    the one way the commands, the demo and `clip_cir.load` build it."""
    if name == "slerp":
        function = Slerp(slerp_alpha)
        return function, str(function)
    return COMBINING_FUNCTIONS[name]
