"""The GPU-speed paths of training and encoding, checked on a CPU: channels-last image towers
(which towers and devices get it, and that it changes no number beyond float32 rounding:
extraction, a training step's loss and gradients, a whole stage-1 run, a resumed optimizer), and
stage 1's prefetching workers over the pixel cache (the same batches)."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import stage1_options
from safetensors.torch import load_file

import clip_cir
from clip_cir.data import load_splits
from clip_cir.encoding.extraction import encode_images
from clip_cir.encoding.pixels import PixelCache
from clip_cir.models.clip import LoadedCLIP, load_clip
from clip_cir.models.towers import (
    encode_text,
    is_channels_last,
    is_convolutional,
    set_memory_format,
    tower_input,
    use_channels_last,
)
from clip_cir.models.transforms import build_transform
from clip_cir.training.losses import batch_contrastive_loss
from clip_cir.training.stage1 import query_and_target

ATOL = 1e-5  # float32 rounding: the two layouts sum the same products in another order


@pytest.fixture(scope="module")
def rn() -> LoadedCLIP:
    torch.manual_seed(0)
    return load_clip("cir-tiny-rn")


@pytest.fixture(scope="module")
def val_paths(synth_root) -> list[Path]:
    return list(load_splits("cirr", synth_root, "val")[0].gallery.values())[:20]


def convolution_weights(clip: LoadedCLIP) -> list[torch.Tensor]:
    return [m.weight for m in clip.model.visual.modules() if isinstance(m, torch.nn.Conv2d)]


def test_which_towers_and_devices_run_channels_last(rn, tiny_clip):
    assert is_convolutional(rn.model.visual)
    assert not is_convolutional(tiny_clip.visual)  # a ViT: one patch-embedding convolution
    assert use_channels_last(rn.model, "cuda", "auto") and use_channels_last(rn.model, torch.device("cuda:1"))
    assert not use_channels_last(rn.model, "cpu", "auto")
    assert not use_channels_last(tiny_clip, "cuda", "auto")
    assert use_channels_last(rn.model, "cpu", "on") and use_channels_last(tiny_clip, "cpu", "on")
    assert not use_channels_last(rn.model, "cuda", "off")
    with pytest.raises(ValueError, match="unknown memory format choice 'yes'"):
        use_channels_last(rn.model, "cpu", "yes")


def test_set_memory_format_converts_in_place_and_back():
    torch.manual_seed(0)
    clip = load_clip("cir-tiny-rn")
    params = {name: p for name, p in clip.model.named_parameters()}
    before = {name: p.detach().clone() for name, p in params.items()}
    assert not is_channels_last(clip.model.visual)
    assert set_memory_format(clip.model, "cpu", "on") is True
    assert is_channels_last(clip.model.visual)
    weights = [w for w in convolution_weights(clip) if w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                           for w in weights)
    # The same parameter objects (an optimizer built before keeps them), with the same values.
    assert all(p is params[name] for name, p in clip.model.named_parameters())
    assert all(torch.equal(p, before[name]) for name, p in clip.model.named_parameters())
    assert set_memory_format(clip.model, "cpu", "auto") is False  # auto on a CPU: the default layout again
    assert not is_channels_last(clip.model.visual) and all(w.is_contiguous() for w in convolution_weights(clip))


def test_tower_input_layout():
    images = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)
    converted = tower_input(images, True)
    assert converted.is_contiguous(memory_format=torch.channels_last) and not converted.is_contiguous()
    assert torch.equal(converted, images) and tower_input(images, False) is images
    assert tower_input(torch.zeros(3, 4), True).is_contiguous()  # not an image batch: left alone


def test_extraction_in_channels_last_equals_the_default_layout(rn, val_paths, tmp_path):
    transform = build_transform("targetpad", rn.input_size)
    default = copy.deepcopy(rn)
    channels_last = copy.deepcopy(rn)
    set_memory_format(channels_last.model, "cpu", "on")
    pixels = PixelCache(tmp_path / "pixels")
    for cache in (None, pixels):  # decoding, and the pixel cache's batches
        expected = encode_images(default, val_paths, transform, batch_size=8, progress=False, pixel_cache=cache)
        got = encode_images(channels_last, val_paths, transform, batch_size=8, progress=False, pixel_cache=cache)
        assert got.shape == expected.shape == (20, rn.embed_dim)
        assert torch.allclose(got, expected, atol=ATOL), (got - expected).abs().max()
    # And both are the plain forward pass of the preprocessed images.
    from clip_cir.data.io import load_image

    with torch.no_grad():
        direct = rn.model.eval().encode_image(torch.stack([transform(load_image(p)) for p in val_paths]))
    assert torch.allclose(expected, direct, atol=ATOL)


def test_a_training_step_in_channels_last_has_the_same_loss_and_gradients(rn):
    generator = torch.Generator().manual_seed(1)
    size = rn.input_size
    pixels = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=generator)
    transform = build_transform("targetpad", size)
    tokens = rn.tokenize([f"make it {c}" for c in ("red", "blue", "green", "large")])

    def step(channels_last: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = copy.deepcopy(rn.model)
        set_memory_format(model, "cpu", "on" if channels_last else "off")
        model.eval()  # stage 1 trains in eval mode (BatchNorm running statistics)
        images = model.encode_image(transform.normalize(tower_input(pixels, channels_last)))
        reference, target = images.chunk(2)
        loss = batch_contrastive_loss(*query_and_target(reference, encode_text(model, tokens), target))
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = step(False)
    loss_cl, grads_cl = step(True)
    assert torch.allclose(loss_cl, loss, atol=ATOL)
    assert grads.keys() == grads_cl.keys() and any(n.startswith("visual.") and g.ndim == 4 for n, g in grads.items())
    for name, grad in grads.items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert torch.allclose(grads_cl[name], grad, atol=1e-4 * scale), name


def test_stage1_with_channels_last_on_trains_as_off(synth_root, tmp_path, info_logging):
    """The setting end to end on a CPU (`on` forces it): same losses, same saved weights."""
    def run(choice: str) -> Path:
        clip_cir.finetune(**stage1_options(synth_root, tmp_path, choice, model="cir-tiny-rn", encoder="both", epochs=1,
                                           no_cache=True, pixel_cache_dir=tmp_path / "pixels", channels_last=choice,
                                           log_every=1))
        return tmp_path / choice

    on, off = run("on"), run("off")
    assert json.loads((on / "config.json").read_text())["channels_last"] == "on"
    assert "image tower in channels-last memory format" in (on / "log.txt").read_text()
    assert "channels-last" not in (off / "log.txt").read_text()
    losses_on = pd.read_csv(on / "train_steps.csv")["loss"]
    losses_off = pd.read_csv(off / "train_steps.csv")["loss"]
    assert len(losses_on) == len(losses_off) > 1 and not losses_on.isna().any() and not losses_off.isna().any()
    assert (losses_on - losses_off).abs().max() < 1e-4
    weights_on, weights_off = (load_file(str(run_dir / "last" / "clip.safetensors")) for run_dir in (on, off))
    assert weights_on.keys() == weights_off.keys()
    for name, tensor in weights_off.items():
        assert torch.allclose(weights_on[name], tensor, atol=1e-5), name


def test_commands_that_encode_set_the_layout(synth_root):
    from clip_cir.apps.prepare import prepare
    from clip_cir.params import cli_parser

    parser = cli_parser()
    for choice, expected in (("on", True), ("off", False), ("auto", False)):  # auto: no CUDA device here
        args = parser.parse_args(["eval", "--dataset", "cirr", "--data-root", str(synth_root), "--model",
                                  "cir-tiny-rn", "--cpu", "--channels-last", choice])
        assert isinstance(args, argparse.Namespace) and args.batch_size == 256
        prepared = prepare(args)
        assert is_channels_last(prepared.clip.model.visual) is expected
        assert prepared.encode.batch_size == 256


def test_optimizer_state_resumed_in_another_layout_takes_the_parameters_layout(rn):
    from clip_cir.training.optim import load_optimizer_state

    model = copy.deepcopy(rn.model)
    params = list(model.visual.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    set_memory_format(model, "cpu", "on")  # resumed with --channels-last on
    resumed = torch.optim.AdamW(params, lr=1e-3)
    load_optimizer_state(resumed, saved)
    converted = [p for p in params if p.ndim == 4 and not p.is_contiguous()]
    assert converted
    for i, p in enumerate(params):
        for key in ("exp_avg", "exp_avg_sq"):
            value = resumed.state[p][key]
            assert value.stride() == p.stride() and torch.equal(value, saved["state"][i][key]), (i, key)


def test_stage1_pixel_cache_workers_read_the_same_batches_every_epoch(synth_root, tmp_path):
    """With the pixel cache, stage 1's workers persist across epochs; the batches (epoch-dependent
    order and caption forms) must be those of a run without workers."""
    def run(workers: int) -> pd.DataFrame:
        clip_cir.finetune(**stage1_options(synth_root, tmp_path, f"w{workers}", encoder="both", epochs=2,
                                           validation_frequency=2, num_workers=workers, no_cache=True,
                                           pixel_cache_dir=tmp_path / "pixels", log_every=1))
        return pd.read_csv(tmp_path / f"w{workers}" / "train_steps.csv")

    with_workers, without = run(2), run(0)
    assert list(with_workers["epoch"].unique()) == [1, 2] and len(with_workers) == len(without)
    assert not with_workers["loss"].isna().any() and not without["loss"].isna().any()
    assert torch.allclose(torch.tensor(with_workers["loss"].values), torch.tensor(without["loss"].values),
                          atol=1e-6, rtol=0)
