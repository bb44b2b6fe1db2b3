"""--accum-steps: a batch in K micro-batches trains exactly like the batch in one piece."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    REPO,
    command_line,
    ddp_launcher,
    initial_weights,
    pretrain_options,
    read_weights,
    stage1_args,
    stage1_options,
    update_gaps,
)

import clip_cir

STEPS = 3  # 120 synthetic training triplets at batch 32, drop_last


def test_split_batch_keeps_order_and_rejects_uneven_splits():
    from clip_cir.training.accumulation import split_batch

    batch = {"image": torch.arange(8).reshape(8, 1), "caption": [f"c{i}" for i in range(8)]}
    parts = split_batch(batch, 4)
    assert [p["caption"] for p in parts] == [["c0", "c1"], ["c2", "c3"], ["c4", "c5"], ["c6", "c7"]]
    assert torch.equal(torch.cat([p["image"] for p in parts]), batch["image"])
    with pytest.raises(ValueError, match="does not split into 3"):
        split_batch(batch, 3)


def _dropout_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 4))


def _pair_loss(features) -> torch.Tensor:
    queries, targets = features
    logits = F.normalize(queries, dim=-1) @ F.normalize(targets, dim=-1).t() * 10
    return F.cross_entropy(logits, torch.arange(len(queries)))


def test_re_forward_replays_each_micro_batch_dropout():
    """The gradient equals the one-piece gradient of the loss over the very masks the feature pass
    drew: each micro-batch in turn, from the same seed. Without replaying the random state the
    re-forward would draw new masks and the gradient would differ."""
    from accelerate import Accelerator

    from clip_cir.training.accumulation import split_batch, training_step

    accelerator = Accelerator(cpu=True)
    x, targets = torch.randn(8, 6), torch.randn(8, 4)
    batch = {"x": x, "target": targets}

    reference = _dropout_model()
    torch.manual_seed(123)
    queries = torch.cat([reference(part["x"]) for part in split_batch(batch, 4)])
    _pair_loss((queries, targets)).backward()

    model = _dropout_model()
    torch.manual_seed(123)
    training_step(accelerator, model, lambda b: (model(b["x"]), b["target"]), _pair_loss, batch, accum_steps=4)
    for mine, expected in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine.grad, expected.grad, rtol=1e-5, atol=1e-7)
    other = _dropout_model()  # control: other masks, other gradient (the test can tell)
    torch.manual_seed(7)
    _pair_loss((torch.cat([other(part["x"]) for part in split_batch(batch, 4)]), targets)).backward()
    assert not torch.allclose(other[0].weight.grad, reference[0].weight.grad, rtol=1e-3)


@pytest.mark.parametrize("encoder,model", [("both", "cir-tiny-rn"), ("text", "cir-tiny-vit")])
def test_stage1_accumulated_batch_equals_batch_in_one_piece(synth_root, tmp_path, encoder, model):
    """Three optimizer steps of batch 32 in 4 micro-batches of 8 give the weights of batch 32 in one
    piece: with a trained image tower (BatchNorm in eval mode) and with a frozen, precomputed one."""
    common = dict(encoder=encoder, epochs=1, batch_size=32, model=model, log_every=1)
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "whole", **common))
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "accum", **common, accum_steps=4))
    whole = read_weights(tmp_path / "whole" / "last" / "clip.safetensors")
    accum = read_weights(tmp_path / "accum" / "last" / "clip.safetensors")
    per_tensor, overall = update_gaps(whole, accum, initial_weights(model))
    # Float32 sums in another order: the gap depends on the CPU (0.020 seen on some), not on the method.
    assert per_tensor < 0.03 and overall < 2e-3, (per_tensor, overall)
    import pandas as pd

    a, b = (pd.read_csv(tmp_path / n / "train_steps.csv") for n in ("whole", "accum"))
    assert len(a) == len(b) == STEPS
    assert list(b["loss"]) == pytest.approx(list(a["loss"]), rel=1e-5)


def test_stage1_accumulation_under_two_processes_equals_one_piece(synth_root, tmp_path):
    """DDP: each rank's 16 in 4 micro-batches of 4, the loss over every rank's targets, one
    all-reduce per step == one process with the whole batch of 32."""
    import os

    common = dict(encoder="both", epochs=1, batch_size=32, model="cir-tiny-rn", cpu=True)
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "whole", **common))
    cmd = [sys.executable, *ddp_launcher(2), str(REPO / "stage1" / "finetune.py"),
           *command_line(stage1_options(synth_root, tmp_path, "ddp", **common, accum_steps=4))]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2 |" in result.stderr
    whole = read_weights(tmp_path / "whole" / "last" / "clip.safetensors")
    ddp = read_weights(tmp_path / "ddp" / "last" / "clip.safetensors")
    per_tensor, overall = update_gaps(whole, ddp, initial_weights("cir-tiny-rn"))
    assert per_tensor < 0.05 and overall < 0.01, (per_tensor, overall)


def test_pretrain_accumulated_batch_equals_batch_in_one_piece(synth_root, tmp_path):
    """The learnt temperature travels as per-example rows: it trains, and the same as in one piece."""
    captions = synth_root / "pretrain_captions.csv"
    clip_cir.pretrain(**pretrain_options(captions, tmp_path, "whole"))
    clip_cir.pretrain(**pretrain_options(captions, tmp_path, "accum", accum_steps=4))
    whole = read_weights(tmp_path / "whole" / "last" / "clip.safetensors")
    accum = read_weights(tmp_path / "accum" / "last" / "clip.safetensors")
    start = initial_weights("cir-tiny-vit")
    assert not torch.equal(whole["logit_scale"], start["logit_scale"])
    torch.testing.assert_close(accum["logit_scale"], whole["logit_scale"], rtol=1e-5, atol=1e-6)
    per_tensor, overall = update_gaps(whole, accum, start)
    # Float32 sums in another order: the gap depends on the CPU (0.020 seen on some), not on the method.
    assert per_tensor < 0.03 and overall < 2e-3, (per_tensor, overall)


def test_accum_steps_that_do_not_divide_the_batch_get_one_line(synth_root, tmp_path, capsys):
    """On the command line (the Python API raises the CIRError this line reports)."""
    from clip_cir.apps.train import finetune_main

    with pytest.raises(SystemExit) as exit_info:
        finetune_main(stage1_args(synth_root, tmp_path, "bad", "--batch-size", "32", "--accum-steps", "3"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--accum-steps 3" in err[0] and "divisible by 3" in err[0]
    assert not (tmp_path / "bad").exists()


def test_pretrain_decays_only_what_open_clip_decays():
    """open_clip's recipe: no weight decay on gains, biases, norms and the temperature."""
    from clip_cir.models.clip import load_clip
    from clip_cir.training.pretrain import open_clip_param_groups

    model = load_clip("cir-tiny-rn").model
    plain, decayed = open_clip_param_groups(model, 0.1)
    assert (plain["weight_decay"], decayed["weight_decay"]) == (0.0, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert "logit_scale" in {names[id(p)] for p in plain["params"]}
    assert all(p.ndim >= 2 and "bias" not in names[id(p)] for p in decayed["params"])
    assert any(names[id(p)].startswith("visual.") and p.ndim == 4 for p in decayed["params"])  # conv kernels decay
    assert all(p.ndim < 2 or "bn" in names[id(p)] or "ln" in names[id(p)] or "logit_scale" in names[id(p)]
               for p in plain["params"])
    assert len(plain["params"]) + len(decayed["params"]) == len(list(model.parameters()))


def test_feature_pass_leaves_train_mode_batchnorm_statistics_to_the_re_forward():
    """Momentum 0.5, batch [0, 2, 4, 6] as two micro-batches [0, 2] and [4, 6]: the running mean
    moves once per micro-batch, 0 -> 0.5 * 1 = 0.5 -> 0.5 * 0.5 + 0.5 * 5 = 2.75, and the
    counter reads 2. A feature pass that also moved them would give 0.5 * ... four times."""
    from accelerate import Accelerator

    from clip_cir.training.accumulation import training_step

    accelerator = Accelerator(cpu=True)
    norm = torch.nn.BatchNorm1d(1, momentum=0.5, affine=False).train()
    weight = torch.nn.Parameter(torch.ones(1))
    x = torch.tensor([[0.0], [2.0], [4.0], [6.0]])

    def forward(batch):
        return (norm(batch * weight),)

    training_step(accelerator, norm, forward, lambda f: f[0].pow(2).sum(), x, accum_steps=2)
    assert norm.running_mean.item() == pytest.approx(2.75)
    assert int(norm.num_batches_tracked) == 2
    # Unbiased variances: [0, 2] -> 2, [4, 6] -> 2; 1 -> 0.5 + 1 = 1.5 -> 0.75 + 1 = 1.75.
    assert norm.running_var.item() == pytest.approx(1.75)
