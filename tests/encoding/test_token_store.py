"""The token cache: tables read back (memory-mapped, float16) equal the token features computed
directly, across chunk boundaries and for ragged captions; each chunk is encoded once per model,
preprocessing, grid and inputs; an interrupted extraction encodes only its missing chunks; under
DDP each process encodes its own chunks and reads every one from disk.

Tolerance: float16 storage of float32 features, atol = rtol = 1e-3 (half a float16 step is about
4.9e-4 of a value)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, ddp_launcher
from PIL import Image

from clip_cir.encoding.extraction import FeatureCache, encode_counts
from clip_cir.encoding.feature_store import chunk_plan
from clip_cir.encoding.split_features import EncodeOptions
from clip_cir.encoding.token_store import TokenCache, encode_image_tokens, encode_text_tokens
from clip_cir.errors import CIRError
from clip_cir.models.clip import load_clip
from clip_cir.models.token_features import image_token_features, text_token_features
from clip_cir.models.towers import trim_tokens

FP16 = dict(atol=1e-3, rtol=1e-3)
CAPTIONS = ["is red", "has a small blue triangle on the left instead of the big green circle", "x",
            "is the same dog but sitting", "shows two of them, both smaller and on a wooden table", "wider",
            "is darker", "has long sleeves and no logo on the chest at all, in a lighter shade", "is blue"]


def _images(folder: Path, n: int = 11) -> list[Path]:
    """n small images of random noise, some not square."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _clip(name: str = "cir-tiny-vit", seed: int = 0):
    torch.manual_seed(seed)
    clip = load_clip(name)
    clip.model.eval()
    return clip


def _options(clip, cache: Path | None, **extra) -> EncodeOptions:
    features = FeatureCache(cache) if cache is not None else None
    return EncodeOptions(transform=clip.image_transform("targetpad", 1.25), image_cache=features, text_cache=features,
                         batch_size=3, progress=False, **extra)


@torch.no_grad()
def _direct_images(clip, paths: list[Path], grid: int | None = None):
    transform = clip.image_transform("targetpad", 1.25)
    pixels = torch.stack([transform(Image.open(path)) for path in paths])
    return image_token_features(clip.model, pixels, grid)


@torch.no_grad()
def _direct_caption(clip, caption: str) -> torch.Tensor:
    """One caption's tokens through EOT, encoded alone."""
    features = text_token_features(clip.model, trim_tokens(clip.model, clip.tokenizer([caption])))
    return features.tokens[0]


def _chunk_files(cache: Path, suffix: str = ".tokens.npy") -> list[str]:
    return sorted(path.name for path in (cache / "tokens").glob(f"*/*{suffix}"))


def test_image_tokens_are_read_back_across_chunks_and_encoded_once(tmp_path):
    clip, paths = _clip(), _images(tmp_path / "images")
    before = encode_counts["image tokens"]
    table = encode_image_tokens(clip, paths, _options(clip, tmp_path / "cache"), "images", chunk_rows=4)
    assert encode_counts["image tokens"] - before == 11
    assert (len(table), table.dim, table.grid) == (11, 128, (4, 4))
    # 11 rows in chunks of 4: [0, 4), [4, 8), [8, 11), each 16 tokens a row.
    pieces = ((0, 4), (4, 8), (8, 11))
    assert _chunk_files(tmp_path / "cache") == [f"rows-{a:09d}-{b:09d}.tokens.npy" for a, b in pieces]
    files = sorted((tmp_path / "cache" / "tokens").glob("*/rows-*"))
    assert table.bytes_on_disk == sum(path.stat().st_size for path in files) > 11 * 16 * 128 * 2
    last = np.load(next(p for p in files if p.name == "rows-000000008-000000011.tokens.npy"), mmap_mode="r")
    assert last.shape == (3 * 16, 128) and last.dtype == np.float16

    direct = _direct_images(clip, paths)
    rows = torch.tensor([10, 0, 5, 4, 3, 10])  # every chunk, out of order, one row twice
    tokens, mask = table.gather(rows)
    assert tokens.dtype == torch.float16 and tokens.shape == (6, 16, 128) and bool(mask.all())
    torch.testing.assert_close(tokens.float(), direct.tokens[rows], **FP16)

    # Again, with new options and a new cache object on the same folder: nothing is encoded.
    again = encode_image_tokens(clip, paths, _options(clip, tmp_path / "cache"), "images", chunk_rows=4)
    assert encode_counts["image tokens"] - before == 11
    assert torch.equal(again.gather(rows)[0], tokens)


def test_the_grid_the_model_and_the_preprocessing_are_part_of_the_key(tmp_path):
    clip, paths = _clip(), _images(tmp_path / "images", 5)
    cache = tmp_path / "cache"
    before = encode_counts["image tokens"]
    encode_image_tokens(clip, paths, _options(clip, cache), "images", chunk_rows=4)
    pooled = encode_image_tokens(clip, paths, _options(clip, cache), "images", grid=2, chunk_rows=4)
    assert encode_counts["image tokens"] - before == 10 and pooled.grid == (2, 2)
    tokens, mask = pooled.gather(torch.arange(5))
    assert tokens.shape == (5, 4, 128) and bool(mask.all())
    torch.testing.assert_close(tokens.float(), _direct_images(clip, paths, grid=2).tokens, **FP16)

    other = _clip(seed=1)  # same architecture, other weights
    table = encode_image_tokens(other, paths, _options(other, cache), "images", chunk_rows=4)
    assert encode_counts["image tokens"] - before == 15
    torch.testing.assert_close(table.gather(torch.arange(5))[0].float(), _direct_images(other, paths).tokens, **FP16)
    squash = EncodeOptions(transform=clip.image_transform("squarepad"), image_cache=FeatureCache(cache), batch_size=3,
                           progress=False)
    encode_image_tokens(clip, paths, squash, "images", chunk_rows=4)
    assert encode_counts["image tokens"] - before == 20
    assert len(list((cache / "tokens").iterdir())) == 4  # four entries, none reused


def test_captions_are_stored_ragged_and_gathered_to_the_longest_of_the_rows(tmp_path):
    clip = _clip("cir-tiny-rn")
    before = encode_counts["text tokens"]
    table = encode_text_tokens(clip, CAPTIONS, _options(clip, tmp_path / "cache"), "captions", chunk_rows=4)
    assert encode_counts["text tokens"] - before == 9 and table.grid is None and table.dim == 64
    direct = [_direct_caption(clip, caption) for caption in CAPTIONS]
    lengths = [len(d) for d in direct]
    assert table.lengths.tolist() == lengths and lengths[2] == 3  # SOT, "x", EOT
    # On disk each chunk holds its captions' own tokens, not the context length's.
    files = sorted((tmp_path / "cache" / "tokens").glob("*/*.tokens.npy"))
    stored = [np.load(path, mmap_mode="r").shape[0] for path in files]
    assert stored == [sum(lengths[0:4]), sum(lengths[4:8]), lengths[8]]

    for rows in ([2, 6, 8], [7, 0, 1, 5]):  # short ones only; then across chunks with the longest
        tokens, mask = table.gather(torch.tensor(rows))
        longest = max(lengths[r] for r in rows)
        assert tokens.shape == (len(rows), longest, 64)
        assert mask.tolist() == [[i < lengths[r] for i in range(longest)] for r in rows]
        for i, r in enumerate(rows):
            torch.testing.assert_close(tokens[i, :lengths[r]].float(), direct[r], **FP16)
            assert not tokens[i, lengths[r]:].any()
    encode_text_tokens(clip, CAPTIONS, _options(clip, tmp_path / "cache"), "captions", chunk_rows=4)
    assert encode_counts["text tokens"] - before == 9
    empty_tokens, empty_mask = table.gather(torch.zeros(0, dtype=torch.long))
    assert empty_tokens.shape == (0, 0, 64) and empty_mask.shape == (0, 0)
    with pytest.raises(IndexError, match="rows out of range for a table of 9"):
        table.gather(torch.tensor([9]))


def test_an_interrupted_extraction_encodes_only_the_missing_chunks(tmp_path, monkeypatch):
    clip, paths = _clip(), _images(tmp_path / "images")
    cache = tmp_path / "cache"
    save_piece, saved = TokenCache.save_piece, []

    def save_then_stop(self, key, piece, *args):
        if len(saved) == 2:
            raise KeyboardInterrupt
        save_piece(self, key, piece, *args)
        saved.append(piece)

    monkeypatch.setattr(TokenCache, "save_piece", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        encode_image_tokens(clip, paths, _options(clip, cache), "images", chunk_rows=4)
    monkeypatch.setattr(TokenCache, "save_piece", save_piece)
    assert saved == [(0, 4), (4, 8)] and _chunk_files(cache) == ["rows-000000000-000000004.tokens.npy",
                                                                 "rows-000000004-000000008.tokens.npy"]
    before = encode_counts["image tokens"]
    table = encode_image_tokens(clip, paths, _options(clip, cache), "images", chunk_rows=4)
    assert encode_counts["image tokens"] - before == 3  # rows 8-10 only
    direct = _direct_images(clip, paths)
    torch.testing.assert_close(table.gather(torch.arange(11))[0].float(), direct.tokens, **FP16)

    # A chunk whose lengths were never written (stopped in between), whose tokens are damaged or
    # hold other rows than its lengths say is encoded again.
    next(cache.glob("tokens/*/rows-000000004-000000008.lengths.npy")).unlink()
    next(cache.glob("tokens/*/rows-000000000-000000004.tokens.npy")).write_bytes(b"not an array")
    np.save(next(cache.glob("tokens/*/rows-000000008-000000011.tokens.npy")), np.zeros((47, 128), np.float16))
    before = encode_counts["image tokens"]
    table = encode_image_tokens(clip, paths, _options(clip, cache), "images", chunk_rows=4)
    assert encode_counts["image tokens"] - before == 11
    torch.testing.assert_close(table.gather(torch.arange(11))[0].float(), direct.tokens, **FP16)


def test_without_a_cache_folder_tokens_stay_in_memory(tmp_path):
    clip, paths = _clip(), _images(tmp_path / "images", 4)
    before = encode_counts["image tokens"]
    table = encode_image_tokens(clip, paths, _options(clip, None), "images", grid=3)
    again = encode_image_tokens(clip, paths, _options(clip, None), "images", grid=3)
    assert encode_counts["image tokens"] - before == 8 and table.bytes_on_disk == 0 and table.grid == (3, 3)
    torch.testing.assert_close(again.gather([3, 1])[0].float(), _direct_images(clip, paths, 3).tokens[[3, 1]], **FP16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
    assert len(encode_text_tokens(clip, [], _options(clip, None), "none")) == 0


def test_a_tower_without_token_features_is_refused_before_any_image_is_read(tmp_path):
    clip = _clip("cir-tiny-convnext")
    with pytest.raises(CIRError, match="^token features are not available for TimmModel image towers"):
        encode_image_tokens(clip, [tmp_path / "missing.png"], _options(clip, tmp_path / "cache"), "images")


def test_two_processes_each_encode_their_own_chunks_and_read_every_one(tiny_checkpoint, tmp_path):
    """4-row chunks of 11 images and 9 captions: rank 0 takes the first chunk ([0, 4)), rank 1 the
    other two ([4, 8) and [8, 11) or [8, 9)); each writes its own, and both read every row back from disk."""
    paths = _images(tmp_path / "images")
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, *ddp_launcher(2), str(REPO / "tests" / "scripts" / "sharded_tokens.py"),
           str(tmp_path / "images"), str(tiny_checkpoint), str(out), "4", *CAPTIONS]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert [chunk_plan(n, 2, 4) for n in (11, 9)] == [[[(0, 4)], [(4, 8), (8, 11)]], [[(0, 4)], [(4, 8), (8, 9)]]]
    counts = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(c["image tokens"], c["text tokens"]) for c in counts] == [(4, 4), (7, 5)]
    written = [[name for _, name in json.loads((out / f"rank{r}_chunks.json").read_text())] for r in range(2)]
    first, second = "rows-000000000-000000004.tokens.npy", "rows-000000004-000000008.tokens.npy"
    assert written == [[first, first], [second, "rows-000000008-000000011.tokens.npy",
                                        second, "rows-000000008-000000009.tokens.npy"]]

    clip = load_clip(None, str(tiny_checkpoint))
    clip.model.eval()
    images = _direct_images(clip, paths).tokens.flip(0)
    direct = [_direct_caption(clip, caption) for caption in CAPTIONS]
    for rank in range(2):
        torch.testing.assert_close(torch.from_numpy(np.load(out / f"rank{rank}_images.npy")).float(), images, **FP16)
        captions, mask = np.load(out / f"rank{rank}_captions.npy"), np.load(out / f"rank{rank}_mask.npy")
        assert mask.sum(axis=1).tolist() == [len(d) for d in direct]
        for i, d in enumerate(direct):
            torch.testing.assert_close(torch.from_numpy(captions[i, :len(d)]).float(), d, **FP16)
