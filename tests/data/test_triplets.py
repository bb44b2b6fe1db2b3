"""The generic triplet layout: converted benchmarks evaluate exactly as the originals, and bad
input stops with one line naming file:line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import stage1_options, stage2_options

import clip_cir
from clip_cir.data import load_splits
from clip_cir.data.convert import convert
from clip_cir.data.images import ImageCheck
from clip_cir.data.triplets import TripletFormat, load_triplets
from clip_cir.errors import CIRError

CIRR_ONLY = ("recall_subset", "soft_", "recall_avg")
"""Metrics the generic layout cannot carry: CIRR's image sets and soft labels."""


@pytest.fixture(scope="module")
def converted(synth_root, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("converted")
    return {name: (convert(name, synth_root, out / name), out / name)[1] for name in ("cirr", "fashioniq", "circo")}


def _eval(cli, dataset: str, root: Path, checkpoint: Path, out: Path, *extra) -> dict:
    result = cli("eval", "--dataset", dataset, "--data-root", root, "--pretrained", checkpoint, "--output", out, *extra)
    assert result.code == 0, result.err
    return json.loads(out.read_text())


@pytest.mark.parametrize("dataset", ["cirr", "fashioniq", "circo"])
def test_converted_benchmark_evaluates_exactly_as_the_original(dataset, converted, synth_root, tiny_checkpoint,
                                                               cli, tmp_path):
    original = _eval(cli, dataset, synth_root, tiny_checkpoint, tmp_path / "original.json")
    generic = _eval(cli, "triplets", converted[dataset], tiny_checkpoint, tmp_path / "generic.json")
    expected = {k: v for k, v in original.items() if not k.startswith(CIRR_ONLY)}
    assert generic == expected
    if dataset == "circo":
        assert {"map_at5", "map_at10", "map_at25", "map_at50"} <= set(generic)
        assert any(k.startswith("aspect_") for k in generic)
    if dataset == "fashioniq":
        assert {"dress_recall_at10", "toptee_recall_at50", "average_recall_at50"} <= set(generic)


def test_converted_splits_read_back_as_the_originals(converted, synth_root):
    for dataset, root in converted.items():
        for split in {"cirr": ("train", "val", "test1"), "fashioniq": ("val",), "circo": ("val", "test")}[dataset]:
            originals = load_splits(dataset, synth_root, split)
            generics = load_triplets(root, split)
            names = [o.name for o in originals] if dataset == "fashioniq" else ["triplets"]  # ungrouped
            assert [g.name for g in generics] == names
            for o, g in zip(originals, generics):
                assert list(g.gallery.values()) == list(o.gallery.values())  # same files, same order
                assert (g.exclude_reference, g.recall_ks, g.map_ks) == (o.exclude_reference, o.recall_ks, o.map_ks)
                assert len(g.queries) == len(o.queries)
                for oq, gq in zip(o.queries, g.queries):
                    assert gq.qid == oq.qid and gq.eval_caption == oq.eval_caption
                    assert gq.train_captions == oq.train_captions
                    assert g.gallery[gq.reference] == o.gallery[oq.reference]
                    if oq.target is not None:
                        assert g.gallery[gq.target] == o.gallery[oq.target]
                    assert [g.gallery[n] for n in gq.ground_truths or ()] == \
                           [o.gallery[n] for n in oq.ground_truths or ()]


def _photos(root: Path, names: list[str]) -> None:
    from PIL import Image

    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 16), (10 * i, 0, 0)).save(path)


def test_csv_with_chosen_columns_relative_paths_and_several_targets(tmp_path):
    _photos(tmp_path / "img", ["a.png", "b.png", "c.png", "sub/d.png"])
    (tmp_path / "val.tsv").write_text("ref\ttext\tgt\nimg/a.png\tmake it red\timg/b.png|img/sub/d.png\n"
                                      "img/c.png\tadd a hat\timg/a.png\n")
    fmt = TripletFormat(reference_key="ref", caption_key="text", target_key="gt")
    (split,) = load_triplets(tmp_path, "val", fmt)
    assert [q.qid for q in split.queries] == ["2", "3"]  # line numbers
    assert split.queries[0].ground_truths == ("img/b.png", "img/sub/d.png") and split.queries[0].target == "img/b.png"
    assert split.queries[1].ground_truths == ("img/a.png",)  # a split with several targets ranks every query by mAP
    assert split.map_ks == (5, 10, 25, 50) and split.exclude_reference  # the stated default: removed
    assert list(split.gallery) == ["img/a.png", "img/b.png", "img/sub/d.png", "img/c.png"]
    assert split.gallery["img/sub/d.png"] == tmp_path / "img" / "sub" / "d.png"
    kept = load_triplets(tmp_path, "val", TripletFormat(reference_key="ref", caption_key="text", target_key="gt",
                                                        exclude_reference=False))[0]
    assert not kept.exclude_reference


BAD_ROWS = {
    "missing column": ('{"reference": "a.png", "text": "x", "target": "b.png"}\n', ":1: no field 'caption'"),
    "empty caption": ('{"reference": "a.png", "caption": "x", "target": "b.png"}\n'
                      '{"reference": "a.png", "caption": "  ", "target": "b.png"}\n', ":2: empty caption"),
    "reference is its only target": ('{"reference": "a.png", "caption": "x", "target": "./a.png"}\n',
                                     ":1: the reference 'a.png' is also its only target"),
    "duplicate id": ('{"id": 7, "reference": "a.png", "caption": "x", "target": "b.png"}\n'
                     '{"id": "7", "reference": "b.png", "caption": "y", "target": "a.png"}\n',
                     ":2: duplicate query id '7' (first at line 1)"),
    "malformed line": ('{"reference": "a.png", "caption": "x", "target": "b.png"}\n{oops\n', ":2: malformed JSON"),
    "repeated query": ('{"reference": "a.png", "caption": "x", "target": "b.png"}\n'
                       '{"reference": "b.png", "caption": "x", "target": "a.png"}\n'
                       '{"reference": "a.png", "caption": "x", "target": "b.png"}\n',
                       ": lines 1, 3: the same query (reference, caption, target) listed 2 times"),
    "missing image": ('{"reference": "a.png", "caption": "x", "target": "gone.png"}\n',
                      "image 'gone.png' listed in val.jsonl:1 is missing on disk"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_input_is_one_line_naming_file_and_line(case, tmp_path, cli, tiny_checkpoint):
    _photos(tmp_path, ["a.png", "b.png"])
    rows, message = BAD_ROWS[case]
    (tmp_path / "val.jsonl").write_text(rows)
    out = tmp_path / "metrics.json"
    result = cli("eval", "--dataset", "triplets", "--data-root", tmp_path, "--pretrained", tiny_checkpoint,
                 "--output", out)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert message in result.err
    where = str(tmp_path / "gone.png") if case == "missing image" else str(tmp_path / "val.jsonl")
    assert where in result.err and not out.exists()


@pytest.mark.parametrize("variant", ["csv", "ragged csv", "jsonl"])
def test_a_missing_image_or_a_path_out_of_the_folder_names_the_line_that_lists_it(variant, tmp_path):
    """Both readers: the first row naming the image (a reference or a target, the path however
    written), in the error and in what --skip-missing-images records."""
    data = tmp_path / "data"
    _photos(data, ["a.png", "b.png", "c.png"])
    rows = [("a.png", "x", "b.png"), ("c.png", "y", "../../elsewhere/gone.png"), ("b.png", "z", "gone.png"),
            ("./gone.png", "w", "a.png")]
    if variant == "jsonl":
        (data / "val.jsonl").write_text("".join(json.dumps(dict(zip(("reference", "caption", "target"), row))) + "\n"
                                                for row in rows))
        first, second = 2, 3
    else:
        extra = ",extra" if variant == "ragged csv" else ""  # a row with a field more: read row by row
        (data / "val.csv").write_text("reference,caption,target\n" + ",".join(rows[0]) + extra + "\n"
                                      + "".join(",".join(row) + "\n" for row in rows[1:]))
        first, second = 3, 4
    name = f"val.{'jsonl' if variant == 'jsonl' else 'csv'}"
    with pytest.raises(CIRError) as error:
        load_triplets(data, "val")
    assert str(error.value).startswith(f"{data / '../../elsewhere/gone.png'}: image '../../elsewhere/gone.png' "
                                       f"listed in {name}:{first} is missing on disk; 1 more of the 5 images")
    check = ImageCheck(skip=True)
    (split,) = load_triplets(data, "val", images=check)
    assert {s.name: s.listed_in for s in check.skipped.values()} == {"../../elsewhere/gone.png": f"{name}:{first}",
                                                                     "gone.png": f"{name}:{second}"}
    assert [q.reference for q in split.queries] == ["a.png"]


def test_csv_missing_column_names_the_columns_and_the_flag(tmp_path):
    (tmp_path / "train.csv").write_text("reference,text,target\na.png,x,b.png\n")
    with pytest.raises(CIRError, match=r"train.csv:1: no column 'caption' \(columns: reference, text, target; "
                                       r"choose the column with --csv-caption-key"):
        load_triplets(tmp_path, "train")


def test_gallery_file_that_lacks_a_target_or_names_a_missing_image(tmp_path, cli, tiny_checkpoint):
    _photos(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "val.jsonl").write_text('{"reference": "a.png", "caption": "x", "target": "b.png"}\n'
                                        '{"reference": "b.png", "caption": "y", "target": "c.png"}\n')
    (tmp_path / "val.gallery.txt").write_text("a.png\nb.png\n")
    with pytest.raises(CIRError, match=r"val.jsonl:2: target 'c.png' is not in the gallery val.gallery.txt"):
        load_triplets(tmp_path, "val")
    (tmp_path / "val.gallery.txt").write_text("c.png\nb.png\na.png\nextra.png\n")
    with pytest.raises(CIRError, match="image 'extra.png' listed in val.gallery.txt:4 is missing on disk"):
        load_triplets(tmp_path, "val")
    shutil.copy(tmp_path / "a.png", tmp_path / "extra.png")
    (split,) = load_triplets(tmp_path, "val")
    assert list(split.gallery) == ["c.png", "b.png", "a.png", "extra.png"]  # the file's order
    # An unreadable image: one line by default, left out (with its queries) on request.
    (tmp_path / "c.png").write_bytes(b"<html>not an image</html>")
    result = cli("eval", "--dataset", "triplets", "--data-root", tmp_path, "--pretrained", tiny_checkpoint)
    assert result.code == 2 and result.err.strip().splitlines()[-1].endswith(
        f"{tmp_path / 'c.png'}: corrupt or unreadable image (cannot identify image file '{tmp_path / 'c.png'}')")
    with pytest.raises(CIRError, match="c.png' listed in val.gallery.txt:1 is unreadable"):
        load_triplets(tmp_path, "val", images=ImageCheck(readable=True))
    check = ImageCheck(skip=True, readable=True)
    (split,) = load_triplets(tmp_path, "val", images=check)
    assert [q.qid for q in split.queries] == ["1"] and "c.png" not in split.gallery


def test_test_split_without_targets_and_mixed_rows(tmp_path):
    _photos(tmp_path, ["a.png", "b.png"])
    (tmp_path / "test.csv").write_text("reference,caption\na.png,x\nb.png,y\n")
    (split,) = load_triplets(tmp_path, "test")
    assert not split.has_targets and list(split.gallery) == ["a.png", "b.png"]
    (tmp_path / "test.csv").write_text("reference,caption,target\na.png,x,\nb.png,y,a.png\n")
    with pytest.raises(CIRError, match=r"test.csv:3: some rows have a target and others none"):
        load_triplets(tmp_path, "test")


def test_training_on_a_converted_copy_equals_training_on_the_original(converted, synth_root, tmp_path):
    """Stage 1 then the Combiner on the generic-layout copy of the synthetic CIRR world, same seed:
    the same losses, the same validation recalls at every epoch."""
    import pandas as pd

    def both_stages(dataset: str, root: Path, name: str) -> tuple[pd.DataFrame, ...]:
        runs = tmp_path / name
        clip_cir.finetune(**stage1_options(root, runs, "s1", dataset=dataset, encoder="text", epochs=2))
        clip_cir.train_combiner(**stage2_options(root, runs, "s2", dataset=dataset, epochs=2, validation_frequency=1,
                                                 pretrained=runs / "s1"))
        return tuple(pd.read_csv(runs / s / f) for s in ("s1", "s2") for f in ("train_metrics.csv",
                                                                               "validation_metrics.csv"))

    original = both_stages("cirr", synth_root, "cirr")
    generic = both_stages("triplets", converted["cirr"], "generic")
    for a, b in zip(original, generic):
        assert len(a) == len(b) == 2
        for column in b.columns:
            if column.startswith(("train_loss", "recall_at")):
                assert list(b[column]) == list(a[column]), column
    assert generic[1]["recall_at10"].iloc[-1] > 0


def test_a_folder_of_photos_is_a_gallery(tmp_path):
    from clip_cir.data.folder import folder_gallery

    _photos(tmp_path / "shop", ["b.jpg", "a/z.png", "a/deeper/y.JPG", ".hidden/x.png", "notes.txt.png"])
    (tmp_path / "shop" / "readme.txt").write_text("not an image")
    split = folder_gallery(tmp_path / "shop")
    assert list(split.gallery) == ["a/deeper/y.JPG", "a/z.png", "b.jpg", "notes.txt.png"]
    assert split.gallery["a/z.png"] == tmp_path / "shop" / "a" / "z.png" and not split.queries
    (tmp_path / "empty").mkdir()
    with pytest.raises(CIRError, match="no images"):
        folder_gallery(tmp_path / "empty")


def test_a_gallery_dir_that_is_a_file_is_not_a_folder(tmp_path, cli, tiny_checkpoint):
    from clip_cir.apps.demo.app import _build_app
    from clip_cir.params import demo_parser

    _photos(tmp_path, ["photo.png"])
    (tmp_path / "queries.csv").write_text("reference,caption\nphoto.png,red\n")
    message = f"{tmp_path / 'photo.png'}: not a folder (--gallery-dir takes the folder that holds the photos)"
    result = cli("rank", "--gallery-dir", tmp_path / "photo.png", "--query-file", tmp_path / "queries.csv",
                 "--pretrained", tiny_checkpoint, "--output", tmp_path / "ranks.json")
    assert result.code == 2 and result.error_lines == [f"clip-cir: error: {message}"], result.err
    args = demo_parser().parse_args(["--gallery-dir", str(tmp_path / "photo.png"),
                                     "--pretrained", str(tiny_checkpoint)])
    with pytest.raises(CIRError) as error:
        _build_app(args)
    assert str(error.value) == message
    result = cli("rank", "--gallery-dir", tmp_path / "absent", "--query-file", tmp_path / "queries.csv",
                 "--pretrained", tiny_checkpoint, "--output", tmp_path / "ranks.json")
    assert result.error_lines == [f"clip-cir: error: {tmp_path / 'absent'}: gallery folder not found"]


def test_convert_command_then_eval_and_rank_a_photo_folder(synth_root, tiny_checkpoint, cli, tmp_path):
    out = tmp_path / "cirr-triplets"
    result = cli("convert", "cirr", "--data-root", synth_root, "--output", out)
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["clip_cir.json", "test1.gallery.txt", "test1.jsonl",
                                                    "train.gallery.txt", "train.jsonl", "val.gallery.txt", "val.jsonl"]
    assert cli("convert", "cirr", "--data-root", synth_root, "--output", out).err.strip().endswith(
        "exists and is not empty; choose a new --output folder")
    # A shop's folder of photos (nested), searched with a CSV of (reference, caption): no annotation file.
    shop = tmp_path / "shop"
    names = ["tops/a.png", "tops/long/b.png", "dresses/c.png", "dresses/d.png"]
    _photos(shop, names)
    (tmp_path / "queries.csv").write_text("reference,caption\nshop/tops/a.png,make it red\n"
                                          "shop/dresses/c.png,shorter\n")
    ranks = tmp_path / "ranks.json"
    result = cli("rank", "--gallery-dir", shop, "--query-file", tmp_path / "queries.csv", "--pretrained",
                 tiny_checkpoint, "--top-k", "3", "--output", ranks)
    assert result.code == 0, result.err
    written = json.loads(ranks.read_text())
    assert written["gallery_dir"] == str(shop) and len(written["queries"]) == 2
    first = written["queries"][0]
    assert first["reference"] == "tops/a.png" and len(first["ranking"]) == 3
    assert "tops/a.png" not in [r["name"] for r in first["ranking"]]  # the reference is not its own answer
    assert {r["name"] for q in written["queries"] for r in q["ranking"]} <= set(names)
    (tmp_path / "bad.csv").write_text("reference,caption\nelsewhere/x.png,red\n")
    result = cli("rank", "--gallery-dir", shop, "--query-file", tmp_path / "bad.csv", "--pretrained", tiny_checkpoint,
                 "--output", tmp_path / "none.json")
    assert result.code == 2 and "bad.csv:2: reference 'elsewhere/x.png' is not an image of the gallery folder" \
        in result.err and not (tmp_path / "none.json").exists()
    result = cli("rank", "--pretrained", tiny_checkpoint, "--output", tmp_path / "none.json")
    assert result.code == 2 and "the following arguments are required: --dataset, --data-root (or --gallery-dir)" \
        in result.err


def test_demo_engine_serves_a_nested_photo_folder(tmp_path, tiny_checkpoint):
    """`demo --gallery-dir` over subfolders two levels deep: listed, served and searched by their
    paths relative to the folder (the page builds each image's URL from the name)."""
    from clip_cir.apps.demo.app import _build_app
    from clip_cir.params import demo_parser

    shop = tmp_path / "shop"
    names = ["dresses/c.png", "tops/a.png", "tops/long/b.png", "tops/long/sleeved/e.png", "top-level.png"]
    _photos(shop, names)
    args = demo_parser().parse_args(["--gallery-dir", str(shop), "--pretrained", str(tiny_checkpoint),
                                     "--cache-dir", str(tmp_path / "cache")])
    client = _build_app(args).test_client()
    info = client.get("/api/info").get_json()
    assert info["gallery_size"] == 5 and info["dataset"] == "folder"
    page = client.get("/api/gallery?per_page=10").get_json()
    assert [item["name"] for item in page["items"]] == sorted(names)  # sorted by path
    assert {item["name"]: item["url"] for item in page["items"]}["tops/long/sleeved/e.png"] == \
        "/images/tops/long/sleeved/e.png"
    filtered = client.get("/api/gallery?filter=long/").get_json()
    assert [item["name"] for item in filtered["items"]] == ["tops/long/b.png", "tops/long/sleeved/e.png"]
    for name in names:
        assert client.get(f"/images/{name}").data == (shop / name).read_bytes(), name
    answer = client.post("/api/search", json={"reference": "tops/long/sleeved/e.png", "caption": "make it red",
                                              "k": 5}).get_json()
    assert answer["reference"] == "tops/long/sleeved/e.png"
    assert sorted(hit["name"] for hit in answer["results"]) == sorted(set(names) - {answer["reference"]})
    for hit in answer["results"]:
        assert hit["url"] == f"/images/{hit['name']}"
        assert client.get(hit["url"]).data == (shop / hit["name"]).read_bytes()


def test_demo_and_rank_rank_a_folder_query_alike_without_its_reference(tmp_path, tiny_checkpoint, cli):
    from clip_cir.apps.demo.app import _build_app
    from clip_cir.params import demo_parser

    shop = tmp_path / "shop"
    names = [f"{folder}/{i}.png" for folder in ("tops", "dresses/long") for i in range(4)]
    _photos(shop, names)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    args = demo_parser().parse_args(["--gallery-dir", str(shop), "--pretrained", str(tiny_checkpoint), *cache])
    client = _build_app(args).test_client()
    assert client.get("/api/info").get_json()["exclude_reference"] is True
    rows = "".join(f"shop/{name},make it red\n" for name in names)
    (tmp_path / "queries.csv").write_text("reference,caption\n" + rows)
    ranks = tmp_path / "ranks.json"
    result = cli("rank", "--gallery-dir", shop, "--query-file", tmp_path / "queries.csv", "--pretrained",
                 tiny_checkpoint, "--top-k", len(names), "--output", ranks, *cache)
    assert result.code == 0, result.err
    for query in json.loads(ranks.read_text())["queries"]:
        answer = client.post("/api/search", json={"reference": query["reference"], "caption": "make it red",
                                                  "k": len(names)}).get_json()
        assert answer["excluded_reference"] is True and len(answer["results"]) == len(names) - 1
        assert query["reference"] not in [hit["name"] for hit in answer["results"]]
        assert [hit["name"] for hit in answer["results"]] == [hit["name"] for hit in query["ranking"]]
        assert [hit["score"] for hit in answer["results"]] == pytest.approx([hit["score"] for hit in query["ranking"]],
                                                                            abs=1e-5)
