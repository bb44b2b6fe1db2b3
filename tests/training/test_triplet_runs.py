"""A team's own triplets: stage 1 pretrained on a triplet set, then fine-tuned on CIRR from that
run's directory; `clip-cir report` and `clip-cir export` of runs trained on `--dataset triplets`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import initial_weights, read_weights, run_report, stage1_options, stage2_options

import clip_cir
from clip_cir.apps.report import examples


@pytest.fixture(scope="module")
def catalogue(synth_root, tmp_path_factory) -> dict[str, Path]:
    """The synthetic CIRR world written by `clip-cir convert cirr` into a folder named as a team's
    data would be (`my-catalogue`), a 1-epoch stage-1 run on it training both towers, and a
    1-epoch stage-2 run on that CLIP."""
    from clip_cir.apps.cli import main

    base = tmp_path_factory.mktemp("catalogue")
    data, runs = base / "my-catalogue", base / "runs"
    main(["convert", "cirr", "--data-root", str(synth_root), "--output", str(data)])
    clip_cir.finetune(**stage1_options(data, runs, "triplets-s1", dataset="triplets", encoder="both", epochs=1))
    clip_cir.train_combiner(**stage2_options(data, runs, "triplets-s2", dataset="triplets", epochs=1,
                                             pretrained=runs / "triplets-s1"))
    return {"data": data, "stage1": runs / "triplets-s1", "stage2": runs / "triplets-s2"}


def test_stage1_on_cirr_starts_from_the_triplet_pretraining_run(catalogue, synth_root, cli, tmp_path):
    """`finetune --dataset cirr --pretrained RUN_DIR` loads the triplet run's weights: with the image
    tower frozen this time, the CIRR run ends with exactly the image tower the triplet run trained."""
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "cirr-s1", encoder="text", epochs=1,
                                       pretrained=catalogue["stage1"]))
    init = initial_weights("cir-tiny-vit")  # the triplet run's random init, as stage 1 builds it
    pretrained = read_weights(catalogue["stage1"] / "best" / "clip.safetensors")
    tuned = read_weights(tmp_path / "cirr-s1" / "last" / "clip.safetensors")
    visual = [k for k in tuned if k.startswith("visual.")]
    text = ["token_embedding.weight", "text_projection", "ln_final.weight"]
    assert visual and all(torch.equal(tuned[k], pretrained[k]) for k in visual)
    assert not all(torch.equal(init[k], pretrained[k]) for k in visual)  # the triplet run trained it
    assert not all(torch.equal(tuned[k], pretrained[k]) for k in text)  # the CIRR run trained the text tower
    config = json.loads((tmp_path / "cirr-s1" / "config.json").read_text())
    assert (config["dataset"], config["pretrained"]) == ("cirr", str(catalogue["stage1"]))
    validation = (tmp_path / "cirr-s1" / "validation_metrics.csv").read_text().splitlines()
    assert len(validation) == 2 and "recall_subset_at1" in validation[0]  # validated on CIRR itself

    # The exported card shows both stage-1 runs, oldest first, and what each trained on.
    result = cli("export", "--pretrained", tmp_path / "cirr-s1", "--output-dir", tmp_path / "export")
    assert result.code == 0, result.err
    card = (tmp_path / "export" / "README.md").read_text()
    first = card.index("- **Stage 1 (CLIP fine-tuning) on triplets `my-catalogue`:**")
    second = card.index("- **Stage 1 (CLIP fine-tuning) on cirr:**")
    assert first < card.index("encoder: both", first) < second < card.index("encoder: text", second)
    assert "### Stage 1 CLIP, element-wise sum (cirr val, epoch 1)" in card


@pytest.mark.parametrize("kind", ["stage1", "stage2"])
def test_report_of_runs_on_triplets(kind, catalogue, cli, tmp_path):
    _, shown = run_report(cli, catalogue[kind], 2, tmp_path / "report", seed=0)
    ids = {json.loads(line)["id"] for line in (catalogue["data"] / "val.jsonl").read_text().splitlines()}
    assert all(q.startswith("triplets/") and q.split("/", 1)[1] in ids for q in shown)


def test_gallery_paths_are_labelled_by_their_end():
    """A triplet gallery's names are paths: a tile shows the file name and the folders that fit."""
    assert examples._short("/home/team/my-catalogue/dev/dev-12-0-img1.png") == "…/dev/dev-12-0-img1.png"
    assert examples._short("tops/long/b.png") == "tops/long/b.png"
    assert examples._short("/data/" + "x" * 30 + ".png") == "…" + ("x" * 30 + ".png")[-23:]
    assert examples._short("B00006M009-and-a-long-suffix") == "B00006M009-and-a-long-s…"


def test_export_card_names_the_triplet_data(catalogue, cli, tmp_path):
    out = tmp_path / "export"
    result = cli("export", "--pretrained", catalogue["stage1"], "--combiner", catalogue["stage2"], "--output-dir", out)
    assert result.code == 0, result.err
    card = (out / "README.md").read_text()
    assert card.count("  - dataset: triplets\n  - data: my-catalogue\n") == 2  # stage 1 and stage 2
    assert "### Stage 1 CLIP, element-wise sum (triplets `my-catalogue` val, epoch 1)" in card
    assert "### CLIP + Combiner (triplets `my-catalogue` val, epoch 1)" in card
    assert "clip-cir eval --dataset triplets --data-root DATA" in card
    # The data's columns are part of how it was read; other layouts' options are not.
    assert "csv_reference_key: reference" in card
    assert "circo_query_text" not in card and "fashioniq_categories" not in card
    assert str(catalogue["data"].parent) not in card  # publishable: no local paths
