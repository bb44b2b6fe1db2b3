"""The triplet layout carries what label-hit benchmarks need (gallery labels and word views, a
masked entry other than the reference, references outside the gallery, one file under several
entry names): `write_triplets` of hand-built CIRSplits reads back through `--dataset triplets`
as the same queries and the same metrics, and bad input stops with one line naming file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clip_cir.data import load_splits
from clip_cir.data.convert import write_triplets
from clip_cir.data.csv_columns import csv_columns
from clip_cir.data.images import ImageCheck
from clip_cir.data.triplets import load_triplets
from clip_cir.data.types import CIRSplit, Query, TripletFormat
from clip_cir.encoding.ranking import Ranking, rank_split
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import combine_benchmarks, split_metrics

NO_FILES = ImageCheck(require_files=False)
VIEWS = (("adjective", 0), ("noun", 1))
LABELS = {"e0": "red circle", "e1": "blue circle", "e2": "red  square ", "e3": "blue circle", "e4": "green star",
          "e4#2": "green star"}
"""The labelled gallery in order; `e4#2` is a second entry showing e4's file. Labels are compared
as written (e2's spaces are kept), words as split on whitespace."""


def _images(folder: Path, stems: list[str]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, stem in enumerate(stems):
        paths[stem] = folder / f"{stem}.png"
        Image.new("RGB", (24, 20), (40 * i % 256, 90 * i % 256, 255 - 30 * i)).save(paths[stem])
    return paths


def _query(qid: str, reference: str, caption: str, **fields) -> Query:
    return Query(qid=qid, reference=reference, captions=(caption,), train_captions=fields.pop("forms", (caption,)),
                 eval_caption=caption, **fields)


def _labelled(root: Path) -> dict[str, list[CIRSplit]]:
    """A MIT-States/CSS-like benchmark: hits by label with word views; query 1's reference is a
    query image outside the gallery and it masks e2 instead; query 2's target is e4's second entry."""
    files = _images(root / "img", ["e0", "e1", "e2", "e3", "e4", "q0"])
    gallery = {name: files[name.split("#")[0]] for name in LABELS}

    def split(name: str, queries: list[Query]) -> CIRSplit:
        return CIRSplit(dataset="shapes", name="shapes", split=name, queries=queries, gallery=gallery,
                        exclude_reference=True, recall_ks=(1, 2, 3), gallery_labels=dict(LABELS), label_views=VIEWS,
                        query_images={"q0": files["q0"]})

    val = [_query("0", "e0", "make it blue", target="e1", target_label="blue circle", aspects=("colour",)),
           _query("1", "q0", "add a star", target="e4", target_label="green star", excluded="e2",
                  forms=("add a star", "a star please")),
           _query("2", "e4", "the same again", target="e4#2", target_label="green star"),
           _query("3", "e1", "a blue star", target="e3", target_label="blue star ")]
    test = [_query("t0", "e1", "make it red"), _query("t1", "q0", "a square", excluded="e0")]
    return {"val": [split("val", val)], "test": [split("test", test)]}


def _spots(root: Path) -> dict[str, list[CIRSplit]]:
    """A Spot-the-Diff-like benchmark in two groups: records repeat files under new entry names,
    only the named target entry is a hit (no labels)."""
    files = _images(root / "img", ["s5", "s5b", "s6", "s6b", "s7", "s7b", "s8"])
    left = {"5": files["s5"], "5_2": files["s5b"], "5#2": files["s5"], "5_2#2": files["s5b"], "6": files["s6"],
            "6_2": files["s6b"]}
    right = {"7": files["s7"], "7_2": files["s7b"], "8": files["s8"]}

    def part(name: str, gallery: dict[str, Path], queries: list[Query]) -> CIRSplit:
        return CIRSplit(dataset="spots", name=name, split="val", queries=queries, gallery=gallery,
                        exclude_reference=True, recall_ks=(1, 2))

    return {"val": [part("left", left, [_query("0/0", "5", "a car left", target="5_2"),
                                        _query("1/0", "5#2", "a car left again", target="5_2#2"),
                                        _query("2/0", "6", "the door opened", target="6_2")]),
                    part("right", right, [_query("r0", "7", "a man walked in", target="7_2", excluded="8")])]}


def _same_queries(original: CIRSplit, read: CIRSplit) -> None:
    assert len(read.queries) == len(original.queries)
    for o, r in zip(original.queries, read.queries):
        assert (r.qid, r.eval_caption, r.train_captions, r.aspects) == (o.qid, o.eval_caption, o.train_captions,
                                                                        o.aspects)
        assert (r.target, r.ground_truths, r.target_label, r.excluded) == (o.target, o.ground_truths,
                                                                           o.target_label, o.excluded)
        if o.reference in original.gallery:
            assert r.reference == o.reference
        else:  # a query image: named by its file
            assert r.reference == str(original.query_images[o.reference])
        assert read.image_file(r.reference) == original.image_file(o.reference)


def _same_split(original: CIRSplit, read: CIRSplit) -> None:
    assert read.dataset == "triplets" and read.split == original.split
    assert list(read.gallery.items()) == list(original.gallery.items())  # names, files, order
    assert read.gallery_labels == original.gallery_labels and read.label_views == original.label_views
    assert (read.exclude_reference, read.recall_ks, read.map_ks) == (original.exclude_reference, original.recall_ks,
                                                                     original.map_ks)
    assert dict((read.query_images or {}).items()) == {str(p): p for p in (original.query_images or {}).values()}
    assert read.has_targets == original.has_targets
    _same_queries(original, read)


def test_a_labelled_benchmark_reads_back_as_written(tmp_path):
    splits = _labelled(tmp_path / "data")
    out = tmp_path / "out"
    written = write_triplets(splits, out, "shapes")
    assert sorted(p.name for p in written) == ["clip_cir.json", "test.gallery.jsonl", "test.jsonl",
                                               "val.gallery.jsonl", "val.jsonl"]
    protocol = json.loads((out / "clip_cir.json").read_text())
    assert protocol == {"source": "shapes", "exclude_reference": True, "recall_ks": [1, 2, 3], "map_ks": [],
                        "label_views": [["adjective", 0], ["noun", 1]]}
    entries = [json.loads(line) for line in (out / "val.gallery.jsonl").read_text().splitlines()]
    img = tmp_path / "data" / "img"
    assert entries[4:] == [{"image": str(img / "e4.png"), "name": "e4", "label": "green star"},
                           {"image": str(img / "e4.png"), "name": "e4#2", "label": "green star"}]
    rows = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert rows[1] == {"id": "1", "reference": str(img / "q0.png"), "caption": "add a star",
                       "train_captions": ["add a star", "a star please"], "target": "e4",
                       "target_label": "green star", "excluded": "e2"}
    for name, originals in splits.items():
        (read,) = load_splits("triplets", out, name)
        _same_split(originals[0], read)
    (test,) = load_splits("triplets", out, "test")
    assert not test.has_targets and test.queries[1].excluded == "e0" and test.queries[0].target_label is None


def test_label_hits_and_word_views_score_the_same_as_the_original(tmp_path):
    (original,) = _labelled(tmp_path / "data")["val"]
    write_triplets({"val": [original]}, tmp_path / "out", "shapes")
    (read,) = load_splits("triplets", tmp_path / "out", "val")
    # Gallery order e0 e1 e2 e3 e4 e4#2; targets: blue circle, green star, green star, blue star.
    ranked = torch.tensor([[2, 3, 1], [0, 5, 1], [5, 1, 0], [4, 3, 1]])
    ranking = Ranking(indices=ranked, scores=torch.zeros(4, 3), subset_indices=None)
    metrics = split_metrics(read, ranking)
    assert metrics == split_metrics(original, ranking)
    # By hand, labels of the ranked entries:
    #   q0: red square, blue circle (e3: not the target image, but its label) -> hit at 2
    #   q1: red circle, green star (e4#2)                                     -> hit at 2
    #   q2: green star                                                         -> hit at 1
    #   q3: green star, blue circle, blue circle: no "blue star "              -> never
    assert (metrics["recall_at1"], metrics["recall_at2"], metrics["recall_at3"]) == (25.0, 75.0, 75.0)
    # Adjectives (word 0) sought: blue, green, green, blue. q3: green, then blue at 2.
    assert (metrics["adjective_recall_at1"], metrics["adjective_recall_at2"]) == (25.0, 100.0)
    # Nouns (word 1) sought: circle, star, star, star. q0: square, circle; q1: circle, star; q2, q3: star at 1.
    assert (metrics["noun_recall_at1"], metrics["noun_recall_at2"], metrics["noun_recall_at3"]) == (50.0, 100.0, 100.0)
    assert combine_benchmarks([(read, metrics)]) == metrics  # one benchmark: flat keys, as the original's


def test_the_masked_entry_and_the_query_image_rank_as_the_original(tmp_path):
    (original,) = _labelled(tmp_path / "data")["val"]
    write_triplets({"val": [original]}, tmp_path / "out", "shapes")
    (read,) = load_splits("triplets", tmp_path / "out", "val")
    gallery = torch.eye(6)
    # Every query scores e2 highest, then its own gallery reference (q1: e0), then e4#2.
    scores = torch.tensor([[0.5, 0, 1, 0, 0, 0.2], [0.1, 0, 1, 0, 0, 0.2], [0, 0, 1, 0, 0.5, 0.2],
                           [0, 0.5, 1, 0, 0, 0.2]])
    for split in (original, read):
        ranking = rank_split(split, scores, gallery, k=2)
        # q0, q2, q3 mask their references (e0, e4, e1); q1 masks e2, not its query image.
        assert ranking.indices.tolist() == [[2, 5], [5, 0], [2, 5], [2, 5]], split.dataset


def test_a_real_evaluation_gives_the_same_metrics(tmp_path):
    """Encoded by a tiny CLIP: the query image apart from the gallery, the duplicated entry twice."""
    from clip_cir.encoding.split_features import EncodeOptions
    from clip_cir.evaluation.evaluate import evaluate
    from clip_cir.models.clip import load_clip
    from clip_cir.models.combiner import element_wise_sum

    torch.manual_seed(0)
    clip = load_clip("cir-tiny-vit")
    options = EncodeOptions(transform=clip.image_transform("targetpad", 1.25), progress=False)
    for name, build in (("shapes", _labelled), ("spots", _spots)):
        originals = build(tmp_path / name)["val"]
        write_triplets({"val": originals}, tmp_path / f"{name}-out", name)
        read = load_splits("triplets", tmp_path / f"{name}-out", "val")
        expected = evaluate(clip, originals, element_wise_sum, options)
        assert evaluate(clip, read, element_wise_sum, options) == expected
        assert ("noun_recall_at1" in expected) == (name == "shapes")
        assert ("left_recall_at1" in expected) == (name == "spots")


def test_entries_showing_one_file_are_distinct_targets(tmp_path):
    originals = _spots(tmp_path / "data")["val"]
    out = tmp_path / "out"
    written = write_triplets({"val": originals}, out, "spots")
    assert sorted(p.name for p in written) == ["clip_cir.json", "val.jsonl", "val.left.gallery.jsonl",
                                               "val.right.gallery.jsonl"]
    assert "label" not in (out / "val.left.gallery.jsonl").read_text()
    assert json.loads((out / "clip_cir.json").read_text()) == {"source": "spots", "exclude_reference": True,
                                                                "recall_ks": [1, 2], "map_ks": []}
    read = load_splits("triplets", out, "val")
    assert [r.name for r in read] == ["left", "right"]
    for original, part in zip(originals, read):
        _same_split(original, part)
    # Gallery 5 5_2 5#2 5_2#2 6 6_2. q0 ranks 5#2 (its reference's file) then its target 5_2;
    # q1 ranks 5_2 (its target's file, another entry: no hit) then its target 5_2#2; q2 hits at 1.
    ranking = Ranking(indices=torch.tensor([[2, 1], [1, 3], [5, 0]]), scores=torch.zeros(3, 2), subset_indices=None)
    metrics = split_metrics(read[0], ranking)
    assert metrics == split_metrics(originals[0], ranking)
    assert metrics == {"recall_at1": pytest.approx(100 / 3), "recall_at2": 100.0}


def test_a_benchmark_without_the_new_fields_is_written_as_before(tmp_path):
    """No labels, one file per entry: a text gallery of paths, rows of paths, no new keys."""
    files = _images(tmp_path / "img", ["a", "b", "c"])
    split = CIRSplit(dataset="plain", name="plain", split="val", gallery={n: files[n] for n in files},
                     queries=[_query("7", "a", "make it red", target="b")], exclude_reference=False, recall_ks=(1, 5))
    out = tmp_path / "out"
    write_triplets({"val": [split]}, out, "plain")
    assert (out / "val.gallery.txt").read_text() == "".join(f"{files[n]}\n" for n in "abc")
    assert (out / "val.jsonl").read_text() == json.dumps({"id": "7", "reference": str(files["a"]),
                                                          "caption": "make it red", "target": str(files["b"])}) + "\n"
    assert json.loads((out / "clip_cir.json").read_text()) == {"source": "plain", "exclude_reference": False,
                                                                "recall_ks": [1, 5], "map_ks": []}


def test_a_text_gallery_names_the_excluded_entry_by_its_path_and_keeps_map_cut_offs(tmp_path):
    """No labels: a target label has no use and is not written; a test split without targets
    need not share the mAP cut-offs of one with several ground truths."""
    files = _images(tmp_path / "img", ["a", "b", "c"])
    gallery = {n: files[n] for n in files}
    val = CIRSplit(dataset="multi", name="multi", split="val", gallery=gallery, exclude_reference=True,
                   queries=[_query("1", "a", "x", target="b", ground_truths=("b", "c"), target_label="unused",
                                   excluded="c")], recall_ks=(1,), map_ks=(5, 10))
    test = CIRSplit(dataset="multi", name="multi", split="test", gallery=gallery, exclude_reference=True,
                    queries=[_query("2", "b", "y")], recall_ks=(1,))
    write_triplets({"val": [val], "test": [test]}, tmp_path / "out", "multi")
    assert json.loads((tmp_path / "out" / "val.jsonl").read_text()) == {
        "id": "1", "reference": str(files["a"]), "caption": "x", "target": [str(files["b"]), str(files["c"])],
        "excluded": str(files["c"])}
    (read,) = load_splits("triplets", tmp_path / "out", "val")
    assert read.map_ks == (5, 10) and read.queries[0].excluded == str(files["c"])
    assert load_splits("triplets", tmp_path / "out", "test")[0].map_ks == ()


def test_splits_whose_protocols_differ_are_not_written(tmp_path):
    splits = _labelled(tmp_path / "data")
    splits["test"][0].recall_ks = (1, 5)
    with pytest.raises(CIRError, match=r"^shapes test shapes: recall_ks \(1, 5\) \(others: \(1, 2, 3\)\); "
                                       r"one clip_cir.json cannot hold both$"):
        write_triplets(splits, tmp_path / "out", "shapes")
    assert not (tmp_path / "out").exists()
    splits = _labelled(tmp_path / "data")
    splits["val"][0].gallery = {"./e0": splits["val"][0].gallery["e0"], **splits["val"][0].gallery}
    with pytest.raises(CIRError, match=r"shapes val shapes: gallery entry name './e0' would not read back"):
        write_triplets(splits, tmp_path / "out", "shapes")


def _write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


ROWS = ('{"reference": "a.png", "caption": "x", "target": "b", "target_label": "red"}\n'
        '{"reference": "q.png", "caption": "y", "target": "a.png", "target_label": " light  blue", "excluded": "b"}\n')
ENTRIES = ('{"image": "a.png", "label": " light  blue"}\n{"image": "b.png", "name": "b", "label": "red"}\n'
           '{"image": "b.png", "name": "b again", "label": "red"}\n')


def test_reading_the_new_fields(tmp_path):
    root = _write(tmp_path, {"val.jsonl": ROWS, "val.gallery.jsonl": ENTRIES})
    (split,) = load_triplets(root, "val", images=NO_FILES)
    assert list(split.gallery.items()) == [("a.png", root / "a.png"), ("b", root / "b.png"),
                                           ("b again", root / "b.png")]
    assert split.gallery_labels == {"a.png": " light  blue", "b": "red", "b again": "red"}
    assert split.label_views == ()  # none in the protocol
    assert dict(split.query_images) == {"q.png": root / "q.png"} and split.image_file("q.png") == root / "q.png"
    first, second = split.queries
    assert (first.target, first.target_label, first.excluded) == ("b", "red", None)
    assert (second.reference, second.target, second.target_label, second.excluded) == ("q.png", "a.png",
                                                                                         " light  blue", "b")
    # The same rows as CSV, read by numpy's C reader, and with a column more, row by row.
    csv = ("reference,caption,target,target_label,excluded\na.png,x,b,red,\nq.png,y,a.png, light  blue, b \n")
    for text in (csv, csv.replace("\na.png,x,b,red,\n", "\na.png,x,b,red,,extra\n")):
        (root / "val.jsonl").unlink(missing_ok=True)
        (root / "val.csv").write_text(text)
        assert (csv_columns(root / "val.csv", TripletFormat()) is None) == ("extra" in text)
        (again,) = load_triplets(root, "val", images=NO_FILES)
        assert [q.qid for q in again.queries] == ["2", "3"]
        assert [(q.reference, q.target, q.target_label, q.excluded) for q in again.queries] == \
            [(q.reference, q.target, q.target_label, q.excluded) for q in split.queries]


def test_label_views_apply_only_where_the_gallery_has_labels(tmp_path):
    views = '{"label_views": [["colour", 0]]}'
    root = _write(tmp_path, {"val.jsonl": ROWS, "val.gallery.jsonl": ENTRIES, "clip_cir.json": views})
    assert load_triplets(root, "val", images=NO_FILES)[0].label_views == (("colour", 0),)
    plain = _write(tmp_path / "plain", {"val.jsonl": '{"reference": "a.png", "caption": "x", "target": "b.png"}\n',
                                        "clip_cir.json": views})
    (split,) = load_triplets(plain, "val", images=NO_FILES)
    assert split.label_views == () and split.gallery_labels is None


def test_without_a_gallery_file_the_excluded_entry_joins_the_gallery(tmp_path):
    root = _write(tmp_path, {"val.csv": "reference,caption,target,excluded\na.png,x,b.png,c.png\n"
                                        "d.png,y,a.png,\n"})
    (split,) = load_triplets(root, "val", images=NO_FILES)
    assert list(split.gallery) == ["a.png", "b.png", "c.png", "d.png"]  # reference, target, excluded, in order
    assert [q.excluded for q in split.queries] == ["c.png", None] and split.query_images is None
    ranking = rank_split(split, torch.eye(4)[[2, 2]] + torch.eye(4)[[1, 3]] * 0.5, torch.eye(4), k=1)
    assert ranking.indices.tolist() == [[1], [2]]  # query 0 masks c.png (its excluded), query 1 its reference d.png


def test_a_reference_outside_the_gallery_is_a_query_image_where_nothing_is_masked(tmp_path):
    root = _write(tmp_path, {"val.jsonl": '{"reference": "q.png", "caption": "x", "target": "a.png"}\n',
                             "val.gallery.txt": "a.png\nb.png\n",
                             "clip_cir.json": '{"exclude_reference": false}'})
    (split,) = load_triplets(root, "val", images=NO_FILES)
    assert list(split.gallery) == ["a.png", "b.png"] and dict(split.query_images) == {"q.png": root / "q.png"}
    (root / "clip_cir.json").unlink()
    with pytest.raises(CIRError, match=r"val.jsonl:1: reference 'q.png' is not in the gallery val.gallery.txt, and "
                                       r"the protocol leaves each query's reference out of its ranking: name the "
                                       r"gallery entry to leave out in 'excluded'"):
        load_triplets(root, "val", images=NO_FILES)


def test_missing_images_drop_the_queries_that_need_them(tmp_path):
    _images(tmp_path, ["a", "b"])
    root = _write(tmp_path, {"val.jsonl": '{"reference": "a.png", "caption": "x", "target": "b.png", '
                                          '"target_label": "two"}\n'
                                          '{"reference": "q.png", "caption": "y", "target": "a.png", '
                                          '"target_label": "one", "excluded": "b.png"}\n'
                                          '{"reference": "b.png", "caption": "z", "target": "a.png", '
                                          '"target_label": "one", "excluded": "C"}\n',
                             "val.gallery.jsonl": '{"image": "c.png", "name": "C", "label": "three"}\n'
                                                  '{"image": "a.png", "label": "one"}\n'
                                                  '{"image": "b.png", "label": "two"}\n'})
    with pytest.raises(CIRError, match=r"image 'C' listed in val.gallery.jsonl:1 is missing on disk"):
        load_triplets(root, "val")
    (root / "c.png").write_bytes((root / "a.png").read_bytes())
    with pytest.raises(CIRError, match=r"image 'q.png' listed in val.jsonl:2 is missing on disk"):
        load_triplets(root, "val")
    (root / "c.png").unlink()
    check = ImageCheck(skip=True)
    (split,) = load_triplets(root, "val", images=check)
    assert [q.qid for q in split.queries] == ["1"]  # query 2 needs q.png, query 3 masks C
    assert {s.name: s.listed_in for s in check.skipped.values()} == {"C": "val.gallery.jsonl:1",
                                                                      "q.png": "val.jsonl:2"}
    assert list(split.gallery.items()) == [("a.png", root / "a.png"), ("b.png", root / "b.png")]
    assert split.gallery_labels == {"a.png": "one", "b.png": "two"}


BAD = {
    "entry JSON": ({"val.gallery.jsonl": '{"image": "a.png"}\n{oops\n'}, "val.gallery.jsonl:2: malformed JSON"),
    "entry field": ({"val.gallery.jsonl": '{"image": "a.png", "lable": "x"}\n'},
                    "val.gallery.jsonl:1: unknown field(s) lable (known: image, name, label)"),
    "entry image": ({"val.gallery.jsonl": '{"name": "a"}\n'}, "val.gallery.jsonl:1: 'image' should be the entry's "),
    "entry label type": ({"val.gallery.jsonl": '{"image": "a.png", "label": 3}\n'},
                         "val.gallery.jsonl:1: 'label' should be a non-empty string"),
    "blank name": ({"val.gallery.jsonl": '{"image": "a.png", "name": " "}\n'},
                   "val.gallery.jsonl:1: 'name' should be a non-empty string"),
    "some labels": ({"val.gallery.jsonl": '{"image": "a.png", "label": "x"}\n\n{"image": "b.png"}\n'},
                    "val.gallery.jsonl:3: this entry has no 'label' and the one at line 1 has; give every entry"),
    "name taken": ({"val.gallery.jsonl": '{"image": "a.png"}\n{"image": "b.png"}\n'
                                         '{"image": "c.png", "name": "./a.png"}'},
                   "val.gallery.jsonl:3: the name 'a.png' is taken by the entry at line 1"),
    "two galleries": ({"val.gallery.jsonl": '{"image": "a.png"}\n', "val.gallery.txt": "a.png\n"},
                      "both val.gallery.txt and val.gallery.jsonl list a gallery; keep one"),
    "label without labels": ({"val.gallery.txt": "a.png\nb.png\n"},
                             "val.jsonl:1: a 'target_label' needs labelled gallery entries"),
    "label without gallery": ({}, "val.jsonl:1: a 'target_label' needs labelled gallery entries"),
    "label type": ({"val.jsonl": '{"reference": "a.png", "caption": "x", "target": "b.png", "target_label": 3}\n'},
                   "val.jsonl:1: 'target_label' should be a label (a string)"),
    "some target labels": ({"val.jsonl": '{"reference": "a.png", "caption": "x", "target": "b.png", '
                                         '"target_label": "red"}\n{"reference": "b.png", "caption": "y", '
                                         '"target": "a.png", "target_label": " "}\n'},
                           "val.jsonl:2: some rows have a target_label and others none"),
    "excluded type": ({"val.jsonl": '{"reference": "a.png", "caption": "x", "target": "b.png", "excluded": ["b"]}\n'},
                      "val.jsonl:1: 'excluded' should be an image path or a gallery entry's name"),
    "excluded unlisted": ({"val.jsonl": '{"reference": "a.png", "caption": "x", "target": "b.png", "excluded": "z"}\n',
                           "val.gallery.txt": "a.png\nb.png\n"},
                          "val.jsonl:1: excluded entry 'z' is not in the gallery val.gallery.txt"),
    "target by path of a named entry": ({"val.jsonl": '{"reference": "a.png", "caption": "x", "target": "b.png"}\n',
                                         "val.gallery.jsonl": '{"image": "a.png"}\n{"image": "b.png", "name": "B"}\n'},
                                        "val.jsonl:1: target 'b.png' is not in the gallery val.gallery.jsonl"),
    "views": ({"clip_cir.json": '{"label_views": [["adjective", -1]]}'},
              "clip_cir.json: 'label_views' should be a list of [name, word index] pairs"),
    "view name": ({"clip_cir.json": '{"label_views": [["an adjective", 0]]}'},
                  "clip_cir.json: 'label_views' should be a list of [name, word index] pairs"),
    "views twice": ({"clip_cir.json": '{"label_views": [["w", 0], ["w", 1]]}'},
                    "clip_cir.json: 'label_views' names a view twice"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_file_and_line(case, tmp_path):
    files, message = BAD[case]
    rows = '{"reference": "a.png", "caption": "x", "target": "b.png", "target_label": "red"}\n'
    root = _write(tmp_path, {"val.jsonl": rows, **files})
    with pytest.raises(CIRError) as error:
        load_splits("triplets", root, "val", images=NO_FILES)
    text = str(error.value)
    assert message in text and len(text.splitlines()) == 1, text
    assert str(root) in text


def test_a_table_row_without_a_label_or_an_excluded_entry_has_none():
    import numpy as np

    from clip_cir.data.table import QueryTable, Ragged, strings

    table = QueryTable(ids=np.array([1, 2]), names=strings(["a", "b"]), reference=np.array([0, 1]),
                       targets=Ragged.from_lengths(np.array([1, 1]), np.array([1, 0])), captions=strings(["x", "y"]),
                       excluded=np.array([-1, 0], dtype=np.int32), target_labels=strings(["red", ""]))
    assert [(q.target_label, q.excluded) for q in table] == [("red", None), (None, "a")]
    assert [(q.target_label, q.excluded) for q in table.take(np.array([1]))] == [(None, "a")]


def test_rows_that_differ_only_in_target_label_or_excluded_entry_are_distinct_queries(tmp_path):
    row = '{{"reference": "a.png", "caption": "x", "target_label": "{}", "excluded": "{}"}}\n'
    entries = '{"image": "a.png", "label": "red"}\n{"image": "b.png", "label": "blue"}\n'
    root = _write(tmp_path, {"val.jsonl": row.format("red", "b.png") + row.format("blue", "b.png")
                             + row.format("blue", "a.png"), "val.gallery.jsonl": entries})
    (split,) = load_triplets(root, "val", images=NO_FILES)
    assert [(q.target_label, q.excluded) for q in split.queries] == [("red", "b.png"), ("blue", "b.png"),
                                                                     ("blue", "a.png")]
    (root / "val.jsonl").write_text(row.format("red", "b.png") * 2)
    with pytest.raises(CIRError, match=r"val.jsonl: lines 1, 2: the same query \(reference, caption\) listed 2 times"):
        load_triplets(root, "val", images=NO_FILES)


def test_with_a_target_label_the_reference_may_be_its_own_target(tmp_path):
    """MIT-States' training draws may give the source image itself as the target: the label decides
    the hits, the target is only training's positive. Without a label the row means nothing."""
    row = '{"reference": "a.png", "caption": "x", "target": "a.png", "target_label": "red"}\n'
    root = _write(tmp_path, {"train.jsonl": row, "train.gallery.jsonl": '{"image": "a.png", "label": "red"}\n'})
    (split,) = load_triplets(root, "train", images=NO_FILES)
    assert (split.queries[0].reference, split.queries[0].target) == ("a.png", "a.png") and split.has_targets
    (root / "train.jsonl").write_text(row.replace(', "target_label": "red"', ""))
    with pytest.raises(CIRError, match=r"train.jsonl:1: the reference 'a.png' is also its only target"):
        load_triplets(root, "train", images=NO_FILES)


def test_convert_css_with_its_2d_query_images_scores_as_the_reader(tmp_path, cli):
    """The CSS reader's own splits (labels, 2-D query images outside the gallery, each masking its
    scene's 3-D entry), through `clip-cir convert`: the same rankings and metrics."""
    from clip_cir.data.synthetic.css import write_css
    from clip_cir.data.types import ReaderOptions

    write_css(tmp_path / "css")
    out = tmp_path / "out"
    result = cli("convert", "css", "--data-root", tmp_path / "css", "--output", out, "--css-query-images", "2d")
    assert result.code == 0, result.err
    (original,) = load_splits("css", tmp_path / "css", "test", options=ReaderOptions(css_query_images="2d"))
    (read,) = load_splits("triplets", out, "test")
    assert original.query_images and len(read.query_images) == len(original.query_images)
    assert all(q.excluded is not None for q in read.queries)
    generator = torch.Generator().manual_seed(0)
    gallery = torch.randn(len(original.gallery), 8, generator=generator)
    queries = torch.randn(len(original.queries), 8, generator=generator)
    rankings = [rank_split(split, queries, gallery, k=original.rank_depth) for split in (original, read)]
    assert torch.equal(rankings[0].indices, rankings[1].indices)
    assert split_metrics(read, rankings[1]) == split_metrics(original, rankings[0])
