"""When the loop validates and which checkpoint it keeps as best: the published schedule (the
published loops validate after the 0-based epochs with `epoch % N == 0`), checked against that
rule written out here, on a fake stage (fast) and on stage 1 and stage 2 (with a resume)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import ScriptedStage
from safetensors.torch import load_file

from clip_cir.config import TrainingConfig
from clip_cir.training.loop import Selection, TrainedRun, fit
from clip_cir.training.optim import LRSchedule
from clip_cir.training.run import Run


def published_validation_epochs(epochs: int, validation_frequency: int) -> list[int]:
    """The published training loops, as written there: `for epoch in range(num_epochs): train...;
    if epoch % validation_frequency == 0: validate`, reported here as 1-based epochs."""
    validated = []
    for epoch in range(epochs):
        if epoch % validation_frequency == 0:
            validated.append(epoch + 1)
    return validated


def _fit(tmp_path, scores: list[float], epochs: int, frequency: int, schedule: str = "published") -> ScriptedStage:
    from accelerate import Accelerator

    stage = ScriptedStage(scores)
    run = Run(path=tmp_path, is_main=True)
    training = TrainingConfig(epochs=epochs, validation_frequency=frequency, validation_schedule=schedule)
    fit(Accelerator(cpu=True), run, stage, training, LRSchedule("const", 0.1, 0, epochs * 2), progress=False)
    return stage


@pytest.mark.parametrize("epochs,frequency", [(3, 1), (7, 3), (6, 3), (10, 4), (2, 5)])
def test_the_loop_validates_after_the_published_epochs(tmp_path, epochs, frequency):
    expected = published_validation_epochs(epochs, frequency)
    stage = _fit(tmp_path, [1.0] * len(expected), epochs, frequency)
    assert stage.validated == expected
    assert list(pd.read_csv(tmp_path / "validation_metrics.csv")["epoch"]) == expected
    # `last/` is the final epoch's state, validated or not.
    assert json.loads((tmp_path / "last" / "model.json").read_text())["epoch"] == epochs


def test_every_nth_and_last_schedule(tmp_path):
    stage = _fit(tmp_path, [1.0] * 3, epochs=7, frequency=3, schedule="every-nth-and-last")
    assert stage.validated == [3, 6, 7]


def test_best_checkpoint_is_the_epoch_that_scored_best(tmp_path):
    """Scores 5, 3, 4 after epochs 1, 2, 3: best/ holds epoch 1's weights, last/ epoch 3's."""
    stage = _fit(tmp_path, [5.0, 3.0, 4.0], epochs=3, frequency=1)
    assert stage.validated == [1, 2, 3]
    best = load_file(str(tmp_path / "best" / "model.safetensors"))
    last = load_file(str(tmp_path / "last" / "model.safetensors"))
    assert json.loads((tmp_path / "best" / "model.json").read_text())["epoch"] == 1
    assert all(torch.equal(best[k], stage.weights_at[1][k]) for k in best)
    assert not all(torch.equal(best[k], stage.weights_at[3][k]) for k in best)
    assert all(torch.equal(last[k], stage.weights_at[3][k]) for k in last)
    state = torch.load(tmp_path / "last" / "training_state.pt", weights_only=True)
    assert state["best"] == {"score": 5.0}


def test_selection_keeps_each_keys_best():
    selection = Selection(keys=("score", "harmonic_mean"))
    assert selection.improved({"score": 5, "harmonic_mean": 1}) == ["score", "harmonic_mean"]
    assert selection.improved({"score": 3, "harmonic_mean": 2}) == ["harmonic_mean"]
    assert selection.improved({"score": 4, "harmonic_mean": 2}) == []
    assert selection.best == {"score": 5, "harmonic_mean": 2}


def _common(synth_root, tmp_path, name: str) -> dict:
    return dict(dataset="cirr", data_root=synth_root, model="cir-tiny-vit", lr=1e-4, output_dir=tmp_path,
                experiment_name=name, num_workers=0, no_progress=True)


@pytest.mark.parametrize("frequency", [1, 3])
def test_stage1_validates_after_the_published_epochs(synth_root, tmp_path, frequency):
    import clip_cir

    epochs = 4
    run = clip_cir.finetune(**_common(synth_root, tmp_path, f"n{frequency}"), encoder="text", batch_size=40,
                            epochs=epochs, validation_frequency=frequency)
    val = pd.read_csv(run.path / "validation_metrics.csv")
    assert list(val["epoch"]) == published_validation_epochs(epochs, frequency)
    best = json.loads((run.path / "best" / "clip.json").read_text())
    assert best["epoch"] == int(val.loc[val["score"].idxmax(), "epoch"])
    assert run.best["score"] == pytest.approx(val["score"].max())
    assert json.loads((run.path / "last" / "clip.json").read_text())["epoch"] == epochs


def test_stage2_resumed_mid_run_validates_as_an_uninterrupted_run(synth_root, tmp_path):
    """N = 3 over 7 epochs: validations after 1, 4 and 7. A run stopped after epoch 5 (not a
    validation epoch) and resumed to 7 validates after the same epochs and keeps the same best."""
    import clip_cir

    common = dict(**_common(synth_root, tmp_path, "straight"), batch_size=40, validation_frequency=3)
    straight = clip_cir.train_combiner(**common, epochs=7)
    common["experiment_name"] = "resumed"
    clip_cir.train_combiner(**common, epochs=5)
    assert list(pd.read_csv(tmp_path / "resumed" / "validation_metrics.csv")["epoch"]) == [1, 4]
    resumed = clip_cir.train_combiner(resume=tmp_path / "resumed", epochs=7, no_progress=True)
    expected = published_validation_epochs(7, 3)
    for run in (straight, resumed):
        assert list(pd.read_csv(run.path / "validation_metrics.csv")["epoch"]) == expected == [1, 4, 7]
    a = pd.read_csv(straight.path / "validation_metrics.csv")
    b = pd.read_csv(resumed.path / "validation_metrics.csv")
    pd.testing.assert_frame_equal(a, b)
    assert resumed.best == straight.best
    weights = [load_file(str(run.path / "best" / "combiner.safetensors")) for run in (straight, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_stage_without_validation_data_writes_last_on_the_schedule_and_keeps_no_best(tmp_path, monkeypatch):
    """`Stage.validates = False` (a zero-shot run without a benchmark): no validation, no best/,
    and last/ after the epochs the schedule would validate after (published, N = 2: 1, 3, 5) and
    after the last one."""
    from accelerate import Accelerator

    from clip_cir.training import loop

    written = []
    original = loop.save_checkpoint_dir

    def recording(path, modules, state=None):
        written.append((path.name, modules["model"][1]["epoch"]))
        original(path, modules, state)

    monkeypatch.setattr(loop, "save_checkpoint_dir", recording)
    stage = ScriptedStage([])
    stage.validates = False
    training = TrainingConfig(epochs=6, validation_frequency=2)
    fit(Accelerator(cpu=True), Run(path=tmp_path, is_main=True), stage, training, LRSchedule("const", 0.1, 0, 12),
        progress=False)
    assert stage.validated == [] and written == [("last", 1), ("last", 3), ("last", 5), ("last", 6)]
    assert not (tmp_path / "validation_metrics.csv").exists() and not (tmp_path / "best").exists()
    assert list(pd.read_csv(tmp_path / "train_metrics.csv")["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert TrainedRun(tmp_path, best={}, metrics={}).best_checkpoint == tmp_path / "last"
    assert TrainedRun(tmp_path, best={"score": 1.0}, metrics={}).best_checkpoint == tmp_path / "best"
