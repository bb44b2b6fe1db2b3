"""The web demo: every HTTP endpoint (and each input it must reject), the cost of startup and of a
query, the `clip-cir demo` / `python demo/app.py` entry points, and one end-to-end run in a real
headless Chromium whose ranked results must match the JSON API's."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO
from PIL import Image

from clip_cir.apps.demo.app import MAX_K, create_app, decode_upload, make_server
from clip_cir.apps.demo.engine import DemoEngine
from clip_cir.data import load_splits
from clip_cir.encoding.extraction import FeatureCache, encode_counts, encode_texts
from clip_cir.encoding.ranking import rank_gallery
from clip_cir.encoding.split_features import EncodeOptions
from clip_cir.models.clip import load_clip
from clip_cir.models.combiner import Combiner, element_wise_sum

pytest.importorskip("flask", reason="the demo needs Flask (pip install 'clip-cir[demo]')")

UPLOAD_LIMIT = 64 * 1024


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("cir-tiny-vit")


@pytest.fixture(scope="module")
def encode(clip, tmp_path_factory) -> EncodeOptions:
    cache = FeatureCache(tmp_path_factory.mktemp("demo_cache"))
    return EncodeOptions(transform=clip.image_transform("targetpad", 1.25), num_workers=0, batch_size=64,
                         image_cache=cache, progress=False)


@pytest.fixture(scope="module")
def splits(synth_root):
    return load_splits("cirr", synth_root, "val")


@pytest.fixture(scope="module")
def engine(clip, splits, encode) -> DemoEngine:
    return DemoEngine.from_splits(clip, element_wise_sum, splits, encode, combining_name="element-wise sum")


@pytest.fixture(scope="module")
def app(engine):
    return create_app(engine, default_k=7, max_upload_bytes=UPLOAD_LIMIT)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def query(splits):
    """A real validation query: (reference name, caption)."""
    q = splits[0].queries[0]
    return q.reference, q.eval_caption


def _png_bytes(size=(40, 30), colour=(200, 30, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def _expected_ranking(engine: DemoEngine, reference: str, caption: str, k: int) -> list[str]:
    """The ranking computed independently: sum of raw features, cosine, reference removed (CIRR)."""
    index = engine.gallery.index_of[reference]
    text = encode_texts(engine.clip, [caption], progress=False)
    query = element_wise_sum(engine.gallery.features[index:index + 1], text)
    _, top = rank_gallery(query, F.normalize(engine.gallery.features, dim=-1), k, torch.tensor([index]))
    return [engine.gallery.names[i] for i in top[0].tolist()]


def _search(client, **body):
    return client.post("/api/search", json=body)


# ---- page, info, static ------------------------------------------------------------------------

def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert '/static/app.js' in html and 'id="results"' in html and 'id="info-model"' in html
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "css")):
        response = client.get(path)
        assert response.status_code == 200 and kind in response.mimetype
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_info_names_model_and_combining(client, clip):
    info = client.get("/api/info").get_json()
    assert info["model"] == clip.describe() == "cir-tiny-vit (random-init)"
    assert info["combining"] == "element-wise sum"
    assert info["gallery_size"] == 180 and info["dataset"] == "cirr" and info["split"] == "val"
    assert info["default_k"] == 7 and info["max_k"] == MAX_K and info["max_upload_bytes"] == UPLOAD_LIMIT
    assert info["search"].startswith("exact") and info["exclude_reference"] is True


def test_app_never_runs_in_debug_mode(app):
    assert app.debug is False and app.config["MAX_CONTENT_LENGTH"] == UPLOAD_LIMIT


# ---- gallery -----------------------------------------------------------------------------------

def test_gallery_pages(client, engine):
    first = client.get("/api/gallery?per_page=50").get_json()
    assert first["total"] == 180 and first["pages"] == 4 and first["page"] == 1
    assert [item["name"] for item in first["items"]] == engine.gallery.names[:50]
    assert first["items"][0]["url"] == f"/images/{engine.gallery.names[0]}"
    last = client.get("/api/gallery?per_page=50&page=4").get_json()
    assert [item["name"] for item in last["items"]] == engine.gallery.names[150:]
    beyond = client.get("/api/gallery?per_page=50&page=9").get_json()
    assert beyond["items"] == [] and beyond["total"] == 180
    default = client.get("/api/gallery").get_json()
    assert default["per_page"] == 48 and len(default["items"]) == 48


def test_gallery_filter_by_name(client, engine):
    name = engine.gallery.names[37]
    answer = client.get(f"/api/gallery?filter={name.upper()}").get_json()
    assert name in [item["name"] for item in answer["items"]]
    assert all(name in item["name"] for item in answer["items"]) and answer["filter"] == name.upper()
    none = client.get("/api/gallery?filter=no-such-image").get_json()
    assert none["total"] == 0 and none["items"] == [] and none["pages"] == 1


@pytest.mark.parametrize("params, message", [
    ("page=0", "page must be from 1"), ("page=-3", "page must be from 1"), ("page=abc", "page must be an integer"),
    ("page=1.5", "page must be an integer"), ("per_page=0", "per_page must be from 1 to 200"),
    ("per_page=201", "per_page must be from 1 to 200"), ("filter=" + "x" * 201, "filter is too long"),
])
def test_gallery_rejects_bad_parameters(client, params, message):
    response = client.get(f"/api/gallery?{params}")
    assert response.status_code == 400 and message in response.get_json()["error"]


# ---- images ------------------------------------------------------------------------------------

def test_gallery_image_is_served(client, engine):
    name = engine.gallery.names[3]
    response = client.get(f"/images/{name}")
    assert response.status_code == 200 and response.mimetype.startswith("image/")
    assert response.get_data() == engine.gallery.paths[name].read_bytes()


@pytest.mark.parametrize("path", [
    "/images/no-such-image",
    "/images/../setup.cfg",
    "/images/..%2fsetup.cfg",
    "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/images/..%252f..%252fetc%252fpasswd",
    "/images//etc/passwd",
    "/images/%2Fetc%2Fpasswd",
    "/images/C:%5CWindows%5Cwin.ini",
    "/images/dev/dev-0-0-img0.png",
    "/images/dev-0-0-img0/../../../setup.cfg",
    "/images/",
    "/static/../demo_app.py",
    "/static/%2e%2e/demo_app.py",
    "/static/..%2fdemo_app.py",
])
def test_paths_outside_the_gallery_are_404(client, path):
    response = client.get(path)
    assert response.status_code == 404, path
    assert response.get_json() == {"error": "not found"}


def test_gallery_file_path_is_not_a_name(client, engine):
    """Only names are served: the image's own absolute path is not one."""
    path = str(engine.gallery.paths[engine.gallery.names[0]])
    assert client.get(f"/images/{path}").status_code == 404
    assert client.get(f"/images/{path.lstrip('/')}").status_code == 404


# ---- search by reference name ------------------------------------------------------------------

def test_search_by_reference(client, engine, query):
    reference, caption = query
    answer = _search(client, reference=reference, caption=caption, k=10).get_json()
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
    answer = _search(client, reference=reference, caption=f"  {caption}  ").get_json()
    assert answer["k"] == 7 and len(answer["results"]) == 7 and answer["caption"] == caption


def test_multi_turn_result_becomes_reference(client, engine, query):
    reference, caption = query
    first = _search(client, reference=reference, caption=caption, k=5).get_json()
    picked = first["results"][0]["name"]
    second = _search(client, reference=picked, caption="is blue", k=5).get_json()
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
    response = _search(client, **body)
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


# ---- search by upload --------------------------------------------------------------------------

def _upload(client, data: bytes, caption="is blue", k="5", filename="query.png", **extra):
    form = {"image": (io.BytesIO(data), filename), "caption": caption, "k": k, **extra}
    return client.post("/api/search", data=form, content_type="multipart/form-data")


def test_search_by_upload(client, engine, query):
    """An uploaded copy of a gallery image ranks like that image (minus the CIRR exclusion)."""
    reference, caption = query
    uploaded = engine.gallery.paths[reference].read_bytes()
    answer = _upload(client, uploaded, caption=caption, k="6").get_json()
    assert answer["reference"] is None and answer["excluded_reference"] is False and answer["k"] == 6
    names = [hit["name"] for hit in answer["results"]]
    by_name = [n for n in names if n != reference][:5]
    assert by_name == _expected_ranking(engine, reference, caption, 5)


def test_multipart_with_reference_name(client, engine, query):
    reference, caption = query
    response = client.post("/api/search", data={"reference": reference, "caption": caption, "k": "4"},
                           content_type="multipart/form-data")
    assert [h["name"] for h in response.get_json()["results"]] == _expected_ranking(engine, reference, caption, 4)


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


def test_upload_rejections(client, query):
    cases = [
        (_upload(client, b"this is not an image", filename="x.png"), 400, "not a readable image"),
        (_upload(client, b""), 400, "the uploaded file is empty"),
        (_upload(client, _png_bytes()[:60]), 400, "not a readable image"),
        (_upload(client, _png_bytes(size=(8000, 6000), mode="1")), 413, "more than 40 megapixels"),
        (_upload(client, b"\0" * (UPLOAD_LIMIT + 1)), 413, "request too large"),
        (_upload(client, _png_bytes(), caption=""), 400, "caption is empty"),
        (_upload(client, _png_bytes(), k="0"), 400, "k must be from 1"),
        (_upload(client, _png_bytes(), reference=query[0]), 400, "not both"),
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
    response = _search(client, reference=query[0], caption="is red")
    assert response.status_code == 500 and "internal error (RuntimeError)" in response.get_json()["error"]
    monkeypatch.undo()
    assert _search(client, reference=query[0], caption="is red").status_code == 200


# ---- cost of startup and queries ---------------------------------------------------------------

def test_cached_gallery_startup_encodes_nothing_and_query_costs(clip, splits, encode, engine, query):
    before = encode_counts.copy()
    again = DemoEngine.from_splits(clip, element_wise_sum, splits, encode, combining_name="sum")
    assert encode_counts == before, "startup on a cached gallery encoded images"
    assert torch.equal(again.gallery.features, engine.gallery.features)

    client = create_app(again).test_client()
    _search(client, reference=query[0], caption="is green")
    assert encode_counts["text"] - before["text"] == 1 and encode_counts["image"] == before["image"]
    _upload(client, _png_bytes(), caption="is green")
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
    answer = _search(create_app(faiss_engine).test_client(), reference=query[0], caption=query[1], k=5).get_json()
    assert answer["combining"] == "Combiner (test)" and answer["search"] == "faiss flat (exact)"
    index = engine.gallery.index_of[query[0]]
    with torch.no_grad():
        q = combiner(engine.gallery.features[index:index + 1], encode_texts(clip, [query[1]], progress=False))
    _, top = rank_gallery(q, F.normalize(engine.gallery.features, dim=-1), 5, torch.tensor([index]))
    assert [h["name"] for h in answer["results"]] == [engine.gallery.names[i] for i in top[0].tolist()]


# ---- command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--data-root", "/no/such/root"], "/no/such/root: data root not found"),
    (["--model", "no-such-model"], "unknown open_clip model 'no-such-model'"),
    (["--port", "70000"], "--port must be from 0 to 65535"),
    (["--top-k", "0"], "--top-k must be from 1 to 100"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
    (["--combiner", "/no/such/combiner.safetensors"], "Combiner checkpoint not found"),
])
def test_cli_startup_errors_are_one_line_and_exit_2(cli, synth_root, args, message):
    base = {"--dataset": "cirr", "--data-root": str(synth_root), "--model": "cir-tiny-vit", "--num-workers": "0",
            "--port": "0"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = cli("demo", *[x for pair in base.items() for x in pair])
    assert result.code == 2, result.err
    assert len(result.error_lines) == 1 and message in result.error_lines[0], result.err


def test_busy_port_is_a_clear_error(app, cli, synth_root):
    import socket

    from clip_cir.errors import CIRError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CIRError, match=f"cannot listen on 127.0.0.1:{port}"):
            make_server(app, "127.0.0.1", port)
        before = encode_counts.copy()
        result = cli("demo", "--dataset", "cirr", "--data-root", synth_root, "--model", "cir-tiny-vit",
                     "--port", port)
    assert result.code == 2 and result.error_lines == [
        f"clip-cir: error: cannot listen on 127.0.0.1:{port} (Address already in use)"]
    assert encode_counts == before, "a busy port must fail before any encoding"


def test_cli_lists_demo(cli):
    result = cli("demo", "--help")
    assert result.code == 0 and "--host HOST" in result.out and "127.0.0.1" in result.out


def _start_demo_script(synth_root: Path | None, cwd: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python demo/app.py` as a user runs it after the quickstart: from its own working directory,
    with a RELATIVE --data-root (Flask resolves relative file paths against its package folder).
    `synth_root` None: no --data-root, the gallery comes from `args` (`--gallery-dir`)."""
    env = {**os.environ, "CLIP_CIR_CACHE": str(cwd / "cache"), "PYTHONUNBUFFERED": "1"}
    data = ["--data-root", os.path.relpath(synth_root, cwd)] if synth_root is not None else []
    process = subprocess.Popen(
        [sys.executable, str(REPO / "demo" / "app.py"), *data,
         "--model", "cir-tiny-vit", "--num-workers", "0", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    line = ""
    deadline = time.monotonic() + 120
    while "demo on http://" not in line and time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
    if "demo on http://127.0.0.1:" not in line:
        process.terminate()
        raise AssertionError(process.stderr.read() if process.poll() is not None else line)
    return process, line.split("demo on ")[1].split()[0].rstrip("/")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def test_demo_app_script_serves_on_localhost(synth_root, tmp_path):
    """`python demo/app.py` end to end: binds 127.0.0.1 by default, answers the API, serves the
    gallery's image files with a relative data root, stops cleanly."""
    assert not os.path.isabs(os.path.relpath(synth_root, tmp_path))
    process, url = _start_demo_script(synth_root, tmp_path, "--dataset", "fashioniq", "--fashioniq-categories", "dress")
    try:
        info = json.load(urllib.request.urlopen(url + "/api/info", timeout=30))
        dress = load_splits("fashioniq", synth_root, "val", ["dress"])[0]
        assert info["model"] == "cir-tiny-vit (random-init)" and info["gallery_size"] == len(dress.gallery)
        assert info["dataset"] == "fashioniq" and info["exclude_reference"] is False
        name, path = next(iter(dress.gallery.items()))
        body = urllib.request.urlopen(f"{url}/images/{name}", timeout=30).read()
        assert body == path.read_bytes()
        assert Image.open(io.BytesIO(body)).size == Image.open(path).size
    finally:
        _stop(process)


def test_demo_app_main_error_names_the_script(synth_root, tmp_path, capsys):
    from clip_cir.apps.demo.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "cirr", "--data-root", str(tmp_path / "missing"), "--model", "cir-tiny-vit",
              "--port", "0"], prog="demo/app.py")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"demo/app.py: error: {tmp_path / 'missing'}: data root not found"


# ---- a live server: raw HTTP paths and a real browser ------------------------------------------

@pytest.fixture(scope="module")
def live_server(app):
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log in failure reports
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ["/images/../setup.cfg", "/images/%2e%2e/%2e%2e/setup.cfg",
                                  "/images/..%2f..%2fsetup.cfg", "/images//etc/passwd", "/static/../app.py",
                                  "/images/./x/../../app.py"])
def test_raw_traversal_paths_over_http_are_404(live_server, path):
    """The same paths as sent by a client that does not normalise them (curl --path-as-is)."""
    connection = http.client.HTTPConnection(live_server.removeprefix("http://"), timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    assert response.status == 404, path
    assert json.loads(response.read()) == {"error": "not found"}


def _api_search(base: str, reference: str | None, caption: str, k: int, image: Path | None = None) -> list[dict]:
    if image is None:
        request = urllib.request.Request(base + "/api/search", method="POST",
                                         data=json.dumps({"reference": reference, "caption": caption, "k": k}).encode(),
                                         headers={"Content-Type": "application/json"})
    else:
        boundary = "clipcirtestboundary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                 for name, value in (("caption", caption), ("k", str(k)))]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
                     f'Content-Type: image/png\r\n\r\n'.encode() + image.read_bytes() + b"\r\n")
        request = urllib.request.Request(base + "/api/search", method="POST",
                                         data=b"".join(parts) + f"--{boundary}--\r\n".encode(),
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return json.load(urllib.request.urlopen(request, timeout=30))["results"]


def _skip_visibly(reason: str) -> None:
    """Skip, and also warn: pytest prints warnings even where skip reasons are not listed (no -rs)."""
    warnings.warn(reason, UserWarning, stacklevel=2)
    pytest.skip(reason)


def _browser():
    """A headless Debian Chromium through Debian's chromedriver, or a skip saying what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _skip_visibly("browser test skipped: selenium is not installed (pip install 'clip-cir[test]')")
    binary = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        _skip_visibly("browser test skipped: no chromium and chromedriver on PATH "
                      "(bash .ci/install_browser.sh installs Debian's chromium and chromium-driver)")
    return webdriver, Service, binary, driver_path


@pytest.fixture
def browser(tmp_path):
    webdriver, Service, binary, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1100", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _artifact_dir() -> Path:
    path = Path(os.environ.get("CLIP_CIR_ARTIFACTS", REPO / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def demo_script(synth_root, tmp_path):
    """The CIRR val demo as a separate `python demo/app.py`, started from another working directory
    with a relative --data-root (its URL)."""
    process, url = _start_demo_script(synth_root, tmp_path, "--dataset", "cirr")
    yield url
    _stop(process)


class _Page:
    """The demo page in the browser, read as the browser tests need it."""

    def __init__(self, browser):
        from selenium.webdriver.support.ui import WebDriverWait

        self.browser, self.wait = browser, WebDriverWait(browser, 20)

    def listed(self, selector: str) -> list[dict]:
        """data-* of the matching elements, read in one script (the page re-renders lists)."""
        return self.browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => Object.assign({}, e.dataset))", selector)

    def results_of_turn(self, turn: int) -> list[tuple[str, float]]:
        from selenium.webdriver.common.by import By

        self.wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-turn") == str(turn)
                        and d.find_element(By.ID, "results").get_attribute("data-state") == "done")
        return [(item["name"], float(item["score"])) for item in self.listed("#results li[data-name]")]

    def images_decoded(self, selector: str) -> int:
        """How many images under `selector` the browser really decoded (a 500 or 404 leaves
        naturalWidth at 0); waits until every one has finished loading."""
        script = ("const images = [...document.querySelectorAll(arguments[0])];"
                  "images.forEach(img => { img.loading = 'eager'; });"  # lazy ones below the fold too
                  "return images.every(img => img.complete) ? images.map(img => img.naturalWidth) : null")
        widths = self.wait.until(lambda d: d.execute_script(script, selector))
        assert widths and all(width > 0 for width in widths), (selector, widths)
        return len(widths)


def _same_as_api(shown: list[tuple[str, float]], api: list[dict]) -> None:
    assert [name for name, _ in shown] == [hit["name"] for hit in api]
    assert all(abs(score - hit["score"]) < 1e-6 for (_, score), hit in zip(shown, api))


def test_browser_end_to_end(browser, demo_script, engine, query):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page = _Page(browser)
    wait, listed, results_of_turn, images_decoded = page.wait, page.listed, page.results_of_turn, page.images_decoded
    same_as_api = _same_as_api
    reference, caption = query
    find = browser.find_element

    live_server = demo_script
    browser.get(live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "info-model").text == engine.clip.describe())
    assert find(By.ID, "info-combining").text == "element-wise sum"
    wait.until(lambda d: d.find_element(By.ID, "gallery").get_attribute("data-state") == "done")
    assert len(listed("#gallery li[data-name]")) == 48
    assert images_decoded("#gallery img") == 48

    # Pick the reference through the name filter, type the caption, search.
    find(By.ID, "filter").send_keys(reference)
    wait.until(lambda d: [item["name"] for item in listed("#gallery li[data-name]")] == [reference])
    find(By.CSS_SELECTOR, f'#gallery li[data-name="{reference}"] button').click()
    assert find(By.ID, "reference-name").text == reference
    find(By.ID, "caption").send_keys(caption)
    k = find(By.ID, "k")
    k.clear()
    k.send_keys("8")
    find(By.ID, "search-button").click()
    shown = results_of_turn(1)
    assert len(shown) == 8
    assert images_decoded("#results img") >= 8
    same_as_api(shown, _api_search(live_server, reference, caption, 8))

    # Multi-turn: click the best result, refine with a new caption.
    picked = shown[0][0]
    find(By.CSS_SELECTOR, f'#results li[data-name="{picked}"] button').click()
    assert find(By.ID, "reference-name").text == picked and find(By.ID, "caption").get_attribute("value") == ""
    find(By.ID, "caption").send_keys("is blue")
    find(By.ID, "search-button").click()
    same_as_api(results_of_turn(2), _api_search(live_server, picked, "is blue", 8))
    assert len(listed("#history li")) == 2

    # Bad queries show a message (the page's own check, then the server's) and leave the page working.
    find(By.ID, "caption").clear()
    find(By.ID, "search-button").click()
    status = find(By.ID, "status")
    assert "type a caption" in status.text.lower() and "error" in status.get_attribute("class")
    find(By.ID, "caption").send_keys("is blue")
    k.clear()
    k.send_keys("500")
    find(By.ID, "search-button").click()
    wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-state") == "error")
    assert status.text == "k must be from 1 to 100, got 500"
    k.clear()
    k.send_keys("8")

    # Upload a reference image from disk (a copy of the first reference).
    upload = engine.gallery.paths[reference]
    find(By.ID, "upload").send_keys(str(upload))
    assert find(By.ID, "reference-name").text == f"uploaded: {upload.name}"
    find(By.ID, "caption").clear()
    find(By.ID, "caption").send_keys(caption)
    find(By.ID, "search-button").click()
    same_as_api(results_of_turn(3), _api_search(live_server, None, caption, 8, image=upload))

    # One more turn from a result, with the whole gallery back, for the screenshot.
    find(By.ID, "filter").send_keys(Keys.CONTROL, "a")
    find(By.ID, "filter").send_keys(Keys.DELETE)  # typed, so the page sees an input event
    wait.until(lambda d: len(listed("#gallery li[data-name]")) == 48)
    find(By.CSS_SELECTOR, "#results li[data-name] button").click()
    find(By.ID, "caption").send_keys("has a red circle instead")
    find(By.ID, "search-button").click()
    results_of_turn(4)
    wait.until(lambda d: d.execute_script("return [...document.images].every(img => img.complete)"))
    screenshot = _artifact_dir() / "demo_screenshot.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


@pytest.fixture
def nested_photos(synth_root, tmp_path) -> Path:
    """A shop's photo folder: 12 synthetic CIRR val images spread over the folder itself, a
    subfolder and four subfolders two levels deep (8 of the 12 are there)."""
    folders = ["", "tops", "tops/long", "tops/short", "dresses/summer", "dresses/winter"]
    shop = tmp_path / "shop"
    for i, source in enumerate(sorted((synth_root / "cirr_dataset" / "dev").glob("*.png"))[:12]):
        copy = shop / folders[i % len(folders)] / source.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    return shop


def test_browser_searches_a_nested_gallery_folder(browser, nested_photos, tmp_path):
    """`python demo/app.py --gallery-dir` on nested subfolders, in a real browser: every image at
    every depth is listed and decoded, and a search from a reference two levels deep shows results
    from the nested subfolders, ranked as the JSON API ranks them."""
    from selenium.webdriver.common.by import By

    names = sorted(path.relative_to(nested_photos).as_posix() for path in nested_photos.rglob("*.png"))
    assert len(names) == 12 and sum(name.count("/") == 2 for name in names) == 8
    process, url = _start_demo_script(None, tmp_path, "--gallery-dir", str(nested_photos))
    try:
        page, find = _Page(browser), browser.find_element
        browser.get(url + "/")
        page.wait.until(lambda d: d.find_element(By.ID, "info-model").text == "cir-tiny-vit (random-init)")
        page.wait.until(lambda d: d.find_element(By.ID, "gallery").get_attribute("data-state") == "done")
        assert [item["name"] for item in page.listed("#gallery li[data-name]")] == names
        assert page.images_decoded("#gallery img") == 12

        reference = next(name for name in names if name.count("/") == 2)
        find(By.ID, "filter").send_keys(reference)
        page.wait.until(lambda d: [item["name"] for item in page.listed("#gallery li[data-name]")] == [reference])
        find(By.CSS_SELECTOR, f'#gallery li[data-name="{reference}"] button').click()
        assert find(By.ID, "reference-name").text == reference
        page.images_decoded("#reference-image")  # its URL is built by the page from the nested name
        find(By.ID, "caption").send_keys("has a red circle instead")
        k = find(By.ID, "k")
        k.clear()
        k.send_keys("8")
        find(By.ID, "search-button").click()
        shown = page.results_of_turn(1)
        _same_as_api(shown, _api_search(url, reference, "has a red circle instead", 8))
        assert len(shown) == 8 and {name for name, _ in shown} <= set(names)
        assert sum(name.count("/") == 2 for name, _ in shown) >= 4  # only 4 images are not that deep
        sources = browser.execute_script(
            "return [...document.querySelectorAll('#results li[data-name] img')].map(img => img.getAttribute('src'))")
        assert sources == [f"/images/{name}" for name, _ in shown]
        assert page.images_decoded("#results img") == 8
    finally:
        _stop(process)


def test_the_command_the_quickstart_prints_serves_its_runs(synth_root, tiny_runs, tmp_path):
    """`clip-cir quickstart` ends with `demo_command(WORKDIR)`: parsed as `clip-cir` parses it, it
    builds the demo on the work folder's data, stage-1 CLIP and Combiner (a work folder laid out as
    the quickstart lays it out, around `tiny_runs`; a space in its path)."""
    import shlex

    from clip_cir.apps.demo.app import _build_app
    from clip_cir.apps.quickstart import demo_command
    from clip_cir.params import cli_parser

    work = tmp_path / "my quickstart"
    (work / "runs").mkdir(parents=True)
    (work / "data").symlink_to(synth_root)
    for stage in ("stage1", "stage2"):
        (work / "runs" / stage).symlink_to(tiny_runs[stage])
    for doc in ("README.md", "docs/demo.md"):  # the default --workdir's command, as the docs give it
        assert demo_command(Path("quickstart")) in (REPO / doc).read_text(), doc
    command = shlex.split(demo_command(work))
    assert command[:2] == ["clip-cir", "demo"]
    args = cli_parser().parse_args(command[1:])
    assert (args.command, args.data_root, args.pretrained, args.combiner) == (
        "demo", work / "data", str(work / "runs" / "stage1"), str(work / "runs" / "stage2"))
    client = _build_app(args).test_client()
    info = client.get("/api/info").get_json()
    assert (info["dataset"], info["split"]) == ("cirr", "val")
    assert info["model"] == f"cir-tiny-vit ({work / 'runs' / 'stage1' / 'best' / 'clip.safetensors'})"
    assert info["combining"] == f"Combiner ({work / 'runs' / 'stage2'})"
    name = client.get("/api/gallery?per_page=1").get_json()["items"][0]["name"]
    answer = _search(client, reference=name, caption="make it red", k=5).get_json()
    assert len(answer["results"]) == 5 and name not in [hit["name"] for hit in answer["results"]]
