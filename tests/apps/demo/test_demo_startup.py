"""Starting the web demo: `clip-cir demo`'s one-line start-up errors and a busy port, `python
demo/app.py` serving on localhost from another working directory, and the demo command the
quickstart prints."""

from __future__ import annotations

import io
import json
import os
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO, demo_search, start_demo_script, stop_demo_script
from PIL import Image

from clip_cir.apps.demo.app import make_server
from clip_cir.data import load_splits
from clip_cir.encoding.extraction import encode_counts

pytest.importorskip("flask", reason="the demo needs Flask (pip install 'clip-cir[demo]')")


# ---- command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--data-root", "/no/such/root"], "/no/such/root: data root not found"),
    (["--model", "no-such-model"], "unknown open_clip model 'no-such-model'"),
    (["--port", "70000"], "--port must be from 0 to 65535"),
    (["--top-k", "0"], "--top-k must be from 1 to 100"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
    (["--combiner", "/no/such/combiner.safetensors"], "stage-2 checkpoint not found"),
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


def test_demo_app_script_serves_on_localhost(synth_root, tmp_path):
    """`python demo/app.py` end to end: binds 127.0.0.1 by default, answers the API, serves the
    gallery's image files with a relative data root, stops cleanly."""
    assert not os.path.isabs(os.path.relpath(synth_root, tmp_path))
    process, url = start_demo_script(synth_root, tmp_path, "--dataset", "fashioniq", "--fashioniq-categories", "dress")
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
        stop_demo_script(process)


def test_demo_app_main_error_names_the_script(synth_root, tmp_path, capsys):
    from clip_cir.apps.demo.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "cirr", "--data-root", str(tmp_path / "missing"), "--model", "cir-tiny-vit",
              "--port", "0"], prog="demo/app.py")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"demo/app.py: error: {tmp_path / 'missing'}: data root not found"


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
    answer = demo_search(client, reference=name, caption="make it red", k=5).get_json()
    assert len(answer["results"]) == 5 and name not in [hit["name"] for hit in answer["results"]]
