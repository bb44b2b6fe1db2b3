"""targetpad / squarepad preprocessing on odd image shapes, pad sizes computed by hand.

docs/method.md#preprocessing: pad = int((max/ratio - side) / 2) on each side of the short dimension, nothing
when max/min < ratio (squarepad: ratio 1). Then Resize(short side -> size, bicubic),
CenterCrop(size), RGB, ToTensor, Normalize. Padding, resizing and cropping happen in the image's
own mode (palette, RGBA, CMYK, ...), as in the published code: each mode is checked against that
pipeline written out again.
"""

import math

import pytest
import torch
from helpers import PALETTE_0, mode_image, published_transform
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from clip_cir.errors import CIRError
from clip_cir.models.transforms import (
    OPENAI_MEAN,
    OPENAI_STD,
    ImageTransform,
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


# --- Image modes: padded, resized and cropped in the file's own mode, RGB after the crop --------

MODES = ["P", "RGBA", "LA", "CMYK", "1", "L", "RGB", "I;16"]
CHANGED_BY_CONVERTING_FIRST = {"P", "RGBA", "LA", "CMYK", "1", "I;16"}


@pytest.mark.parametrize("name", ["targetpad", "squarepad"])
@pytest.mark.parametrize("shape", [(23, 11), (9, 20)])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_is_preprocessed_as_the_published_code_does(mode, shape, name):
    """Bit for bit the published pipeline on the image in its own mode, through both paths (the
    whole transform, and uint8 pixels normalised later as the pixel cache does); for the modes where
    the order matters, converting to RGB before padding would move some value by more than 0.5."""
    image = mode_image(mode, *shape)
    assert image.mode == mode
    transform = build_transform(name, 16)
    expected = published_transform(name, 16)(image)
    out = transform(image)
    assert out.shape == (3, 16, 16)
    assert torch.equal(out, expected)
    pixels = transform.pixels(image)
    assert pixels.dtype == torch.uint8
    assert torch.equal(transform.normalize(pixels.unsqueeze(0))[0], expected)
    converted_first = published_transform(name, 16)(image.convert("RGB"))
    assert ((converted_first - expected).abs().max() > 0.5) == (mode in CHANGED_BY_CONVERTING_FIRST)


def test_palette_images_pad_with_palette_entry_0_and_resize_nearest():
    """20x8, every pixel palette index 1 (blue); targetpad 1.25 -> 4 rows of index 0 above and below
    (20x16); PIL resizes palette images with NEAREST, rows 1, 3, ..., 15 -> 10x8; crop columns 1..8.
    Rows 0-1 and 6-7 are palette entry 0 (red), rows 2-5 blue: no black, no blend."""
    image = Image.new("P", (20, 8), 1)
    image.putpalette(list(PALETTE_0) + [0, 0, 255] + [0] * 762)
    out = build_transform("targetpad", 8)(image)
    red = (torch.tensor(PALETTE_0).view(3, 1, 1) / 255 - MEAN) / STD
    blue = (torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1) - MEAN) / STD
    for rows, colour in [((0, 2), red), ((2, 6), blue), ((6, 8), red)]:
        band = out[:, rows[0]:rows[1]]
        assert torch.allclose(band, colour.expand_as(band), atol=1e-6), rows


def test_cmyk_pads_white_and_transparent_rgba_comes_out_black():
    """Padding is 0 in the image's own mode: CMYK (0, 0, 0, 0) is white once converted. Pillow resizes
    RGBA premultiplied, so a fully transparent red area loses its colour: black, not red."""
    cmyk = build_transform("targetpad", 8)(Image.new("CMYK", (20, 8), (0, 0, 0, 255)))  # black ink
    assert torch.allclose(cmyk[:, 0], WHITE[:, :, 0].expand(3, 8), atol=1e-6)  # padding row
    assert torch.allclose(cmyk[:, 4], BLACK[:, :, 0].expand(3, 8), atol=1e-6)  # image row
    rgba = Image.new("RGBA", (20, 16), (255, 0, 0, 0))
    out = build_transform("targetpad", 8)(rgba)
    assert torch.allclose(out, BLACK.expand_as(out), atol=1e-6)


def test_a_mode_pillow_cannot_resize_is_converted_to_rgb_first():
    """Where this Pillow raises ValueError on a mode (I;16 with bicubic before Pillow 11), the image is
    converted to RGB first, in both paths; an RGB image's error is raised as it is."""
    seen = []

    def strict(image):
        seen.append(image.mode)
        if image.mode != "RGB":
            raise ValueError("image has wrong mode")
        return image

    transform = ImageTransform(T.Compose([strict, T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)]), "strict")
    image = Image.new("I;16", (4, 3), 300)
    assert torch.equal(transform.pixels(image), torch.full((3, 3, 4), 255, dtype=torch.uint8))
    assert torch.equal(transform(image), WHITE.expand(3, 3, 4))
    assert seen == ["I;16", "RGB", "I;16", "RGB"]

    def broken(image):
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        ImageTransform(broken, "broken")(Image.new("RGB", (4, 3)))


def test_signatures_record_the_conversion_order():
    """Caches written when images were converted before padding must not be reused."""
    assert build_transform("targetpad", SIZE).pixel_signature == (
        "TargetPad(ratio=1.25)|resize64-bicubic|crop64|rgb-after-crop")
    assert build_transform("squarepad", SIZE).pixel_signature == "SquarePad()|resize64-bicubic|crop64|rgb-after-crop"
    assert build_transform("clip", SIZE, clip_preprocess=T.ToTensor()).signature == "clip:ToTensor()|rgb-after-crop"


def test_open_clip_eval_transform_converts_after_the_crop():
    """open_clip's own evaluation transform (`--transform clip`) also resizes and crops first; the
    library hands it the image in its own mode. Written out: Resize(bicubic) -> CenterCrop -> RGB."""
    from open_clip.transform import image_transform

    transform = build_transform("clip", 16, clip_preprocess=image_transform(16, is_train=False))
    expected_steps = T.Compose([T.Resize(16, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(16),
                                lambda image: image.convert("RGB"), T.ToTensor(),
                                T.Normalize(OPENAI_MEAN, OPENAI_STD)])
    for mode in MODES:
        image = mode_image(mode, 23, 11)
        expected = expected_steps(image)
        assert torch.equal(transform(image), expected), mode
        assert torch.equal(transform.normalize(transform.pixels(image).unsqueeze(0))[0], expected), mode
