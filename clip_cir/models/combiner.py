"""How a reference image and a caption become one query vector.

`element_wise_sum` is stage 1's combining function (and the zero-shot baseline); `Combiner`
is the stage-2 network. Parameter names match the published checkpoints, so
`{"epoch": n, "Combiner": state_dict}` files load into it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.errors import CIRError

CombiningFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def element_wise_sum(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """norm(f_I(r) + f_T(t)) on raw features."""
    return F.normalize(image_features + text_features, dim=-1)


class Combiner(nn.Module):
    """Learns how much of the caption and of the image a query needs (the dynamic scalar)
    plus a residual correction, on top of frozen CLIP features."""

    def __init__(self, clip_feature_dim: int, projection_dim: int, hidden_dim: int):
        super().__init__()
        self.text_projection_layer = nn.Linear(clip_feature_dim, projection_dim)
        self.image_projection_layer = nn.Linear(clip_feature_dim, projection_dim)
        self.dropout1 = nn.Dropout(0.5)
        self.dropout2 = nn.Dropout(0.5)
        self.combiner_layer = nn.Linear(projection_dim * 2, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, clip_feature_dim)
        self.dropout3 = nn.Dropout(0.5)
        self.dynamic_scalar = nn.Sequential(nn.Linear(projection_dim * 2, hidden_dim), nn.ReLU(), nn.Dropout(0.5),
                                            nn.Linear(hidden_dim, 1), nn.Sigmoid())

    @property
    def dims(self) -> dict[str, int]:
        return {"clip_feature_dim": self.text_projection_layer.in_features,
                "projection_dim": self.text_projection_layer.out_features,
                "hidden_dim": self.combiner_layer.out_features}

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Normalised query features from raw reference-image and caption features."""
        text_projected = self.dropout1(F.relu(self.text_projection_layer(text_features)))
        image_projected = self.dropout2(F.relu(self.image_projection_layer(image_features)))
        raw_combined = torch.cat((text_projected, image_projected), -1)
        combined = self.dropout3(F.relu(self.combiner_layer(raw_combined)))
        dynamic_scalar = self.dynamic_scalar(raw_combined)
        output = self.output_layer(combined) + dynamic_scalar * text_features + (1 - dynamic_scalar) * image_features
        return F.normalize(output, dim=-1)


def combiner_from_state_dict(state_dict: dict[str, torch.Tensor], source: str) -> Combiner:
    """Rebuild a Combiner from its weights alone (the dims are in the shapes)."""
    try:
        clip_dim = state_dict["text_projection_layer.weight"].shape[1]
        projection_dim = state_dict["text_projection_layer.weight"].shape[0]
        hidden_dim = state_dict["combiner_layer.weight"].shape[0]
    except KeyError as e:
        raise CIRError(f"{source}: not a Combiner state dict (no {e.args[0]})") from None
    combiner = Combiner(clip_dim, projection_dim, hidden_dim)
    try:
        combiner.load_state_dict({k: v.float() for k, v in state_dict.items()})
    except RuntimeError as e:
        raise CIRError(f"{source}: weights do not fit a Combiner ({str(e).splitlines()[0][:200]})") from None
    return combiner.eval()


COMBINER_FILE = "combiner.safetensors"
"""The Combiner's file in a checkpoint folder and in an exported (Hub) model folder."""


def resolve_combiner_checkpoint(path: Path) -> Path:
    if path.is_dir():
        for candidate in (f"best/{COMBINER_FILE}", f"last/{COMBINER_FILE}", COMBINER_FILE):
            if (path / candidate).is_file():
                return path / candidate
        raise CIRError(f"{path}: directory holds no Combiner checkpoint (best/combiner.safetensors)")
    if not path.is_file():
        raise CIRError(f"{path}: Combiner checkpoint not found")
    return path


def load_combiner(path: str | Path) -> Combiner:
    """Our safetensors Combiner, a stage-2 run directory, a published `{"Combiner": ...}` file, or
    `hf-hub:ORG/NAME` (a repository written by `clip-cir export`, through the HF cache)."""
    from clip_cir.models.clip import read_torch_file
    from clip_cir.models.files import read_safetensors
    from clip_cir.models.hub import hub_file, hub_repo_id

    repo_id = hub_repo_id(str(path))
    path = hub_file(repo_id, COMBINER_FILE) if repo_id else resolve_combiner_checkpoint(Path(path))
    if path.suffix == ".safetensors":
        state_dict, _ = read_safetensors(path)
    else:
        obj = read_torch_file(path)
        if isinstance(obj, dict) and isinstance(obj.get("Combiner"), dict):
            state_dict = obj["Combiner"]
        elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state_dict = obj
        else:
            raise CIRError(f"{path}: no 'Combiner' state dict in this checkpoint")
    return combiner_from_state_dict(state_dict, str(path))


def check_combiner_fits(combine: CombiningFunction, clip) -> None:
    """A Combiner must take the features of the CLIP it is given (`clip`: a `LoadedCLIP`)."""
    dims = getattr(combine, "dims", None)
    if dims is not None and dims["clip_feature_dim"] != clip.embed_dim:
        raise CIRError(f"Combiner expects {dims['clip_feature_dim']}-d CLIP features, "
                       f"but {clip.describe()} gives {clip.embed_dim}-d")


def image_only(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Baseline that ignores the caption: the reference image alone is the query."""
    return torch.nn.functional.normalize(image_features, dim=-1)


COMBINING_FUNCTIONS: dict[str, tuple[CombiningFunction, str]] = {
    "sum": (element_wise_sum, "element-wise sum"),
    "image": (image_only, "image only (caption ignored)"),
}
"""`--combining NAME` -> (the fixed combining function, its name for people); a Combiner checkpoint
is the trained alternative."""
