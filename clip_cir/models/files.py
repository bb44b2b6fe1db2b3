"""Atomic writes and safe reads of everything a run saves.

Weights go to safetensors (no code can hide in them) with their metadata both in the file's
header and in a readable JSON beside it. Files are written to a temporary name and renamed,
so a run killed mid-write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clip_cir.errors import CIRError

META_KEY = "clip_cir"


def _new_temp_file(path: Path) -> tuple[str, int]:
    """A new empty file beside `path`, and the mode `open()` gave it (0666 less the umask)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(tmp), stat.S_IMODE(os.stat(tmp).st_mode)
    raise FileExistsError(f"{path}: no free temporary name beside it")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file over `path`.

    The file ends with the mode a plain `open()` gives a new file under the umask, whatever mode
    the writer left (safetensors replaces the file with a 0600 one): checkpoints and results are
    as readable by others as the user's umask says."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, mode = _new_temp_file(path)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def write_json(path: str | os.PathLike, data: Any, compact: bool = False) -> None:
    """Atomically; indented for people to read, or `compact` (no white space) for servers with size limits."""
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2, sort_keys=False)
    write_text(path, text + "\n")


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write `state_dict` as safetensors plus `<stem>.json`, both atomically."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    header = {META_KEY: json.dumps(metadata, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    write_json(path.with_suffix(".json"), metadata)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and our metadata ({} for safetensors files written by other tools)."""
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CIRError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, read_safetensors_metadata(path)


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Our metadata from the file's header alone, without reading the weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CIRError(f"{path}: not a readable safetensors file ({e})") from None
    return json.loads(header[META_KEY]) if META_KEY in header else {}


def write_dir(path: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Call `fill(tmp_dir)`, then swap the finished folder in for `path`: a kill leaves the old
    folder or the new one, never a half-written one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_torch_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Optimizer and RNG state for resuming: plain tensors and containers only, so it loads
    back with `weights_only=True`."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_torch_state(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unusable state file
        raise CIRError(f"{path}: unreadable training state ({str(e).splitlines()[0][:200]})") from None
