"""`clip-cir report`: figures of real (tiny) stage-1 and stage-2 runs, of hand-written pretrain and
FashionIQ metric logs, and one-line errors for anything that is not a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import check_png, run_report
from PIL import Image

from clip_cir.apps import report
from clip_cir.apps.report import examples, figures
from clip_cir.errors import CIRError


@pytest.fixture(scope="module")
def runs(tiny_runs) -> dict[str, Path]:
    return tiny_runs


def target_frame_pixels(image: Image.Image) -> int:
    """Pixels in the target's frame colour (anti-aliasing aside)."""
    want = np.array([int(figures.TARGET_COLOR[i:i + 2], 16) for i in (1, 3, 5)])
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(pixels - want).sum(axis=-1) < 30).sum())


@pytest.mark.parametrize("kind, queries", [("stage1", 3), ("stage2", 2)])
def test_report_of_real_runs(runs, cli, tmp_path, kind, queries):
    grid, shown = run_report(cli, runs[kind], queries, tmp_path / "report", seed=1)
    assert all(q.startswith("cirr/") for q in shown)
    width, height = examples.retrieval_figure_size(queries)
    assert grid.size == (round(width * figures.DPI), round(height * figures.DPI))
    assert target_frame_pixels(grid) > 500 * queries  # each row's target is framed in green


def test_retrieval_follows_the_cirr_protocol(runs):
    """Top results come from the whole gallery with the reference removed; the target's rank is reported."""
    from clip_cir.encoding.extraction import FeatureCache

    run = report.read_run(runs["stage2"])
    assert run.kind == "stage2"
    examples, description = report.retrieval_examples(run, "val", 5, seed=0, cache=FeatureCache(None),
                                                      progress=False)
    assert "Combiner" in description and len({e.qid for e in examples}) == 5
    for e in examples:
        names = [name for name, _, _ in e.results]
        assert len(names) == report.TOP_RESULTS and e.reference_name not in names
        scores = [s for _, _, s in e.results]
        assert scores == sorted(scores, reverse=True)
        assert e.target_rank is None or (e.target_rank <= report.TOP_RESULTS) == (e.target in names)


def write_run(path: Path, config: dict, train: str | None, validation: str | None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    if train is not None:
        (path / "train_metrics.csv").write_text(train)
    if validation is not None:
        (path / "validation_metrics.csv").write_text(validation)
    return path


TRAIN_CSV = ("epoch,steps,train_loss,lr,seconds,clip_images_encoded,clip_texts_encoded\n"
             "1,8,4.5,0.001,1.0,10,10\n2,8,4.1,0.001,1.0,20,20\n3,8,3.9,0.001,1.0,30,30\n")


def test_pretrain_run_plots_loss_and_no_retrieval(tmp_path):
    config = {"program": "pretrain", "train_data": "captions.csv", "model": "cir-tiny-vit"}
    run = write_run(tmp_path / "pre", config, TRAIN_CSV,
                    "epoch,val_loss,score\n0,3.6,-3.6\n1,3.4,-3.4\n2,3.3,-3.3\n3,3.35,-3.35\n")
    written = report.make_report(run)
    assert [p.name for p in written] == ["training_loss.png", "validation.png"]
    assert all(p.parent == run / "report" for p in written)
    for path in written:
        check_png(path)
    assert figures._best_epoch(report.read_run(run).validation) == 2


def test_fashioniq_columns_become_average_and_category_panels(tmp_path):
    cats = ("dress", "shirt", "toptee")
    columns = [f"{c}_recall_at{k}" for c in cats for k in (10, 50)] + ["average_recall_at10", "average_recall_at50",
                                                                      "score", "harmonic_mean", "geometric_mean"]
    rows = [",".join(["epoch", *columns])] + [",".join([str(e), *[str(10.0 * e + i) for i in range(len(columns))]])
                                            for e in (1, 2)]
    config = {"program": "stage1", "dataset": "fashioniq", "encoder": "text"}
    run = write_run(tmp_path / "fiq", config, TRAIN_CSV, "\n".join(rows) + "\n")
    panels = figures.validation_panels(report.read_run(run).validation.columns)
    assert [p.title for p in panels] == ["average over categories", "per category"]
    assert [line.label for line in panels[0].lines] == ["avg R@10", "avg R@50"]
    assert [line.label for line in panels[1].lines] == [f"{c} R@{k}" for c in cats for k in (10, 50)]
    validation = report.make_report(run, tmp_path / "out", n_queries=0)[1]
    check_png(validation, min_size=(800, 300))


def test_cirr_columns_skip_soft_and_selection_scores():
    columns = ["epoch", "recall_at1", "recall_at50", "soft_recall_at1", "recall_subset_at1", "soft_recall_subset_at1",
               "score", "harmonic_mean"]
    panels = figures.validation_panels(columns)
    assert [[line.label for line in p.lines] for p in panels] == [["R@1", "R@50"], ["R_subset@1"]]


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "not a run directory (no such directory)"),
    (lambda d: d.mkdir(), "not a run directory (no config.json"),
    (lambda d: write_run(d, {}, None, None) and (d / "config.json").write_text("{not json"), "malformed JSON"),
    (lambda d: write_run(d, {}, None, None), "no train_metrics.csv or validation_metrics.csv"),
    (lambda d: write_run(d, {}, "epoch,loss\n1,2\n", None), "no column 'train_loss'"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, tmp_path, setup, message):
    run = tmp_path / "run"
    setup(run)
    result = cli("report", run)
    assert result.code == 2
    assert len(result.error_lines) == 1 and message in result.error_lines[0], result.err
    assert not (run / "report").exists()


def test_negative_queries_is_an_error(tmp_path):
    run = write_run(tmp_path / "pre", {"program": "pretrain", "train_data": "x.csv"}, TRAIN_CSV, None)
    with pytest.raises(CIRError, match="--queries"):
        report.make_report(run, n_queries=-1)
