"""Stage 2's tensor batches: a permutation per (seed, epoch), caption forms drawn uniformly,
ranks taking disjoint slices of each global batch, and exact resume."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import torch
from helpers import stage2_options
from safetensors.torch import load_file

import clip_cir
from clip_cir.data import load_splits
from clip_cir.training.datasets import FeatureBatches, TrainingSet


def _data(synth_root) -> TrainingSet:
    return TrainingSet.from_splits(load_splits("fashioniq", synth_root, "train"))


def test_an_epoch_is_a_permutation_with_uniform_caption_forms(synth_root):
    data = _data(synth_root)
    index = data.image_index
    batches = FeatureBatches(data, batch_size=16, seed=3)
    seen, forms = [], Counter()
    for epoch in range(40):
        batches.set_epoch(epoch)
        rows = list(batches)
        assert len(rows) == len(data.queries) // 16
        queries = torch.cat([b["query"] for b in rows]).tolist()
        assert len(set(queries)) == len(queries) == 16 * len(rows)  # no query twice in an epoch
        for b in rows:
            columns = (b["query"].tolist(), b["form"].tolist(), b["reference"].tolist(), b["target"].tolist())
            for q, f, r, t in zip(*columns):
                assert 0 <= f < len(data.queries[q].train_captions) == 4
                assert (r, t) == (index[data.queries[q].reference], index[data.queries[q].target])
                forms[f] += 1
        seen.append(queries)
    assert seen[0] != seen[1]  # a new order each epoch...
    batches.set_epoch(1)
    assert torch.cat([b["query"] for b in batches]).tolist() == seen[1]  # ...and the same one again for (seed, epoch)
    total = sum(forms.values())
    assert all(abs(forms[f] / total - 0.25) < 0.03 for f in range(4)), forms


def test_two_ranks_split_every_global_batch(synth_root):
    data = _data(synth_root)
    one = list(FeatureBatches(data, batch_size=16, seed=0))
    ranks = [list(FeatureBatches(data, 16, 0, process_index=r, num_processes=2)) for r in range(2)]
    for whole, first, second in zip(one, *ranks):
        for key in whole:
            assert torch.equal(torch.cat([first[key], second[key]]), whole[key]), key


@pytest.mark.parametrize("schedule", [{}, {"lr_scheduler": "cosine", "warmup": 3}], ids=["const", "cosine"])
def test_stage2_resumed_run_ends_with_the_same_weights(synth_root, tmp_path, monkeypatch, schedule):
    """A run interrupted after its epoch-3 checkpoint (validations after epochs 1 and 3) and resumed
    ends where an uninterrupted one does: the same weights, losses and per-step learning rates (a
    restarted schedule would differ)."""
    from clip_cir.training import loop

    def options_for(name: str) -> dict:  # fashioniq: four caption forms to draw from
        return stage2_options(synth_root, tmp_path, name, dataset="fashioniq", epochs=4, validation_frequency=2,
                              **schedule)

    clip_cir.train_combiner(**options_for("straight"))
    save = loop.save_checkpoint_dir

    def save_then_stop(path, modules, state=None):
        save(path, modules, state)
        if state is not None and state["epoch"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint_dir", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        clip_cir.train_combiner(**options_for("resumed"))
    monkeypatch.setattr(loop, "save_checkpoint_dir", save)
    assert list(pd.read_csv(tmp_path / "resumed" / "train_metrics.csv")["epoch"]) == [1, 2, 3]
    clip_cir.train_combiner(resume=tmp_path / "resumed", no_progress=True)
    straight = load_file(str(tmp_path / "straight" / "last" / "combiner.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "last" / "combiner.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    a = pd.read_csv(tmp_path / "straight" / "train_metrics.csv")
    b = pd.read_csv(tmp_path / "resumed" / "train_metrics.csv")
    assert list(b["epoch"]) == [1, 2, 3, 4] and list(a["train_loss"]) == list(b["train_loss"])
    steps_a = pd.read_csv(tmp_path / "straight" / "train_steps.csv")
    steps_b = pd.read_csv(tmp_path / "resumed" / "train_steps.csv")
    assert list(steps_a["lr"]) == list(steps_b["lr"])
    # Warmup's last step and cosine's first both set --lr itself: every other step has its own rate.
    assert len(set(steps_a["lr"])) == (1 if not schedule else len(steps_a) - 1)
