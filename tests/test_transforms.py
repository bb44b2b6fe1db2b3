"""targetpad / squarepad preprocessing on odd image shapes, pad sizes computed by hand.

DESIGN.md §2: pad = int((max/ratio - side) / 2) on each side of the short dimension, nothing
when max/min < ratio (squarepad: ratio 1). Then Resize(short side -> size, bicubic),
CenterCrop(size), RGB, ToTensor, Normalize.
"""

import math

import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from clip_cir.errors import CIRError
from clip_cir.models.transforms import (
    OPENAI_MEAN,
    OPENAI_STD,
    SquarePad,
    TargetPad,
    build_transform,
    square_pad_amounts,
    target_pad_amounts,
)

SIZE = 64
MEAN = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
STD = torch.tensor(OPENAI_STD).view(3, 1, 1)
BLACK = ((0 - MEAN) / STD)  # a normalised black pixel, per channel
WHITE = ((1 - MEAN) / STD)

# (width, height) -> (horizontal pad per side, vertical pad per side), worked out by hand.
TARGETPAD_125 = {
    (100, 37): (0, 21),   # 100/37 = 2.70 >= 1.25; 100/1.25 = 80; (80 - 37) / 2 = 21.5 -> 21
    (37, 100): (21, 0),   # the same, portrait
    (101, 80): (0, 0),    # 1.2625 >= 1.25, but (80.8 - 80) / 2 = 0.4 -> int 0
    (80, 81): (0, 0),     # 1.0125 < 1.25: untouched
    (64, 64): (0, 0),
    (150, 40): (0, 40),   # 150/1.25 = 120; (120 - 40) / 2 = 40
    (100, 80): (0, 0),    # exactly 1.25: padded, by (80 - 80) / 2 = 0
}
SQUAREPAD = {
    (100, 37): (0, 31),   # (100 - 37) / 2 = 31.5 -> 31
    (37, 100): (31, 0),
    (101, 80): (0, 10),   # 21 / 2 = 10.5 -> 10
    (80, 81): (0, 0),     # 1 / 2 = 0.5 -> 0
    (64, 64): (0, 0),
    (150, 40): (0, 55),
    (100, 80): (0, 10),
}


def _white(w: int, h: int) -> Image.Image:
    return Image.new("RGB", (w, h), (255, 255, 255))


@pytest.mark.parametrize("shape, pads", TARGETPAD_125.items())
def test_target_pad_amounts(shape, pads):
    assert target_pad_amounts(*shape, 1.25) == pads


@pytest.mark.parametrize("shape, pads", SQUAREPAD.items())
def test_square_pad_amounts(shape, pads):
    assert square_pad_amounts(*shape) == pads


def test_target_pad_other_ratio():
    assert target_pad_amounts(100, 37, 2.0) == (0, 6)  # 100/2 = 50; (50 - 37) / 2 = 6.5 -> 6
    assert target_pad_amounts(100, 60, 2.0) == (0, 0)  # 1.67 < 2


@pytest.mark.parametrize("pad, table", [(TargetPad(1.25), TARGETPAD_125), (SquarePad(), SQUAREPAD)])
def test_pad_stage_pixels(pad, table):
    """The padded PIL image: grown by 2*pad, black border, the original pixels untouched."""
    for (w, h), (hp, vp) in table.items():
        image = Image.effect_noise((w, h), 60).convert("RGB")
        out = pad(image)
        assert out.size == (w + 2 * hp, h + 2 * vp)
        t = TF.pil_to_tensor(out)
        assert torch.equal(t[:, vp:vp + h, hp:hp + w], TF.pil_to_tensor(image))
        border = torch.ones(t.shape[1:], dtype=torch.bool)
        border[vp:vp + h, hp:hp + w] = False
        assert (t[:, border] == 0).all()


def _band(pad: int, scale: float, margin: int = 3) -> tuple[int, int]:
    """Output rows/cols [0, black_end) certainly black and [white_start, ...) certainly image,
    leaving `margin` pixels for the bicubic kernel around the edge."""
    edge = pad * scale
    return math.floor(edge) - margin, math.ceil(edge) + margin


@pytest.mark.parametrize("name, table", [("targetpad", TARGETPAD_125), ("squarepad", SQUAREPAD)])
def test_full_transform_shape_and_black_padding(name, table):
    transform = build_transform(name, SIZE, OPENAI_MEAN, OPENAI_STD, 1.25)
    for (w, h), (hp, vp) in table.items():
        x = transform(_white(w, h))
        assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
        pw, ph = w + 2 * hp, h + 2 * vp
        scale = SIZE / min(pw, ph)  # the short side becomes SIZE
        if vp:  # black bands top and bottom, the image in the middle rows
            assert pw >= ph
            black_end, white_start = _band(vp, scale)
            assert black_end > 0
            rows = x[:, :, 8:-8]  # stay clear of the horizontal crop edge
            assert torch.allclose(rows[:, :black_end], BLACK.expand_as(rows[:, :black_end]), atol=1e-6)
            assert torch.allclose(rows[:, -black_end:], BLACK.expand_as(rows[:, -black_end:]), atol=1e-6)
            middle = rows[:, white_start:SIZE - white_start]
            assert torch.allclose(middle, WHITE.expand_as(middle), atol=1e-6)
        elif hp:  # black bands left and right
            assert ph >= pw
            black_end, white_start = _band(hp, scale)
            cols = x[:, 8:-8, :]
            assert torch.allclose(cols[..., :black_end], BLACK.expand_as(cols[..., :black_end]), atol=1e-6)
            assert torch.allclose(cols[..., -black_end:], BLACK.expand_as(cols[..., -black_end:]), atol=1e-6)
            middle = cols[..., white_start:SIZE - white_start]
            assert torch.allclose(middle, WHITE.expand_as(middle), atol=1e-6)
        else:  # no padding: not a single black pixel
            assert torch.allclose(x, WHITE.expand_as(x), atol=1e-6), (w, h)


def test_already_sized_image_is_only_normalised():
    image = Image.effect_noise((SIZE, SIZE), 80).convert("RGB")
    expected = (TF.to_tensor(image) - MEAN) / STD
    for name in ("targetpad", "squarepad"):
        assert torch.allclose(build_transform(name, SIZE)(image), expected, atol=1e-6)


def test_non_rgb_images_become_three_channels():
    transform = build_transform("targetpad", SIZE)
    assert transform(Image.new("L", (90, 50), 255)).shape == (3, SIZE, SIZE)
    rgba = transform(Image.new("RGBA", (50, 90), (255, 255, 255, 0)))
    assert rgba.shape == (3, SIZE, SIZE)


def test_signatures_distinguish_preprocessing():
    sigs = {build_transform("targetpad", SIZE).signature,
            build_transform("targetpad", SIZE, target_ratio=1.5).signature,
            build_transform("squarepad", SIZE).signature, build_transform("targetpad", 32).signature,
            build_transform("targetpad", SIZE, mean=(0.5, 0.5, 0.5)).signature}
    assert len(sigs) == 5
    assert build_transform("targetpad", SIZE).signature == build_transform("targetpad", SIZE).signature


def test_clip_transform_uses_model_preprocess():
    calls = []

    def preprocess(image):
        calls.append(image.size)
        return torch.zeros(3, SIZE, SIZE)

    transform = build_transform("clip", SIZE, clip_preprocess=preprocess)
    transform(_white(10, 20))
    assert calls == [(10, 20)]
    with pytest.raises(CIRError, match="--transform clip needs"):
        build_transform("clip", SIZE)


def test_bad_transform_options():
    with pytest.raises(CIRError, match="unknown transform 'pad' \\(choose from targetpad, squarepad, clip\\)"):
        build_transform("pad", SIZE)
    with pytest.raises(CIRError, match="--target-ratio must be >= 1, got 0.8"):
        build_transform("targetpad", SIZE, target_ratio=0.8)


def _by_hand_tensor(image: Image.Image) -> torch.Tensor:
    """ToTensor + Normalize written out: uint8 HWC -> float CHW / 255, minus mean, over std."""
    import numpy as np

    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    return (x - MEAN) / STD


def test_targetpad_pipeline_step_by_step_in_pil():
    """The published targetpad transform rebuilt from PIL calls, each size worked out by hand:
    100x37 -> pad 21 top and bottom (100x79) -> short side 79 to 64 with PIL's BICUBIC, the long
    side int(64 * 100 / 79) = 81 -> centre crop 64, left = round((81 - 64) / 2) = round(8.5) = 8."""
    image = Image.effect_noise((100, 37), 90).convert("RGB")
    padded = Image.new("RGB", (100, 79), (0, 0, 0))
    padded.paste(image, (0, 21))
    resized = padded.resize((81, 64), Image.BICUBIC)
    expected = _by_hand_tensor(resized.crop((8, 0, 72, 64)))
    out = build_transform("targetpad", SIZE, target_ratio=1.25)(image)
    assert out.shape == expected.shape == (3, SIZE, SIZE)
    assert torch.allclose(out, expected, atol=1e-6)
    # The interpolation is visible at this tolerance: CLIP's bicubic, not bilinear.
    bilinear = _by_hand_tensor(padded.resize((81, 64), Image.BILINEAR).crop((8, 0, 72, 64)))
    assert (bilinear - expected).abs().max() > 0.05


def test_squarepad_pipeline_step_by_step_in_pil():
    """37x100 -> pad 31 left and right (99x100) -> short side 99 to 64, long int(64 * 100 / 99) = 64
    -> nothing left to crop."""
    image = Image.effect_noise((37, 100), 90).convert("RGB")
    padded = Image.new("RGB", (99, 100), (0, 0, 0))
    padded.paste(image, (31, 0))
    expected = _by_hand_tensor(padded.resize((64, 64), Image.BICUBIC))
    assert torch.allclose(build_transform("squarepad", SIZE)(image), expected, atol=1e-6)


def test_resize_keeps_the_aspect_ratio_and_crops_the_centre():
    """80x64 is within targetpad's ratio (1.25, padded by 0) and its short side is already 64: no
    resampling at all, only the centre crop of columns 8..71 (a squashing resize would blend them)."""
    image = Image.effect_noise((80, 64), 90).convert("RGB")
    expected = _by_hand_tensor(image.crop((8, 0, 72, 64)))
    assert torch.allclose(build_transform("targetpad", SIZE)(image), expected, atol=1e-6)
