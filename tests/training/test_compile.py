"""`--compile`: compiled training gives eager training's losses and weights (within float
rounding), resumes, saves the model's own keys, and pads caption batches to few lengths."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers import initial_weights, pretrain_options, stage1_options, update_gaps
from safetensors.torch import load_file
from torch._dynamo.utils import counters

import clip_cir

COMPILED_TOLERANCE = 1e-3
"""Inductor fuses and reorders float32 arithmetic, so the weight updates are compared as
`update_gaps` compares runs that sum in another order: overall |compiled - eager| within this
fraction of |eager - initial| (the tests print the gaps they see)."""


def test_trimmed_lengths_round_up_to_the_multiple_and_keep_features(make_tiny_clip):
    from clip_cir.models.towers import COMPILED_LENGTH_MULTIPLE, encode_text, trim_tokens

    model = make_tiny_clip("cir-tiny-vit")
    context = model.positional_embedding.shape[0]
    torch.manual_seed(0)
    for longest in (3, 16, 17, context - 3, context):
        tokens = torch.zeros(4, context, dtype=torch.long)
        lengths = [2, longest, max(2, longest // 2), 5 if longest >= 5 else 2]
        for row, length in enumerate(lengths):
            tokens[row, : length - 1] = torch.randint(1, 400, (length - 1,))
            tokens[row, length - 1] = 49407  # EOT: the largest id, where argmax pooling reads
        expected = min(math.ceil(longest / COMPILED_LENGTH_MULTIPLE) * COMPILED_LENGTH_MULTIPLE, context)
        bucketed = trim_tokens(model, tokens, COMPILED_LENGTH_MULTIPLE)
        assert bucketed.shape == (4, expected)
        assert trim_tokens(model, tokens).shape == (4, longest)  # without a multiple: the longest caption
        with torch.no_grad():
            full = model.encode_text(tokens)
            torch.testing.assert_close(encode_text(model, bucketed), full, atol=1e-5, rtol=1e-5)


def test_compiled_stage1_matches_eager_resumes_and_saves_clean_keys(synth_root, tmp_path):
    """Three steps an epoch (120 triplets, batch 40), both towers: two eager epochs against one
    compiled epoch and a compiled resume to the second."""
    common = dict(encoder="both", batch_size=40, log_every=1, pixel_cache="off")
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "eager", **common, epochs=2))
    graphs = counters["stats"]["unique_graphs"]
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "compiled", **common, epochs=1, compile=True))
    first_run_graphs = counters["stats"]["unique_graphs"] - graphs
    clip_cir.finetune(resume=tmp_path / "compiled", epochs=2, compile=True)
    print(f"graphs compiled: {first_run_graphs} in the first run, {counters['stats']['unique_graphs'] - graphs} in all")
    # It compiled: the image tower once, the text tower once per caption length bucket the
    # synthetic captions reach (at most 2 of 16 tokens in a 32-token context), not per batch.
    assert 2 <= first_run_graphs <= 3

    eager_steps = pd.read_csv(tmp_path / "eager" / "train_steps.csv")
    compiled_steps = pd.read_csv(tmp_path / "compiled" / "train_steps.csv")
    assert list(compiled_steps["step"]) == list(eager_steps["step"]) == [1, 2, 3, 4, 5, 6]
    assert compiled_steps["loss"].tolist() == pytest.approx(eager_steps["loss"].tolist(), rel=1e-4)

    eager = load_file(str(tmp_path / "eager" / "last" / "clip.safetensors"))
    compiled = load_file(str(tmp_path / "compiled" / "last" / "clip.safetensors"))
    assert sorted(compiled) == sorted(eager)  # the model's own keys: no `_orig_mod.` prefix
    assert not any("_orig_mod" in key for key in compiled)
    per_tensor, overall = update_gaps(eager, compiled, initial_weights("cir-tiny-vit"))
    print(f"compiled-eager update gaps: per tensor {per_tensor:.2g}, overall {overall:.2g}")
    assert per_tensor < 10 * COMPILED_TOLERANCE and overall < COMPILED_TOLERANCE, (per_tensor, overall)
    # The compiled checkpoint loads as any other and validates like the eager one.
    eager_val = pd.read_csv(tmp_path / "eager" / "validation_metrics.csv")
    compiled_val = pd.read_csv(tmp_path / "compiled" / "validation_metrics.csv")
    assert compiled_val["score"].tolist() == pytest.approx(eager_val["score"].tolist(), abs=0.01)


def test_compiled_pretraining_matches_eager(synth_root, tmp_path):
    """Pretraining trains the learnt temperature and runs in train mode: compiled, the same."""
    captions = synth_root / "pretrain_captions.csv"
    clip_cir.pretrain(**pretrain_options(captions, tmp_path, "eager", log_every=1, pixel_cache="off"))
    graphs = counters["stats"]["unique_graphs"]
    clip_cir.pretrain(**pretrain_options(captions, tmp_path, "compiled", log_every=1, pixel_cache="off", compile=True))
    assert counters["stats"]["unique_graphs"] > graphs  # it compiled
    eager_steps = pd.read_csv(tmp_path / "eager" / "train_steps.csv")
    compiled_steps = pd.read_csv(tmp_path / "compiled" / "train_steps.csv")
    assert len(eager_steps) >= 3
    assert compiled_steps["loss"].tolist() == pytest.approx(eager_steps["loss"].tolist(), rel=1e-4)
    eager = load_file(str(tmp_path / "eager" / "last" / "clip.safetensors"))
    compiled = load_file(str(tmp_path / "compiled" / "last" / "clip.safetensors"))
    assert sorted(compiled) == sorted(eager)
    torch.testing.assert_close(compiled["logit_scale"], eager["logit_scale"], rtol=1e-5, atol=1e-6)
    per_tensor, overall = update_gaps(eager, compiled, initial_weights("cir-tiny-vit"))
    print(f"compiled-eager update gaps: per tensor {per_tensor:.2g}, overall {overall:.2g}")
    assert per_tensor < 10 * COMPILED_TOLERANCE and overall < COMPILED_TOLERANCE, (per_tensor, overall)
