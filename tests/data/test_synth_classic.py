"""`clip-cir synth --classic` (and `generate(..., classic=...)`): the classic benchmarks' stand-ins
under the same root, each as its own writer writes it, recorded in synth_info.json; CIRR,
FashionIQ and CIRCO unchanged by them; an existing stand-in folder refused or replaced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from clip_cir.data import load_splits
from clip_cir.data.synthetic import CLASSIC, generate
from clip_cir.data.synthetic.css import write_css
from clip_cir.data.synthetic.fashion200k import write_fashion200k
from clip_cir.data.synthetic.spotthediff import write_spotthediff

SIZES = ("--train", "4", "--val", "3", "--test", "3", "--circo", "2", "--size", "24", "--seed", "5")
THREE_LAYOUTS = ("cirr_dataset", "fashionIQ_dataset", "CIRCO", "synthetic_edits", "pretrain_captions.csv")


def _digest(path: Path) -> str:
    """One hash of a file, or of a folder's relative file names and bytes."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for file in files:
        h.update(file.relative_to(path.parent).as_posix().encode() + b"\0" + file.read_bytes())
    return h.hexdigest()


def test_synth_classic_all_writes_each_stand_in_as_its_writer(cli, tmp_path):
    plain, both = tmp_path / "plain", tmp_path / "both"
    assert cli("synth", "--root", plain, *SIZES).code == 0
    result = cli("synth", "--root", both, *SIZES, "--classic", "css", "all")
    assert result.code == 0, result.err
    assert sorted(p.name for p in both.iterdir()) == sorted(
        ["synth_info.json", *THREE_LAYOUTS, "Fashion200k", "mitstates", "CSSDataset", "shoes", "birds-to-words",
         "spot-the-diff", "cfq"])
    for name in THREE_LAYOUTS:  # the stand-ins leave the three layouts as they were
        assert _digest(both / name) == _digest(plain / name), name
    info, plain_info = (json.loads((root / "synth_info.json").read_text()) for root in (both, plain))
    assert "classic" not in plain_info and "classic" not in plain_info["args"]
    assert info["args"] == {**plain_info["args"], "classic": list(CLASSIC)}  # "all" once, in CLASSIC's order
    assert {k: v for k, v in info.items() if k not in ("args", "classic")} == \
        {k: v for k, v in plain_info.items() if k != "args"}
    assert list(info["classic"]) == ["fashion200k", "mitstates", "css", "shoes", "birdstowords", "spotthediff", "cfq"]
    assert json.loads(result.out)["classic"] == info["classic"]
    # Each stand-in is its writer's output with the same seed and size, bytes and summary.
    alone = tmp_path / "alone"
    for name, write in (("css", write_css), ("fashion200k", write_fashion200k), ("spotthediff", write_spotthediff)):
        summary = write(alone, seed=5, size=24)
        assert info["classic"][name] == {k: v for k, v in summary.items() if k != "root"}
        assert _digest(both / CLASSIC[name]) == _digest(alone / CLASSIC[name]), name
    assert info["classic"]["css"]["test"]["queries"] == len(load_splits("css", both, "test")[0].queries)
    assert info["classic"]["fashion200k"]["test"]["queries"] == len(load_splits("fashion200k", both, "test")[0].queries)
    assert len(load_splits("mitstates", both, "test")[0].gallery) == info["classic"]["mitstates"]["test"]["images"]


def test_generate_writes_each_named_stand_in_once_in_a_fixed_order(tmp_path):
    summary = generate(tmp_path, n_train=2, n_val=2, n_test=2, size=16, progress=False,
                       classic=("spotthediff", "css", "spotthediff"))
    assert summary["args"]["classic"] == ["css", "spotthediff"] and list(summary["classic"]) == ["css", "spotthediff"]
    assert json.loads((tmp_path / "synth_info.json").read_text())["classic"] == summary["classic"]


def test_an_existing_stand_in_folder_is_refused_or_replaced(cli, tmp_path):
    root = tmp_path / "data"
    write_fashion200k(root, size=16)  # a stand-in folder alone, as another synth run or a download leaves it
    stale = root / "Fashion200k" / "stale.txt"
    stale.write_text("from before")
    result = cli("synth", "--root", root, *SIZES)
    assert result.error_lines == [f"clip-cir: error: {root / 'Fashion200k'} exists and is not empty; "
                                  f"pass overwrite=True to replace it"]
    with pytest.raises(ValueError, match="Fashion200k exists and is not empty"):
        generate(root, n_train=2, n_val=2, n_test=2, size=32, progress=False, classic=["css"])
    assert not (root / "CSSDataset").exists() and not (root / "cirr_dataset").exists()  # refused before writing
    assert cli("synth", "--root", root, *SIZES, "--classic", "fashion200k", "--overwrite").code == 0
    assert not stale.exists() and (root / "Fashion200k" / "test_queries.txt").is_file()
    # Replacing without the stand-in removes its folder: synth_info.json describes all there is.
    assert cli("synth", "--root", root, *SIZES, "--overwrite").code == 0
    assert not (root / "Fashion200k").exists()


def test_an_unknown_stand_in_is_refused(cli, tmp_path):
    with pytest.raises(ValueError, match=r"^no synthetic stand-in for cirr, nope \(choose from fashion200k, "
                                         r"mitstates, css, shoes, birdstowords, spotthediff, cfq\)$"):
        generate(tmp_path / "data", n_train=2, n_val=2, n_test=2, progress=False, classic=["css", "cirr", "nope"])
    assert not (tmp_path / "data").exists()
    result = cli("synth", "--root", tmp_path / "data", "--classic", "triplets")
    assert result.code == 2 and "argument --classic: invalid choice: 'triplets'" in result.err
