"""Image preprocessing: `targetpad` (the method's default), `squarepad` and `clip`.

Padding before the resize keeps whole garments and scenes in the crop instead of cutting the
long side off. As in the published code, an image is padded, resized and cropped in its file's own
mode (palette, RGBA, CMYK, ...) and converted to RGB only after the crop: converting first gives
different pixels for every mode but RGB and L. Every transform carries a `signature` string: the
feature and pixel caches key on it, because features are only reusable when the pixels that
produced them are.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

from clip_cir.config import ModelConfig
from clip_cir.constants import TRANSFORMS
from clip_cir.errors import CIRError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def target_pad_amounts(width: int, height: int, ratio: float) -> tuple[int, int]:
    """Horizontal and vertical padding (per side) that bring long/short down to `ratio`.

    Images already within the ratio are left alone; only the short dimension is padded.
    """
    if max(width, height) / min(width, height) < ratio:
        return 0, 0
    scaled = max(width, height) / ratio
    return max(int((scaled - width) / 2), 0), max(int((scaled - height) / 2), 0)


def square_pad_amounts(width: int, height: int) -> tuple[int, int]:
    side = max(width, height)
    return int((side - width) / 2), int((side - height) / 2)


class TargetPad:
    def __init__(self, ratio: float):
        if ratio < 1:
            raise CIRError(f"--target-ratio must be >= 1, got {ratio}")
        self.ratio = ratio

    def __call__(self, image: Image.Image) -> Image.Image:
        hp, vp = target_pad_amounts(*image.size, self.ratio)
        return TF.pad(image, [hp, vp, hp, vp], fill=0, padding_mode="constant") if hp or vp else image

    def __repr__(self) -> str:
        return f"TargetPad(ratio={self.ratio})"


class SquarePad:
    def __call__(self, image: Image.Image) -> Image.Image:
        hp, vp = square_pad_amounts(*image.size)
        return TF.pad(image, [hp, vp, hp, vp], fill=0, padding_mode="constant") if hp or vp else image

    def __repr__(self) -> str:
        return "SquarePad()"


# In every signature: caches written when images were converted to RGB before padding (other
# pixels for palette, RGBA, CMYK, ... files) are not reused.
RGB_AFTER_CROP = "rgb-after-crop"


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _in_own_mode(step: Callable[[Image.Image], object], image: Image.Image):
    """`step(image)` in the image's own mode, as the published code runs it. A mode this Pillow
    cannot pad or resize (16-bit 'I;16' before Pillow 11, with bicubic) raises ValueError there,
    where the published code would fail: such an image is converted to RGB first instead."""
    try:
        return step(image)
    except ValueError:
        if image.mode == "RGB":
            raise
        return step(image.convert("RGB"))


class ImageTransform:
    """A callable PIL image -> normalised tensor with a stable `signature` for cache keys.

    When the preprocessing ends in ToTensor + Normalize (ours and open_clip's do), it is also
    split in two: `pixels` (PIL -> uint8 CHW tensor: padding, resizing, cropping) and `normalize`
    (uint8 batch -> float, on whatever device the batch is on). The uint8 pixels are what the
    pixel cache stores and what data loaders ship (4x fewer bytes than float32), and
    `normalize(pixels(image))` is bit-identical to `transform(image)`. Images come in their file's
    mode (`load_image` does not convert them): the conversion to RGB is the transform's last PIL step.
    """

    def __init__(self, fn: Callable[[Image.Image], torch.Tensor], signature: str):
        self.fn = fn
        self.signature = signature
        self.geometry: Callable[[Image.Image], Image.Image] | None = None
        self.mean = self.std = None
        steps = list(fn.transforms) if isinstance(fn, T.Compose) else []
        if len(steps) >= 2 and isinstance(steps[-2], T.ToTensor) and isinstance(steps[-1], T.Normalize):
            self.geometry = T.Compose(steps[:-2] + [_to_rgb])
            self.mean, self.std = tuple(steps[-1].mean), tuple(steps[-1].std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return _in_own_mode(self.fn, image)

    @property
    def splits(self) -> bool:
        return self.geometry is not None

    @property
    def pixel_signature(self) -> str:
        """What determines the uint8 pixels (not the normalisation): the pixel cache's key."""
        return self.signature.split("|mean")[0]

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """uint8 [3, H, W] when the transform splits, else the full (float) transform."""
        if self.geometry is None:
            return _in_own_mode(self.fn, image)
        return TF.pil_to_tensor(_in_own_mode(self.geometry, image))

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> the model's input, exactly as ToTensor + Normalize compute it; float
        batches (a transform that does not split) pass through."""
        if batch.dtype != torch.uint8:
            return batch
        mean, std = _mean_std(self.mean, self.std, batch.device)
        return batch.to(torch.float32).div(255).sub(mean).div(std)

    def __repr__(self) -> str:
        return f"ImageTransform({self.signature})"


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation constants as [3, 1, 1] tensors on `device`, made once: building them per batch
    is a host-to-device copy that waits for the device (a stall on every batch of a GPU run)."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1))


def build_transform(name: str, input_size: int, mean: Sequence[float] = OPENAI_MEAN,
                    std: Sequence[float] = OPENAI_STD, target_ratio: float = ModelConfig.target_ratio,
                    clip_preprocess: Callable | None = None) -> ImageTransform:
    """The preprocessing named by `--transform`; `clip` is the model's own open_clip one."""
    if name == "clip":
        if clip_preprocess is None:
            raise CIRError("--transform clip needs the model's open_clip preprocessing")
        return ImageTransform(clip_preprocess, f"clip:{clip_preprocess!r}|{RGB_AFTER_CROP}")
    if name == "targetpad":
        pad: Callable = TargetPad(target_ratio)
    elif name == "squarepad":
        pad = SquarePad()
    else:
        raise CIRError(f"unknown transform '{name}' (choose from {', '.join(TRANSFORMS)})")
    compose = T.Compose([
        pad,
        T.Resize(input_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(input_size),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    signature = (f"{pad!r}|resize{input_size}-bicubic|crop{input_size}|{RGB_AFTER_CROP}|"
                 f"mean{tuple(round(m, 8) for m in mean)}|std{tuple(round(s, 8) for s in std)}")
    return ImageTransform(compose, signature)

