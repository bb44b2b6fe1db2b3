"""What the web demo computes, without HTTP (`DemoEngine`): uploads preprocessed as gallery files
are, the cost of startup and of a query, the gallery features shared with evaluation, FashionIQ's
union of categories, a Combiner and the FAISS back-end."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from helpers import demo_search, demo_upload, png_bytes
from PIL import Image

from clip_cir.apps.demo.app import create_app, decode_upload
from clip_cir.apps.demo.engine import DemoEngine
from clip_cir.data import load_splits
from clip_cir.encoding.extraction import FeatureCache, encode_counts, encode_texts
from clip_cir.encoding.ranking import rank_gallery
from clip_cir.models.combiner import Combiner, element_wise_sum

pytest.importorskip("flask", reason="the demo needs Flask (pip install 'clip-cir[demo]')")


# ---- an uploaded image -------------------------------------------------------------------------

def test_an_uploaded_palette_png_is_converted_to_rgb_after_the_crop(engine, clip):
    """Uploads are preprocessed as gallery files are: padded (with palette entry 0, red here) and
    resized in their own mode, converted to RGB only after the crop."""
    image = Image.new("P", (60, 20), 1)
    image.putpalette([200, 30, 30, 0, 0, 255] + [0] * 762)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = decode_upload(buffer.getvalue())
    assert decoded.mode == "P" and decoded.size == (60, 20)
    transform = engine.encode.transform
    with torch.no_grad():
        expected = clip.model.eval().encode_image(transform(decoded).unsqueeze(0)).float()
        converted_first = clip.model.encode_image(transform(decoded.convert("RGB")).unsqueeze(0)).float()
    got = engine._image_features(decoded)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, converted_first, atol=1e-3)


# ---- cost of startup and queries ---------------------------------------------------------------

def test_cached_gallery_startup_encodes_nothing_and_query_costs(clip, splits, encode, engine, query):
    before = encode_counts.copy()
    again = DemoEngine.from_splits(clip, element_wise_sum, splits, encode, combining_name="sum")
    assert encode_counts == before, "startup on a cached gallery encoded images"
    assert torch.equal(again.gallery.features, engine.gallery.features)

    client = create_app(again).test_client()
    demo_search(client, reference=query[0], caption="is green")
    assert encode_counts["text"] - before["text"] == 1 and encode_counts["image"] == before["image"]
    demo_upload(client, png_bytes(), caption="is green")
    assert encode_counts["text"] - before["text"] == 2 and encode_counts["image"] - before["image"] == 1


def test_gallery_features_are_shared_with_evaluation(clip, splits, encode, tmp_path):
    """`clip-cir eval` and the demo read and write the same cache entries."""
    from dataclasses import replace

    from clip_cir.encoding.split_features import split_features

    fresh = replace(encode, image_cache=FeatureCache(tmp_path / "cache"))
    evaluated = split_features(clip, splits[0], fresh)
    before = encode_counts.copy()
    engine = DemoEngine.from_splits(clip, element_wise_sum, splits, fresh, combining_name="sum")
    assert encode_counts == before and torch.equal(engine.gallery.features, evaluated.gallery)


def test_fashioniq_gallery_is_the_union_of_categories(clip, synth_root, encode):
    splits = load_splits("fashioniq", synth_root, "val", ["dress", "shirt", "toptee"])
    engine = DemoEngine.from_splits(clip, element_wise_sum, splits, encode, combining_name="sum")
    names = list(dict.fromkeys(n for s in splits for n in s.gallery))
    assert engine.gallery.names == names and engine.gallery.features.shape[0] == len(names)
    assert engine.exclude_reference is False
    reference = splits[1].queries[0].reference
    result = engine.search("is darker", 3, reference=reference)
    assert len(result.hits) == 3 and result.excluded_reference is False


def test_combiner_and_faiss_backend(clip, splits, encode, engine, query):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    torch.manual_seed(0)
    combiner = Combiner(clip.embed_dim, 64, 96).eval()
    faiss_engine = DemoEngine(clip, combiner, engine.gallery, encode, combining_name="Combiner (test)",
                              exclude_reference=True, backend="faiss", faiss_options={"index": "flat"})
    answer = demo_search(create_app(faiss_engine).test_client(), reference=query[0], caption=query[1], k=5).get_json()
    assert answer["combining"] == "Combiner (test)" and answer["search"] == "faiss flat (exact)"
    index = engine.gallery.index_of[query[0]]
    with torch.no_grad():
        q = combiner(engine.gallery.features[index:index + 1], encode_texts(clip, [query[1]], progress=False))
    _, top = rank_gallery(q, F.normalize(engine.gallery.features, dim=-1), 5, torch.tensor([index]))
    assert [h["name"] for h in answer["results"]] == [engine.gallery.names[i] for i in top[0].tolist()]
