"""The on-disk feature cache, one folder of row chunks per key.

A million-image gallery is hours of GPU work: its features are written in chunks of a fixed
number of rows as each is encoded, so an interruption loses at most the chunk in progress and a
rerun encodes only the chunks that are not on disk. Under DDP each process writes its own chunks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from clip_cir.models.files import atomic_write

if TYPE_CHECKING:
    from clip_cir.config import CacheConfig

log = logging.getLogger(__name__)

CHUNK_ROWS = 16_384
"""Rows per cache file: what an interruption can lose per process, and few enough files (62 for
a million images) at a size (48 MB at 768 floats a row) any file system handles. A multiple of
every usual batch size, so a chunked extraction batches its rows as an unchunked one does."""

Piece = tuple[int, int]
"""Rows [start, stop) of one extraction."""

_PIECE_FILE = re.compile(r"rows-(\d+)-(\d+)\.safetensors")


def default_cache_dir() -> Path:
    return Path(os.environ.get("CLIP_CIR_CACHE", Path.home() / ".cache" / "clip_cir")) / "features"


def feature_cache_for(config: CacheConfig) -> FeatureCache:
    """The feature cache the settings name: their folder, the default one, or none (`no_cache`)."""
    return FeatureCache(None if config.no_cache else (config.cache_dir or default_cache_dir()))


def cache_key(*parts: str) -> str:
    """An entry's name: a hash of everything its contents depend on (weights, preprocessing, inputs)."""
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def chunk_plan(n: int, world: int, chunk_rows: int) -> list[list[Piece]]:
    """Each process's pieces of `n` rows, in order. Where there are at least as many chunks
    ([k * chunk_rows, (k + 1) * chunk_rows), the same grid whatever the number of processes) as
    processes, each takes a contiguous run of whole chunks, the runs differing by at most one chunk;
    a smaller extraction is split into `world` contiguous equal shares instead, so no process idles."""
    chunks = [(start, min(start + chunk_rows, n)) for start in range(0, n, max(chunk_rows, 1))]
    if len(chunks) >= world:
        bounds = [rank * len(chunks) // world for rank in range(world + 1)]
        return [chunks[bounds[rank]:bounds[rank + 1]] for rank in range(world)]
    per = -(-n // world)
    shares = [(min(rank * per, n), min((rank + 1) * per, n)) for rank in range(world)]
    return [[share] if share[0] < share[1] else [] for share in shares]


def pieces_in(folder: Path | None, pattern: re.Pattern) -> list[Piece]:
    """The row ranges of the chunk files in `folder` whose names `pattern` matches (start, stop groups)."""
    if folder is None or not folder.is_dir():
        return []
    found = (pattern.fullmatch(entry.name) for entry in folder.iterdir())
    return sorted((int(m[1]), int(m[2])) for m in found if m and int(m[1]) < int(m[2]))


def covering_pieces(pieces: list[Piece], n: int) -> list[Piece] | None:
    """Pieces that tile rows [0, n) end to end (files left by runs with another number of
    processes may overlap), or None when some rows are in none of them."""
    came_from: dict[int, Piece | None] = {0: None}
    for start, stop in sorted(pieces):
        if start in came_from and stop <= n:
            came_from.setdefault(stop, (start, stop))
    if n not in came_from:
        return None
    chain, at = [], n
    while at:
        piece = came_from[at]
        chain.append(piece)
        at = piece[0]
    return chain[::-1]


class FeatureCache:
    """Feature tensors on disk under one key per (weights, preprocessing, inputs): the folder
    `<key>/` of chunk files `rows-<start>-<stop>.safetensors`, each written atomically. An entry
    in the earlier single-file form (`<key>.safetensors`) is still read; new entries are chunked."""

    def __init__(self, root: str | os.PathLike | None, chunk_rows: int = CHUNK_ROWS):
        self.root = Path(root) if root is not None else None
        self.chunk_rows = chunk_rows

    def key(self, *parts: str) -> str:
        return cache_key(*parts)

    def piece_path(self, key: str, piece: Piece) -> Path:
        return self.root / key / f"rows-{piece[0]:09d}-{piece[1]:09d}.safetensors"

    def pieces_on_disk(self, key: str) -> list[Piece]:
        return pieces_in(self.root / key if self.root is not None else None, _PIECE_FILE)

    def _read(self, path: Path, rows: int, key: str) -> torch.Tensor | None:
        try:
            features = load_file(str(path))["features"]
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is recomputed, not fatal
            log.warning("ignoring unreadable feature cache entry %s (%s: %s)", key, path.name, e)
            return None
        if features.shape[0] != rows:
            log.warning("ignoring feature cache entry %s: %s holds %d rows, not %d",
                        key, path.name, features.shape[0], rows)
            return None
        return features

    def load_piece(self, key: str, piece: Piece) -> torch.Tensor | None:
        """The features of rows [start, stop) if that chunk is on disk and readable."""
        if self.root is None or not self.piece_path(key, piece).is_file():
            return None
        return self._read(self.piece_path(key, piece), piece[1] - piece[0], key)

    def save_piece(self, key: str, piece: Piece, features: torch.Tensor) -> None:
        if self.root is None:
            return
        tensors = {"features": features.detach().cpu().contiguous()}
        atomic_write(self.piece_path(key, piece), lambda tmp: save_file(tensors, tmp))

    def load(self, key: str, n: int) -> torch.Tensor | None:
        """All `n` rows of an entry, its chunks concatenated in order; None if any row is missing
        or unreadable (the chunks that are there are still read by `load_piece`)."""
        if self.root is None:
            return None
        single = self.root / f"{key}.safetensors"
        if single.is_file():
            features = self._read(single, n, key)
            if features is not None:
                return features
        chain = covering_pieces(self.pieces_on_disk(key), n)
        if not chain:
            return None
        features = None  # filled chunk by chunk: a million rows are never held twice
        for start, stop in chain:
            part = self.load_piece(key, (start, stop))
            if part is None:
                return None
            if len(chain) == 1:
                return part
            if features is None:
                features = torch.empty(n, *part.shape[1:], dtype=part.dtype)
            features[start:stop] = part
        return features

    def save(self, key: str, features: torch.Tensor) -> None:
        """A whole entry at once, in chunks (extraction writes chunk by chunk instead)."""
        n = features.shape[0]
        for start in range(0, n, self.chunk_rows):
            piece = (start, min(start + self.chunk_rows, n))
            self.save_piece(key, piece, features[piece[0]:piece[1]])
