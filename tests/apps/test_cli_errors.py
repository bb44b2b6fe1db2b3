"""Bad input through the command line: exit code 2, one line on stderr naming
the file and the problem, no traceback, and no output file left behind.

Each case corrupts a private copy of the synthetic data (`data_copy`), runs `clip-cir` in-process,
and checks the message fragments. One case runs the real `clip-cir` executable in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

MODEL = ["--model", "cir-tiny-vit"]
FAST = ["--num-workers", "0", "--batch-size", "256"]


# ------------------------------------------------------------------------------ helpers


def _cirr_file(root: Path, kind: str, split: str = "val") -> Path:
    folder, stem = {"captions": ("captions", "cap"), "split": ("image_splits", "split")}[kind]
    return root / "cirr_dataset" / "cirr" / folder / f"{stem}.rc2.{split}.json"


def _fiq_file(root: Path, kind: str, category: str = "dress", split: str = "val") -> Path:
    folder, stem = {"captions": ("captions", "cap"), "split": ("image_splits", "split")}[kind]
    return root / "fashionIQ_dataset" / folder / f"{stem}.{category}.{split}.json"


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _cirr_first_image(root: Path) -> tuple[str, Path]:
    name, rel = next(iter(json.loads(_cirr_file(root, "split").read_text()).items()))
    return name, root / "cirr_dataset" / rel


def _fiq_image(root: Path, suffix: str) -> tuple[str, Path]:
    """The first dress/val image stored with `suffix`."""
    images = root / "fashionIQ_dataset" / "images"
    for name in json.loads(_fiq_file(root, "split").read_text()):
        if (images / f"{name}{suffix}").exists():
            return name, images / f"{name}{suffix}"
    raise AssertionError(f"no {suffix} image in dress val")


def assert_clean_failure(result, *fragments: str) -> str:
    """Exit code 2, no traceback, exactly one error line (the last line of stderr) holding every
    fragment; returns that line."""
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err
    assert len(result.error_lines) == 1, result.err
    line = result.error_lines[0]
    assert result.err.rstrip("\n").splitlines()[-1] == line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def assert_no_outputs(out_dir: Path) -> None:
    """Nothing written: the output folder is absent or empty (no temporary files either)."""
    assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())


# -------------------------------------------------------------------------------- cases
# Each case: (dataset, prepare) where prepare(root_factory, tmp_path) -> (data_root, extra args,
# fragments the message must contain). root_factory(dataset) gives a writable copy.


def _missing_root(copy, tmp):
    root = tmp / "no_such_root"
    return root, [], [str(root), "data root not found"]


def _no_cirr_folder(copy, tmp):
    root = copy("fashioniq")
    return root, [], [str(root / "cirr_dataset"), "CIRR folder not found"]


def _missing_split_file(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "split")
    path.unlink()
    return root, [], [str(path), "CIRR image split file not found"]


def _missing_caption_file(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "captions")
    path.unlink()
    return root, [], [str(path), "CIRR caption file not found"]


def _malformed_json(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "captions")
    path.write_text(path.read_text()[:500])
    return root, [], [str(path), "malformed JSON"]


def _wrong_top_level(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "captions")
    path.write_text('{"pairid": 1}')
    return root, [], [str(path), "the top level should be a JSON list, got dict"]


def _missing_field(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "captions")
    _edit(path, lambda d: d[3].pop("caption"))
    return root, [], [str(path), "entry 3 has no field 'caption'"]


def _missing_target(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "captions")
    _edit(path, lambda d: d[5].pop("target_hard"))
    return root, [], [str(path), "entry 5 has no field 'target_hard'"]


def _missing_members(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "captions")
    _edit(path, lambda d: d[2]["img_set"].pop("members"))
    return root, [], [str(path), "entry 2 has no list 'img_set.members'"]


def _target_not_in_split(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "captions")
    _edit(path, lambda d: d[0].update(target_hard="dev-999-0-img0"))
    return root, [], [str(path), "entry 0 (pairid 0) names image 'dev-999-0-img0', which is not in split.rc2.val.json"]


def _member_not_in_split(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "captions")
    _edit(path, lambda d: d[1]["img_set"]["members"].__setitem__(4, "ghost"))
    return root, [], [str(path), "entry 1 (pairid 1) names image 'ghost'"]


def _soft_not_numbers(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "captions")
    _edit(path, lambda d: d[4].update(target_soft={d[4]["target_hard"]: "high"}))
    return root, [], [str(path), "entry 4 field 'target_soft' should be an object of numbers"]


def _reference_not_a_name(copy, tmp):
    root = copy("cirr")
    path = _cirr_file(root, "captions")
    _edit(path, lambda d: d[0].update(reference=["dev-0-0-img0"]))
    return root, [], [str(path), "entry 0 (pairid 0) has an image name that is not a string"]


def _image_missing_on_disk(copy, tmp):
    root = copy("cirr")
    name, image = _cirr_first_image(root)
    image.unlink()
    return root, [], [str(image), f"image '{name}' listed in split.rc2.val.json is missing on disk"]


def _garbage_image(copy, tmp):
    root = copy("cirr")
    _, image = _cirr_first_image(root)
    image.write_bytes(b"this is not a PNG file at all")
    return root, [], [str(image), "corrupt or unreadable image"]


def _truncated_image(copy, tmp):
    root = copy("cirr")
    _, image = _cirr_first_image(root)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    return root, [], [str(image), "corrupt or unreadable image"]


def _unknown_split(copy, tmp, synth_root):
    return synth_root, ["--split", "dev"], ["unknown CIRR split 'dev' (choose from train, val, test1)"]


def _unknown_model(copy, tmp, synth_root):
    return synth_root, ["--model", "cir-tiny-vt"], ["unknown open_clip model 'cir-tiny-vt'",
                                                     "did you mean cir-tiny-vit"]


def _unreadable_checkpoint(copy, tmp, synth_root):
    path = tmp / "broken.pt"
    path.write_bytes(b"\x80\x02garbage" * 10)
    return synth_root, ["--pretrained", str(path)], [str(path), "not a readable weights checkpoint"]


def _truncated_checkpoint(copy, tmp, synth_root):
    path = tmp / "truncated.pt"
    buffer = tmp / "full.pt"
    torch.save({"epoch": 0, "CLIP": {"x": torch.zeros(1000)}}, buffer)
    path.write_bytes(buffer.read_bytes()[:300])
    return synth_root, ["--pretrained", str(path)], [str(path), "not a readable weights checkpoint"]


def _missing_checkpoint(copy, tmp, synth_root):
    path = tmp / "nowhere" / "clip.pt"
    return synth_root, ["--pretrained", str(path)], [str(path), "checkpoint not found"]


def _unfitting_checkpoint(copy, tmp, synth_root):
    path = tmp / "small.pt"
    torch.save({"epoch": 0, "CLIP": {"text_projection": torch.zeros(2, 2)}}, path)
    return synth_root, ["--pretrained", str(path), "--model", "cir-tiny-vit"], [str(path),
                                                                               "weights do not fit the model"]


# FashionIQ

def _fiq_no_folder(copy, tmp):
    root = copy("cirr")
    return root, [], [str(root / "fashionIQ_dataset"), "FashionIQ folder not found"]


def _fiq_missing_split_file(copy, tmp):
    root = copy("fashioniq")
    path = _fiq_file(root, "split", "shirt")
    path.unlink()
    return root, [], [str(path), "FashionIQ image split file not found"]


def _fiq_missing_caption_file(copy, tmp):
    root = copy("fashioniq")
    path = _fiq_file(root, "captions", "toptee")
    path.unlink()
    return root, [], [str(path), "FashionIQ caption file not found"]


def _fiq_malformed_json(copy, tmp):
    root = copy("fashioniq")
    path = _fiq_file(root, "split")
    path.write_text('["B000000001", "B00')
    return root, [], [str(path), "malformed JSON"]


def _fiq_missing_field(copy, tmp):
    root = copy("fashioniq")
    path = _fiq_file(root, "captions")
    _edit(path, lambda d: d[1].pop("target"))
    return root, [], [str(path), "entry 1 has no field 'target'"]


def _fiq_one_caption(copy, tmp):
    root = copy("fashioniq")
    path = _fiq_file(root, "captions")
    _edit(path, lambda d: d[2].update(captions=["only one"]))
    return root, [], [str(path), "entry 2 field 'captions' should be a list of two strings"]


def _fiq_candidate_not_in_split(copy, tmp):
    root = copy("fashioniq")
    path = _fiq_file(root, "captions")
    _edit(path, lambda d: d[0].update(candidate="B000GHOST0"))
    return root, [], [str(path), "entry 0 names image 'B000GHOST0' (candidate), which is not in split.dress.val.json"]


def _fiq_target_not_a_name(copy, tmp):
    root = copy("fashioniq")
    path = _fiq_file(root, "captions")
    _edit(path, lambda d: d[0].update(target=7))
    return root, [], [str(path), "entry 0 field 'target' should be an image name"]


def _fiq_image_missing_on_disk(copy, tmp):
    root = copy("fashioniq")
    name, image = _fiq_image(root, ".jpg")
    image.unlink()
    return root, [], [name, "missing on disk", "split.dress.val.json"]


def _fiq_images_folder_missing(copy, tmp):
    root = copy("fashioniq")
    shutil.rmtree(root / "fashionIQ_dataset" / "images")
    return root, [], [str(root / "fashionIQ_dataset" / "images"), "FashionIQ image folder not found"]


def _fiq_corrupt_png(copy, tmp):
    root = copy("fashioniq")
    _, image = _fiq_image(root, ".png")
    image.write_bytes(image.read_bytes()[:60])
    return root, ["--fashioniq-categories", "dress"], [str(image), "corrupt or unreadable image"]


def _fiq_unknown_category(copy, tmp, synth_root):
    return synth_root, ["--fashioniq-categories", "dress", "skirt"], [
        "unknown FashionIQ category 'skirt' (choose from dress, shirt, toptee)"]


def _fiq_unknown_split(copy, tmp, synth_root):
    return synth_root, ["--split", "test1"], ["unknown FashionIQ split 'test1' (choose from train, val, test)"]


# CIRCO

def _circo_file(root: Path, split: str = "val") -> Path:
    return root / "CIRCO" / "annotations" / f"{split}.json"


def _circo_gallery_file(root: Path) -> Path:
    return root / "CIRCO" / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"


def _circo_no_folder(copy, tmp):
    root = copy("cirr")
    return root, [], [str(root / "CIRCO"), "CIRCO folder not found (--data-root must contain CIRCO/)"]


def _circo_missing_annotation_file(copy, tmp):
    root = copy("circo")
    path = _circo_file(root)
    path.unlink()
    return root, [], [str(path), "CIRCO annotation file not found"]


def _circo_missing_gallery_file(copy, tmp):
    root = copy("circo")
    path = _circo_gallery_file(root)
    path.unlink()
    return root, [], [str(path), "COCO unlabeled image list not found"]


def _circo_malformed_json(copy, tmp):
    root = copy("circo")
    path = _circo_file(root)
    path.write_text(path.read_text()[:300])
    return root, [], [str(path), "malformed JSON"]


def _circo_malformed_gallery_json(copy, tmp):
    root = copy("circo")
    path = _circo_gallery_file(root)
    path.write_text('{"images": [{"id": 7, "file_name": ')
    return root, [], [str(path), "malformed JSON"]


def _circo_missing_field(copy, tmp):
    root = copy("circo")
    path = _circo_file(root)
    _edit(path, lambda d: d[2].pop("gt_img_ids"))
    return root, [], [str(path), "entry 2 has no field 'gt_img_ids'"]


def _circo_missing_concept(copy, tmp):
    root = copy("circo")
    path = _circo_file(root)
    _edit(path, lambda d: d[4].pop("shared_concept"))
    return root, [], [str(path), "entry 4 has no field 'shared_concept'"]


def _circo_gallery_no_images(copy, tmp):
    root = copy("circo")
    path = _circo_gallery_file(root)
    _edit(path, lambda d: d.pop("images"))
    return root, [], [str(path), "no field 'images'"]


def _circo_gallery_entry_without_file_name(copy, tmp):
    root = copy("circo")
    path = _circo_gallery_file(root)
    _edit(path, lambda d: d["images"][5].pop("file_name"))
    return root, [], [str(path), "entry 5 has no field 'file_name'"]


def _circo_gallery_id_without_file(copy, tmp):
    root = copy("circo")
    entry = json.loads(_circo_gallery_file(root).read_text())["images"][3]
    image = root / "CIRCO" / "COCO2017_unlabeled" / "unlabeled2017" / entry["file_name"]
    image.unlink()
    return root, [], [str(image), f"image '{entry['id']}' listed in image_info_unlabeled2017.json is missing on disk"]


def _circo_gt_not_in_gallery(copy, tmp):
    root = copy("circo")
    path = _circo_file(root)
    _edit(path, lambda d: d[1]["gt_img_ids"].append(999_999_999))
    return root, [], [str(path), "entry 1 (id 1) names image id 999999999 (gt_img_ids), which is not in "
                                 "image_info_unlabeled2017.json"]


def _circo_reference_not_an_id(copy, tmp):
    root = copy("circo")
    path = _circo_file(root)
    _edit(path, lambda d: d[0].update(reference_img_id="000000000042.jpg"))
    return root, [], [str(path), "entry 0 (id 0) field 'reference_img_id' should hold integer image ids, "
                                 "got '000000000042.jpg'"]


def _circo_target_not_first(copy, tmp):
    root = copy("circo")
    path = _circo_file(root)
    _edit(path, lambda d: d[3].update(target_img_id=d[3]["reference_img_id"]))
    return root, [], [str(path), "entry 3 (id 3) target_img_id", "is not the first of gt_img_ids"]


def _circo_repeated_query_id(copy, tmp):
    root = copy("circo")
    path = _circo_file(root)
    _edit(path, lambda d: d[6].update(id=2))
    return root, [], [str(path), "entry 6 repeats query id 2"]


def _circo_unknown_split(copy, tmp, synth_root):
    return synth_root, ["--split", "test1"], ["unknown CIRCO split 'test1' (choose from val, test)"]


CIRCO_CASES = [_missing_root, _circo_no_folder, _circo_missing_annotation_file, _circo_missing_gallery_file,
               _circo_malformed_json, _circo_malformed_gallery_json, _circo_missing_field, _circo_missing_concept,
               _circo_gallery_no_images, _circo_gallery_entry_without_file_name, _circo_gallery_id_without_file,
               _circo_gt_not_in_gallery, _circo_reference_not_an_id, _circo_target_not_first,
               _circo_repeated_query_id, _circo_unknown_split, _unknown_model]


CIRR_CASES = [_missing_root, _no_cirr_folder, _missing_split_file, _missing_caption_file, _malformed_json,
              _wrong_top_level, _missing_field, _missing_target, _missing_members, _target_not_in_split,
              _member_not_in_split, _soft_not_numbers, _reference_not_a_name, _image_missing_on_disk,
              _garbage_image, _truncated_image, _unknown_split, _unknown_model, _unreadable_checkpoint,
              _truncated_checkpoint, _missing_checkpoint, _unfitting_checkpoint]
FIQ_CASES = [_missing_root, _fiq_no_folder, _fiq_missing_split_file, _fiq_missing_caption_file, _fiq_malformed_json,
             _fiq_missing_field, _fiq_one_caption, _fiq_candidate_not_in_split, _fiq_target_not_a_name,
             _fiq_image_missing_on_disk, _fiq_images_folder_missing, _fiq_corrupt_png, _fiq_unknown_category,
             _fiq_unknown_split, _unknown_model, _unreadable_checkpoint]


def _prepare(case, data_copy, tmp_path, synth_root):
    import inspect

    if "synth_root" in inspect.signature(case).parameters:
        return case(data_copy, tmp_path, synth_root)
    return case(data_copy, tmp_path)


def _ids(cases):
    return [c.__name__.lstrip("_") for c in cases]


EVAL_CASES = ([("cirr", c) for c in CIRR_CASES] + [("fashioniq", c) for c in FIQ_CASES]
              + [("circo", c) for c in CIRCO_CASES])


@pytest.mark.parametrize("dataset, case", EVAL_CASES, ids=[f"{d}-{c.__name__.lstrip('_')}" for d, c in EVAL_CASES])
def test_eval_bad_input(dataset, case, cli, data_copy, tmp_path, synth_root):
    root, extra, fragments = _prepare(case, data_copy, tmp_path, synth_root)
    out = tmp_path / "out"
    result = cli("eval", "--dataset", dataset, "--data-root", root, *MODEL, *FAST, "--output", out / "metrics.json",
                 *extra)
    assert_clean_failure(result, *fragments)
    assert_no_outputs(out)


SUBMIT_CASES = [("cirr", c) for c in (_missing_root, _missing_split_file, _malformed_json, _member_not_in_split,
                                      _image_missing_on_disk, _garbage_image, _unknown_model, _unreadable_checkpoint)]
SUBMIT_CASES += [("circo", c) for c in (_circo_missing_gallery_file, _circo_gallery_id_without_file,
                                        _circo_malformed_json)]


@pytest.mark.parametrize("dataset, case", SUBMIT_CASES,
                         ids=[f"{d}-{c.__name__.lstrip('_')}" for d, c in SUBMIT_CASES])
def test_submit_bad_input_writes_no_submission(dataset, case, cli, data_copy, tmp_path, synth_root):
    root, extra, fragments = _prepare(case, data_copy, tmp_path, synth_root)
    out = tmp_path / "submissions"
    result = cli(f"submit-{dataset}", "--data-root", root, "--split", "val", "--name", "bad", "--output-dir", out,
                 *MODEL, *FAST, *extra)
    assert_clean_failure(result, *fragments)
    assert_no_outputs(out)


@pytest.mark.parametrize("case", [_garbage_image, _target_not_in_split], ids=["garbage_image", "target_not_in_split"])
def test_rank_bad_input_writes_nothing(case, cli, data_copy, tmp_path, synth_root):
    root, extra, fragments = _prepare(case, data_copy, tmp_path, synth_root)
    out = tmp_path / "out"
    result = cli("rank", "--dataset", "cirr", "--data-root", root, "--split", "val", *MODEL, *FAST,
                 "--output", out / "ranking.json", *extra)
    assert_clean_failure(result, *fragments)
    assert_no_outputs(out)


def test_unknown_dataset(cli, synth_root, tmp_path):
    result = cli("eval", "--dataset", "coco", "--data-root", synth_root, *MODEL, "--output", tmp_path / "m.json")
    assert result.code == 2 and "Traceback" not in result.err
    last = result.err.rstrip().splitlines()[-1]
    assert last.startswith("clip-cir eval: error:")
    assert "--dataset" in last and "invalid choice: 'coco'" in last and "cirr" in last and "fashioniq" in last
    assert "circo" in last
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("dataset, test_split", [("cirr", "test1"), ("circo", "test")])
def test_submit_rejects_train_split(dataset, test_split, cli, synth_root, tmp_path):
    result = cli(f"submit-{dataset}", "--data-root", synth_root, "--split", "train", "--name", "x",
                 "--output-dir", tmp_path / "out", *MODEL)
    assert_clean_failure(result, f"--split must be {test_split} or val for a {dataset.upper()} submission, got 'train'")
    assert_no_outputs(tmp_path / "out")


@pytest.mark.parametrize("dataset, extra", [("fashioniq", ["--fashioniq-categories", "dress"]), ("circo", [])])
def test_eval_on_test_split_has_no_targets(dataset, extra, cli, synth_root, tmp_path):
    result = cli("eval", "--dataset", dataset, "--data-root", synth_root, "--split", "test", *extra, *MODEL, *FAST,
                 "--output", tmp_path / "out" / "m.json")
    assert_clean_failure(result, f"{dataset} split 'test' has no targets to score", "clip-cir rank", "submit-circo")
    assert_no_outputs(tmp_path / "out")


def test_bad_numbers_in_options(cli, synth_root, tmp_path):
    result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, *MODEL, "--batch-size", "0")
    assert_clean_failure(result, "--batch-size must be positive, got 0")
    result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, *MODEL, "--target-ratio", "0.5")
    assert_clean_failure(result, "--target-ratio must be >= 1, got 0.5")
    result = cli("rank", "--dataset", "cirr", "--data-root", synth_root, *MODEL, "--top-k", "-3",
                 "--output", tmp_path / "r.json")
    assert_clean_failure(result, "--top-k must be positive, got -3")
    assert not (tmp_path / "r.json").exists()


def test_corrupt_image_in_a_real_subprocess_with_loader_workers(data_copy, tmp_path):
    """The installed `clip-cir` executable, default DataLoader workers (the error crosses a
    worker process): still one clean line naming the image."""
    root = data_copy("cirr")
    _, image = _cirr_first_image(root)
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "out"
    exe = Path(sys.executable).parent / "clip-cir"
    proc = subprocess.run([str(exe), "eval", "--dataset", "cirr", "--data-root", str(root), *MODEL,
                           "--num-workers", "2", "--batch-size", "32", "--output", str(out / "metrics.json")],
                          capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("clip-cir: error:")]
    assert len(lines) == 1 and proc.stderr.rstrip().splitlines()[-1] == lines[0]
    assert f"clip-cir: error: {image}: corrupt or unreadable image" in lines[0]
    assert proc.stdout == ""
    assert_no_outputs(out)
