"""The shared training loop reads the loss back only every --log-every optimizer steps (and at
each epoch's last): no device sync per step, yet train_steps.csv keeps every step's learning rate
and the logged steps' losses are the very numbers a run logging every step records."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import stage2_options

import clip_cir
from clip_cir.config import TrainingConfig
from clip_cir.training.loop import Selection, Stage, fit
from clip_cir.training.optim import LRSchedule
from clip_cir.training.run import Run

EPOCHS, STEPS_PER_EPOCH = 3, 4  # 12 optimizer steps


class Batches:
    """Four batches an epoch, drawn from (epoch) alone, as the loop's loaders are."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return STEPS_PER_EPOCH

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.epoch)
        for _ in range(STEPS_PER_EPOCH):
            yield {"x": torch.randn(8, 5, generator=generator), "y": torch.randn(8, 3, generator=generator)}


class Regression(Stage):
    """A linear least-squares stage: plain SGD (no optimizer reads a tensor back), validation in
    Python floats, so every `.item()` during `fit` is the loop's own."""

    def __init__(self):
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)
        super().__init__(model, torch.optim.SGD(model.parameters(), lr=0.1), Batches(), Selection(keys=()))

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(batch["x"]), batch["y"]

    def loss(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(*features)

    def train_mode(self) -> None:
        self.model.train()

    def validate(self, epoch: int) -> dict[str, float]:
        return {"score": 0.0}

    def saved_modules(self, epoch: int, metrics: dict) -> dict:
        return {"model": (self.model, {})}


def _fit(tmp_path, name: str, log_every: int, monkeypatch) -> tuple[int, pd.DataFrame]:
    """(`.item()` calls during `fit`, the run's train_steps.csv)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    stage = Regression()
    run = Run(path=tmp_path / name, is_main=True)
    run.path.mkdir()
    calls = []
    item = torch.Tensor.item

    def counted_item(tensor: torch.Tensor):
        calls.append(tensor)
        return item(tensor)

    with monkeypatch.context() as patched:
        patched.setattr(torch.Tensor, "item", counted_item)
        training = TrainingConfig(epochs=EPOCHS, validation_frequency=EPOCHS, log_every=log_every)
        fit(accelerator, run, stage, training, LRSchedule("cosine", 0.1, 3, EPOCHS * STEPS_PER_EPOCH), progress=False)
    return len(calls), pd.read_csv(run.path / "train_steps.csv")


def test_loss_is_read_back_every_n_steps_and_at_each_epochs_end(tmp_path, monkeypatch):
    every_step_calls, every_step = _fit(tmp_path, "every", 1, monkeypatch)
    calls, logged = _fit(tmp_path, "fifth", 5, monkeypatch)
    # One read per logged step plus the epoch mean once per epoch.
    assert every_step_calls == EPOCHS * STEPS_PER_EPOCH + EPOCHS
    logged_steps = [4, 5, 8, 10, 12]  # every 5th step and each epoch's last (4, 8, 12)
    assert calls == len(logged_steps) + EPOCHS
    assert list(logged["step"]) == list(every_step["step"]) == list(range(1, 13))
    assert list(logged["lr"]) == list(every_step["lr"])  # every step's learning rate, logged or not
    assert len(set(logged["lr"])) > 1
    assert list(logged.loc[logged["loss"].notna(), "step"]) == logged_steps
    assert every_step["loss"].notna().all()
    expected = every_step.set_index("step").loc[logged_steps, "loss"]
    assert list(logged.set_index("step").loc[logged_steps, "loss"]) == list(expected)


def test_stage2_logged_losses_equal_those_of_a_run_logging_every_step(synth_root, tmp_path):
    """120 triplets at batch 30: 4 steps an epoch, 12 in 3 epochs."""
    common = dict(epochs=EPOCHS, batch_size=30, validation_frequency=3)
    clip_cir.train_combiner(**stage2_options(synth_root, tmp_path, "every", **common, log_every=1))
    clip_cir.train_combiner(**stage2_options(synth_root, tmp_path, "fifth", **common, log_every=5))
    every = pd.read_csv(tmp_path / "every" / "train_steps.csv").set_index("step")
    fifth = pd.read_csv(tmp_path / "fifth" / "train_steps.csv").set_index("step")
    assert list(every.index) == list(fifth.index) == list(range(1, 13))
    assert list(fifth["lr"]) == list(every["lr"])
    logged = list(fifth.index[fifth["loss"].notna()])
    assert logged == [4, 5, 8, 10, 12]
    assert every["loss"].notna().all() and len(set(every["loss"])) == 12
    assert list(fifth.loc[logged, "loss"]) == list(every.loc[logged, "loss"])
    epochs = [pd.read_csv(tmp_path / name / "train_metrics.csv") for name in ("every", "fifth")]
    assert list(epochs[0]["train_loss"]) == list(epochs[1]["train_loss"])
    # The epoch's mean is every step's loss, summed on the device.
    means = every.groupby("epoch")["loss"].mean()
    assert list(epochs[1]["train_loss"]) == pytest.approx(list(means), rel=1e-6)
    assert not any(math.isnan(v) for v in epochs[1]["train_loss"])
