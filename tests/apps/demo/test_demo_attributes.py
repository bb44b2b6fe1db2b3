"""The web demo on an attribute catalogue (`clip-cir demo --catalogue DIR`): `/api/info` lists the
catalogue's attributes and values, a search that sets one attribute ranks the gallery as
`CIRModel.manipulate` + `Gallery.search_features` do on an independently loaded model, bad
attribute requests are one-line 400s, and the page carries the two drop-downs."""

from __future__ import annotations

import csv

import pytest
from helpers import demo_search, demo_upload

import clip_cir
from clip_cir import params
from clip_cir.apps.demo.app import _build_app
from clip_cir.data.synthetic.attributes import write_attribute_catalogue
from clip_cir.errors import CIRError

pytest.importorskip("flask", reason="the demo needs Flask (pip install 'clip-cir[demo]')")

TEMPLATE = "make the {attribute} {value}"


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return write_attribute_catalogue(tmp_path_factory.mktemp("demo_catalogue"), seed=0, size=32, n=16, n_test=24)


def _demo_args(catalogue, tiny_checkpoint, cache, *extra: str):
    return params.demo_parser().parse_args(
        ["--catalogue", str(catalogue.image_root), "--pretrained", str(tiny_checkpoint), "--cpu", "--num-workers", "0",
         "--cache-dir", str(cache), "--top-k", "6", *extra])


@pytest.fixture(scope="module")
def attribute_client(catalogue, tiny_checkpoint, tmp_path_factory):
    """`clip-cir demo --catalogue DIR --attribute-template TEMPLATE` as the command builds it."""
    args = _demo_args(catalogue, tiny_checkpoint, tmp_path_factory.mktemp("demo_attr_cache"),
                      "--attribute-template", TEMPLATE)
    return _build_app(args).test_client()


@pytest.fixture(scope="module")
def reference_model(tiny_checkpoint):
    """The same CLIP loaded again through the API, without the feature cache the demo filled."""
    return clip_cir.load(tiny_checkpoint, device="cpu", cache=False, progress=False, attribute_template=TEMPLATE)


def _test_rows(catalogue) -> list[dict[str, str]]:
    with open(catalogue.test_csv, newline="") as f:
        return list(csv.DictReader(f))


def _expected(model, catalogue, reference: str, attribute: str, value: str, k: int) -> list[tuple[str, float]]:
    """The ranking by the API: the test split's images as a gallery (reference kept, as eval ranks
    a catalogue), the query `manipulate(reference's file, attribute, value)`."""
    files = {row["image"]: catalogue.image_root / row["image"] for row in _test_rows(catalogue)}
    gallery = model.index(files, exclude_reference=False)
    query = model.manipulate(files[reference], attribute, value)
    return gallery.search_features(query, k)


def test_info_lists_the_catalogues_attributes_and_values(attribute_client, catalogue):
    info = attribute_client.get("/api/info").get_json()
    with open(catalogue.train_csv, newline="") as f:
        train = list(csv.DictReader(f))
    columns = list(train[0])[1:]  # image, then one column per attribute
    assert list(info["attributes"]) == columns == ["colour", "shape", "size", "position"]
    for name in columns:  # every value the training split names (the test split numbers its values the same way)
        assert sorted(info["attributes"][name]) == sorted({row[name] for row in train if row[name]})
    assert info["gallery_size"] == 24 and info["split"] == "test" and info["exclude_reference"] is False
    assert info["default_k"] == 6 and info["combining"] == "element-wise sum"


def test_no_attributes_for_a_gallery_without_labels(client):
    assert client.get("/api/info").get_json()["attributes"] == {}
    response = demo_search(client, reference="anything", attribute="colour", value="red")
    assert response.status_code == 400
    assert response.get_json()["error"] == "this gallery has no attribute labels (start the demo with --catalogue DIR)"


@pytest.mark.parametrize("row, attribute, value", [(0, "colour", "blue"), (5, "shape", "circle"),
                                                    (5, "shape", "square")])
def test_attribute_search_ranks_as_manipulate(attribute_client, reference_model, catalogue, row, attribute, value):
    reference = _test_rows(catalogue)[row]["image"]
    answer = demo_search(attribute_client, reference=reference, attribute=attribute, value=value, k=8).get_json()
    assert answer["caption"] is None and (answer["attribute"], answer["value"]) == (attribute, value)
    expected = _expected(reference_model, catalogue, reference, attribute, value, 8)
    assert [h["name"] for h in answer["results"]] == [name for name, _ in expected]
    assert [h["score"] for h in answer["results"]] == pytest.approx([s for _, s in expected], abs=1e-5)
    assert answer["excluded_reference"] is False


def test_the_template_caption_is_the_query(attribute_client, catalogue):
    """An attribute search is the caption search of the template's sentence (no FLAM: the sum)."""
    reference = _test_rows(catalogue)[3]["image"]
    by_attribute = demo_search(attribute_client, reference=reference, attribute="size", value="large", k=24)
    by_caption = demo_search(attribute_client, reference=reference, caption="make the size large", k=24)
    other = demo_search(attribute_client, reference=reference, caption="change the size to large", k=24)
    assert [h["name"] for h in by_attribute.get_json()["results"]] == \
        [h["name"] for h in by_caption.get_json()["results"]]
    assert [h["score"] for h in by_attribute.get_json()["results"]] != [h["score"] for h in other.get_json()["results"]]


def test_upload_with_an_attribute(attribute_client, reference_model, catalogue):
    """An uploaded copy of a gallery image ranks as that image (the reference stays in the gallery)."""
    reference = _test_rows(catalogue)[2]["image"]
    data = (catalogue.image_root / reference).read_bytes()
    answer = demo_upload(attribute_client, data, caption=None, k="24", attribute="colour", value="green")
    names = [h["name"] for h in answer.get_json()["results"]]  # the whole gallery: nothing left out
    assert names == [name for name, _ in _expected(reference_model, catalogue, reference, "colour", "green", 24)]
    assert len(names) == 24 and reference in names


@pytest.mark.parametrize("body, message", [
    ({"attribute": "hue", "value": "red"}, "unknown attribute 'hue' (the gallery's: colour, shape, size, position)"),
    ({"attribute": "colour", "value": "circle"}, "attribute 'colour' has no value 'circle' (its values: "),
    ({"attribute": "colour"}, "attribute 'colour' has no value 'NoneType'"),
    ({"value": "red"}, "unknown attribute 'NoneType'"),
    ({"attribute": ["colour"], "value": "red"}, "unknown attribute 'list'"),
    ({"attribute": "colour", "value": "red", "caption": "is red"}, "give a caption or an attribute and value"),
    ({"reference": "no-such.png", "attribute": "colour", "value": "red"}, "'no-such.png' is not in the gallery"),
])
def test_bad_attribute_requests_are_one_line_400s(attribute_client, catalogue, body, message):
    body = {"reference": _test_rows(catalogue)[0]["image"], **body}
    response = demo_search(attribute_client, **body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert message in error and "\n" not in error


def test_page_has_the_attribute_drop_downs(attribute_client):
    html = attribute_client.get("/").get_data(as_text=True)
    assert '<select id="attribute"' in html and '<select id="value"' in html and 'id="attribute-row" hidden' in html
    script = attribute_client.get("/static/app.js").get_data(as_text=True)
    assert "info.attributes" in script and "attribute-row" in script


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "cirr", "--data-root", "."], "--catalogue serves an attribute catalogue: it does not go with"),
    (["--split", "val"], "the catalogue has no split 'val'"),
    (["--zero-shot", "x"], "--zero-shot does not go with --catalogue"),
])
def test_catalogue_startup_errors(catalogue, tiny_checkpoint, tmp_path, extra, message):
    with pytest.raises(CIRError, match=message):
        _build_app(_demo_args(catalogue, tiny_checkpoint, tmp_path, *extra))


def test_attribute_options_need_a_catalogue(tmp_path):
    args = params.demo_parser().parse_args(["--gallery-dir", str(tmp_path), "--attribute-template", TEMPLATE])
    with pytest.raises(CIRError, match="^--attribute-template goes with --catalogue DIR$"):
        _build_app(args)


def test_a_flam_run_answers_attribute_searches(catalogue, tiny_checkpoint, tmp_path):
    """`--attributes RUN`: the query is FLAM's manipulated feature (two tiny epochs suffice to check the path)."""
    runs = tmp_path / "runs"
    run = clip_cir.train_attributes(catalogue=catalogue.image_root, pretrained=tiny_checkpoint, output_dir=runs,
                                    experiment_name="flam", num_workers=0, no_progress=True, cache_dir=runs / "cache",
                                    seed=0, epochs=2, embedding_epochs=1, embedder_hidden=16, manipulator_hidden=16,
                                    discriminator_hidden=16, embedding_dim=8, batch_size=8, validation_frequency=1)
    args = params.demo_parser().parse_args(["--catalogue", str(catalogue.image_root), "--attributes", str(run.path),
                                            "--cpu", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache")])
    client = _build_app(args).test_client()
    assert client.get("/api/info").get_json()["combining"].startswith("FLAM (")
    reference = _test_rows(catalogue)[1]["image"]
    answer = demo_search(client, reference=reference, attribute="position", value="top left", k=7).get_json()
    model = clip_cir.load(attributes=run.path, device="cpu", cache=False, progress=False)
    expected = _expected(model, catalogue, reference, "position", "top left", 7)
    assert [h["name"] for h in answer["results"]] == [name for name, _ in expected]
    assert [h["score"] for h in answer["results"]] == pytest.approx([s for _, s in expected], abs=1e-5)
    template = _expected(clip_cir.load(tiny_checkpoint, device="cpu", cache=False, progress=False), catalogue,
                         reference, "position", "top left", 7)
    assert [s for _, s in expected] != pytest.approx([s for _, s in template], abs=1e-3)  # not the caption's query
