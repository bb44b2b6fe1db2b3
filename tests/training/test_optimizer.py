"""`make_optimizer`: torch's fused Adam(W) where it exists, the same updates as the default
implementation, and resumable from states saved by either."""

from __future__ import annotations

import copy

import pytest
import torch

from clip_cir.training import optim
from clip_cir.training.optim import (
    fused_kernel_devices,
    load_optimizer_state,
    make_optimizer,
)

needs_cpu_fused = pytest.mark.skipif("cpu" not in fused_kernel_devices(),
                                     reason="this torch has no fused Adam(W) for CPU (torch < 2.4)")


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((300, 16), (16,), (7, 5, 3))]


def _steps(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], first: int, n: int) -> None:
    for step in range(first, first + n):
        generator = torch.Generator().manual_seed(1000 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()


@needs_cpu_fused
@pytest.mark.parametrize("cls, kwargs", [(torch.optim.AdamW, {"lr": 1e-2, "eps": 1e-7, "weight_decay": 0.1}),
                                         (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-3})])
def test_fused_optimizer_updates_like_the_default_one(cls, kwargs):
    fused_params, default_params = _params(), _params()
    fused = make_optimizer(cls, fused_params, **kwargs)
    default = cls(default_params, **kwargs)
    assert fused.param_groups[0]["fused"] is True  # torch 2.4+ has fused Adam(W) on CPU
    assert not default.param_groups[0].get("fused")
    _steps(fused, fused_params, 0, 5)
    _steps(default, default_params, 0, 5)
    moved = max((p - q).abs().max().item() for p, q in zip(default_params, _params()))
    assert moved > 0.04  # 5 steps of lr 1e-2: the comparison below is not between unmoved tensors
    for p, q in zip(fused_params, default_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@needs_cpu_fused
def test_state_saved_without_fused_kernel_resumes_fused_with_the_same_updates():
    kwargs = {"lr": 1e-2, "weight_decay": 0.1}
    saved_params = _params()
    saved = torch.optim.AdamW(saved_params, **kwargs)  # e.g. a run saved before clip-cir used fused kernels
    _steps(saved, saved_params, 0, 3)
    state = copy.deepcopy(saved.state_dict())

    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in saved_params]
    resumed = make_optimizer(torch.optim.AdamW, resumed_params, **kwargs)
    load_optimizer_state(resumed, state)
    assert resumed.param_groups[0]["fused"] is True  # this machine's kernel, not the saved one's
    assert int(resumed.state[resumed_params[0]]["step"]) == 3
    _steps(resumed, resumed_params, 3, 3)
    _steps(saved, saved_params, 3, 3)
    for p, q in zip(resumed_params, saved_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_device_without_fused_kernels_gets_the_default_implementation(monkeypatch):
    monkeypatch.setattr(optim, "fused_kernel_devices", lambda: {"cuda"})  # as torch < 2.4 on a CPU
    params = _params()
    optimizer = make_optimizer(torch.optim.AdamW, params, lr=1e-2)
    assert not optimizer.param_groups[0].get("fused")
    _steps(optimizer, params, 0, 1)  # and it steps (recent torch would only fail here, at the first step)
    assert not torch.equal(params[0], _params()[0])


def test_state_with_other_parameter_groups_is_refused_by_torch():
    params = _params()
    two_groups = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}], lr=1e-2)
    _steps(two_groups, params, 0, 1)
    one_group = make_optimizer(torch.optim.AdamW, params, lr=1e-2)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        load_optimizer_state(one_group, two_groups.state_dict())
