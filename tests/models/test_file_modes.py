"""What a run writes (checkpoints, config.json, metrics, submissions, rankings) gets the permissions
a plain `open()` would give it under the user's umask, though each file is first written under a
temporary name and renamed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clip_cir.models.files import (
    atomic_write,
    save_torch_state,
    save_weights,
    write_dir,
    write_json,
    write_text,
)


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request) -> int:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _plain_file_mode(folder: Path) -> int:
    """The mode `open(path, "w")` gives a new file here, under the current umask."""
    path = folder / "plain.txt"
    with open(path, "w") as f:
        f.write("x")
    return _mode(path)


WRITERS = {
    "write_text": lambda path: write_text(path, "text\n"),
    "write_json": lambda path: write_json(path, {"recall_at1": 75.0}),
    "save_weights": lambda path: save_weights(path, {"w": torch.ones(2)}, {"epoch": 1}),
    "save_torch_state": lambda path: save_torch_state(path, {"step": torch.tensor(3)}),
    "atomic_write": lambda path: atomic_write(path, lambda tmp: save_file({"w": torch.ones(2)}, tmp)),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_atomically_written_files_get_the_mode_open_gives(writer, umask, tmp_path):
    expected = 0o666 & ~umask
    assert _plain_file_mode(tmp_path) == expected
    path = tmp_path / "out" / "file.safetensors"
    WRITERS[writer](path)
    written = [path, path.with_suffix(".json")] if writer == "save_weights" else [path]
    assert {p.name: _mode(p) for p in written} == {p.name: expected for p in written}
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(p.name for p in written)  # no temporary left
    WRITERS[writer](path)  # replacing a file keeps the same mode
    assert _mode(path) == expected


def test_an_atomically_written_folder_and_its_files_get_the_modes_open_and_mkdir_give(umask, tmp_path):
    def fill(folder: Path) -> None:
        save_weights(folder / "clip.safetensors", {"w": torch.ones(2)}, {"epoch": 1})
        save_torch_state(folder / "training_state.pt", {"step": torch.tensor(3)})
        (folder / "sub").mkdir()
        write_json(folder / "sub" / "metrics.json", {"recall_at1": 75.0})

    path = tmp_path / "best"
    for _ in range(2):  # written, then replaced
        write_dir(path, fill)
        modes = {str(p.relative_to(path)): _mode(p) for p in [path, *path.rglob("*")]}
        assert modes == {".": 0o777 & ~umask, "sub": 0o777 & ~umask,
                         **{name: 0o666 & ~umask for name in ("clip.safetensors", "clip.json", "training_state.pt",
                                                              "sub/metrics.json")}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_metrics_written_by_eval_are_readable_by_others_under_umask_022(cli, synth_root, tmp_path):
    out = tmp_path / "metrics.json"
    old = os.umask(0o022)
    try:
        result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, "--model", "cir-tiny-vit",
                     "--num-workers", "0", "--no-cache", "--output", out)
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    assert "recall_at1" in json.loads(out.read_text()) and _mode(out) == 0o644


def test_an_exported_folder_gets_the_modes_open_and_mkdir_give(umask, cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "export"
    result = cli("export", "--pretrained", tiny_checkpoint, "--output-dir", out)
    assert result.code == 0, result.err
    modes = {str(p.relative_to(out)): _mode(p) for p in [out, *out.rglob("*")]}
    assert modes == {".": 0o777 & ~umask, **{name: 0o666 & ~umask for name in (
        "README.md", "open_clip_config.json", "open_clip_model.safetensors")}}
