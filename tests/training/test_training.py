"""Stage 1, stage 2 and pretraining mechanics: feature reuse, DDP equivalence, resume after
SIGKILL, run-directory contents and offline tracking, through the Python API (DDP and the kill in
launched processes); the programs' one-line errors for bad settings on their command lines.
Learning itself is in tests/apps/test_pipeline.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from helpers import (
    REPO,
    command_line,
    initial_weights,
    launch_stage1,
    read_weights,
    stage1_args,
    stage1_options,
    stage2_args,
    stage2_options,
    update_gaps,
)

import clip_cir
from clip_cir.errors import CIRError


def test_text_encoder_run_encodes_no_image_after_first_epoch(synth_root, tmp_path):
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "text", encoder="text", epochs=3))
    run = tmp_path / "text"
    train = pd.read_csv(run / "train_metrics.csv")
    assert list(train["epoch"]) == [1, 2, 3]
    # Cumulative counts: everything is encoded by the end of epoch 1 (training images up front,
    # the val gallery at the first validation); later epochs and validations encode captions only.
    images = list(train["clip_images_encoded"])
    assert images[0] > 0 and images[1] == images[0] and images[2] == images[0]
    texts = list(train["clip_texts_encoded"])
    assert texts[2] > texts[1] > texts[0] > 0  # the text tower trains: captions are re-encoded
    val = pd.read_csv(run / "validation_metrics.csv")
    assert list(val["epoch"]) == [1, 2, 3]
    config = json.loads((run / "config.json").read_text())
    assert config["encoder"] == "text" and config["epochs"] == 3
    # The image tower really is frozen, and the text tower really trained.
    start = initial_weights("cir-tiny-vit")  # the run's seed: its random init is reproducible
    trained = read_weights(run / "last" / "clip.safetensors")
    assert all(torch.equal(trained[k], start[k]) for k in start if k.startswith("visual."))
    assert any(not torch.equal(trained[k], start[k]) for k in start if k.startswith("transformer."))
    meta = json.loads((run / "best" / "clip.json").read_text())
    assert meta["model_name"] == "cir-tiny-vit" and meta["encoder"] == "text"
    assert meta["metrics"]["score"] == pytest.approx(val["score"].max(), abs=1e-3)


def test_stage2_epochs_after_the_first_encode_nothing(synth_root, tmp_path):
    clip_cir.train_combiner(**stage2_options(synth_root, tmp_path, "comb", epochs=4, validation_frequency=2))
    train = pd.read_csv(tmp_path / "comb" / "train_metrics.csv")
    assert train["clip_images_encoded"].nunique() == 1 and train["clip_texts_encoded"].nunique() == 1
    run = tmp_path / "comb"
    for folder in ("best", "best_harmonic_mean", "best_geometric_mean", "last"):
        assert (run / folder / "combiner.safetensors").is_file(), folder
    meta = json.loads((run / "best" / "combiner.json").read_text())
    assert (meta["clip_feature_dim"], meta["projection_dim"], meta["hidden_dim"]) == (128, 512, 1024)
    # A second run on the same CLIP finds every feature in the cache.
    from clip_cir.encoding import extraction

    before = dict(extraction.encode_counts)
    clip_cir.train_combiner(**stage2_options(synth_root, tmp_path, "again", epochs=1))
    assert extraction.encode_counts["image"] == before.get("image", 0)
    assert extraction.encode_counts["text"] == before.get("text", 0)


def test_two_processes_train_like_one_with_the_same_global_batch(synth_root, tmp_path):
    """DDP with the gathered-with-gradient loss: 2 x 8 per process == 1 x 16. The ResNet tower has
    BatchNorm: CLIP stays in eval mode, so each rank normalises with the same running statistics."""
    common = dict(model="cir-tiny-rn", encoder="both", epochs=1, validation_frequency=5, cpu=True)
    launch_stage1(command_line(stage1_options(synth_root, tmp_path, "one", **common)), processes=1)
    launch_stage1(command_line(stage1_options(synth_root, tmp_path, "two", **common)), processes=2)
    one = pd.read_csv(tmp_path / "one" / "train_metrics.csv")
    two = pd.read_csv(tmp_path / "two" / "train_metrics.csv")
    assert one["steps"].item() == two["steps"].item() == 120 // 16
    assert two["train_loss"].item() == pytest.approx(one["train_loss"].item(), rel=1e-4)
    w1 = read_weights(tmp_path / "one" / "last" / "clip.safetensors")
    w2 = read_weights(tmp_path / "two" / "last" / "clip.safetensors")
    start = initial_weights("cir-tiny-rn")
    moved = [k for k in w1 if not torch.equal(w1[k], start[k])]
    assert not any(k.endswith(("running_mean", "running_var")) for k in moved)
    assert any(k.startswith("visual.") for k in moved) and any(k.startswith("transformer.") for k in moved)
    per_tensor, overall = update_gaps(w1, w2, start)
    assert per_tensor < 0.05 and overall < 0.01, (per_tensor, overall)


@pytest.mark.parametrize("schedule", [[], ["--lr-scheduler", "cosine", "--warmup", "20"]],
                         ids=["const", "cosine-warmup"])
def test_resume_after_sigkill_matches_uninterrupted_run(synth_root, tmp_path, schedule):
    """15 steps an epoch: the cosine run is killed in epoch 2, inside its 20-step warmup, and must
    continue the schedule from step 15, not restart it."""
    args = ["--encoder", "text", "--epochs", "3", "--batch-size", "8", "--seed", "3", *schedule]
    launch_stage1(stage1_args(synth_root, tmp_path, "straight", *args), processes=1)

    cmd = [sys.executable, str(REPO / "stage1" / "finetune.py"), *stage1_args(synth_root, tmp_path, "killed", *args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    state = tmp_path / "killed" / "last" / "training_state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # in epoch 2: epoch 1's state has just been saved
    proc.wait()
    train = pd.read_csv(tmp_path / "killed" / "train_metrics.csv")
    assert list(train["epoch"]) == [1], "the kill should land before epoch 2 ends"

    launch_stage1(["--resume", str(tmp_path / "killed"), "--no-progress"], processes=1)  # same environment
    straight = read_weights(tmp_path / "straight" / "last" / "clip.safetensors")
    resumed = read_weights(tmp_path / "killed" / "last" / "clip.safetensors")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    a = pd.read_csv(tmp_path / "straight" / "train_metrics.csv")
    b = pd.read_csv(tmp_path / "killed" / "train_metrics.csv")
    assert list(b["epoch"]) == [1, 2, 3]
    assert list(b["train_loss"]) == pytest.approx(list(a["train_loss"]), rel=1e-5)
    a_steps = pd.read_csv(tmp_path / "straight" / "train_steps.csv")
    b_steps = pd.read_csv(tmp_path / "killed" / "train_steps.csv")
    assert list(b_steps["step"]) == list(range(1, 46))  # epoch 2's rows from before the kill are gone
    assert list(b_steps["lr"]) == list(a_steps["lr"])  # the very same learning rate at every step
    # Warmup's last step (step + 1) / 20 * lr and cosine's first both set lr itself: 44 distinct values.
    assert len(set(a_steps["lr"])) == (1 if not schedule else 44)


def _open_clip_lrs(kind: str, base_lr: float, warmup: int, steps: int) -> list[float]:
    """The learning rates open_clip's own scheduler sets at steps 0 .. steps-1."""
    scheduler = pytest.importorskip("open_clip_train.scheduler")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    adjust = {"const": scheduler.const_lr, "cosine": scheduler.cosine_lr}[kind](optimizer, base_lr, warmup, steps)
    return [adjust(step) for step in range(steps)]


@pytest.mark.parametrize("kind", ["cosine", "const"])
def test_learning_rate_per_step_follows_open_clip(synth_root, tmp_path, kind):
    """120 triplets at batch 32: 3 steps an epoch, 12 in all, the first 5 warming up."""
    clip_cir.train_combiner(**stage2_options(synth_root, tmp_path, kind, epochs=4, validation_frequency=4,
                                             lr_scheduler=kind, warmup=5))
    steps = pd.read_csv(tmp_path / kind / "train_steps.csv")
    expected = _open_clip_lrs(kind, 1e-3, 5, 12)
    assert list(steps["step"]) == list(range(1, 13)) and list(steps["epoch"]) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert list(steps["lr"]) == pytest.approx(expected, rel=1e-12, abs=0)
    assert expected[0] == pytest.approx(1e-3 / 5) and expected[5] == pytest.approx(1e-3)
    epochs = pd.read_csv(tmp_path / kind / "train_metrics.csv")
    assert list(epochs["lr"]) == pytest.approx(expected[2::3], rel=1e-12, abs=0)  # each epoch's last step
    config = json.loads((tmp_path / kind / "config.json").read_text())
    assert (config["lr_scheduler"], config["warmup"]) == (kind, 5)


def test_comet_tracker_without_api_key_writes_offline_archive(synth_root, tmp_path, monkeypatch):
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    monkeypatch.setenv("COMET_CONFIG", str(tmp_path / "no_comet_config"))
    clip_cir.train_combiner(**stage2_options(synth_root, tmp_path, "tracked", epochs=2, tracker="comet_ml"))
    run = tmp_path / "tracked"
    archives = list((run / "comet").glob("*.zip"))
    assert len(archives) == 1, list((run / "comet").iterdir()) if (run / "comet").exists() else "no comet dir"
    import zipfile

    with zipfile.ZipFile(archives[0]) as archive:
        assert archive.namelist()  # a real, readable archive
    assert len(pd.read_csv(run / "train_metrics.csv")) == 2
    assert len(pd.read_csv(run / "validation_metrics.csv")) >= 1


BAD_SETTINGS = [
    ({"epochs": 0}, "--epochs must be positive"),
    ({"batch_size": 1000}, "larger than the 120 training triplets"),
    ({"log_every": 0}, "--log-every must be positive, got 0"),
    ({"model": "no-such-model"}, "unknown open_clip model 'no-such-model'"),
    ({"pretrained": "missing.pt"}, "missing.pt: checkpoint not found"),
]
"""Settings stage 1 refuses before it trains (a `pretrained` file is looked for under tmp_path), and
what the refusal says."""


def _with_paths(tmp_path, extra: dict) -> dict:
    return {k: (str(tmp_path / v) if k == "pretrained" else v) for k, v in extra.items()}


def test_bad_training_arguments_fail_before_training(synth_root, tmp_path, capsys):
    """On the command line: exit code 2 and the message in one line, no traceback, no run directory."""
    from clip_cir.apps.train import finetune_main

    cases = [(command_line(_with_paths(tmp_path, extra)), message) for extra, message in BAD_SETTINGS]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            finetune_main(stage1_args(synth_root, tmp_path, "bad", "--epochs", "1", *extra))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        finetune_main(["--resume", str(tmp_path / "nothing-here")])
    assert "config.json: not found" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", BAD_SETTINGS, ids=[next(iter(extra)) for extra, _ in BAD_SETTINGS])
def test_bad_training_settings_raise_before_training(synth_root, tmp_path, extra, message):
    """Through the Python API: a CIRError saying the same, and no run directory."""
    options = {**stage1_options(synth_root, tmp_path, "bad", epochs=1), **_with_paths(tmp_path, extra)}
    with pytest.raises(CIRError, match=re.escape(message)):
        clip_cir.finetune(**options)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(CIRError, match="config.json: not found"):
        clip_cir.finetune(resume=tmp_path / "nothing-here")


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_a_batch_larger_than_the_training_data_is_refused_in_one_line(synth_root, tmp_path, capsys, stage):
    """Both stages refuse alike (an epoch of whole batches would have no step), before any run
    directory exists."""
    from clip_cir.apps.train import finetune_main, train_combiner_main

    main, args, prog = {"stage1": (finetune_main, stage1_args, "stage1/finetune.py"),
                        "stage2": (train_combiner_main, stage2_args, "stage2/train_combiner.py")}[stage]
    with pytest.raises(SystemExit) as exit_info:
        main(args(synth_root, tmp_path, "big", "--batch-size", "121"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{prog}: error: --batch-size 121 is larger than the 120 training triplets: give a "
                   "--batch-size of at most 120"], err
    assert not (tmp_path / "big").exists()


def test_ctrl_c_ends_a_program_in_one_line_with_exit_code_130(synth_root, tmp_path, capsys, monkeypatch):
    """Ctrl-C (a KeyboardInterrupt) during a run, here right after epoch 1's checkpoint: the
    command line says so in one line and exits with 130, the run keeps what it had saved."""
    from clip_cir.apps.train import train_combiner_main
    from clip_cir.training import loop

    save = loop.save_checkpoint_dir

    def save_then_stop(path, modules, state=None):
        save(path, modules, state)
        if state is not None:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint_dir", save_then_stop)
    with pytest.raises(SystemExit) as stopped:
        train_combiner_main(stage2_args(synth_root, tmp_path, "stopped", "--epochs", "2"))
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "stage2/train_combiner.py: interrupted"
    assert list(pd.read_csv(tmp_path / "stopped" / "train_metrics.csv")["epoch"]) == [1]
