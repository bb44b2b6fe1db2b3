"""The Shoes stand-in trains through stage 1 and stage 2 and evaluates: each run validates on
Shoes' test split (it has no val split), and `clip-cir eval` of the best checkpoints gives the
numbers the runs recorded, under the protocol the runs trained with."""

from __future__ import annotations

import json

import pytest
from helpers import stage1_options, stage2_options

import clip_cir
from clip_cir.data import load_splits
from clip_cir.data.synthetic.shoes import write_shoes
from clip_cir.data.types import ReaderOptions


def test_shoes_trains_both_stages_and_evaluates(tmp_path, cli):
    protocol = "artemis"
    data, runs = tmp_path / "data", tmp_path / "runs"
    write_shoes(data, seed=1, size=32, n_train=16, n_test=8)
    stage1 = clip_cir.finetune(**stage1_options(data, runs, "s1", dataset="shoes", shoes_protocol=protocol,
                                                epochs=1))
    stage2 = clip_cir.train_combiner(**stage2_options(data, runs, "s2", dataset="shoes", shoes_protocol=protocol,
                                                      epochs=1, batch_size=16, pretrained=stage1.path))
    for run in (stage1, stage2):
        recalls = [run.metrics[f"recall_at{k}"] for k in (1, 10, 50)]
        assert run.metrics["score"] == pytest.approx(sum(recalls) / 3)  # selection averages R@1, R@10, R@50
        assert json.loads((run.path / "config.json").read_text())["shoes_protocol"] == protocol
    test = load_splits("shoes", data, "test", options=ReaderOptions(shoes_protocol=protocol))[0]
    # Each recall counts whole test queries: ARTEMIS's are the 8 test pairs but the two using the unlisted image.
    assert len(test.queries) == 6
    assert all(round(stage2.metrics[f"recall_at{k}"] * 6 / 100, 6).is_integer() for k in (1, 10, 50))
    out = tmp_path / "eval.json"
    result = cli("eval", "--dataset", "shoes", "--shoes-protocol", protocol, "--split", "test", "--data-root", data,
                 "--num-workers", "0", "--model", "cir-tiny-vit", "--pretrained", stage1.path,
                 "--combiner", stage2.path, "--output", out)
    assert result.code == 0, result.err
    evaluated = json.loads(out.read_text())
    recorded = json.loads((stage2.path / "best" / "combiner.json").read_text())["metrics"]
    assert sorted(evaluated) == ["recall_at1", "recall_at10", "recall_at50"]
    assert evaluated == pytest.approx({k: recorded[k] for k in evaluated})
