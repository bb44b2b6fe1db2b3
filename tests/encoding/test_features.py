"""Feature extraction and the on-disk feature cache (keyed by weights, preprocessing, inputs)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from clip_cir.data import load_splits
from clip_cir.data.io import load_image
from clip_cir.encoding.extraction import (
    CHUNK_ROWS,
    FeatureCache,
    chunk_plan,
    encode_counts,
    encode_images,
    encode_texts,
)
from clip_cir.encoding.pixels import PixelBatches, PixelCache
from clip_cir.models.clip import load_clip
from clip_cir.models.transforms import build_transform


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_clip(None, str(tiny_checkpoint))


@pytest.fixture(scope="module")
def val_paths(synth_root):
    return list(load_splits("cirr", synth_root, "val")[0].gallery.values())[:16]


def test_features_equal_a_direct_forward_pass(loaded, tiny_clip, val_paths):
    transform = build_transform("targetpad", 64)
    features = encode_images(loaded, val_paths, transform, batch_size=8, progress=False)
    batch = torch.stack([transform(load_image(p)) for p in val_paths])
    with torch.no_grad():
        expected = tiny_clip.encode_image(batch)
    assert features.shape == (16, 128) and features.dtype == torch.float32
    assert torch.allclose(features, expected, atol=1e-5)
    texts = ["make the red circle blue", "remove the star"]
    with torch.no_grad():
        expected_text = tiny_clip.encode_text(loaded.tokenizer(texts))
    assert torch.allclose(encode_texts(loaded, texts, progress=False), expected_text, atol=1e-5)


def test_cache_hits_and_misses(loaded, make_tiny_clip, val_paths, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    targetpad = build_transform("targetpad", 64)

    def encoded(clip, paths, transform):
        before = encode_counts["image"]
        features = encode_images(clip, paths, transform, batch_size=8, cache=cache, progress=False)
        return features, encode_counts["image"] - before

    first, n = encoded(loaded, val_paths, targetpad)
    # One entry: a folder holding the 16 rows as one chunk (fewer rows than CHUNK_ROWS).
    assert n == 16 and [p.name for p in (tmp_path / "cache").glob("*/*")] == ["rows-000000000-000000016.safetensors"]
    again, n = encoded(loaded, val_paths, targetpad)
    assert n == 0 and torch.equal(again, first)
    # A freshly loaded copy of the same weights hits the cache too.
    assert encoded(load_clip(None, loaded.source), val_paths, targetpad)[1] == 0
    # Different preprocessing, image list, or weights: encoded again.
    assert encoded(loaded, val_paths, build_transform("squarepad", 64))[1] == 16
    assert encoded(loaded, val_paths, build_transform("targetpad", 64, target_ratio=1.5))[1] == 16
    assert encoded(loaded, val_paths[:-1], targetpad)[1] == 15
    other = load_clip(None, loaded.source)
    with torch.no_grad():
        other.model.visual.conv1.weight.mul_(1.01)
    changed, n = encoded(other, val_paths, targetpad)
    assert n == 16 and not torch.allclose(changed, first)
    # Changing only the text tower keeps image features cached.
    text_only = load_clip(None, loaded.source)
    with torch.no_grad():
        text_only.model.token_embedding.weight.mul_(1.01)
    assert encoded(text_only, val_paths, targetpad)[1] == 0
    # No cache: always encoded.
    before = encode_counts["image"]
    encode_images(loaded, val_paths, targetpad, cache=FeatureCache(None), progress=False)
    encode_images(loaded, val_paths, targetpad, cache=FeatureCache(None), progress=False)
    assert encode_counts["image"] - before == 32


def test_text_cache(loaded, tmp_path):
    cache = FeatureCache(tmp_path)
    texts = ["make the red circle blue", "remove the star", "add a square"]
    before = encode_counts["text"]
    first = encode_texts(loaded, texts, cache=cache, progress=False)
    second = encode_texts(loaded, texts, cache=cache, progress=False)
    assert encode_counts["text"] - before == 3 and torch.equal(first, second)
    encode_texts(loaded, texts[::-1], cache=cache, progress=False)
    assert encode_counts["text"] - before == 6
    # Other text-tower weights: encoded again, to other features.
    other = load_clip(None, loaded.source)
    with torch.no_grad():
        other.model.token_embedding.weight.mul_(1.01)
    changed = encode_texts(other, texts, cache=cache, progress=False)
    assert encode_counts["text"] - before == 9 and not torch.allclose(changed, first)
    # Other image-tower weights only: the text features are still cached.
    image_only = load_clip(None, loaded.source)
    with torch.no_grad():
        image_only.model.visual.conv1.weight.mul_(1.01)
    assert torch.equal(encode_texts(image_only, texts, cache=cache, progress=False), first)
    assert encode_counts["text"] - before == 9
    # The same characters split into other captions are other texts: not a cache hit.
    one_way = encode_texts(loaded, ["remove the\nstar", "add a square"], cache=cache, progress=False)
    other_way = encode_texts(loaded, ["remove the", "star\nadd a square"], cache=cache, progress=False)
    assert encode_counts["text"] - before == 13 and not torch.allclose(one_way, other_way)


def test_damaged_cache_entry_is_recomputed(loaded, val_paths, tmp_path, caplog):
    """A damaged chunk is encoded again, and only that chunk."""
    cache = FeatureCache(tmp_path, chunk_rows=4)
    transform = build_transform("targetpad", 64)
    first = encode_images(loaded, val_paths[:8], transform, batch_size=4, cache=cache, progress=False)
    entry = sorted(tmp_path.glob("*/rows-*.safetensors"))
    assert [p.name for p in entry] == ["rows-000000000-000000004.safetensors", "rows-000000004-000000008.safetensors"]
    entry[1].write_bytes(b"garbage")
    before = encode_counts["image"]
    again = encode_images(loaded, val_paths[:8], transform, batch_size=4, cache=cache, progress=False)
    assert encode_counts["image"] - before == 4
    assert torch.equal(again, first) and "ignoring unreadable feature cache entry" in caplog.text
    assert torch.equal(load_file(str(entry[1]))["features"], first[4:])  # written again, readable


def test_second_eval_encodes_no_image(cli, synth_root, tiny_checkpoint, make_tiny_clip, tmp_path):
    cache = tmp_path / "cache"
    base = ["eval", "--dataset", "fashioniq", "--data-root", synth_root, "--pretrained", tiny_checkpoint,
            "--num-workers", "0", "--cache-dir", cache, "--fashioniq-categories", "dress"]
    dress = load_splits("fashioniq", synth_root, "val", ["dress"])[0]
    n_gallery, n_queries = len(dress.gallery), len(dress.queries)

    def run(*extra):
        before = dict(encode_counts)
        result = cli(*base, *extra)
        assert result.code == 0, result.err
        return ({k: encode_counts[k] - before.get(k, 0) for k in ("image", "text")},
                json.loads((tmp_path / "m.json").read_text()))

    counts, first = run("--output", tmp_path / "m.json")
    assert counts == {"image": n_gallery, "text": n_queries}
    counts, second = run("--output", tmp_path / "m.json")
    assert counts == {"image": 0, "text": 0}
    assert second == first
    counts, _ = run("--output", tmp_path / "m.json", "--transform", "squarepad")
    assert counts == {"image": n_gallery, "text": 0}
    other = tmp_path / "other.pt"
    torch.save({"epoch": 1, "CLIP": make_tiny_clip("cir-tiny-vit", seed=7).state_dict()}, other)
    before = encode_counts["image"]
    assert cli(*base[:6], other, *base[7:]).code == 0
    assert encode_counts["image"] - before == n_gallery


def test_extraction_is_the_batched_forward_pass(loaded, val_paths, tmp_path):
    """Decoded or read in slices from the pixel cache, with a partial last batch: each batch's
    features are those of one plain forward pass over it."""
    transform = build_transform("targetpad", 64)
    pixels = torch.stack([transform.pixels(load_image(p)) for p in val_paths])
    with torch.no_grad():
        expected = torch.cat([loaded.model.eval().encode_image(transform.normalize(pixels[i:i + 6]))
                              for i in range(0, len(pixels), 6)])
    cache = PixelCache(tmp_path / "pixels")
    for pixel_cache in (None, cache, cache):  # decoding, writing the pixel cache, reading it
        features = encode_images(loaded, val_paths, transform, batch_size=6, progress=False, pixel_cache=pixel_cache)
        assert features.dtype == torch.float32 and features.device.type == "cpu"
        assert torch.allclose(features, expected, atol=1e-6, rtol=0)


def test_pixel_batches_are_the_cached_rows_in_order(val_paths, tmp_path):
    transform = build_transform("targetpad", 64)
    cached = PixelCache(tmp_path).get(val_paths, transform, progress=False)
    batches = list(PixelBatches(cached, 6))
    assert [len(b) for b in batches] == [6, 6, 4] and len(PixelBatches(cached, 6)) == 3
    assert all(b.dtype == torch.uint8 for b in batches)
    assert torch.equal(torch.cat(batches), torch.stack([transform.pixels(load_image(p)) for p in val_paths]))


def test_inference_batch_default_is_one_number():
    from clip_cir.encoding.extraction import INFERENCE_BATCH_SIZE
    from clip_cir.encoding.split_features import EncodeOptions
    from clip_cir.params import cli_parser

    args = cli_parser().parse_args(["eval", "--dataset", "cirr", "--data-root", "."])
    assert args.batch_size == EncodeOptions(transform=build_transform("targetpad", 64)).batch_size
    assert args.batch_size == INFERENCE_BATCH_SIZE == 256


def test_chunk_plan_gives_each_process_whole_chunks():
    assert chunk_plan(10, 1, 4) == [[(0, 4), (4, 8), (8, 10)]]
    assert chunk_plan(10, 2, 4) == [[(0, 4)], [(4, 8), (8, 10)]]
    assert chunk_plan(20, 4, 4) == [[(0, 4)], [(4, 8)], [(8, 12)], [(12, 16), (16, 20)]]
    # Fewer chunks than processes: equal contiguous shares, so no process idles.
    assert chunk_plan(10, 4, 16) == [[(0, 3)], [(3, 6)], [(6, 9)], [(9, 10)]]
    assert chunk_plan(2, 4, 16) == [[(0, 1)], [(1, 2)], [], []]
    assert CHUNK_ROWS % 256 == 0  # chunks split no batch of the default sizes


def test_an_entry_loads_once_its_chunks_cover_every_row(tmp_path):
    cache = FeatureCache(tmp_path, chunk_rows=4)
    rows = torch.arange(40.0).reshape(10, 4)
    cache.save_piece("k", (0, 4), rows[:4])
    cache.save_piece("k", (4, 8), rows[4:8])
    assert cache.load("k", 10) is None  # rows 8-9 are missing
    assert torch.equal(cache.load_piece("k", (4, 8)), rows[4:8]) and cache.load_piece("k", (8, 10)) is None
    cache.save_piece("k", (8, 10), rows[8:])
    assert torch.equal(cache.load("k", 10), rows)
    # Chunks left by runs with other numbers of processes overlap; any chain of them that covers
    # every row is the entry.
    cache.save_piece("mixed", (0, 4), rows[:4] + 100)  # no chunk starts at 4: a dead end
    cache.save_piece("mixed", (0, 5), rows[:5])
    cache.save_piece("mixed", (5, 10), rows[5:])
    assert torch.equal(cache.load("mixed", 10), rows)
    cache.save("whole", rows)
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == [
        "rows-000000000-000000004.safetensors", "rows-000000004-000000008.safetensors",
        "rows-000000008-000000010.safetensors"]
    assert torch.equal(cache.load("whole", 10), rows)


def test_chunked_extraction_equals_unchunked(loaded, val_paths, tmp_path):
    transform = build_transform("targetpad", 64)
    texts = [f"make shape {i} {colour}" for i, colour in enumerate(["red", "blue", "green", "grey", "pink"] * 2)]
    whole = encode_images(loaded, val_paths, transform, batch_size=4, progress=False)
    whole_text = encode_texts(loaded, texts, batch_size=2, progress=False)
    cache = FeatureCache(tmp_path, chunk_rows=8)
    before = dict(encode_counts)
    chunked = encode_images(loaded, val_paths, transform, batch_size=4, cache=cache, progress=False)
    chunked_text = encode_texts(loaded, texts, batch_size=2, cache=cache, progress=False)
    assert torch.equal(chunked, whole) and torch.equal(chunked_text, whole_text)
    # One folder per entry, its chunk files read back in order are the features.
    entries = {}
    for folder in tmp_path.iterdir():
        files = sorted(folder.iterdir())
        entries[tuple(f.name for f in files)] = torch.cat([load_file(str(f))["features"] for f in files])
    images = ("rows-000000000-000000008.safetensors", "rows-000000008-000000016.safetensors")
    captions = ("rows-000000000-000000008.safetensors", "rows-000000008-000000010.safetensors")
    assert set(entries) == {images, captions}
    assert torch.equal(entries[images], whole) and torch.equal(entries[captions], whole_text)
    again = encode_images(loaded, val_paths, transform, batch_size=4, cache=cache, progress=False)
    again_text = encode_texts(loaded, texts, batch_size=2, cache=cache, progress=False)
    assert torch.equal(again, whole) and torch.equal(again_text, whole_text)
    assert encode_counts["image"] - before.get("image", 0) == 16 and encode_counts["text"] - before["text"] == 10


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("kind", ["image", "text"])
def test_an_interrupted_extraction_encodes_only_the_missing_chunks(kind, loaded, val_paths, tmp_path, monkeypatch):
    transform = build_transform("targetpad", 64)
    texts = [f"turn shape {i} around" for i in range(16)]
    pixels = PixelCache(tmp_path / "pixels")

    def extract(cache):
        if kind == "image":
            return encode_images(loaded, val_paths, transform, batch_size=4, cache=cache, progress=False,
                                 pixel_cache=pixels)
        return encode_texts(loaded, texts, batch_size=4, cache=cache, progress=False)

    straight = extract(FeatureCache(None))
    cache = FeatureCache(tmp_path / "features", chunk_rows=4)
    written, save_piece = [], FeatureCache.save_piece

    def save_then_die(self, key, piece, features):
        save_piece(self, key, piece, features)
        written.append(piece)
        if len(written) == 2:
            raise Interrupted("killed after two chunks")

    with monkeypatch.context() as patch:
        patch.setattr(FeatureCache, "save_piece", save_then_die)
        with pytest.raises(Interrupted):
            extract(cache)
    assert written == [(0, 4), (4, 8)] and len(list((tmp_path / "features").glob("*/rows-*"))) == 2
    before = encode_counts[kind]
    resumed = extract(cache)
    assert encode_counts[kind] - before == 8  # rows 8-15, the two chunks not on disk
    assert torch.equal(resumed, straight)
    assert len(list((tmp_path / "features").glob("*/rows-*"))) == 4


def test_single_file_entries_of_earlier_versions_are_still_read(loaded, val_paths, tmp_path):
    cache = FeatureCache(tmp_path)
    transform = build_transform("targetpad", 64)
    first = encode_images(loaded, val_paths[:8], transform, cache=cache, progress=False)
    (folder,) = tmp_path.iterdir()
    save_file({"features": first * 2}, str(tmp_path / f"{folder.name}.safetensors"))  # the same key, one file
    shutil.rmtree(folder)
    before = encode_counts["image"]
    again = encode_images(loaded, val_paths[:8], transform, cache=cache, progress=False)
    assert encode_counts["image"] == before and torch.equal(again, first * 2)


def test_references_outside_the_gallery_are_encoded_apart(loaded, val_paths):
    """A split whose references are not gallery entries (CSS's 2D queries) takes their features
    from their own files; gallery references still come from the gallery rows."""
    from clip_cir.data.types import CIRSplit, Query
    from clip_cir.encoding.split_features import EncodeOptions, split_features

    transform = build_transform("targetpad", 64)
    gallery = {f"g{i}": p for i, p in enumerate(val_paths[:4])}
    apart = {"q0": val_paths[10], "q1": val_paths[11]}
    queries = [Query("0", "q0", ("c",), ("c",), "make it red", target="g1", excluded="g0"),
               Query("1", "g2", ("c",), ("c",), "remove the star", target="g3"),
               Query("2", "q1", ("c",), ("c",), "add a square", target="g0", excluded="g2")]
    split = CIRSplit("css", "css", "test", queries, gallery, exclude_reference=True, recall_ks=(1,),
                     query_images=apart)
    features = split_features(loaded, split, EncodeOptions(transform=transform, progress=False))
    direct = encode_images(loaded, [val_paths[10], val_paths[2], val_paths[11]], transform, progress=False)
    assert features.gallery.shape == (4, 128)
    assert torch.allclose(features.reference, direct, atol=1e-5)
