"""Gradient checkpointing for every tower a CLIP may have, and a line saying what it covers.

open_clip's `set_grad_checkpointing` covers its own transformers and timm towers, but it leaves
ResNet image towers (`ModifiedResNet`, e.g. RN50x4) as they are, and a Hugging Face text tower
checkpoints only in training mode, while stage 1 trains with the whole CLIP in eval mode. Here a
ResNet's four stages and a Hugging Face tower's layers are recomputed in the backward pass
instead, with `torch.utils.checkpoint` (non-reentrant), whatever the mode: the same gradients for
far less activation memory. Modules keep their parameter names, so checkpoints are unchanged.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger("clip_cir")

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


@contextmanager
def _batch_norm_statistics_kept(module: nn.Module) -> Iterator[None]:
    """While a checkpointed module is recomputed: BatchNorm layers in training mode normalise as
    in the forward pass (with the batch's statistics) but do not update their running statistics a
    second time."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.training and m.track_running_stats]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _needs_graph(module: nn.Module, inputs: list) -> bool:
    return torch.is_grad_enabled() and (
        any(isinstance(a, torch.Tensor) and a.requires_grad for a in inputs)
        or any(p.requires_grad for p in module.parameters()))


class Checkpointed:
    """Mixin put in front of a module's own class: its forward runs under `torch.utils.checkpoint`
    whenever a backward pass will need it (gradients enabled and something to differentiate)."""

    def forward(self, *args, **kwargs):
        own_forward = super().forward
        # A Hugging Face layer checkpoints itself in training mode: not twice.
        hf_checkpoints_itself = getattr(self, "gradient_checkpointing", False) and self.training
        if hf_checkpoints_itself or not _needs_graph(self, [*args, *kwargs.values()]):
            return own_forward(*args, **kwargs)
        return checkpoint(own_forward, *args, use_reentrant=False,
                          context_fn=lambda: (nullcontext(), _batch_norm_statistics_kept(self)), **kwargs)


_CLASSES: dict[type, type] = {}


def checkpoint_module(module: nn.Module) -> None:
    """Make `module` checkpointed, in place (its class becomes a subclass of its own class)."""
    cls = type(module)
    if issubclass(cls, Checkpointed):
        return
    if cls not in _CLASSES:
        name = f"Checkpointed{cls.__name__}"
        while name in globals():  # another class of the same name (from another module)
            name += "_"
        # Registered under its name in this module, so that models with checkpointed modules pickle.
        _CLASSES[cls] = globals()[name] = type(name, (Checkpointed, cls), {"__module__": __name__,
                                                                           "__qualname__": name})
    module.__class__ = _CLASSES[cls]


def _hf_layers(tower: nn.Module) -> list[nn.Module]:
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return []
    return [m for m in tower.modules() if isinstance(m, GradientCheckpointingLayer)]


def _is_checkpointed(tower: nn.Module) -> bool:
    return any(isinstance(m, Checkpointed) or getattr(m, "grad_checkpointing", False) is True
               for m in tower.modules())


def towers(model: nn.Module) -> dict[str, nn.Module]:
    """The image and text towers of an open_clip model (CLIP, CustomTextCLIP, CoCa)."""
    text = getattr(model, "text", None)
    text = getattr(model, "transformer", None) if text is None else text
    return {name: tower for name, tower in (("image", getattr(model, "visual", None)), ("text", text))
            if tower is not None}


def enable_grad_checkpointing(model: nn.Module) -> dict[str, bool]:
    """Checkpoint every tower of `model` that can be: open_clip's own switch, plus ResNet stages
    and Hugging Face layers here. Returns {tower: checkpointed} and logs one line, naming any
    tower that cannot be checkpointed (it keeps all its activations)."""
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    parts = towers(model)
    if isinstance(parts.get("image"), ModifiedResNet):
        for stage in RESNET_STAGES:
            checkpoint_module(getattr(parts["image"], stage))
    if "text" in parts:
        for layer in _hf_layers(parts["text"]):
            checkpoint_module(layer)
    done = {name: _is_checkpointed(tower) for name, tower in parts.items()}
    described = ", ".join(f"{name} tower ({type(parts[name]).__name__})" for name in done if done[name])
    log.info("gradient checkpointing: %s", described or "none")
    for name in (n for n, ok in done.items() if not ok):
        log.warning("--grad-checkpointing: the %s tower (%s) cannot be checkpointed; it keeps all its activations",
                    name, type(parts[name]).__name__)
    return done
