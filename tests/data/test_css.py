"""CSS read as google/tirg reads it (datasets.py CSSDataset, test_retrieval.py): queries per mod pair,
hits by label with the source masked, 2D->3D query images drawn by tirg's rule, bad files, missing
images, and the synthetic stand-in read back."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_cir.data import css_2d
from clip_cir.data.css import ANNOTATION_FILE, read_annotation
from clip_cir.data.images import ImageCheck
from clip_cir.data.registry import DATASETS, dataset_splits, load_splits
from clip_cir.data.synthetic.css import write_css
from clip_cir.data.synthetic.world import POSITIONS
from clip_cir.data.types import ReaderOptions
from clip_cir.encoding.ranking import rank_split
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import split_metrics

# The test split, written by hand: 6 images; images 1 and 3 show scene 11, images 2 and 5 scene 12.
LABELS = [10, 11, 12, 11, 13, 12]
OBJECTS = [
    [{"shape": "rectangle", "color": "red", "size": "large", "pos": [0.5, 0.5]}],
    [{"shape": "circle", "color": "blue", "size": "small", "pos": [0.25, 0.75]}],
    [{"shape": "triangle", "color": "green", "size": "small", "pos": [0.75, 0.25]}],
    [{"shape": "circle", "color": "blue", "size": "small", "pos": [0.25, 0.75]}],
    [{"shape": "rectangle", "color": "gray", "size": "small", "pos": [0.2, 0.2]},
     {"shape": "triangle", "color": "yellow", "size": "large", "pos": [0.3, 0.31]}],
    [{"shape": "triangle", "color": "green", "size": "small", "pos": [0.75, 0.25]}],
]
MODS = [
    {"from": [0, 4], "to": [1, 2], "to_str": "add blue sphere"},
    {"from": [1], "to": [4], "to_str": "add yellow cylinder"},
    {"from": [3], "to": [1], "to_str": "keep it as it is"},
]
TRAIN = {"objects_img": OBJECTS[:2], "labels": [0, 1], "mods": [{"from": [0], "to": [1], "to_str": "change it"}]}
# Each query's similarity to gallery images 0..5 (the gallery features are one-hot, so these are the scores).
SIMS = [
    [0.9, 0.1, 0.5, 0.3, 0.2, 0.0],  # query 0/0: source 0, target scene 11
    [0.0, 0.2, 0.1, 0.3, 0.95, 0.6],  # query 0/1: source 4, target scene 12
    [0.4, 0.99, 0.3, 0.2, 0.1, 0.5],  # query 1/0: source 1, target scene 13
    [0.2, 0.3, 0.1, 0.9, 0.0, 0.4],  # query 2/0: source 3 (scene 11), target scene 11
]
SOURCES = [0, 4, 1, 3]
TARGETS = [1, 2, 4, 1]


def write_pickle(base: Path, data: dict) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    path = base / ANNOTATION_FILE
    np.save(path, np.array(data, dtype=object), allow_pickle=True)
    return path


def write_layout(root: Path, test: dict | None = None, train: dict | None = None) -> Path:
    """CSS's files by hand: the pickle and one small solid-colour PNG per image."""
    base = root / "CSSDataset"
    test = test or {"objects_img": OBJECTS, "labels": LABELS, "mods": MODS}
    train = train or TRAIN
    write_pickle(base, {"train": train, "test": test})
    (base / "images").mkdir(exist_ok=True)
    for split, part in (("train", train), ("test", test)):
        for i in range(len(part["objects_img"])):
            Image.new("RGB", (8, 8), (30 * i, 20, 200)).save(base / "images" / f"css_{split}_{i:06d}.png")
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return write_layout(tmp_path / "data")


def test_registered_with_its_splits():
    assert "css" in DATASETS and dataset_splits("css") == ("train", "test")


def test_queries_gallery_and_labels_are_tirgs(root):
    (split,) = load_splits("css", root, "test")
    assert (split.dataset, split.name, split.split) == ("css", "css", "test")
    assert split.recall_ks == (1, 5, 10, 50, 100) and split.exclude_reference
    assert list(split.gallery) == [f"css_test_{i:06d}" for i in range(6)]
    assert split.gallery["css_test_000004"] == root / "CSSDataset" / "images" / "css_test_000004.png"
    assert dict(split.gallery_labels) == {f"css_test_{i:06d}": str(label) for i, label in enumerate(LABELS)}
    # One query per (from, to) pair of each mod, in mod order; the target caption is str(label).
    assert [q.qid for q in split.queries] == ["0/0", "0/1", "1/0", "2/0"]
    assert [q.reference for q in split.queries] == [f"css_test_{s:06d}" for s in SOURCES]
    assert [q.target for q in split.queries] == [f"css_test_{t:06d}" for t in TARGETS]
    assert [q.target_label for q in split.queries] == ["11", "12", "13", "11"]
    assert [q.eval_caption for q in split.queries] == ["add blue sphere", "add blue sphere", "add yellow cylinder",
                                                       "keep it as it is"]
    assert split.queries[0].train_captions == ("add blue sphere",) and split.queries[0].excluded is None
    assert split.has_targets and split.query_images is None


def test_without_labels_each_image_is_its_own_caption(tmp_path):
    root = write_layout(tmp_path / "data", test={"objects_img": OBJECTS, "mods": MODS})
    (split,) = load_splits("css", root, "test")
    assert list(split.gallery_labels.values()) == ["0", "1", "2", "3", "4", "5"]
    assert [q.target_label for q in split.queries] == ["1", "2", "4", "1"]


def tirg_recalls(sims: list[list[float]], sources: list[int], targets: list[int], captions: list[str]) -> dict:
    """test_retrieval.py step by step: mask the source, sort by similarity, compare captions."""
    out = {}
    nn_result = []
    for i, row in enumerate(sims):
        row = np.array(row)
        row[sources[i]] = -10e10
        nn_result.append([captions[j] for j in np.argsort(-row)[:110]])
    for k in (1, 5, 10, 50, 100):
        hits = sum(captions[targets[i]] in nns[:k] for i, nns in enumerate(nn_result))
        out[f"recall_at{k}"] = 100.0 * hits / len(nn_result)
    return out


def ranked_metrics(split) -> dict:
    gallery = torch.eye(6)
    queries = torch.tensor(SIMS)
    return split_metrics(split, rank_split(split, queries, gallery, split.rank_depth))


def test_any_image_of_the_target_scene_hits_and_the_source_is_masked(root):
    (split,) = load_splits("css", root, "test")
    metrics = ranked_metrics(split)
    expected = tirg_recalls(SIMS, SOURCES, TARGETS, [str(label) for label in LABELS])
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    # By hand: query 0/0 ranks 2, 3, ... (source 0 masked): image 3, the other image of scene 11, hits at 2.
    # 0/1 hits at 1 through image 5 (scene 12, not the listed image 2); 1/0 at 5; 2/0 would hit at 1
    # through its own source 3 (scene 11) but that is masked: image 1 hits at 2. R@1 = 1/4.
    assert (metrics["recall_at1"], metrics["recall_at5"], metrics["recall_at100"]) == (25.0, 100.0, 100.0)


def test_2d_queries_are_drawings_and_the_3d_source_stays_masked(root):
    (split,) = load_splits("css", root, "test", options=ReaderOptions(css_query_images="2d"))
    assert [q.reference for q in split.queries] == [f"css_test_{s:06d}_2d" for s in SOURCES]
    assert [q.excluded for q in split.queries] == [f"css_test_{s:06d}" for s in SOURCES]
    assert sorted(split.query_images) == [f"css_test_{s:06d}_2d" for s in sorted(set(SOURCES))]
    assert list(split.gallery) == [f"css_test_{i:06d}" for i in range(6)]  # the gallery stays 3-D
    for name, path in split.query_images.items():
        index = int(name.split("_")[2])
        assert split.image_file(name) == path
        np.testing.assert_array_equal(np.asarray(Image.open(path)), css_2d.draw_objects(OBJECTS[index]))
    # The drawings live in the cache, not in the data root, and are reused on the next read.
    assert not any(p.name.endswith("_2d.png") for p in root.rglob("*.png"))
    stamp = {p: p.stat().st_mtime_ns for p in split.query_images.values()}
    (again,) = load_splits("css", root, "test", options=ReaderOptions(css_query_images="2d"))
    assert {p: p.stat().st_mtime_ns for p in again.query_images.values()} == stamp
    metrics = ranked_metrics(split)
    assert metrics == pytest.approx(tirg_recalls(SIMS, SOURCES, TARGETS, [str(label) for label in LABELS]))


def tirg_drawing(objects: list[dict]) -> np.ndarray:
    """generate_2d_image's rule, pixel by pixel: the last object whose row and column bounds hold a
    pixel gives it its colour / 255 (the canvas is floats, 1.0 = white); times 255 for the PNG."""
    values = {"gray": (87, 87, 87), "red": (244, 35, 35), "blue": (42, 75, 215), "green": (29, 205, 20),
              "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51)}
    image = np.ones((64, 64, 3))
    for r in range(64):
        for c in range(64):
            for obj in objects:
                s = 8.0 if obj["size"] == "large" else 4.0
                y, x = obj["pos"][0] * 64, obj["pos"][1] * 64
                if obj["shape"] == "rectangle":
                    inside = int(y - s) <= r < int(y + s) and int(x - s) <= c < int(x + s)
                elif obj["shape"] == "circle":
                    x0 = x + (abs(r - y) - s)
                    inside = int(y - s) <= r <= int(y + s) and int(x0) <= c < int(2 * x - x0)
                else:
                    x0 = x + (r - y + s) / 2
                    x1 = 2 * x - x0
                    inside = int(y - s) <= r < int(y + s) and int(min(x0, x1)) <= c < int(max(x0, x1))
                if inside:
                    image[r, c] = [v / 255.0 for v in values[obj["color"]]]
    return np.rint(image * 255).astype(np.uint8)


def test_the_2d_drawing_is_tirgs_rule_pixel_by_pixel():
    objects = [
        {"shape": "rectangle", "color": "red", "size": "large", "pos": [0.5, 0.5]},
        {"shape": "circle", "color": "blue", "size": "small", "pos": [0.25, 0.75]},
        {"shape": "triangle", "color": "green", "size": "small", "pos": [0.75, 0.25]},
        {"shape": "circle", "color": "purple", "size": "large", "pos": [0.61, 0.43]},  # over the rectangle
        {"shape": "triangle", "color": "yellow", "size": "large", "pos": [0.137, 0.29]},
        {"shape": "rectangle", "color": "cyan", "size": "small", "pos": [0.8333, 0.7071]},
        {"shape": "circle", "color": "brown", "size": "small", "pos": [0.3, 0.5484375]},
        {"shape": "rectangle", "color": "gray", "size": "large", "pos": [0.2, 0.98]},  # clipped at the right edge
        # A circle whose edges fall on whole numbers only in tirg's order of additions (x + (|r - y| - s)).
        {"shape": "circle", "color": "green", "size": "small", "pos": [0.21, 0.29]},
    ]
    drawn = css_2d.draw_objects(objects)
    np.testing.assert_array_equal(drawn, tirg_drawing(objects))
    red, blue, green, white = (244, 35, 35), (42, 75, 215), (29, 205, 20), (255, 255, 255)
    # Large rectangle at (32, 32), half size 8: rows and columns 24..31.
    assert tuple(drawn[24, 24]) == red and tuple(drawn[31, 24]) == red and tuple(drawn[23, 24]) == white
    # Small "circle" (a diamond) at row 16, column 48: row 16 spans columns 44..51, row 13 columns 47..48,
    # row 12 (the tip) nothing.
    assert [tuple(drawn[16, c]) for c in (43, 44, 51, 52)] == [white, blue, blue, white]
    assert [tuple(drawn[13, c]) for c in (46, 47, 48, 49)] == [white, blue, blue, white]
    assert tuple(drawn[12, 48]) == white
    # Small triangle at row 48, column 16: row 45 covers column 15 only, row 51 columns 12..18.
    assert [tuple(drawn[45, c]) for c in (14, 15, 16)] == [white, green, white]
    assert [tuple(drawn[51, c]) for c in (11, 12, 18, 19)] == [white, green, green, white]
    # Small "circle" at row 19.2, column 35.1: its last row, int(19.2 + 4) = 23, spans 34.9..35.3, so
    # column 34 alone; its first row, 15, spans nothing (35.3 to 34.9); row 16 spans 34.3..35.9: column 34.
    brown = (129, 74, 25)
    assert [tuple(drawn[23, c]) for c in (33, 34, 35)] == [white, brown, white]
    assert [tuple(drawn[15, c]) for c in (34, 35)] == [white, white]
    assert [tuple(drawn[16, c]) for c in (33, 34, 35)] == [white, brown, white]
    # A rectangle whose top bound is negative paints nothing: tirg's rows slice int(5.76 - 8):int(5.76 + 8),
    # i.e. -2:13, is empty in numpy (-2 is row 62).
    corner = css_2d.draw_objects([{"shape": "rectangle", "color": "gray", "size": "large", "pos": [0.09, 0.5]}])
    assert (corner == 255).all()


def test_a_drawing_off_the_canvas_and_unknown_words_are_one_line_errors():
    with pytest.raises(CIRError, match=r"img 3 object 0 at pos \(0.99, 0.5\) reaches row 64"):
        css_2d.draw_objects([{"shape": "circle", "color": "red", "size": "small", "pos": [0.99, 0.5]}], "img 3")
    with pytest.raises(CIRError, match=r"img 3 object 1 has colour 'pink'"):
        css_2d.draw_objects([OBJECTS[0][0], {"shape": "circle", "color": "pink", "size": "small", "pos": [0.5, 0.5]}],
                            "img 3")
    with pytest.raises(CIRError, match=r"object 0 has shape 'cube'"):
        css_2d.draw_objects([{"shape": "cube", "color": "red", "size": "small", "pos": [0.5, 0.5]}])


def test_an_unknown_colour_in_2d_mode_names_the_file_and_image(tmp_path):
    objects = [list(o) for o in OBJECTS]
    objects[3] = [{"shape": "circle", "color": "pink", "size": "small", "pos": [0.5, 0.5]}]
    root = write_layout(tmp_path / "data", test={"objects_img": objects, "labels": LABELS, "mods": MODS})
    load_splits("css", root, "test")  # 3D->3D never draws
    with pytest.raises(CIRError, match=rf"{ANNOTATION_FILE}: test objects_img\[3\] object 0 has colour 'pink'"):
        load_splits("css", root, "test", options=ReaderOptions(css_query_images="2d"))


@pytest.mark.parametrize("test, message", [
    ({"objects_img": OBJECTS, "labels": LABELS}, r"split 'test' has no 'mods'"),
    ({"objects_img": OBJECTS, "labels": LABELS, "mods": [MODS[0], {"from": [1], "to": [6], "to_str": "x"}]},
     r"test mods\[1\] 'to'\[0\] names image 6, but the split has 6 images"),
    ({"objects_img": OBJECTS, "labels": LABELS, "mods": [{"from": [0, 1], "to": [2], "to_str": "x"}]},
     r"test mods\[0\] has 2 'from' and 1 'to' images"),
    ({"objects_img": OBJECTS, "labels": LABELS, "mods": [{"from": [0], "to": [2]}]}, r"test mods\[0\] has no 'to_str'"),
    ({"objects_img": OBJECTS, "labels": LABELS[:5], "mods": MODS}, r"test has 5 labels for 6 images"),
])
def test_bad_annotations_are_one_line_errors_naming_the_file(tmp_path, test, message):
    root = write_layout(tmp_path / "data", test=test)
    with pytest.raises(CIRError, match=rf"{ANNOTATION_FILE}: {message}"):
        load_splits("css", root, "test")


def test_a_pickle_that_refers_to_code_is_refused_unrun(tmp_path, capsys):
    # A protocol-2 pickle that would call print("hello") when loaded by a plain unpickler.
    payload = b"\x80\x02cbuiltins\nprint\nX\x05\x00\x00\x00hello\x85R."
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (), }".ljust(117) + b"\n"
    path = tmp_path / ANNOTATION_FILE
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload)
    with pytest.raises(CIRError, match=rf"{ANNOTATION_FILE}: cannot unpickle .*refers to builtins.print"):
        read_annotation(path)
    assert "hello" not in capsys.readouterr().out
    path.write_bytes(b"not numpy at all")
    with pytest.raises(CIRError, match=rf"{ANNOTATION_FILE}: not a numpy .npy file"):
        read_annotation(path)


def test_numpy_1_module_names_and_numpy_values_read_back(tmp_path):
    # A file saved by numpy 1 names numpy.core.multiarray; labels and indices may be numpy values.
    data = {"test": {"objects_img": OBJECTS, "labels": np.array(LABELS), "mods": [
        {"from": np.array([0, 4]), "to": [np.int64(1), np.int64(2)], "to_str": b"add blue sphere"}]}}
    payload = pickle.dumps(np.array(data, dtype=object), protocol=2).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in payload
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (), }".ljust(117) + b"\n"
    base = tmp_path / "data" / "CSSDataset"
    base.mkdir(parents=True)
    (base / ANNOTATION_FILE).write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload)
    (base / "images").mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8)).save(base / "images" / f"css_test_{i:06d}.png")
    (split,) = load_splits("css", base, "test")  # the data root may be CSSDataset/ itself
    assert [q.target_label for q in split.queries] == ["11", "12"]
    assert [q.eval_caption for q in split.queries] == ["add blue sphere"] * 2


def test_missing_images_stop_or_are_skipped_with_their_queries(root):
    (root / "CSSDataset" / "images" / "css_test_000004.png").unlink()
    with pytest.raises(CIRError, match=r"css_test_000004.png: image 'css_test_000004' listed in "
                                       rf"{ANNOTATION_FILE} is missing on disk.*--skip-missing-images"):
        load_splits("css", root, "test")
    for mode in ("3d", "2d"):
        images = ImageCheck(skip=True)
        (split,) = load_splits("css", root, "test", images=images, options=ReaderOptions(css_query_images=mode))
        # Image 4 is the source of query 0/1 and the target of 1/0: both go; the others stay.
        assert [q.qid for q in split.queries] == ["0/0", "2/0"]
        assert "css_test_000004" not in split.gallery and "css_test_000004" not in split.gallery_labels
        assert images.dropped_queries == {"css/css/test": 2} and images.pruned_galleries == {"css/css/test": 1}


def check_mod_text(text: str, source: list[dict], target: list[dict]) -> None:
    """The stand-in's mod text names a place on the 3x3 grid; `pos` (row, column) must put the object
    there: the added one in the target, the removed or changed one in the source."""
    place = text.split(" to the ")[1] if text.startswith("add") else text.split("the ", 1)[1].split(" object")[0]
    row, col = divmod(POSITIONS.index(place), 3)

    def at_place(objects):
        return [o for o in objects if (int(o["pos"][0] * 3), int(o["pos"][1] * 3)) == (row, col)]

    if text.startswith("add"):
        size, colour, shape = text.split()[2:5]
        assert not at_place(source)
        assert [(o["size"], o["color"], o["shape"]) for o in at_place(target)] == [(size, colour, shape)]
    elif text.startswith("remove"):
        assert len(at_place(source)) == 1 and not at_place(target)
    else:
        (before,), (after,) = at_place(source), at_place(target)
        assert text.split()[-1] in (after["color"], after["size"]) and before != after


def test_the_stand_in_reads_back_with_its_counts(tmp_path):
    summary = write_css(tmp_path / "a", seed=3)
    again = write_css(tmp_path / "b", seed=3)
    assert {k: v for k, v in summary.items() if k != "root"} == {k: v for k, v in again.items() if k != "root"}
    for rel in (f"CSSDataset/{ANNOTATION_FILE}", "CSSDataset/images/css_test_000000.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    for name in ("train", "test"):
        (split,) = load_splits("css", tmp_path / "a", name)
        counts = summary[name]
        assert len(split.gallery) == counts["images"] and len(split.queries) == counts["queries"]
        assert len(set(split.gallery_labels.values())) == counts["labels"] < counts["images"]  # some scenes twice
        assert len({q.eval_caption for q in split.queries}) == counts["mods"]
        assert Image.open(next(iter(split.gallery.values()))).size == (32, 32)
        # Every query's target scene differs from its source's, and its 2-D drawing is tirg's rule.
        assert all(split.gallery_labels[q.reference] != q.target_label for q in split.queries)
    data, _ = read_annotation(tmp_path / "a" / "CSSDataset" / ANNOTATION_FILE)
    for mod in data["test"]["mods"]:
        for source, target in zip(mod["from"], mod["to"]):
            check_mod_text(mod["to_str"], data["test"]["objects_img"][source], data["test"]["objects_img"][target])
    (drawn,) = load_splits("css", tmp_path / "a", "test", options=ReaderOptions(css_query_images="2d"))
    name, path = next(iter(drawn.query_images.items()))
    objects = data["test"]["objects_img"][int(name.split("_")[2])]
    np.testing.assert_array_equal(np.asarray(Image.open(path)), tirg_drawing(objects))


def test_eval_2d_to_3d_ranks_the_drawings_against_the_3d_gallery(cli, tiny_checkpoint, tmp_path):
    """`clip-cir eval --dataset css --css-query-images 2d` on the stand-in equals tirg's protocol run
    step by step on features the API computes: drawings composed with the mod texts, the 3-D gallery
    ranked, each source's 3-D image masked, hits by label."""
    import json

    import clip_cir

    write_css(tmp_path / "data", seed=1)
    out = tmp_path / "metrics.json"
    result = cli("eval", "--dataset", "css", "--data-root", tmp_path / "data", "--split", "test", "--model",
                 "cir-tiny-vit", "--pretrained", tiny_checkpoint, "--css-query-images", "2d", "--num-workers", "0",
                 "--no-cache", "--output", out)
    assert result.code == 0, result.err
    metrics = json.loads(out.read_text())

    (split,) = load_splits("css", tmp_path / "data", "test", options=ReaderOptions(css_query_images="2d"))
    model = clip_cir.load(tiny_checkpoint, cache=False, progress=False)
    names = list(split.gallery)
    gallery = model.encode_images([split.gallery[n] for n in names]).numpy()
    queries = model.compose([split.query_images[q.reference] for q in split.queries],
                            [q.eval_caption for q in split.queries]).numpy()
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ gallery.T
    captions = [split.gallery_labels[n] for n in names]
    nn_result = []
    for i, q in enumerate(split.queries):
        sims[i, names.index(q.excluded)] = -10e10
        nn_result.append([captions[j] for j in np.argsort(-sims[i])[:110]])
    for k in (1, 5, 10, 50, 100):
        expected = 100.0 * sum(q.target_label in nns[:k] for q, nns in zip(split.queries, nn_result)) / len(nn_result)
        assert metrics[f"recall_at{k}"] == pytest.approx(expected, abs=1e-3), k


def test_training_on_2d_queries_reads_the_drawings(root):
    from clip_cir.training.datasets import TrainingSet

    (split,) = load_splits("css", root, "train", options=ReaderOptions(css_query_images="2d"))
    training = TrainingSet.from_splits([split])
    assert training.image_names == ["css_train_000000_2d", "css_train_000001"]
    assert training.image_paths == [split.query_images["css_train_000000_2d"], split.gallery["css_train_000001"]]
