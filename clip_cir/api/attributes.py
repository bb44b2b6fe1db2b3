"""Attribute manipulation through the Python API (`CIRModel.manipulate`): a query "this image, with
attribute a set to value v" as FLAM's manipulated feature (a model loaded with `attributes=RUN`),
or, for any other combining (the sum, slerp, a Combiner), as the change written as a caption by a
template ("change the {attribute} to {value}") and composed as a relative caption is."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from clip_cir.errors import CIRError
from clip_cir.models.flam_files import LoadedFLAM

DEFAULT_ATTRIBUTE_TEMPLATE = "change the {attribute} to {value}"


def check_attribute_template(template: str) -> str:
    """A template with `{attribute}` and `{value}` and no other field, or a one-line error."""
    try:
        filled = template.format(attribute="\0a", value="\0v")
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise CIRError(f"attribute template {template!r} must hold only the fields {{attribute}} and {{value}} "
                       f"({e})") from None
    if "\0a" not in filled or "\0v" not in filled:
        raise CIRError(f"attribute template {template!r} must hold {{attribute}} and {{value}}")
    return template


def template_captions(template: str, attributes: Sequence[str], values: Sequence[str]) -> list[str]:
    """The captions that say each change."""
    return [template.format(attribute=a, value=v) for a, v in zip(attributes, values)]


def check_catalogue_names(flam: LoadedFLAM, attributes: Sequence[str], values: Sequence[Sequence[str]],
                          source: object) -> None:
    """A FLAM must manipulate the attributes and values of the catalogue it is evaluated on."""
    if tuple(attributes) != flam.attributes or tuple(tuple(v) for v in values) != flam.values:
        raise CIRError(f"{flam.path} manipulates attributes {list(flam.attributes)} with values "
                       f"{[list(v) for v in flam.values]}; {source} has {list(attributes)} with "
                       f"{[list(v) for v in values]}")


@torch.no_grad()
def manipulated_features(model, image_features: torch.Tensor, attributes: Sequence[str],
                         values: Sequence[str]) -> torch.Tensor:
    """Unit query vectors [N, D] from raw image features [N, D] of a `CIRModel`, row i changed to
    value `values[i]` of attribute `attributes[i]` (names)."""
    if not len(image_features) == len(attributes) == len(values):
        raise CIRError(f"{len(image_features)} images, {len(attributes)} attributes and {len(values)} values: "
                       f"give one attribute and one value per image")
    flam: LoadedFLAM | None = model.attributes
    if flam is None:
        captions = template_captions(model.attribute_template, attributes, values)
        return F.normalize(model.compose_features(image_features, model.text_features(captions)).float(), dim=-1)
    pairs = [flam.attribute_value(a, v) for a, v in zip(attributes, values)]
    device = next(flam.parameters()).device
    index = torch.tensor(pairs, dtype=torch.long, device=device).reshape(-1, 2)
    return flam.flam.manipulate_queries(image_features.to(device), index[:, 0], index[:, 1]).cpu()
