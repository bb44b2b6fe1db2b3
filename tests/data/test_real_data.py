"""What real downloads and real backbones meet and synthetic runs did not show:
frozen BatchNorm in stage 1, float32 validation, submission size at the real test1 scale,
incomplete downloads, NLVR2's flat layout, honest log lines and CIRR's Avg."""

from __future__ import annotations

import io
import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import command_line, initial_weights, stage1_args, stage1_options, stage2_options
from PIL import Image
from safetensors.torch import load_file

import clip_cir


def _read(path: Path):
    return json.loads(Path(path).read_text())


def _cirr_train_copy(synth_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the synthetic CIRR (all splits) to remove images from."""
    root = tmp_path / "data"
    shutil.copytree(synth_root / "cirr_dataset", root / "cirr_dataset")
    return root


# ---- 1. stage 1 keeps CLIP in eval mode: BatchNorm statistics stay the pretrained ones --------

def test_stage1_both_encoders_keep_resnet_batchnorm_statistics(synth_root, tmp_path):
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "rn", model="cir-tiny-rn", encoder="both", epochs=1))
    start = initial_weights("cir-tiny-rn")  # the run's seed: the same random init
    trained = load_file(str(tmp_path / "rn" / "last" / "clip.safetensors"))
    statistics = [k for k in start if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(statistics) >= 3 * 10  # the tiny ResNet tower really has BatchNorm layers
    for key in statistics:
        assert torch.equal(trained[key], start[key]), key
    # ... while the tower's parameters (BatchNorm's affine ones included) did train.
    assert not torch.equal(trained["visual.conv1.weight"], start["visual.conv1.weight"])
    assert any(not torch.equal(trained[k], start[k]) for k in start if k.startswith("visual.") and "bn" in k
               and k.endswith("weight"))


# ---- 2. float32 validation; encoding restores each tower's own mode --------------------------

def test_stage2_bf16_validation_equals_eval_of_the_saved_checkpoint(synth_root, tmp_path, tiny_checkpoint, cli):
    options = stage2_options(synth_root, tmp_path, "bf16", model=None, epochs=2, validation_frequency=1,
                             mixed_precision="bf16", pretrained=tiny_checkpoint, cpu=True)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # this process's Accelerator said "no" before
    try:
        clip_cir.train_combiner(**options)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    run = tmp_path / "bf16"
    validation = pd.read_csv(run / "validation_metrics.csv").iloc[-1]
    result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, "--pretrained", tiny_checkpoint,
                 "--combiner", run / "last", "--num-workers", "0", "--output", tmp_path / "eval.json")
    assert result.code == 0, result.err
    evaluated = _read(tmp_path / "eval.json")
    for key, value in evaluated.items():
        assert validation[key] == pytest.approx(value, abs=6e-5), key
    assert "recall_avg" in validation  # CIRR's Avg is in the validation CSV too


def test_encoding_restores_each_towers_own_mode(tiny_checkpoint):
    from clip_cir.encoding.extraction import encode_texts
    from clip_cir.models.clip import load_clip

    clip = load_clip(None, str(tiny_checkpoint))
    clip.model.train()
    clip.model.visual.eval()  # a frozen tower while the text tower trains
    encode_texts(clip, ["a red circle"], progress=False)
    assert clip.model.training and clip.model.transformer.training
    assert not clip.model.visual.training
    assert not any(m.training for m in clip.model.visual.modules())


# ---- 3. CIRR submissions at the real test1 scale -----------------------------------------------

def _write_real_scale_test1(root: Path, queries: int = 4148, images: int = 2315) -> None:
    """A CIRR-layout test1 split as large as the real one, with its naming scheme
    (`test1-<set>-<k>-img<0|1>`, sets of 6): 4,148 queries over 2,315 images."""
    base = root / "cirr_dataset"
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 90, 90)).save(png, format="PNG")
    names = [f"test1-{1000 + i // 6}-{(i % 6) // 2}-img{i % 2}" for i in range(images)]
    (base / "test1").mkdir(parents=True)
    for name in names:
        (base / "test1" / f"{name}.png").write_bytes(png.getvalue())
    sets = [names[i:i + 6] for i in range(0, images - 5, 6)]
    captions = []
    for pairid in range(queries):
        members = sets[pairid % len(sets)]
        captions.append({"pairid": pairid, "reference": members[pairid % 6],
                         "caption": "Remove all but one dog and add a woman hugging it.",
                         "img_set": {"id": pairid % len(sets), "members": members,
                                     "reference_rank": pairid % 6}})
    (base / "cirr" / "captions").mkdir(parents=True)
    (base / "cirr" / "image_splits").mkdir(parents=True)
    (base / "cirr" / "captions" / "cap.rc2.test1.json").write_text(json.dumps(captions))
    (base / "cirr" / "image_splits" / "split.rc2.test1.json").write_text(
        json.dumps({name: f"./test1/{name}.png" for name in names}))


def test_submission_files_fit_the_server_at_the_real_test1_scale(tmp_path):
    from clip_cir.data import load_splits
    from clip_cir.encoding.ranking import rank_split
    from clip_cir.evaluation.submission import (
        MAX_BYTES,
        build_submissions,
        check_submission,
        read_submission,
        write_submissions,
    )

    _write_real_scale_test1(tmp_path / "data")
    split = load_splits("cirr", tmp_path / "data", "test1")[0]
    assert (len(split.queries), len(split.gallery)) == (4148, 2315)
    generator = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(2315, 32, generator=generator), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(4148, 32, generator=generator), dim=-1)
    submissions = build_submissions(split, rank_split(split, queries, gallery, 50))
    assert MAX_BYTES == 5_000_000
    # What the server would have refused: the same recall file indented.
    assert len(json.dumps(submissions["recall"], indent=2).encode()) > MAX_BYTES
    paths = write_submissions(submissions, split, tmp_path / "out", "real")
    for path, metric in zip(paths, ("recall", "recall_subset")):
        assert path.stat().st_size < 4_500_000, (path, path.stat().st_size)
        assert b"\n" not in path.read_bytes()
        submission = read_submission(path)
        assert submission == submissions[metric]
        assert check_submission(submission, split) == metric
        assert len(submission) == 4148 + 2


# ---- 4. incomplete downloads -------------------------------------------------------------------

def _triplets_using(captions_file: Path, names: set[str]) -> int:
    return sum(1 for e in _read(captions_file) if e["reference"] in names or e["target_hard"] in names)


def test_missing_training_image_names_the_flag_then_the_flag_skips_its_triplets(synth_root, tmp_path, capsys,
                                                                                  info_logging):
    """On the command line: one line naming the image, the file that lists it and the flag (exit
    code 2); then a run through the Python API with the flag."""
    from clip_cir.apps.train import finetune_main

    data = _cirr_train_copy(synth_root, tmp_path)
    split_file = data / "cirr_dataset/cirr/image_splits/split.rc2.train.json"
    listing = _read(split_file)
    triplets = _read(data / "cirr_dataset/cirr/captions/cap.rc2.train.json")
    missing_name = triplets[0]["reference"]
    corrupt_name = next(e["target_hard"] for e in triplets[10:]
                        if missing_name not in (e["reference"], e["target_hard"]))
    missing = data / "cirr_dataset" / listing[missing_name]
    corrupt = data / "cirr_dataset" / listing[corrupt_name]
    missing.unlink()
    corrupt.write_bytes(b"<html>404 not found</html>")  # what a dead download link leaves behind
    common = dict(encoder="text", epochs=1, validation_frequency=5)

    with pytest.raises(SystemExit) as exit_info:
        finetune_main(stage1_args(data, tmp_path / "runs", "strict", *command_line(common)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"stage1/finetune.py: error: {missing}: image '{missing_name}' listed in "
                          f"split.rc2.train.json is missing on disk")
    assert "1 more of the" in err and "--skip-missing-images" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "strict").exists()

    clip_cir.finetune(**stage1_options(data, tmp_path / "runs", "skip", **common, skip_missing_images=True))
    run = tmp_path / "runs" / "skip"
    lines = (run / "skipped_images.txt").read_text().splitlines()
    rows = [line.split("\t") for line in lines if not line.startswith("#")]
    assert {(r[0], r[1]) for r in rows} == {(missing_name, str(missing)), (corrupt_name, str(corrupt))}
    assert {r[0]: r[2].split(" ")[0] for r in rows} == {missing_name: "missing", corrupt_name: "unreadable"}
    dropped = _triplets_using(data / "cirr_dataset/cirr/captions/cap.rc2.train.json", {missing_name, corrupt_name})
    assert dropped > 0
    assert f"# queries dropped in cirr/cirr/train: {dropped} of 120" in lines
    log = (run / "log.txt").read_text()
    assert (f"--skip-missing-images: left out 1 missing and 1 unreadable images and the {dropped} queries "
            f"that use them") in log
    steps = pd.read_csv(run / "train_metrics.csv")["steps"].item()
    assert steps == (120 - dropped) // 16


def test_gallery_only_gaps_are_reported_and_unused_training_images_are_not_checked(synth_root, tmp_path,
                                                                                   info_logging):
    """A val image no query uses as reference or target still changes the validation numbers
    (it is a distractor and an image-set member); a training image no triplet uses is never read."""
    data = _cirr_train_copy(synth_root, tmp_path)
    base = data / "cirr_dataset"
    val = _read(base / "cirr/captions/cap.rc2.val.json")
    needed = {e[k] for e in val for k in ("reference", "target_hard")}
    val_listing = _read(base / "cirr/image_splits/split.rc2.val.json")
    distractor = next(n for n in val_listing if n not in needed)
    (base / val_listing[distractor]).unlink()
    train = _read(base / "cirr/captions/cap.rc2.train.json")
    used = {e[k] for e in train for k in ("reference", "target_hard")}
    train_listing = _read(base / "cirr/image_splits/split.rc2.train.json")
    unused = next(n for n in train_listing if n not in used)
    (base / train_listing[unused]).write_bytes(b"not an image")
    clip_cir.finetune(**stage1_options(data, tmp_path / "runs", "gaps", encoder="text", epochs=1,
                                       skip_missing_images=True))
    run = tmp_path / "runs" / "gaps"
    rows = [line.split("\t")[0] for line in (run / "skipped_images.txt").read_text().splitlines()
            if not line.startswith("#")]
    assert rows == [distractor]
    log = (run / "log.txt").read_text()
    assert "validation of cirr/cirr/val runs without the skipped images: its numbers are not comparable" in log
    assert "and the 0 queries that use them" in log


def test_eval_refuses_a_missing_gallery_image_unless_told_and_then_says_so(data_copy, tiny_checkpoint, cli, tmp_path):
    root = data_copy("cirr")
    listing = _read(root / "cirr_dataset/cirr/image_splits/split.rc2.val.json")
    name = list(listing)[5]
    (root / "cirr_dataset" / listing[name]).unlink()
    model = ["--pretrained", tiny_checkpoint, "--num-workers", "0"]
    result = cli("eval", "--dataset", "cirr", "--data-root", root, *model)
    assert result.code == 2 and len(result.error_lines) == 1
    assert "is missing on disk" in result.err and "--skip-missing-images" in result.err
    assert "not comparable with published ones" in result.err

    result = cli("eval", "--dataset", "cirr", "--data-root", root, *model, "--skip-missing-images",
                 "--output", tmp_path / "m.json")
    assert result.code == 0, result.err
    assert "NOT comparable with published ones" in result.err
    metrics = _read(tmp_path / "m.json")
    assert metrics["skipped_images"] == 1 and metrics["comparable_with_published"] is False
    # Submissions never skip: the flag does not exist there and the message says why.
    result = cli("submit-cirr", "--data-root", root, "--split", "val", "--name", "x", "--output-dir",
                 tmp_path / "sub", *model)
    assert result.code == 2 and "complete the download" in result.err and not (tmp_path / "sub").exists()


def test_skipped_queries_are_the_ones_that_need_the_missing_image(data_copy):
    from clip_cir.data import load_splits
    from clip_cir.data.images import ImageCheck

    root = data_copy("cirr")
    listing = _read(root / "cirr_dataset/cirr/image_splits/split.rc2.val.json")
    name = list(listing)[0]
    (root / "cirr_dataset" / listing[name]).unlink()
    full = [e for e in _read(root / "cirr_dataset/cirr/captions/cap.rc2.val.json")]
    check = ImageCheck(skip=True)
    split = load_splits("cirr", root, "val", images=check)[0]
    kept = {e["pairid"] for e in full if name not in (e["reference"], e["target_hard"])}
    assert {int(q.qid) for q in split.queries} == kept and len(kept) < len(full)
    assert name not in split.gallery and len(split.gallery) == len(listing) - 1
    assert all(name not in q.members for q in split.queries)  # image sets lose the absent member
    assert check.changed_evaluation() == ["cirr/cirr/val"]


def test_circo_missing_ground_truth_stops_or_drops_every_query_that_needs_it(data_copy):
    """CIRCO's 123k COCO images are often partly downloaded: a missing image that is only a
    non-target ground truth still changes mAP, so its queries go too (with the flag), and
    without the flag the error names it and the flag."""
    from clip_cir.data import load_splits
    from clip_cir.data.images import SKIP_FLAG, ImageCheck
    from clip_cir.errors import CIRError

    root = data_copy("circo")
    entries = _read(root / "CIRCO/annotations/val.json")
    extra = next(e for e in entries if len(e["gt_img_ids"]) > 1)["gt_img_ids"][-1]
    gallery = _read(root / "CIRCO/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json")["images"]
    file_name = next(i["file_name"] for i in gallery if i["id"] == extra)
    (root / "CIRCO/COCO2017_unlabeled/unlabeled2017" / file_name).unlink()
    with pytest.raises(CIRError, match=f"{file_name}.*{SKIP_FLAG}"):
        load_splits("circo", root, "val")
    check = ImageCheck(skip=True)
    split = load_splits("circo", root, "val", images=check)[0]
    kept = {e["id"] for e in entries if extra not in (e["reference_img_id"], *e["gt_img_ids"])}
    assert {int(q.qid) for q in split.queries} == kept and len(kept) < len(entries)
    assert str(extra) not in split.gallery and check.changed_evaluation() == ["circo/circo/val"]


def test_fashioniq_training_uses_images_outside_the_split_file_but_val_does_not(data_copy):
    from clip_cir.data import load_splits
    from clip_cir.training.datasets import TrainingSet

    root = data_copy("fashioniq")
    base = root / "fashionIQ_dataset"
    listed = _read(base / "image_splits/split.dress.train.json")
    captions = _read(base / "captions/cap.dress.train.json")
    unlisted = captions[0]["target"]
    (base / "image_splits/split.dress.train.json").write_text(json.dumps([n for n in listed if n != unlisted]))
    train = load_splits("fashioniq", root, "train", ["dress"])[0]
    assert len(train.queries) == len(captions)  # the published code loads training images by name
    assert TrainingSet.from_splits([train]).image_names.count(unlisted) == 1
    # An image in images/ that the val split does not list never joins the val gallery.
    val_listed = _read(base / "image_splits/split.dress.val.json")
    val = load_splits("fashioniq", root, "val", ["dress"])[0]
    assert list(val.gallery) == val_listed and unlisted not in val.gallery


# ---- 5. NLVR2's flat layout --------------------------------------------------------------------

def test_cirr_train_images_in_the_flat_nlvr2_layout(synth_root, tmp_path, caplog):
    from clip_cir.data import load_splits
    from clip_cir.errors import CIRError

    root = _cirr_train_copy(synth_root, tmp_path)
    base = root / "cirr_dataset"
    listing = _read(base / "cirr/image_splits/split.rc2.train.json")
    assert all(Path(rel).parts[0] == "train" and len(Path(rel).parts) == 3 for rel in listing.values())
    for rel in listing.values():  # flatten: train/<n>/<name>.png -> train/<name>.png
        (base / rel).rename(base / "train" / Path(rel).name)
    with caplog.at_level(logging.INFO, logger="clip_cir"):
        split = load_splits("cirr", root, "train")[0]
    assert len(split.gallery) == len(listing)
    assert all(path == (base / "train" / Path(listing[name]).name).absolute() for name, path in split.gallery.items())
    said = [r.getMessage() for r in caplog.records if "flat NLVR2 layout" in r.getMessage()]
    assert len(said) == 1 and f"{len(listing)} of {len(listing)} images" in said[0]

    name = next(iter(listing))
    flat = base / "train" / Path(listing[name]).name
    flat.unlink()
    with pytest.raises(CIRError) as error:
        load_splits("cirr", root, "train")
    message = str(error.value)
    assert message.startswith(f"{(base / listing[name]).absolute()}: image '{name}' listed in split.rc2.train.json "
                              f"is missing on disk (also looked for {flat.absolute()})")


# ---- 7. honest log lines -----------------------------------------------------------------------

def test_loading_our_checkpoints_does_not_claim_a_random_init(synth_root, tmp_path, tiny_checkpoint, caplog):
    from clip_cir.models.clip import load_clip
    from clip_cir.models.files import save_weights

    loaded = load_clip(None, str(tiny_checkpoint))
    ours = tmp_path / "clip.safetensors"
    save_weights(ours, loaded.model.state_dict(), {"kind": "clip", "model_name": "cir-tiny-vit",
                                                   "model_config": loaded.config})
    with caplog.at_level(logging.INFO):
        load_clip(None, str(ours))
        load_clip("cir-tiny-vit", str(tiny_checkpoint))
        load_clip(None, str(tiny_checkpoint))
    assert not [r for r in caplog.records if "random" in r.getMessage().lower()], caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_clip("cir-tiny-vit")  # a real random init says so, once, in our words
    said = [r.getMessage() for r in caplog.records if r.name == "clip_cir" or r.levelno >= logging.WARNING]
    assert said == ["cir-tiny-vit: random initialisation (no pretrained weights)"], said


@pytest.mark.parametrize("threads", [False, True], ids=["one-by-one", "threads"])
def test_file_checks_keep_listing_order_and_name_the_first_bad_file(tmp_path, monkeypatch, threads):
    """Files on slow storage are checked by a thread pool in chunks, after a first chunk one by
    one: what each name resolves to, and which bad file an error names first, are those of
    checking one by one in listing order."""
    from clip_cir.data import images
    from clip_cir.data.images import ImageCheck, check_files
    from clip_cir.errors import CIRError

    Image.new("RGB", (8, 6), (200, 10, 10)).save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    names, candidates = [], []
    for i in range(23):
        kind = "missing" if i in (5, 17) else "corrupt" if i in (9, 20) else "good"
        if kind == "missing":
            paths = (tmp_path / f"none{i}.png", tmp_path / f"alt{i}.png")
        else:
            (tmp_path / f"{i}.png").hardlink_to(tmp_path / f"{kind}.png")
            paths = (tmp_path / f"absent{i}.png", tmp_path / f"{i}.png")  # the second candidate exists
        names.append(str(i))
        candidates.append(paths)
    monkeypatch.setattr(images, "CHECK_CHUNK", 4)  # the first 4 one by one, then 5 chunks over the pool
    monkeypatch.setattr(images, "SLOW_CHECK_SECONDS", 0.0 if threads else 1.0)
    pools = []

    class CountedPool(ThreadPoolExecutor):
        def __init__(self, threads: int):
            pools.append(threads)
            super().__init__(threads)

    monkeypatch.setattr(images, "ThreadPoolExecutor", CountedPool)
    checked = check_files(candidates, readable=True)
    assert [path.name for path, _ in checked] == [
        f"none{i}.png" if i in (5, 17) else f"{i}.png" for i in range(23)]
    reasons = [reason for _, reason in checked]
    assert [i for i, r in enumerate(reasons) if r is not None] == [5, 9, 17, 20]
    assert pools == ([images.CHECK_THREADS] if threads else [])
    assert reasons[5] == f"missing (also looked for {tmp_path / 'alt5.png'})" and reasons[9].startswith("unreadable")

    skipping = ImageCheck(skip=True, readable=True)
    found = skipping.locate(dict(zip(names, candidates)), tmp_path / "list.json")
    assert list(found) == [n for i, n in enumerate(names) if i not in (5, 9, 17, 20)]
    assert list(skipping.skipped) == ["5", "9", "17", "20"]
    with pytest.raises(CIRError, match=r"none5\.png: image '5' listed in list\.json is missing on disk .*; "
                                        r"3 more of the 23 images listed"):
        ImageCheck(readable=True).locate(dict(zip(names, candidates)), tmp_path / "list.json")
