"""The web demo's search API (`POST /api/search`): by a gallery reference's name and by an
uploaded image, ranked as computed independently; each input it must reject; an internal error
answered as JSON."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import DEMO_UPLOAD_LIMIT, demo_search, demo_upload, png_bytes

from clip_cir.apps.demo.app import create_app
from clip_cir.apps.demo.engine import DemoEngine
from clip_cir.encoding.extraction import encode_texts
from clip_cir.encoding.ranking import rank_gallery
from clip_cir.models.combiner import element_wise_sum

pytest.importorskip("flask", reason="the demo needs Flask (pip install 'clip-cir[demo]')")


def _expected_ranking(engine: DemoEngine, reference: str, caption: str, k: int) -> list[str]:
    """The ranking computed independently: sum of raw features, cosine, reference removed (CIRR)."""
    index = engine.gallery.index_of[reference]
    text = encode_texts(engine.clip, [caption], progress=False)
    query = element_wise_sum(engine.gallery.features[index:index + 1], text)
    _, top = rank_gallery(query, F.normalize(engine.gallery.features, dim=-1), k, torch.tensor([index]))
    return [engine.gallery.names[i] for i in top[0].tolist()]


# ---- search by reference name ------------------------------------------------------------------

def test_search_by_reference(client, engine, query):
    reference, caption = query
    answer = demo_search(client, reference=reference, caption=caption, k=10).get_json()
    assert answer["reference"] == reference and answer["caption"] == caption and answer["k"] == 10
    names = [hit["name"] for hit in answer["results"]]
    assert names == _expected_ranking(engine, reference, caption, 10)
    assert reference not in names and answer["excluded_reference"] is True  # CIRR protocol
    assert [hit["rank"] for hit in answer["results"]] == list(range(1, 11))
    scores = [hit["score"] for hit in answer["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert answer["results"][0]["url"] == f"/images/{names[0]}"
    assert answer["model"] == "cir-tiny-vit (random-init)" and answer["combining"] == "element-wise sum"


def test_default_k_and_caption_whitespace(client, query):
    reference, caption = query
    answer = demo_search(client, reference=reference, caption=f"  {caption}  ").get_json()
    assert answer["k"] == 7 and len(answer["results"]) == 7 and answer["caption"] == caption


def test_multi_turn_result_becomes_reference(client, engine, query):
    reference, caption = query
    first = demo_search(client, reference=reference, caption=caption, k=5).get_json()
    picked = first["results"][0]["name"]
    second = demo_search(client, reference=picked, caption="is blue", k=5).get_json()
    assert second["reference"] == picked and picked not in [h["name"] for h in second["results"]]
    assert [h["name"] for h in second["results"]] == _expected_ranking(engine, picked, "is blue", 5)


@pytest.mark.parametrize("body, message", [
    ({"caption": "is red"}, "no reference"),
    ({"reference": "no-such-image", "caption": "is red"}, "'no-such-image' is not in the gallery"),
    ({"reference": "../../etc/passwd", "caption": "is red"}, "is not in the gallery"),
    ({"reference": 12, "caption": "is red"}, "reference must be an image name"),
    ({"reference": ["a"], "caption": "is red"}, "reference must be an image name"),
    ({"reference": "REF"}, "no caption"),
    ({"reference": "REF", "caption": "   "}, "caption is empty"),
    ({"reference": "REF", "caption": None}, "caption must be a string"),
    ({"reference": "REF", "caption": 5}, "caption must be a string"),
    ({"reference": "REF", "caption": "x" * 1001}, "caption is too long"),
    ({"reference": "REF", "caption": "is red", "k": 0}, "k must be from 1 to 100"),
    ({"reference": "REF", "caption": "is red", "k": 101}, "k must be from 1 to 100"),
    ({"reference": "REF", "caption": "is red", "k": -5}, "k must be from 1 to 100"),
    ({"reference": "REF", "caption": "is red", "k": "ten"}, "k must be an integer"),
    ({"reference": "REF", "caption": "is red", "k": 2.5}, "k must be an integer"),
    ({"reference": "REF", "caption": "is red", "k": True}, "k must be an integer"),
    ({"reference": "REF", "caption": "is red", "k": None}, "k must be an integer"),
])
def test_search_rejects_bad_json_fields(client, query, body, message):
    body = {key: (query[0] if value == "REF" else value) for key, value in body.items()}
    response = demo_search(client, **body)
    assert response.status_code == 400, response.get_json()
    assert message in response.get_json()["error"]


@pytest.mark.parametrize("data, content_type, status, message", [
    ("{not json", "application/json", 400, "must be a JSON object"),
    ('["a", "b"]', "application/json", 400, "must be a JSON object"),
    ('"just a string"', "application/json", 400, "must be a JSON object"),
    ("reference=x&caption=y", "application/x-www-form-urlencoded", 415, "send JSON"),
    ("hello", "text/plain", 415, "send JSON"),
    ("", None, 415, "send JSON"),
])
def test_search_rejects_bad_bodies(client, data, content_type, status, message):
    response = client.post("/api/search", data=data, content_type=content_type)
    assert response.status_code == status and message in response.get_json()["error"]


def test_search_needs_post(client):
    response = client.get("/api/search")
    assert response.status_code == 405 and "not allowed" in response.get_json()["error"]
    assert client.post("/api/info").status_code == 405


def test_search_by_upload(client, engine, query):
    """An uploaded copy of a gallery image ranks like that image (minus the CIRR exclusion)."""
    reference, caption = query
    uploaded = engine.gallery.paths[reference].read_bytes()
    answer = demo_upload(client, uploaded, caption=caption, k="6").get_json()
    assert answer["reference"] is None and answer["excluded_reference"] is False and answer["k"] == 6
    names = [hit["name"] for hit in answer["results"]]
    by_name = [n for n in names if n != reference][:5]
    assert by_name == _expected_ranking(engine, reference, caption, 5)


def test_multipart_with_reference_name(client, engine, query):
    reference, caption = query
    response = client.post("/api/search", data={"reference": reference, "caption": caption, "k": "4"},
                           content_type="multipart/form-data")
    assert [h["name"] for h in response.get_json()["results"]] == _expected_ranking(engine, reference, caption, 4)


def test_upload_rejections(client, query):
    cases = [
        (demo_upload(client, b"this is not an image", filename="x.png"), 400, "not a readable image"),
        (demo_upload(client, b""), 400, "the uploaded file is empty"),
        (demo_upload(client, png_bytes()[:60]), 400, "not a readable image"),
        (demo_upload(client, png_bytes(size=(8000, 6000), mode="1")), 413, "more than 40 megapixels"),
        (demo_upload(client, b"\0" * (DEMO_UPLOAD_LIMIT + 1)), 413, "request too large"),
        (demo_upload(client, png_bytes(), caption=""), 400, "caption is empty"),
        (demo_upload(client, png_bytes(), k="0"), 400, "k must be from 1"),
        (demo_upload(client, png_bytes(), reference=query[0]), 400, "not both"),
        (client.post("/api/search", data={"caption": "x"}, content_type="multipart/form-data"), 400, "no reference"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.get_json()
        assert message in response.get_json()["error"]


# ---- robustness --------------------------------------------------------------------------------

def test_internal_error_is_json_and_server_keeps_answering(engine, query, monkeypatch):
    app = create_app(engine)
    client = app.test_client()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.index, "search", broken)
    response = demo_search(client, reference=query[0], caption="is red")
    assert response.status_code == 500 and "internal error (RuntimeError)" in response.get_json()["error"]
    monkeypatch.undo()
    assert demo_search(client, reference=query[0], caption="is red").status_code == 200
