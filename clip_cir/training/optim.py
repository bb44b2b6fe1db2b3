"""The optimizer and its learning-rate schedule: torch's fused Adam/AdamW where the device has
it, open_clip's warmup + const/cosine schedule as a function of the step count alone."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from clip_cir.config import TrainingConfig

log = logging.getLogger("clip_cir")


@dataclass(frozen=True)
class LRSchedule:
    """open_clip's `const_lr` / `cosine_lr` (open_clip_train/scheduler.py): the learning rate is a
    pure function of the optimizer-step count, set on every parameter group before each step.

    Because it depends on nothing but the step, resuming needs only the step count, and a resumed
    run sets exactly the learning rates an uninterrupted one does. `const` with no warmup sets
    `base_lr` (the optimizer's own learning rate) every step: training is unchanged by it.
    """

    kind: str
    base_lr: float
    warmup: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:  # open_clip's _warmup_lr
            return self.base_lr * (step + 1) / self.warmup
        if self.kind == "const":
            return self.base_lr
        if self.kind == "cosine":  # step < total_steps, so the denominator is positive here
            e, es = step - self.warmup, self.total_steps - self.warmup
            return 0.5 * (1 + math.cos(math.pi * e / es)) * self.base_lr
        raise ValueError(f"unknown learning-rate schedule {self.kind!r}")

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's learning rate (times the group's `lr_scale`, 1 by default: a program
        whose networks train at different rates keeps their ratio through the schedule)."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    @classmethod
    def from_config(cls, training: TrainingConfig, steps_per_epoch: int) -> "LRSchedule":
        schedule = cls(kind=training.lr_scheduler, base_lr=training.lr, warmup=training.warmup,
                       total_steps=training.epochs * steps_per_epoch)
        if schedule.warmup >= schedule.total_steps and schedule.warmup:
            log.warning("--warmup %d covers all %d optimizer steps: the learning rate never reaches --lr",
                        schedule.warmup, schedule.total_steps)
        return schedule


KERNEL_FLAGS = ("fused", "foreach")


def fused_kernel_devices() -> set[str]:
    """Device types torch has fused Adam(W) kernels for ('cpu' from torch 2.4; 'cuda' always)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch that moved it: CUDA is the one every fused-capable torch covers
        return {"cuda"}
    return set(_get_fused_kernels_supported_devices())


def make_optimizer(cls: type[torch.optim.Optimizer], params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """`cls(params, **kwargs)` with torch's fused kernel where every parameter's device and dtype
    have one (Adam and AdamW on CUDA, and on CPU from torch 2.4), else torch's default.

    The same update, computed in one kernel over all parameters instead of a loop of small
    per-tensor ops: on a CPU that loop over a CLIP text tower (its 49,408-row token embedding
    included) took as long as the step's forward and backward together. Decided here, from the
    parameters (already on their device): recent torch checks the device only at the first step.
    """
    params = list(params)
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    devices = fused_kernel_devices()
    if not all(p.is_floating_point() and p.device.type in devices for p in tensors):
        log.debug("no fused %s for these parameters: torch's default implementation", cls.__name__)
        return cls(params, **kwargs)
    return cls(params, fused=True, **kwargs)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(state)`, keeping this optimizer's kernel choice (fused or not):
    it belongs to the machine that resumes, not to the one that saved. A state with other
    parameter groups goes to torch unchanged, which says what does not match."""
    saved = state["param_groups"]
    if len(saved) == len(optimizer.param_groups):
        saved = [{**group_state, **{k: group[k] for k in KERNEL_FLAGS if k in group}}
                 for group_state, group in zip(saved, optimizer.param_groups)]
    optimizer.load_state_dict({**state, "param_groups": saved})
    # State saved with its parameter in another memory format (a run resumed with another
    # --channels-last): given the parameter's layout, as fused kernels walk both in memory order.
    for group in optimizer.param_groups:
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            for key, value in moments.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    moments[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
