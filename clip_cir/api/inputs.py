"""What the Python API takes, checked: images (paths, PIL images, pixel tensors), captions and
galleries given as image files, each turned into one line naming what is wrong before any encoding.

Apart from `inference.py` (`CIRModel` and `Gallery`, which encode and search) so that both read
their arguments the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import torch
from PIL import Image

from clip_cir.data.types import CIRSplit
from clip_cir.errors import CIRError

ImageInput = Union[str, os.PathLike, Image.Image, torch.Tensor]
"""An image: a file path, a decoded PIL image, or already-preprocessed pixels ([3, H, W] or a
[N, 3, H, W] batch: uint8 pixels as the transform crops them, or the float tensor it returns)."""


def check_caption(caption: object) -> str:
    """A caption as given, once checked: a string with some text in it."""
    if not isinstance(caption, str):
        raise CIRError(f"caption must be a string, got {type(caption).__name__}")
    if not caption.strip():
        raise CIRError("caption is empty: type how the reference should change")
    return caption


def image_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One image or several as a list; a [N, 3, H, W] tensor is N images."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise CIRError(f"a pixel tensor must be [3, H, W] or [N, 3, H, W], got shape {tuple(images.shape)}")
    if not isinstance(images, Sequence):
        raise CIRError(f"images must be paths, PIL images or tensors, got {type(images).__name__}")
    out = []
    for image in images:
        if isinstance(image, torch.Tensor) and image.ndim != 3:
            raise CIRError(f"a pixel tensor in a list must be [3, H, W], got shape {tuple(image.shape)}")
        if not isinstance(image, (str, os.PathLike, Image.Image, torch.Tensor)):
            raise CIRError(f"an image must be a path, a PIL image or a tensor, got {type(image).__name__}")
        out.append(image)
    return out


def image_file(path: str | os.PathLike) -> Path:
    """The path of an image file that exists, or a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CIRError(f"{path}: image file not found")
    return path


GallerySource = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Mapping[str, Union[str, os.PathLike]],
                      CIRSplit, Sequence[CIRSplit]]
"""What `CIRModel.index` takes: a folder, image files, name -> file, or dataset splits."""


def listed_gallery(images: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike]) -> CIRSplit:
    """A list of image files (named as given) or a mapping name -> file, as a split without queries."""
    if isinstance(images, Mapping):
        listed = [(str(name), file) for name, file in images.items()]
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        listed = [(os.fspath(file) if isinstance(file, (str, os.PathLike)) else file, file) for file in images]
    else:
        raise CIRError(f"a gallery is a folder, a list of image files or a mapping name -> file, "
                       f"got {type(images).__name__}")
    gallery: dict[str, Path] = {}
    for name, file in listed:
        if not isinstance(file, (str, os.PathLike)):
            raise CIRError(f"a gallery image must be a file path, got {type(file).__name__}")
        if name in gallery:
            raise CIRError(f"'{name}' is listed twice in the gallery")
        gallery[name] = image_file(file)
    return CIRSplit(dataset="files", name="listed", split="gallery", queries=[], gallery=gallery,
                    exclude_reference=False, recall_ks=())
