"""`--grad-checkpointing` on every tower family: the same features, loss and gradients, with fewer
bytes kept for the backward pass (counted exactly with `saved_tensors_hooks`); ResNet stages and
Hugging Face layers included, in the eval mode stage 1 trains in."""

from __future__ import annotations

import copy
import json
import logging
import pickle

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, stage1_options
from safetensors.torch import load_file

import clip_cir
from clip_cir.models.clip import load_clip
from clip_cir.models.grad_checkpointing import Checkpointed, enable_grad_checkpointing
from clip_cir.models.towers import encode_text
from clip_cir.training.losses import batch_contrastive_loss
from clip_cir.training.run import seed_everything
from clip_cir.training.stage1 import query_and_target

FAMILIES = ["cir-tiny-rn", "cir-tiny-vit", "cir-tiny-siglip", "cir-tiny-hftext", "cir-tiny-xlmr", "cir-tiny-convnext",
            "cir-tiny-eva"]
"""Checked through a full stage-1 step."""
CAPTIONS = ["is red and has a small circle", "make the large star blue", "remove the square", "x"]


def saved_bytes(fn, model=None):
    """(fn(), bytes of the distinct tensor storages autograd saved for the backward pass during fn,
    `model`'s parameters excluded: activations only)."""
    storages = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()} if model is not None else set()

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, sum(storages.values())


def _step(model, images, tokens):
    """A stage-1 step's forward and backward (both towers): loss, saved bytes per tower, gradients."""
    model.zero_grad()
    image_features, image_bytes = saved_bytes(lambda: model.encode_image(images), model)
    text_features, text_bytes = saved_bytes(lambda: encode_text(model, tokens), model)
    reference, target = image_features.chunk(2)
    loss = batch_contrastive_loss(*query_and_target(reference, text_features, target))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), {"image": image_bytes, "text": text_bytes}, grads


def _inputs(clip, n=2, seed=1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2 * n, 3, clip.input_size, clip.input_size, generator=generator)
    return images, clip.tokenize(CAPTIONS[:n])


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_checkpoints_with_the_same_gradients(name, hf_standins):
    clip = load_clip(name)
    model = clip.model.eval()  # as stage 1 trains
    images, tokens = _inputs(clip)
    keys = list(model.state_dict())
    loss, kept, grads = _step(model, images, tokens)
    assert enable_grad_checkpointing(model) == {"image": True, "text": True}
    checkpointed_loss, checkpointed_kept, checkpointed_grads = _step(model, images, tokens)
    assert list(model.state_dict()) == keys  # checkpoints keep their parameter names
    torch.testing.assert_close(checkpointed_loss, loss, rtol=1e-6, atol=1e-6)
    assert checkpointed_grads.keys() == grads.keys() and len(grads) > 10
    for key, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[key], grad, rtol=1e-5, atol=1e-6 * grad.abs().max().item())
    for tower in ("image", "text"):
        assert checkpointed_kept[tower] < 0.6 * kept[tower], (tower, kept, checkpointed_kept)


def _per_tower(model, images, tokens):
    return (saved_bytes(lambda: model.encode_image(images), model),
            saved_bytes(lambda: encode_text(model, tokens), model))


def test_resnet_stages_are_checkpointed_here_not_by_open_clip():
    clip = load_clip("cir-tiny-rn")
    model = clip.model.eval()
    images = _inputs(clip)[0]
    plain = saved_bytes(lambda: model.encode_image(images))[1]
    model.set_grad_checkpointing(True)  # open_clip's switch alone: ModifiedResNet ignores it
    assert saved_bytes(lambda: model.encode_image(images))[1] == plain
    enable_grad_checkpointing(model)
    assert all(isinstance(getattr(model.visual, s), Checkpointed) for s in ("layer1", "layer2", "layer3", "layer4"))
    assert saved_bytes(lambda: model.encode_image(images))[1] < 0.6 * plain
    # Nothing to differentiate (a frozen tower): no checkpoint, nothing saved.
    for p in model.visual.parameters():
        p.requires_grad_(False)
    assert saved_bytes(lambda: model.encode_image(images))[1] == 0
    # The model still copies and pickles with its checkpointed stages.
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(copied.visual.layer1, Checkpointed) and copied.visual.layer1 is not model.visual.layer1
        torch.testing.assert_close(copied.encode_image(images), model.encode_image(images))


def test_batch_norm_statistics_updated_once_in_training_mode():
    """In training mode a recomputed stage normalises with its batch statistics again but must not
    move BatchNorm's running statistics a second time."""
    states, grads = [], []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        clip = load_clip("cir-tiny-rn")
        model = clip.model.train()
        if checkpointed:
            enable_grad_checkpointing(model)
        images = _inputs(clip)[0]
        model.encode_image(images).pow(2).sum().backward()
        states.append({k: v.clone() for k, v in model.visual.state_dict().items()})
        grads.append({n: p.grad.clone() for n, p in model.visual.named_parameters()})
    assert any("running_mean" in k for k in states[0])
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=1e-6, atol=1e-7, msg=key)
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, rtol=1e-5, atol=1e-6 * grad.abs().max().item())


def test_a_tower_that_cannot_be_checkpointed_is_named_in_one_line(caplog):
    model = load_clip("cir-tiny-convnext").model

    def unsupported(enable=True):
        raise NotImplementedError

    model.visual.trunk.set_grad_checkpointing = unsupported
    with caplog.at_level(logging.INFO, logger="clip_cir"):
        caplog.clear()  # loading's own lines
        assert enable_grad_checkpointing(model) == {"image": False, "text": True}
    ours = [r for r in caplog.records if r.name == "clip_cir"]
    assert [r.getMessage() for r in ours if r.levelno == logging.WARNING] == [
        "--grad-checkpointing: the image tower (TimmModel) cannot be checkpointed; it keeps all its activations"]
    assert [r.getMessage() for r in ours if r.levelno == logging.INFO] == [
        "gradient checkpointing: text tower (Transformer)"]


def test_stage1_with_grad_checkpointing_trains_the_same_resnet(synth_root, tmp_path, info_logging):
    common = dict(model="cir-tiny-rn", encoder="both", epochs=1, batch_size=60, lr=1e-3, validation_frequency=1)
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "checkpointed", **common, grad_checkpointing=True))
    lines = [r.getMessage() for r in info_logging.records if r.name == "clip_cir"]
    assert "gradient checkpointing: image tower (ModifiedResNet), text tower (Transformer)" in lines
    info_logging.clear()
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "plain", **common))
    assert info_logging.records and not any(r.getMessage().startswith("gradient checkpointing")
                                            for r in info_logging.records)
    plain = load_file(str(tmp_path / "plain" / "last" / "clip.safetensors"))
    checkpointed = load_file(str(tmp_path / "checkpointed" / "last" / "clip.safetensors"))
    seed_everything(0)  # the runs' --seed: their initial weights
    start = load_clip("cir-tiny-rn").model.state_dict()
    assert plain.keys() == checkpointed.keys() == start.keys()
    assert any(not torch.equal(plain[k], start[k]) for k in plain if k.startswith("visual.layer1."))
    for key, value in plain.items():
        torch.testing.assert_close(checkpointed[key], value, rtol=1e-4, atol=1e-6, msg=key)
    scores = [json.loads((tmp_path / run / "last" / "clip.json").read_text())["metrics"]["score"]
              for run in ("plain", "checkpointed")]
    assert scores[0] == pytest.approx(scores[1], abs=1e-3)


def test_checkpointed_forward_without_gradients_matches(hf_standins):
    clip = load_clip("cir-tiny-hftext")
    model = clip.model.eval()
    images, tokens = _inputs(clip)
    with torch.no_grad():
        before = F.normalize(encode_text(model, tokens), dim=-1), model.encode_image(images)
        enable_grad_checkpointing(model)
        after = F.normalize(encode_text(model, tokens), dim=-1), model.encode_image(images)
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def _backbone_memory():
    import importlib.util

    path = REPO / "benchmarks" / "backbone_memory.py"
    spec = importlib.util.spec_from_file_location("backbone_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backbone_memory_estimate_counts_what_a_real_model_holds():
    """benchmarks/backbone_memory.py: exact parameter counts from the meta device, the state
    arithmetic, and activations counted on the meta device against the same count on real tensors
    (an upper bound: the meta device's attention keeps its probabilities)."""
    memory = _backbone_memory()
    params = {"image": 10, "text": 3}
    assert memory.state_bytes(params, "text") == 3 * 16 + 10 * 4 and memory.state_bytes(params, "both") == 13 * 16
    assert memory.peak_bytes(params, "text", 100) == 3 * 16 + 10 * 4 + 3 * 2 + 100  # forward/backward phase
    assert memory.peak_bytes(params, "both", 1) == 13 * 16 + 13 * 4  # AdamW's step phase
    # Bounds: the meta device's attention keeps its probabilities, ResNet convolutions match.
    bounds = {"cir-tiny-rn": {"image": 1.02, "text": 1.25}, "cir-tiny-vit": {"image": 1.25, "text": 1.25}}
    for name, ratio in bounds.items():
        clip = load_clip(name)
        model = clip.model.eval()
        visual = sum(p.numel() for p in model.visual.parameters())
        assert memory.tower_parameters(memory.build(name)) == {
            "image": visual, "text": sum(p.numel() for p in model.parameters()) - visual}
        estimate = memory.activations_per_sample(name)
        images = torch.zeros(2, 3, clip.input_size, clip.input_size)
        tokens = torch.ones(2, model.context_length, dtype=torch.long)
        real = dict(zip(("image", "text"), (kept / 2 for _, kept in _per_tower(model, images, tokens))))
        enable_grad_checkpointing(model)
        fewer = dict(zip(("image", "text"), (kept / 2 for _, kept in _per_tower(model, images, tokens))))
        for tower in ("image", "text"):
            assert real[tower] <= estimate[tower]["plain"] <= ratio[tower] * real[tower], (name, tower)
            assert fewer[tower] <= estimate[tower]["checkpointed"] <= ratio[tower] * fewer[tower], (name, tower)
            assert 0 < estimate[tower]["unit"] < estimate[tower]["plain"]
