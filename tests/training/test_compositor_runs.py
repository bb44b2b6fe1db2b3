"""Every compositor through the programs: stage 2 trains it (same loop, loss, validation and
checkpoint selection as the Combiner), `clip-cir eval` of the run directory reproduces the run's
best validation numbers, an exported copy loads from the Hub and scores identically, the Python
API composes as evaluation does, and a trained compositor beats the zero-shot sum on the
synthetic validation split. The compositors' formulas are tested on fixed inputs in tests/models/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, command_line, ddp_launcher, install_in_hub_cache, read_weights, stage2_options, update_gaps

import clip_cir

COMPOSITORS = ("tirg", "maaf", "cosmo", "lbf")
TOKEN_COMPOSITORS = ("maaf", "cosmo", "lbf")
EPOCHS = 10
OPTIONS = {"lbf": ["hidden_dim=128", "feedforward_dim=256"]}
"""LBF's paper sizes (hidden 512, feed-forward 1024: 13M parameters) dwarf the 128-d tiny CLIP;
the tests train it at a quarter of that width."""
MARGIN = 3.0
"""Percentage points of Recall@10 (100 validation queries) by which each trained compositor must
beat the zero-shot sum of the same random-init CLIP."""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A larger synthetic CIRR than `synth_root` (600 training triplets, 100 validation queries):
    with 120 triplets the attention compositors (13k-860k parameters from random init) do not
    get past the sum of a random CLIP in a test's budget."""
    from clip_cir.data.synthetic import generate

    root = tmp_path_factory.mktemp("compositor-world")
    generate(root, progress=False, n_train=600, n_val=100, n_test=20, size=64, seed=0, n_circo=20,
             circo_distractors=20)
    return root


def _train(root: Path, clip: Path, out: Path, name: str, **extra) -> clip_cir.TrainedRun:
    options = stage2_options(root, out, name, compositor=name, pretrained=clip, epochs=EPOCHS,
                             validation_frequency=1, cache_dir=out / "cache", num_workers=0, seed=0,
                             compositor_options=OPTIONS.get(name, []), **extra)
    return clip_cir.train_combiner(**options)


@pytest.fixture(scope="module")
def compositor_runs(world, tiny_checkpoint, tmp_path_factory) -> dict[str, clip_cir.TrainedRun]:
    """Each compositor trained for a few epochs on synthetic CIRR features of the tiny ViT CLIP
    (random init, seed 0, saved as a checkpoint so that every command loads the same CLIP)."""
    out = tmp_path_factory.mktemp("compositor-runs")
    return {name: _train(world, tiny_checkpoint, out, name) for name in COMPOSITORS}


def _eval(cli, root: Path, out: Path, *model_args) -> dict:
    """`clip-cir eval` on synthetic CIRR val; `model_args` name the CLIP and the combining."""
    result = cli("eval", "--dataset", "cirr", "--data-root", root, "--num-workers", "0",
                 "--output", out, *model_args)
    assert result.code == 0, result.err
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", COMPOSITORS)
def test_the_checkpoint_records_its_compositor_and_eval_reproduces_its_validation(
        name, compositor_runs, cli, world, tiny_checkpoint, tmp_path):
    run = compositor_runs[name]
    recorded = json.loads((run.path / "best" / "combiner.json").read_text())
    assert recorded["compositor"] == name and recorded["clip_model_name"] == "cir-tiny-vit"
    assert ("token_grid" in recorded) == (name in TOKEN_COMPOSITORS)
    assert json.loads((run.path / "config.json").read_text())["compositor"] == name
    # No --compositor flag: the file says which network it holds.
    metrics = _eval(cli, world, tmp_path / "eval.json", *_clip(tiny_checkpoint), "--combiner", run.path)
    for key, value in recorded["metrics"].items():
        if key in metrics:
            assert metrics[key] == pytest.approx(value, abs=1e-3), key
    assert metrics["recall_at10"] > 0


def _clip(checkpoint: Path) -> tuple[str, ...]:
    return ("--model", "cir-tiny-vit", "--pretrained", str(checkpoint))


def test_each_trained_compositor_beats_the_zero_shot_sum(compositor_runs, cli, world, tiny_checkpoint, tmp_path):
    zero_shot = _eval(cli, world, tmp_path / "sum.json", *_clip(tiny_checkpoint), "--combining", "sum")
    zero_shot = zero_shot["recall_at10"]
    trained = {name: json.loads((run.path / "best" / "combiner.json").read_text())["metrics"]["recall_at10"]
               for name, run in compositor_runs.items()}
    assert all(r10 > zero_shot + MARGIN for r10 in trained.values()), (zero_shot, trained)


@pytest.mark.parametrize("name", ["tirg", "maaf"])
def test_an_exported_compositor_loads_from_the_hub_and_scores_identically(
        name, compositor_runs, cli, world, tiny_checkpoint, tmp_path):
    export = tmp_path / "export"
    result = cli("export", *_clip(tiny_checkpoint), "--combiner", compositor_runs[name].path, "--output-dir", export)
    assert result.code == 0, result.err
    exported = json.loads((export / "combiner.json").read_text())
    assert exported["compositor"] == name
    repo = f"clip-cir-test/{name}"
    install_in_hub_cache(export, repo, f"{COMPOSITORS.index(name) + 7:040x}")
    source = _eval(cli, world, tmp_path / "source.json", *_clip(tiny_checkpoint),
                   "--combiner", compositor_runs[name].path)
    from_hub = _eval(cli, world, tmp_path / "hub.json", "--pretrained", f"hf-hub:{repo}",
                     "--combiner", f"hf-hub:{repo}")
    assert from_hub == source


@pytest.mark.parametrize("name", ["tirg", "lbf"])
def test_the_python_api_composes_as_evaluation_does(name, compositor_runs, world):
    """`clip_cir.load(run)` (CLIP and compositor from the run directory), then `compose` of a few
    validation queries from their files equals evaluation's queries (token compositors: the tokens
    encoded directly, rounded to float16 as the token cache stores them)."""
    from clip_cir.data import load_splits
    from clip_cir.data.images import ImageCheck
    from clip_cir.encoding.split_features import split_features, token_request
    from clip_cir.evaluation.evaluate import predict_queries

    model = clip_cir.load(compositor_runs[name].path, device="cpu", progress=False)
    split = load_splits("cirr", world, "val", images=ImageCheck())[0]
    expected = predict_queries(split_features(model.clip, split, model.encode, token_request(model.combine)),
                               model.combine)
    few = split.queries[:5]
    composed = model.compose([split.gallery[q.reference] for q in few], [q.eval_caption for q in few])
    torch.testing.assert_close(composed, expected[:5], rtol=1e-4, atol=1e-5)
    gallery = model.index(split)
    hits = gallery.search(few[0].reference, few[0].eval_caption, k=5)
    scores = torch.nn.functional.normalize(gallery.features, dim=-1) @ expected[0]
    scores[gallery.index_of[few[0].reference]] = float("-inf")
    assert [n for n, _ in hits] == [gallery.names[i] for i in scores.topk(5).indices.tolist()]


def test_two_processes_train_a_token_compositor_like_one(synth_root, tiny_checkpoint, tmp_path):
    """DDP: 2 processes x 16 == 1 x 32 for MAAF without dropout (the contrastive loss gathers every
    rank's targets); the token caches are written by both ranks' shares and read by both. Updates
    are compared from the initial weights (a run at lr 1e-30, which moves no float32 weight by more
    than 1e-30; same seed), as for stage 1."""
    common = dict(compositor="maaf", compositor_options=["dropout=0"], epochs=2, validation_frequency=5, cpu=True,
                  cache_dir=tmp_path / "cache", num_workers=0, pretrained=tiny_checkpoint)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, processes, lr in (("start", 1, 1e-30), ("one", 1, 1e-3), ("two", 2, 1e-3)):
        cmd = [sys.executable, *ddp_launcher(processes), str(REPO / "stage2" / "train_combiner.py"),
               *command_line(stage2_options(synth_root, tmp_path, name, **{**common, "lr": lr}))]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"processes: {processes} |" in result.stderr
    start, one, two = (read_weights(tmp_path / name / "last" / "combiner.safetensors")
                       for name in ("start", "one", "two"))
    per_tensor, overall = update_gaps(one, two, start)
    assert per_tensor < 0.05 and overall < 0.01, (per_tensor, overall)


def test_bad_compositor_settings_are_one_line(synth_root, tmp_path, compositor_runs, cli):
    from clip_cir.errors import CIRError

    with pytest.raises(CIRError, match="--compositor must be one of combiner, tirg, maaf, cosmo, lbf"):
        clip_cir.train_combiner(**stage2_options(synth_root, tmp_path, "bad", compositor="tirgg"))
    with pytest.raises(CIRError, match="maaf has no option 'depth'"):
        clip_cir.train_combiner(**stage2_options(synth_root, tmp_path, "bad", compositor="maaf",
                                                 compositor_options=["depth=3"]))
    for model, checkpoint, message in (
            ("cir-tiny-rn", compositor_runs["maaf"].path, "maaf compositor expects 128-d CLIP features"),
            ("cir-tiny-convnext", _maaf_of("cir-tiny-rn", tmp_path), "was trained on cir-tiny-rn features")):
        result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, "--model", model, "--combiner", checkpoint)
        assert result.code == 2
        _one_error(result.err, message)
    # A tower without token features stops before any encoding, in one line.
    result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, "--model", "cir-tiny-convnext",
                 "--combiner", _maaf_of("cir-tiny-convnext", tmp_path))
    assert result.code == 2
    _one_error(result.err, "token features are not available for TimmModel image towers")


def _one_error(err: str, message: str) -> None:
    """One error line holding `message` and no traceback (log lines such as the random-init notice
    may come before it)."""
    lines = [line for line in err.splitlines() if line.startswith("clip-cir: error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def _maaf_of(model: str, folder: Path) -> Path:
    """An untrained MAAF checkpoint that says it was trained on `model`'s features (64-d)."""
    from clip_cir.models.clip import load_clip
    from clip_cir.models.compositors.loading import build_compositor, compositor_metadata
    from clip_cir.models.files import save_weights

    maaf = build_compositor("maaf", 64, {})
    path = folder / f"maaf-{model}.safetensors"
    save_weights(path, maaf.state_dict(), {**compositor_metadata(maaf, None), "clip_model_name": model,
                                           "clip_architecture": load_clip(model).architecture})
    return path
