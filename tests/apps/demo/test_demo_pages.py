"""The web demo's page and static files, `/api/info`, the gallery listing, and the images it
serves: every path outside the gallery is a 404, through the test client and over raw HTTP (a
live server, paths a client does not normalise)."""

from __future__ import annotations

import http.client
import json
import logging
import threading

import pytest
from helpers import DEMO_UPLOAD_LIMIT

from clip_cir.apps.demo.app import MAX_K, make_server

pytest.importorskip("flask", reason="the demo needs Flask (pip install 'clip-cir[demo]')")


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
    assert info["default_k"] == 7 and info["max_k"] == MAX_K and info["max_upload_bytes"] == DEMO_UPLOAD_LIMIT
    assert info["search"].startswith("exact") and info["exclude_reference"] is True


def test_app_never_runs_in_debug_mode(app):
    assert app.debug is False and app.config["MAX_CONTENT_LENGTH"] == DEMO_UPLOAD_LIMIT


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
