"""`clip-cir demo` (also `python demo/app.py`): search a gallery by reference image + caption in a browser.

One page: browse the gallery (paged, filter by name), pick a reference or upload one, type a
relative caption, see the top-K with scores; clicking a result makes it the new reference, so a
search can be refined turn by turn. The header shows the model and combining function in use.
The gallery is the chosen split's (FashionIQ: the union of the categories'); the reference is
removed from its own results when the dataset's protocol does so (CIRR), as in evaluation.

JSON API (the page uses nothing else, so scripts can do all it does). Every error is
`{"error": "<message>"}` with a 4xx status (5xx only for a bug, and the server keeps running):

    GET  /api/info
         -> {"model", "combining", "dataset", "split", "gallery_size", "embed_dim", "search",
             "exclude_reference", "attributes", "default_k", "max_k", "max_upload_bytes"}
         attributes: {name: [value, ...]} of an attribute catalogue's gallery (--catalogue), else {}.
    GET  /api/gallery?page=1&per_page=48&filter=TEXT
         -> {"total", "page", "pages", "per_page", "filter", "items": [{"name", "url"}]}
         Names containing TEXT (case-insensitive), in gallery order; per_page 1..200;
         a page past the last one has no items.
    POST /api/search   JSON {"reference": NAME, "caption": TEXT, "k": 10}
                       or multipart/form-data: image=@FILE (or reference=NAME), caption=TEXT, k=10
                       or, instead of the caption, "attribute": NAME, "value": NAME (a catalogue gallery):
                       the query is `CIRModel.manipulate(reference, attribute, value)`
         -> {"reference": NAME or null, "caption" (null for an attribute search), "attribute", "value", "k",
             "results": [{"rank", "name", "score", "url"}],
             "model", "combining", "search", "excluded_reference", "elapsed_ms"}
         k is 1..max_k (100); the caption 1..1000 characters; an upload must decode as an image,
         at most --max-upload-mb megabytes and 40 megapixels.
    GET  /images/NAME  the gallery image called NAME; anything else (other files, ../, absolute
                       or URL-encoded paths) is 404. Names are looked up, never joined to paths.

    curl -s localhost:8000/api/search -H 'Content-Type: application/json' \\
         -d '{"reference": "dev-244-0-img0", "caption": "is red", "k": 5}'
    curl -s localhost:8000/api/search -F image=@shoe.jpg -F caption='is red' -F k=5

Safety: binds 127.0.0.1 unless --host says otherwise; never runs in debug mode (no debugger, no
reloader); request bodies are capped at the upload limit; a bad request is a 4xx message.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import os
import socket
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from clip_cir import params as opt
from clip_cir.constants import DEMO_MAX_K
from clip_cir.errors import CIRError

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.serving import BaseWSGIServer

    from clip_cir.apps.demo.engine import DemoEngine

log = logging.getLogger("clip_cir.demo")

STATIC_DIR = Path(__file__).parent / "static"
MAX_K = DEMO_MAX_K
MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 48
MAX_UPLOAD_PIXELS = 40_000_000
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
}


class ClientError(Exception):
    """A client error with its HTTP status; the message is shown to the user."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _int_field(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or value is None:
        raise ClientError(f"{name} must be an integer from {low} to {high}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ClientError(f"{name} must be an integer from {low} to {high}, got '{value[:50]}'") from None
    if not isinstance(value, int):
        raise ClientError(f"{name} must be an integer from {low} to {high}, got {type(value).__name__}")
    if not low <= value <= high:
        raise ClientError(f"{name} must be from {low} to {high}, got {value}")
    return value


def decode_upload(data: bytes) -> Image.Image:
    """The uploaded bytes as a decoded image in its own mode (the transform converts it to RGB after
    the crop, as it does gallery files), or a 4xx naming what is wrong."""
    if not data:
        raise ClientError("the uploaded file is empty")
    try:
        with Image.open(BytesIO(data)) as image:
            if image.width * image.height > MAX_UPLOAD_PIXELS:
                raise ClientError(f"uploaded image is {image.width}x{image.height} pixels, more than "
                                 f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels", 413)
            image.load()
            return image
    except ClientError:
        raise
    except UnidentifiedImageError:
        raise ClientError("the uploaded file is not a readable image (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise ClientError(f"the uploaded file is not a readable image ({reason})") from None


def create_app(engine: DemoEngine, *, default_k: int = 10, max_upload_bytes: int = 10 * 2 ** 20) -> Flask:
    """The Flask app around an engine (no server): tests drive it with `app.test_client()`."""
    from flask import Flask, jsonify, request, send_file, send_from_directory, url_for
    from werkzeug.exceptions import HTTPException

    from clip_cir.apps.demo.engine import check_caption

    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    app.debug = False
    app.json.sort_keys = False  # attributes are listed in the catalogue's order (the page's drop-down order)
    app.url_map.merge_slashes = False  # '/images//etc/passwd' is a 404, not a redirect
    info = {**engine.info(), "default_k": default_k, "max_k": MAX_K, "max_upload_bytes": max_upload_bytes}

    def image_url(name: str) -> str:
        return url_for("gallery_image", name=name)

    @app.after_request
    def add_headers(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.errorhandler(ClientError)
    def bad_request(e: ClientError):
        return jsonify(error=str(e)), e.status

    @app.errorhandler(CIRError)
    def cir_error(e: CIRError):
        return jsonify(error=str(e)), 400

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        messages = {404: "not found", 405: f"method {request.method} not allowed here",
                    413: f"request too large (limit {max_upload_bytes / 2 ** 20:.1f} MB)"}
        return jsonify(error=messages.get(e.code, e.description)), e.code

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        log.exception("error while answering %s %s", request.method, request.path)
        return jsonify(error=f"internal error ({type(e).__name__}); the server log has the details"), 500

    @app.get("/")
    def page():
        return send_from_directory(STATIC_DIR, "index.html", max_age=0)

    @app.get("/api/info")
    def api_info():
        return jsonify(info)

    @app.get("/api/gallery")
    def api_gallery():
        page = _int_field(request.args.get("page", "1"), "page", 1, 10 ** 9)
        per_page = _int_field(request.args.get("per_page", str(DEFAULT_PER_PAGE)), "per_page", 1, MAX_PER_PAGE)
        text = request.args.get("filter", "")
        if len(text) > 200:
            raise ClientError("filter is too long (at most 200 characters)")
        names = engine.filter_names(text)
        chosen = names[(page - 1) * per_page: page * per_page]
        return jsonify(total=len(names), page=page, pages=max(1, math.ceil(len(names) / per_page)),
                       per_page=per_page, filter=text,
                       items=[{"name": n, "url": image_url(n)} for n in chosen])

    @app.post("/api/search")
    def api_search():
        image = None
        if request.is_json:
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise ClientError('the body must be a JSON object like {"reference": NAME, "caption": TEXT, "k": 10}')
        elif request.mimetype == "multipart/form-data":
            body = request.form.to_dict()
            upload = request.files.get("image")
            if upload is not None:
                image = decode_upload(upload.read())
        else:
            raise ClientError("send JSON (Content-Type: application/json) or multipart/form-data with an image", 415)
        reference = body.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise ClientError(f"reference must be an image name (a string), got {type(reference).__name__}")
        if image is not None and reference:
            raise ClientError("give either a reference name or an uploaded image, not both")
        if image is None and not reference:
            raise ClientError("no reference: give a gallery image name as 'reference' or upload an 'image'")
        by_attribute = "attribute" in body or "value" in body
        if by_attribute and "caption" in body:
            raise ClientError("give a caption or an attribute and value, not both")
        if not by_attribute and "caption" not in body:
            raise ClientError("no caption: say how the reference should change")
        k = _int_field(body.get("k", default_k), "k", 1, MAX_K)
        caption = None if by_attribute else check_caption(body["caption"])  # None: the attribute search
        result = engine.search(caption, k, reference=reference or None, image=image,
                               attribute=body.get("attribute"), value=body.get("value"))
        return jsonify(reference=result.reference, caption=result.caption, attribute=result.attribute,
                       value=result.value, k=k,
                       results=[{"rank": h.rank, "name": h.name, "score": round(h.score, 6),
                                 "url": image_url(h.name)} for h in result.hits],
                       model=info["model"], combining=info["combining"], search=info["search"],
                       excluded_reference=result.excluded_reference, elapsed_ms=round(result.elapsed_ms, 2))

    @app.get("/images/<path:name>")
    def gallery_image(name: str):
        path = engine.gallery.paths.get(name)  # a lookup: user input never becomes a path
        if path is None:
            raise ClientError("not found", 404)
        # Absolute: Flask resolves a relative path against the app's package folder, not the working directory.
        return send_file(os.path.abspath(path), max_age=3600)

    return app


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened before any slow work so a busy port fails at once."""
    from werkzeug.serving import get_sockaddr, select_address_family

    family = select_address_family(host, port)
    try:
        return socket.create_server(get_sockaddr(host, port, family), family=family)
    except (OSError, OverflowError, ValueError) as e:
        reason = (getattr(e, "strerror", None) or str(e)).split(" (while attempting")[0]
        raise CIRError(f"cannot listen on {host}:{port} ({reason})") from None


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 8000,
                listening: socket.socket | None = None) -> BaseWSGIServer:
    """A threaded WSGI server (port 0 picks a free port: read `server.port`).

    We bind the socket ourselves: on a busy port werkzeug would print its own lines and exit.
    """
    from werkzeug.serving import make_server as werkzeug_server

    with listening or listen(host, port) as sock:
        return werkzeug_server(host, port, app, threaded=True, fd=sock.fileno())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_demo(args: argparse.Namespace) -> None:
    """Validate, claim the port, load model and gallery features (cached when possible), serve."""
    from clip_cir.encoding.search import index_factory

    try:
        import flask  # noqa: F401
    except ImportError:
        raise CIRError("the demo needs Flask: pip install 'clip-cir[demo]'") from None
    if not 0 <= args.port <= 65535:
        raise CIRError(f"--port must be from 0 to 65535, got {args.port}")
    if not 1 <= args.top_k <= MAX_K:
        raise CIRError(f"--top-k must be from 1 to {MAX_K}, got {args.top_k}")
    opt.check_positive(args, ["max_upload_mb"])
    index_factory(opt.ranking_settings(args).search)  # a missing faiss-cpu stops the demo before any work
    listening = listen(args.host, args.port)
    try:
        server = make_server(_build_app(args), args.host, args.port, listening)
    finally:
        listening.close()  # the server holds its own copy; on an error, free the port now
    if not _is_loopback(args.host):
        log.warning("listening on %s: anyone who can reach this machine can use the demo", args.host)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"clip-cir demo on http://{host}:{server.port}/  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()


def _build_app(args: argparse.Namespace) -> Flask:
    """Data, model and combining function as every command validates them, then the gallery."""
    from clip_cir.apps.demo.engine import DemoEngine
    from clip_cir.apps.prepare import prepare

    faiss_options = {"index": args.faiss_index, "nprobe": args.faiss_nprobe} if args.search == "faiss" else None
    if args.catalogue is not None:
        engine = _catalogue_engine(args, backend=args.search, faiss_options=faiss_options)
    else:
        given = [flag for flag, name in (("--attributes", "attributes"), ("--attribute-template", "attribute_template"),
                                         ("--catalogue-layout", "catalogue_layout"), ("--image-root", "image_root"))
                 if getattr(args, name) is not None]
        if given:
            raise CIRError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --catalogue DIR")
        prepared = prepare(args)
        engine = DemoEngine.from_splits(prepared.clip, prepared.combine, prepared.splits, prepared.encode,
                                        combining_name=prepared.combining, backend=args.search,
                                        faiss_options=faiss_options)
    log.info("gallery: %d images | search: %s", len(engine.gallery), engine.index.description)
    return create_app(engine, default_k=args.top_k, max_upload_bytes=int(args.max_upload_mb * 2 ** 20))


def _catalogue_engine(args: argparse.Namespace, **kwargs) -> DemoEngine:
    """An attribute catalogue's split as the gallery, with the model `clip-cir eval --catalogue` loads."""
    from clip_cir.apps.attributes import attribute_model, read_catalogue_split
    from clip_cir.apps.demo.engine import DemoEngine

    if args.gallery_dir is not None or isinstance(args.dataset, str):
        raise CIRError("--catalogue serves an attribute catalogue: it does not go with --dataset or --gallery-dir")
    data = read_catalogue_split(args)
    model = attribute_model(args, data.gallery)
    return DemoEngine.from_catalogue(model, data.gallery, data.split, **kwargs)


def main(argv: list[str] | None = None, prog: str = "clip-cir demo") -> None:
    """Entry point of `python demo/app.py` (the `clip-cir demo` subcommand has the same options)."""
    from clip_cir.apps.entry import run_main, setup_logging

    args = opt.demo_parser(prog).parse_args(argv)
    setup_logging(args.verbose)
    run_main(lambda: run_demo(args), prog)
