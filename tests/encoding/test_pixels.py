"""The pixel cache is exact: cached uint8 pixels, normalised, are the very tensors decoding gives;
training and extraction give the same results with it as without; it is keyed by the files and
the preprocessing, and refuses to fill a disk."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import mode_image, published_transform, stage1_options
from PIL import Image
from safetensors.torch import load_file

import clip_cir
from clip_cir.data.io import load_image
from clip_cir.encoding.pixels import PixelCache
from clip_cir.models.transforms import build_transform


@pytest.fixture(scope="module")
def real_sized_images(tmp_path_factory) -> list[Path]:
    """Images at the sizes real data has: CIRR's NLVR2 PNGs (~500x375) and FashionIQ's JPEGs (~400x600)."""
    root = tmp_path_factory.mktemp("real_sized")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        png, jpg = root / f"nlvr2-{i}.png", root / f"fiq-{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(png)
        Image.fromarray(rng.integers(0, 256, (600, 400, 3), dtype=np.uint8)).save(jpg, quality=90)
        paths += [png, jpg]
    return paths


@pytest.mark.parametrize("name", ["targetpad", "squarepad", "clip"])
def test_normalised_cached_pixels_are_the_decoded_tensors(real_sized_images, tmp_path, name):
    import open_clip

    _, _, preprocess = open_clip.create_model_and_transforms("RN50x4")  # open_clip's own 288-px preprocessing
    transform = build_transform(name, 288, clip_preprocess=preprocess)
    assert transform.splits
    cached = PixelCache(tmp_path).get(real_sized_images, transform, progress=False)
    assert cached is not None and tuple(cached.array.shape) == (len(real_sized_images), 3, 288, 288)
    for i, path in enumerate(real_sized_images):
        expected = transform(load_image(path))
        assert cached[i].dtype == torch.uint8
        assert torch.equal(transform.normalize(cached[i].unsqueeze(0))[0], expected), path


@pytest.fixture(scope="module")
def mode_files(tmp_path_factory) -> dict[str, Path]:
    """One small non-square file per mode CIRR's PNGs and FashionIQ's JPEGs may hold (CMYK: a JPEG)."""
    root = tmp_path_factory.mktemp("modes")
    files = {}
    for mode in ["P", "RGBA", "LA", "1", "L", "RGB", "I;16", "CMYK"]:
        path = root / f"{mode.replace(';', '_')}.{'jpg' if mode == 'CMYK' else 'png'}"
        mode_image(mode, 45, 22).save(path)
        files[mode] = path
    return files


@pytest.mark.parametrize("name", ["targetpad", "squarepad"])
def test_files_of_every_mode_are_decoded_and_cached_as_the_published_code_reads_them(mode_files, tmp_path, name):
    """`load_image` keeps the file's mode; the cached uint8 pixels, normalised, equal the on-the-fly
    transform and the published pipeline on `PIL.Image.open(path)`, bit for bit."""
    transform = build_transform(name, 16)
    paths = list(mode_files.values())
    cached = PixelCache(tmp_path).get(paths, transform, progress=False)
    assert cached is not None
    for i, (mode, path) in enumerate(mode_files.items()):
        image = load_image(path)
        assert image.mode == mode
        published = published_transform(name, 16)(Image.open(path))
        assert torch.equal(transform(image), published), mode
        assert torch.equal(transform.normalize(cached[i].unsqueeze(0))[0], published), mode


def test_the_cache_is_written_once_and_keyed_by_files_and_preprocessing(real_sized_images, tmp_path, monkeypatch,
                                                                         caplog):
    cache = PixelCache(tmp_path / "pixels")
    transform = build_transform("targetpad", 64)
    with caplog.at_level(logging.INFO, logger="clip_cir"):
        first = cache.get(real_sized_images[:4], transform, progress=False)
    wrote = [r.getMessage() for r in caplog.records if "writing" in r.getMessage()]
    assert len(wrote) == 1 and "4 images x 3x64x64 uint8 = 0.00 GB" in wrote[0]  # says the size before writing
    assert first.path.stat().st_size >= 4 * 3 * 64 * 64
    import clip_cir.encoding.pixels as pixels

    monkeypatch.setattr(pixels, "load_image", lambda path: pytest.fail("decoded an image the cache holds"))
    again = cache.get(real_sized_images[:4], transform, progress=False)
    assert again.path == first.path and torch.equal(again[3], first[3])
    monkeypatch.undo()
    assert cache.file_for(real_sized_images[:4], build_transform("targetpad", 32)) != first.path
    assert cache.file_for(real_sized_images[:4], build_transform("squarepad", 64)) != first.path
    # A replaced file is a different key (size and modification time are part of it).
    copy = tmp_path / "copy"
    shutil.copytree(real_sized_images[0].parent, copy)
    moved = [copy / p.name for p in real_sized_images[:4]]
    key = cache.file_for(moved, transform)
    Image.new("RGB", (500, 375), (1, 2, 3)).save(moved[0])
    assert cache.file_for(moved, transform) != key
    # The same mean/std or not, normalisation is not part of the key: the pixels are the same.
    other_norm = build_transform("targetpad", 64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert cache.file_for(real_sized_images[:4], other_norm) == first.path


def test_a_cache_that_would_fill_the_disk_is_not_written(real_sized_images, tmp_path, monkeypatch, caplog):
    import clip_cir.encoding.pixels as pixels

    monkeypatch.setattr(pixels.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 2 * 1024 ** 3))
    huge = build_transform("targetpad", 288)
    with caplog.at_level(logging.WARNING, logger="clip_cir"):
        assert PixelCache(tmp_path).get(real_sized_images * 3000, huge, progress=False) is None
    expected_gb = len(real_sized_images) * 3000 * 3 * 288 * 288 / 1e9
    assert "decoding images instead" in caplog.text and f"= {expected_gb:.2f} GB" in caplog.text
    assert not list(tmp_path.glob("*.npy"))


def test_extraction_with_and_without_the_pixel_cache_is_identical(real_sized_images, tmp_path, tiny_checkpoint):
    from clip_cir.encoding.extraction import encode_counts, encode_images
    from clip_cir.models.clip import load_clip

    clip = load_clip(None, str(tiny_checkpoint))
    transform = clip.image_transform("targetpad", 1.25)
    decoded = encode_images(clip, real_sized_images, transform, progress=False)
    cached = encode_images(clip, real_sized_images, transform, progress=False, pixel_cache=PixelCache(tmp_path))
    assert torch.equal(decoded, cached)
    before = encode_counts["image"]
    again = encode_images(clip, real_sized_images, transform, progress=False, pixel_cache=PixelCache(tmp_path))
    assert torch.equal(again, decoded) and encode_counts["image"] == before + len(real_sized_images)


def test_stage1_both_encoders_train_identically_with_the_pixel_cache(synth_root, tmp_path):
    common = dict(encoder="both", epochs=1, validation_frequency=5, pixel_cache_dir=tmp_path / "pixels")
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "cached", **common))
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "decoded", **common, pixel_cache="off"))
    assert len(list((tmp_path / "pixels").glob("*.npy"))) == 2  # training images and the val gallery
    cached = load_file(str(tmp_path / "cached" / "last" / "clip.safetensors"))
    decoded = load_file(str(tmp_path / "decoded" / "last" / "clip.safetensors"))
    for key in cached:
        assert torch.equal(cached[key], decoded[key]), key
    import pandas as pd

    a = pd.read_csv(tmp_path / "cached" / "validation_metrics.csv")
    b = pd.read_csv(tmp_path / "decoded" / "validation_metrics.csv")
    assert a.drop(columns=["epoch"]).equals(b.drop(columns=["epoch"]))
