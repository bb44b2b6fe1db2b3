"""A trained FLAM as a file (`flam.safetensors`, written by `clip-cir train-attributes`): its
weights, the constructor's options, the catalogue's attribute and value names, and which CLIP's
image features it was trained on (a hash of the image tower's weights: FLAM's networks read
those features and nothing else)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from clip_cir.errors import CIRError
from clip_cir.models.files import read_safetensors
from clip_cir.models.flam import FLAM
from clip_cir.models.towers import tower_fingerprint

FLAM_FILE = "flam.safetensors"
FLAM_KIND = "flam"


def flam_metadata(model: FLAM, attributes: Sequence[str], values: Sequence[Sequence[str]], clip) -> dict[str, Any]:
    """What `load_flam` needs besides the weights (`clip`: the `LoadedCLIP` whose features it reads)."""
    return {"kind": FLAM_KIND, "options": dict(model.options), "attributes": list(attributes),
            "values": [list(v) for v in values], "clip_model_name": clip.model_name, "clip_source": clip.source,
            "clip_image_fingerprint": tower_fingerprint(clip.model, "image")}


def flam_path(source: str | os.PathLike) -> Path:
    """A FLAM file, or the one a training run kept: RUN/best/, else RUN/last/."""
    path = Path(source)
    if path.is_dir():
        for folder in ("best", "last"):
            if (path / folder / FLAM_FILE).is_file():
                return path / folder / FLAM_FILE
        raise CIRError(f"{path}: no {FLAM_FILE} in best/ or last/ (a `clip-cir train-attributes` run?)")
    if not path.is_file():
        raise CIRError(f"{path}: FLAM file not found")
    return path


class LoadedFLAM(nn.Module):
    """A FLAM (eval mode) with the names of what it manipulates, from its file."""

    def __init__(self, model: FLAM, metadata: dict[str, Any], path: Path):
        super().__init__()
        self.flam = model
        self.metadata, self.path = metadata, path
        self.attributes: tuple[str, ...] = tuple(metadata["attributes"])
        self.values: tuple[tuple[str, ...], ...] = tuple(tuple(v) for v in metadata["values"])

    def attribute_value(self, attribute: str, value: str) -> tuple[int, int]:
        """Indices of an attribute and its value by name, or a one-line error naming the known ones."""
        if attribute not in self.attributes:
            raise CIRError(f"unknown attribute '{attribute}' (known: {', '.join(self.attributes)})")
        a = self.attributes.index(attribute)
        if value not in self.values[a]:
            raise CIRError(f"unknown value '{value}' of attribute '{attribute}' (known: {', '.join(self.values[a])})")
        return a, self.values[a].index(value)

    def check_clip(self, clip) -> None:
        """A one-line error unless `clip` has the image tower this FLAM was trained on."""
        if tower_fingerprint(clip.model, "image") != self.metadata.get("clip_image_fingerprint"):
            raise CIRError(f"{self.path}: this FLAM was trained on the image features of "
                           f"{self.metadata.get('clip_model_name')} ({self.metadata.get('clip_source')}), not on "
                           f"those of {clip.describe()}: load it with its CLIP")


def load_flam(source: str | os.PathLike, clip=None) -> LoadedFLAM:
    """A FLAM file or run directory; with `clip` (a `LoadedCLIP`), refused unless that CLIP's image
    tower is the one it was trained on."""
    path = flam_path(source)
    weights, metadata = read_safetensors(path)
    if metadata.get("kind") != FLAM_KIND:
        raise CIRError(f"{path}: not a FLAM file (its metadata says kind {metadata.get('kind')!r})")
    try:
        model = FLAM(**metadata["options"])
        model.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError) as e:
        raise CIRError(f"{path}: the weights do not fit the FLAM its metadata describes "
                       f"({str(e).splitlines()[0][:160]})") from None
    loaded = LoadedFLAM(model.eval(), metadata, path)
    if clip is not None:
        loaded.check_clip(clip)
    return loaded
