"""Token-level CLIP features of many images or captions, computed once.

Compositors that attend over image regions or caption words read per-token features of frozen
towers every epoch. They are encoded once per (tower weights, preprocessing, precision, grid,
inputs) and kept beside the global feature cache, in `<feature cache>/tokens/<key>/`, as row
chunks of float16 numpy arrays that are memory-mapped when read: a training set's tokens never
have to fit in memory, and a batch reads only the pages its rows lie on. Captions are ragged: a
chunk holds its captions' tokens end to end ([sum of lengths, D]) and their lengths, so a caption
costs its own tokens, not the context length. The pooled features are not stored here (the
global feature cache has them).

Each chunk is written atomically as it is encoded, so an interrupted extraction resumes with the
chunks that are missing. Under DDP each process encodes and writes its own chunks (`chunk_plan`);
after a barrier every process memory-maps all of them, with no gather over the network (several
machines must therefore share the cache folder). Without a cache folder the tokens are kept in
memory, and every process encodes all of them.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from clip_cir.encoding.extraction import (
    FeatureCache,
    Piece,
    Shard,
    caption_batches,
    encode_counts,
    eval_mode,
    fill_pieces,
    image_input_batches,
    list_digest,
)
from clip_cir.encoding.feature_store import cache_key, covering_pieces, pieces_in
from clip_cir.encoding.options import EncodeOptions
from clip_cir.encoding.pixels import files_digest
from clip_cir.errors import CIRError
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.compositors.base import TokenFeatures
from clip_cir.models.files import atomic_write, write_text
from clip_cir.models.token_features import image_token_features, require_token_features, text_token_features
from clip_cir.models.towers import tower_fingerprint

log = logging.getLogger(__name__)

TOKEN_CHUNK_ROWS = 1024
"""Rows per token chunk file. A chunk is held in memory until it is written, and an interruption
loses at most the one in progress: 1024 ViT-B/16 images are 196 tokens x 512 x 2 bytes each,
205 MB (RN50x4 at 288 px: 106 MB; 1024 captions: about 13 MB), where the global cache's 16,384
rows would be 3.3 GB. A multiple of the usual batch sizes, as the global cache's chunks are."""

TOKEN_FORMAT = "tokens-v1"
"""Part of every key: the on-disk layout; a new layout starts new entries."""

MAX_OPEN_CHUNKS = 256
"""Chunk files a table keeps memory-mapped at once (each holds a file descriptor); the least
recently read one is closed past it."""

_LENGTHS_FILE = re.compile(r"rows-(\d+)-(\d+)\.lengths\.npy")


@dataclass
class TokenChunk:
    """Rows [start, start + len(lengths)) of a table: their tokens end to end and their lengths."""

    start: int
    lengths: np.ndarray
    """[rows] int32: tokens per row (grid cells for images, through EOT for captions)."""
    tokens: np.ndarray | Path
    """[sum(lengths), D] float16, in memory or a .npy file memory-mapped when first read."""


class TokenTable:
    """The token features of N images or captions, in input order; `gather` pads a batch of rows."""

    def __init__(self, chunks: list[TokenChunk], dim: int, grid: tuple[int, int] | None):
        self.chunks, self.dim, self.grid = chunks, dim, grid
        lengths = [chunk.lengths.astype(np.int64) for chunk in chunks]
        self.lengths = torch.from_numpy(np.concatenate(lengths)) if chunks else torch.zeros(0, dtype=torch.long)
        """[N] tokens per row."""
        self._starts = torch.tensor([chunk.start for chunk in chunks], dtype=torch.long)
        self._offsets = [np.concatenate([[0], np.cumsum(n)[:-1]]) for n in lengths]
        self._mapped: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def bytes_on_disk(self) -> int:
        """The size of the chunk files (tokens and lengths); 0 for a table held in memory."""
        files = [path for chunk in self.chunks if isinstance(chunk.tokens, Path)
                 for path in (chunk.tokens, _lengths_path(chunk.tokens))]
        return sum(path.stat().st_size for path in files)

    def _tokens(self, index: int) -> np.ndarray:
        tokens = self.chunks[index].tokens
        if not isinstance(tokens, Path):
            return tokens
        if index not in self._mapped:
            if len(self._mapped) >= MAX_OPEN_CHUNKS:
                self._mapped.popitem(last=False)
            self._mapped[index] = np.load(tokens, mmap_mode="r")
        self._mapped.move_to_end(index)
        return self._mapped[index]

    def gather(self, rows: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, L, D] float16 on the CPU, mask [B, L] bool) of `rows`, zeros where the mask
        is False. L is the grid's cell count for images, the longest of these rows for captions."""
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(self)):
            raise IndexError(f"rows out of range for a table of {len(self)}")
        lengths = self.lengths[rows]
        width = self.grid[0] * self.grid[1] if self.grid else int(lengths.max()) if len(rows) else 0
        positions = torch.arange(width)
        mask = positions[None, :] < lengths[:, None]
        out = torch.zeros(len(rows), width, self.dim, dtype=torch.float16)
        which = torch.searchsorted(self._starts, rows, right=True) - 1
        for index in which.unique().tolist():  # one read per chunk touched, vectorised within it
            picked = (which == index).nonzero().squeeze(1)
            first = torch.from_numpy(self._offsets[index][(rows[picked] - self.chunks[index].start).numpy()])
            batch_row, position = mask[picked].nonzero(as_tuple=True)
            source = (first[batch_row] + position).numpy()
            out[picked[batch_row], position] = torch.from_numpy(np.asarray(self._tokens(index)[source]))
        return out, mask


def _lengths_path(tokens_path: Path) -> Path:
    return tokens_path.with_name(tokens_path.name.replace(".tokens.npy", ".lengths.npy"))


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a temporary name
            np.save(f, array)
    atomic_write(path, write)


class TokenCache:
    """Token chunks on disk under one folder per key: `rows-<start>-<stop>.tokens.npy` and
    `.lengths.npy` (written last, so a chunk whose lengths exist is whole), and `meta.json` with
    the entry's dimension and grid."""

    def __init__(self, root: str | Path, chunk_rows: int = TOKEN_CHUNK_ROWS):
        self.root, self.chunk_rows = Path(root), chunk_rows

    @classmethod
    def beside(cls, features: FeatureCache | None, chunk_rows: int = TOKEN_CHUNK_ROWS) -> "TokenCache | None":
        """The token cache in the feature cache's folder; None without one (`--no-cache`)."""
        if features is None or features.root is None:
            return None
        return cls(features.root / "tokens", chunk_rows)

    def tokens_path(self, key: str, piece: Piece) -> Path:
        return self.root / key / f"rows-{piece[0]:09d}-{piece[1]:09d}.tokens.npy"

    def save_piece(self, key: str, piece: Piece, tokens: np.ndarray, lengths: np.ndarray, dim: int,
                   grid: tuple[int, int] | None) -> None:
        meta = self.root / key / "meta.json"
        if not meta.is_file():
            write_text(meta, json.dumps({"dim": dim, "grid": list(grid) if grid else None}))
        path = self.tokens_path(key, piece)
        _save_npy(path, tokens)
        _save_npy(_lengths_path(path), lengths)

    def load_piece(self, key: str, piece: Piece, dim: int) -> TokenChunk | None:
        """Rows [start, stop) if their chunk is on disk, whole and readable (its tokens are not read)."""
        path = self.tokens_path(key, piece)
        if not _lengths_path(path).is_file():
            return None
        try:
            lengths = np.load(_lengths_path(path))
            header = np.load(path, mmap_mode="r")
            shape, dtype = header.shape, header.dtype
            del header
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable token cache chunk %s/%s (%s)", key, path.name, e)
            return None
        if lengths.shape != (piece[1] - piece[0],) or shape != (int(lengths.sum()), dim) or dtype != np.float16:
            log.warning("ignoring token cache chunk %s/%s: %s float16 tokens of %d rows expected, found %s %s",
                        key, path.name, (int(lengths.sum()), dim), piece[1] - piece[0], shape, dtype)
            return None
        return TokenChunk(piece[0], lengths, path)

    def table(self, key: str, n: int) -> TokenTable | None:
        """All `n` rows of an entry, or None when some row's chunk is missing or unreadable."""
        meta_path = self.root / key / "meta.json"
        chain = covering_pieces(pieces_in(self.root / key, _LENGTHS_FILE), n)
        if not chain or not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        chunks = [self.load_piece(key, piece, meta["dim"]) for piece in chain]
        if any(chunk is None for chunk in chunks):
            return None
        return TokenTable(chunks, meta["dim"], tuple(meta["grid"]) if meta["grid"] else None)


def _packed(todo: list[Piece], batches: Iterable[TokenFeatures], *, device: torch.device | str, desc: str, unit: str,
            progress: bool) -> Iterator[tuple[Piece, np.ndarray, np.ndarray, tuple[int, int] | None]]:
    """Each piece of `todo` once its batches are in: (piece, its tokens end to end [T, D] float16,
    its lengths [rows] int32, its grid)."""
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    for (start, stop), at, features in fill_pieces(todo, batches, device=device, desc=desc, unit=unit,
                                                   progress=progress):
        real = features.tokens[features.mask].to(torch.float16)  # every mask is a prefix of its row
        parts.append((real.cpu(), features.mask.sum(dim=1).cpu()))
        if at + len(features) == stop:
            tokens = torch.cat([tokens for tokens, _ in parts]).numpy()
            lengths = torch.cat([lengths for _, lengths in parts]).to(torch.int32).numpy()
            parts = []
            yield (start, stop), tokens, lengths, features.grid


def _extract_tokens(n: int, dim: int, cache: TokenCache | None, key: str, *, sharded: bool, device: torch.device | str,
                    encode: Callable[[list[Piece]], Iterable[TokenFeatures]], desc: str, progress: bool,
                    unit: str) -> TokenTable:
    """The token table of `n` inputs from the cache, encoding the chunks that are missing."""
    progress_options = dict(device=device, desc=desc, unit=unit, progress=progress)
    if n == 0:
        return TokenTable([], dim, None)
    if cache is None:
        pieces = [(start, min(start + TOKEN_CHUNK_ROWS, n)) for start in range(0, n, TOKEN_CHUNK_ROWS)]
        chunks, grids = [], set()
        for (start, _), tokens, lengths, grid in _packed(pieces, encode(pieces), **progress_options):
            chunks.append(TokenChunk(start, lengths, tokens))
            grids.add(grid)
        return TokenTable(chunks, dim, grids.pop())
    shard = Shard(n, sharded, device, cache.chunk_rows)
    table = cache.table(key, n)
    if shard.all_hit(table is not None):
        log.info("%s: %d from the token cache", desc, n)
        return table

    def encode_mine() -> None:
        todo = [piece for piece in shard.pieces if cache.load_piece(key, piece, dim) is None]
        if todo and len(todo) < len(shard.pieces):
            log.info("%s: %d of %d chunks from the token cache, encoding the other %d", desc,
                     len(shard.pieces) - len(todo), len(shard.pieces), len(todo))
        for piece, tokens, lengths, grid in _packed(todo, encode(todo), **progress_options):
            cache.save_piece(key, piece, tokens, lengths, dim, grid)

    shard.run(encode_mine)  # every process's chunks are on disk past this point
    table = cache.table(key, n)
    if table is None:
        raise CIRError(f"{desc}: token chunks written by the other processes are not in {cache.root / key} "
                       "(processes on several machines need a cache folder they all share)")
    return table


@torch.no_grad()
def encode_image_tokens(clip: LoadedCLIP, paths: Sequence[Path], options: EncodeOptions, desc: str,
                        grid: int | None = None, chunk_rows: int = TOKEN_CHUNK_ROWS) -> TokenTable:
    """Token features of the images `paths` (`image_token_features`, pooled to at most `grid` x
    `grid` cells when given), from the token cache beside `options.image_cache` when possible."""
    require_token_features(clip.model, "image")
    paths = list(paths)
    cache = TokenCache.beside(options.image_cache, chunk_rows)
    key = cache_key("image", TOKEN_FORMAT, tower_fingerprint(clip.model, "image"), clip.signature,
                    options.transform.signature, options.precision, f"grid={grid}",
                    files_digest(paths)) if cache and paths else ""

    def encode(pieces: list[Piece]) -> Iterator[TokenFeatures]:
        for pixels in image_input_batches(clip, paths, pieces, options.transform, device=options.device,
                                          batch_size=options.batch_size, num_workers=options.num_workers,
                                          pixel_cache=options.pixel_cache, progress=options.progress, desc=desc):
            with (options.autocast or nullcontext)():
                features = image_token_features(clip.model, pixels, grid)
            encode_counts["image tokens"] += len(pixels)
            yield features

    with eval_mode(clip.model):
        return _extract_tokens(len(paths), clip.embed_dim, cache, key, sharded=options.sharded, device=options.device,
                               encode=encode, desc=desc, progress=options.progress, unit="image")


@torch.no_grad()
def encode_text_tokens(clip: LoadedCLIP, texts: Sequence[str], options: EncodeOptions, desc: str,
                       chunk_rows: int = TOKEN_CHUNK_ROWS) -> TokenTable:
    """Token features of the captions `texts` (`text_token_features`), from the token cache
    beside `options.text_cache` when possible."""
    require_token_features(clip.model, "text")
    texts = list(texts)
    cache = TokenCache.beside(options.text_cache, chunk_rows)
    key = cache_key("text", TOKEN_FORMAT, tower_fingerprint(clip.model, "text"), clip.signature, options.precision,
                    list_digest(texts)) if cache and texts else ""

    def encode(pieces: list[Piece]) -> Iterator[TokenFeatures]:
        for tokens in caption_batches(clip, texts, pieces, device=options.device,
                                      batch_size=max(options.batch_size, 256)):
            with (options.autocast or nullcontext)():
                features = text_token_features(clip.model, tokens)
            encode_counts["text tokens"] += len(tokens)
            yield features

    with eval_mode(clip.model):
        return _extract_tokens(len(texts), clip.embed_dim, cache, key, sharded=options.sharded, device=options.device,
                               encode=encode, desc=desc, progress=options.progress, unit="text")
