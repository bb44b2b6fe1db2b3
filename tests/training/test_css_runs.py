"""The CSS stand-in trains through stage 1 and stage 2 under both of CSS's query forms (3-D
renderings, 2-D drawings): each run validates on CSS's test split (it has no val split), and
`clip-cir eval --dataset css` of the runs (test by default) gives the numbers stage 2 recorded."""

from __future__ import annotations

import json

import pytest
from helpers import stage1_options, stage2_options

import clip_cir
from clip_cir.data import load_splits
from clip_cir.data.synthetic.css import write_css
from clip_cir.data.types import ReaderOptions

KEYS = [f"recall_at{k}" for k in (1, 5, 10, 50, 100)]


@pytest.mark.parametrize("query_images", ["3d", "2d"])
def test_css_trains_both_stages_validates_on_test_and_evaluates(query_images, tmp_path, cli, info_logging):
    data, runs = tmp_path / "data", tmp_path / "runs"
    write_css(data, size=32)
    common = dict(dataset="css", css_query_images=query_images, batch_size=8, epochs=1)
    stage1 = clip_cir.finetune(**stage1_options(data, runs, "s1", **common))
    stage2 = clip_cir.train_combiner(**stage2_options(data, runs, "s2", **common, pretrained=stage1.path))
    test = load_splits("css", data, "test", options=ReaderOptions(css_query_images=query_images))[0]
    train = load_splits("css", data, "train", options=ReaderOptions(css_query_images=query_images))[0]
    assert (len(test.queries), len(train.queries)) == (14, 13)
    for run in (stage1, stage2):
        recalls = [run.metrics[key] for key in KEYS]
        assert run.metrics["score"] == pytest.approx(sum(recalls) / 5)  # selection averages tirg's five recalls
        # Each recall counts whole queries of the test split (14), not of train (13): 13 and 14 share no
        # factor, so a recall strictly between 0 and 100 that is a multiple of 100/14 is not one of 100/13.
        assert all(round(value * 14 / 100, 6).is_integer() for value in recalls)
        assert any(0 < value < 100 for value in recalls)
        assert json.loads((run.path / "config.json").read_text())["css_query_images"] == query_images
    messages = [record.getMessage() for record in info_logging.records]
    assert any(m.startswith("css test gallery: 27 ") for m in messages)  # stage 2's validation gallery
    assert any(m.startswith("css test query images: 6 ") for m in messages) == (query_images == "2d")
    out = tmp_path / "eval.json"
    result = cli("eval", "--dataset", "css", "--css-query-images", query_images, "--data-root", data,
                 "--num-workers", "0", "--pretrained", stage1.path, "--combiner", stage2.path, "--output", out)
    assert result.code == 0, result.err
    evaluated = json.loads(out.read_text())
    recorded = json.loads((stage2.path / "best" / "combiner.json").read_text())["metrics"]
    assert sorted(evaluated) == sorted(KEYS)
    assert evaluated == pytest.approx({k: recorded[k] for k in KEYS}, abs=1e-4)  # eval rounds to 4 decimals
    assert evaluated == pytest.approx({k: stage2.metrics[k] for k in KEYS}, abs=1e-4)
