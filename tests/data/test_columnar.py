"""The columnar reading of `--dataset triplets` files equals a plain row-by-row reading: every
Query field, the gallery and its order, and for bad input the same one-line error."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from clip_cir.data.columns import check, row_columns
from clip_cir.data.csv_columns import csv_columns
from clip_cir.data.images import ImageCheck
from clip_cir.data.table import ImageFiles, QueryTable, strings
from clip_cir.data.triplets import TripletFormat, load_triplets, read_rows, split_file
from clip_cir.data.types import CIRSplit, Query
from clip_cir.errors import CIRError

NO_FILES = ImageCheck(require_files=False)


def _row_by_row(path: Path, fmt: TripletFormat,
                repeats: bool = False) -> list[tuple[str, list[Query], dict[str, Path]]]:
    """The reference: each row read, checked and made into a Query in turn (group, queries, gallery);
    then, unless `repeats`, the first query listed more than once among rows without an id."""
    groups: dict[str, tuple[list[Query], dict[str, Path]]] = {}
    first_line: dict[str, int] = {}
    listings: dict[tuple, list[int]] = {}
    kinds: set[bool] = set()

    def name(value, key: str, where: str) -> tuple[str, Path]:
        if not isinstance(value, str) or not value.strip():
            raise CIRError(f"{where}: empty {key}")
        normal = os.path.normpath(value.strip())
        return normal, Path(os.path.join(path.parent, normal))

    for line, row in read_rows(path, fmt):
        where = f"{path}:{line}"
        reference = name(row.get(fmt.reference_key), "reference", where)
        caption = row.get(fmt.caption_key)
        if not isinstance(caption, str) or not caption.strip():
            raise CIRError(f"{where}: empty caption")
        caption = caption.strip()
        value = row.get(fmt.target_key)
        if isinstance(value, list):
            if not all(isinstance(v, str) and v.strip() for v in value):
                raise CIRError(f"{where}: '{fmt.target_key}' should be image paths")
        elif value is not None and not isinstance(value, str):
            raise CIRError(f"{where}: '{fmt.target_key}' should be an image path or a list of them")
        parts = value if isinstance(value, list) else (value or "").split(fmt.target_separator)
        targets = [name(t, "target", where) for t in parts if t.strip()]
        if len(targets) == 1 and targets[0][0] == reference[0]:
            raise CIRError(f"{where}: the reference '{reference[0]}' is also its only target")
        qid = row.get(fmt.id_key)
        qid = str(line) if qid is None or qid == "" else str(qid)
        if qid in first_line:
            raise CIRError(f"{where}: duplicate query id '{qid}' (first at line {first_line[qid]})")
        first_line[qid] = line
        kinds.add(bool(targets))
        if len(kinds) > 1:
            raise CIRError(f"{where}: some rows have a {fmt.target_key} and others none; "
                           f"a split has targets for every query or for none")
        aspects = row.get("aspects") or []
        if not (isinstance(aspects, list) and all(isinstance(a, str) for a in aspects)):
            raise CIRError(f"{where}: 'aspects' should be a list of names")
        forms = row.get("train_captions") or [caption]
        if not (isinstance(forms, list) and all(isinstance(c, str) and c for c in forms)):
            raise CIRError(f"{where}: 'train_captions' should be a list of captions")
        group = str(row.get(fmt.group_key) or "triplets")
        if row.get(fmt.id_key) is None or row.get(fmt.id_key) == "":
            listings.setdefault((group, reference[0], caption, tuple(n for n, _ in targets)), []).append(line)
        queries, named = groups.setdefault(group, ([], {}))
        for image, file in [reference, *targets]:
            named.setdefault(image, file)
        names = tuple(n for n, _ in targets)
        queries.append(Query(qid=qid, reference=reference[0], captions=(caption,), train_captions=tuple(forms),
                             eval_caption=caption, target=names[0] if names else None,
                             ground_truths=names if len(names) > 1 else None, aspects=tuple(aspects)))
    if not groups:
        raise CIRError(f"{path}: no queries")
    repeated = [lines for lines in listings.values() if len(lines) > 1]
    if repeated and not repeats:
        lines, others = repeated[0], len(repeated) - 1
        what = ", ".join([fmt.reference_key, fmt.caption_key] + [fmt.target_key] * (True in kinds))
        more = f" ({others} other quer{'y is' if others == 1 else 'ies are'} repeated too)" if others else ""
        raise CIRError(f"{path}: lines {', '.join(map(str, lines[:10]))}{', ...' if len(lines) > 10 else ''}: "
                       f"the same query ({what}) listed {len(lines)} times{more}; an evaluation would count "
                       f"each listing: list it once")
    if any(q.ground_truths for queries, _ in groups.values() for q in queries):
        groups = {g: ([q if q.ground_truths or q.target is None else dataclasses.replace(q, ground_truths=(q.target,))
                       for q in queries], named) for g, (queries, named) in groups.items()}
    return [(g, queries, named) for g, (queries, named) in groups.items()]


def _same_as_row_by_row(root: Path, split: str, fmt: TripletFormat | None = None) -> list[CIRSplit]:
    fmt = fmt or TripletFormat()
    splits = load_triplets(root, split, fmt, NO_FILES)
    expected = _row_by_row(split_file(root, split), fmt)
    assert [s.name for s in splits] == [g for g, _, _ in expected]
    for split_, (_, queries, named) in zip(splits, expected):
        assert isinstance(split_.queries, QueryTable)
        assert list(split_.queries) == queries
        assert [split_.queries[i] for i in range(len(queries))] == queries
        assert list(split_.gallery.items()) == list(named.items())
    return splits


CSV = ('id,reference,caption,target,benchmark\n'
       '7,img/a.png,make it red,img/b.png|./img/sub/d.png,dress\n'
       ',img/c.png,"add a hat, and a scarf",img/a.png,shirt\n'
       'q3,  ./img/a.png , larger ,"img/c.png | img//b.png|",dress\n'
       ',{abs}/x.png,"on two\nlines",img/b.png,\n'
       'q5,img/b.png,plain,{abs}/x.png,shirt\n')
"""One and several targets, relative and absolute paths, groups, ids given and not (line numbers)."""


@pytest.mark.parametrize("variant", ["csv", "one line per row", "tsv", "crlf", "blank lines", "ragged", "jsonl"])
def test_columns_equal_the_row_by_row_reading(variant, tmp_path):
    text = CSV.replace("{abs}", str(tmp_path / "elsewhere"))
    suffix, fmt = ".csv", TripletFormat()
    if variant == "one line per row":
        text = text.replace("on two\nlines", "on one line")
    elif variant == "tsv":
        text, suffix = text.replace(",", "\t").replace('"add a hat\t and a scarf"', '"add a hat, and a scarf"'), ".tsv"
    elif variant == "crlf":
        text = text.replace("\n", "\r\n").replace("two\r\nlines", "two\nlines")
    elif variant == "blank lines":
        text = text.replace("dress\n", "dress\n\n") + "\n\n"
    elif variant == "ragged":
        text = text.replace(",shirt\n", ",shirt,extra,fields\n")  # `csv` leaves them out
    elif variant == "jsonl":
        text, suffix = ('{"id": 7, "reference": "a.png", "caption": " x ", "target": ["b.png", "c.png", "b.png"], '
                        '"aspects": ["colour", "count"], "benchmark": "g"}\n'
                        '\n{"reference": "b.png", "caption": "y", "target": "./c.png|d.png", "train_captions": '
                        '["p", "q"], "id": ""}\n'
                        '{"reference": "c.png", "caption": "z", "target": "a.png", "benchmark": "g", "id": 3.5}\n'), \
            ".jsonl"
    (tmp_path / f"val{suffix}").write_text(text, newline="")
    splits = _same_as_row_by_row(tmp_path, "val", fmt)
    if variant == "csv":
        dress = splits[0]
        assert dress.name == "dress" and [q.qid for q in dress.queries] == ["7", "q3"]
        assert dress.queries[0].ground_truths == ("img/b.png", "img/sub/d.png")
        assert dress.queries[1].ground_truths == ("img/c.png", "img/b.png")
        assert dress.queries[1].reference == "img/a.png"
        assert [s.name for s in splits] == ["dress", "shirt", "triplets"]
        assert splits[2].queries[0].qid == "6"  # the line where the record ends, as `csv` counts
        assert splits[2].gallery[str(tmp_path / "elsewhere" / "x.png")] == tmp_path / "elsewhere" / "x.png"
        assert splits[2].queries[0].eval_caption == "on two\nlines"
    path = split_file(tmp_path, "val")
    fast = csv_columns(path, fmt) if suffix != ".jsonl" else None
    assert (fast is None) == (variant in ("ragged", "crlf", "jsonl"))  # those go row by row
    if fast is not None:  # numpy's reader and `csv` agree, row by row
        a, b = check(fast, path, fmt), check(row_columns(read_rows(path, fmt), fmt), path, fmt)
        assert list(a.table) == list(b.table) and list(a.lines) == list(b.lines)


def test_random_csv_files_read_as_row_by_row(tmp_path):
    """Quotes, doubled quotes, separators and line breaks inside fields, CRLF, blank lines, odd
    paths: whatever the file, the same queries and gallery or the same error."""
    import random

    rng = random.Random(0)
    pieces = ["a", ",", '"', '""', "\n", "\r\n", " ", "|", "/", ".", "./", "é", "\t", "x.png", "\r", "//", ".."]

    def cell() -> str:
        if rng.random() < 0.5:
            return rng.choice(["x.png", "y.png", "./x.png", " y.png ", "x.png|y.png", "", "7", "g"])
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 5)))
        return '"' + text.replace('"', '""') + '"' if rng.random() < 0.5 else text

    fast = 0
    for _ in range(400):
        columns = rng.choice([["reference", "caption", "target"], ["id", "reference", "caption", "target"],
                              ["reference", "caption"], ["benchmark", "reference", "caption", "target"]])
        end = rng.choice(["\n", "\r\n"])
        rows = [",".join(cell() for _ in columns) for _ in range(rng.randint(0, 5))]
        (tmp_path / "val.csv").write_bytes((",".join(columns) + end + end.join(rows) + rng.choice(["", end])).encode())
        fast += csv_columns(tmp_path / "val.csv", TripletFormat()) is not None
        try:
            expected = _row_by_row(tmp_path / "val.csv", TripletFormat())
        except CIRError as e:
            with pytest.raises(CIRError) as error:
                load_triplets(tmp_path, "val", images=NO_FILES)
            assert str(error.value) == str(e)
            continue
        splits = load_triplets(tmp_path, "val", images=NO_FILES)
        assert [(s.name, list(s.queries), list(s.gallery.items())) for s in splits] == \
            [(g, queries, list(named.items())) for g, queries, named in expected]
    assert fast > 50  # numpy's reader took many of them


def test_a_test_split_one_group_and_the_gallery_file(tmp_path):
    (tmp_path / "test.csv").write_text("reference,caption,benchmark\na.png,x,shoes\nb.png,y,shoes\n")
    (split,) = _same_as_row_by_row(tmp_path, "test")
    assert split.name == "shoes" and not split.has_targets and split.map_ks == ()
    (tmp_path / "val.csv").write_text("reference,caption,target\na.png,x,b.png\nb.png,y,c.png\n")
    (tmp_path / "val.gallery.txt").write_text("c.png\n\n  ./b.png \nb.png\na.png\nextra.png\n")
    (split,) = load_triplets(tmp_path, "val", images=NO_FILES)
    assert list(split.gallery) == ["c.png", "b.png", "a.png", "extra.png"]  # the file's order, each once
    training = ImageCheck(require_files=False, used_only=("val",))
    (split,) = load_triplets(tmp_path, "val", images=training)
    assert list(split.gallery) == ["c.png", "b.png", "a.png"]  # only what a triplet uses


BAD = {
    "empty reference": ("reference,caption,target\na.png,x,b.png\n  ,y,b.png\n", ":3: empty reference"),
    "empty caption": ("reference,caption,target\na.png,x,b.png\nb.png, ,a.png\n", ":3: empty caption"),
    "only target": ("reference,caption,target\na.png,x,b.png\nb.png,y,./b.png\n",
                    ":3: the reference 'b.png' is also its only target"),
    "duplicate id": ("id,reference,caption,target\n,a.png,x,b.png\n2,b.png,y,a.png\n",
                     ":3: duplicate query id '2' (first at line 2)"),
    "mixed": ("reference,caption,target\na.png,x,\nb.png,y,a.png\n", ":3: some rows have a target and others none"),
    "aspects in a CSV": ("reference,caption,target,aspects\na.png,x,b.png,\nb.png,y,a.png,colour\n",
                         ":3: 'aspects' should be a list of names"),
    "first row first": ("reference,caption,target\na.png,x,a.png\n,y,b.png\n", ":2: the reference 'a.png'"),
    "first rule first": ("reference,caption,target\na.png,,a.png\n", ":2: empty caption"),
    "no queries": ("reference,caption,target\n", "val.csv: no queries"),
    "missing column": ("reference,text\na.png,x\n", ":1: no column 'caption'"),
    "target type": ('{"reference": "a.png", "caption": "x", "target": 3}\n',
                    ":1: 'target' should be an image path or a list of them"),
    "bad row before a malformed line": ('{"reference": "a.png", "caption": "", "target": "b.png"}\n{oops\n',
                                        ":1: empty caption"),
    "malformed line": ('{"reference": "a.png", "caption": "x", "target": "b.png"}\n{oops\n', ":2: malformed JSON"),
    "train_captions": ('{"reference": "a.png", "caption": "x", "target": "b.png", "train_captions": [""]}\n',
                       ":1: 'train_captions' should be a list of captions"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_the_row_by_row_error(case, tmp_path):
    text, message = BAD[case]
    (tmp_path / ("val.jsonl" if text.startswith("{") else "val.csv")).write_text(text)
    with pytest.raises(CIRError) as expected:
        _row_by_row(split_file(tmp_path, "val"), TripletFormat())
    with pytest.raises(CIRError) as error:
        load_triplets(tmp_path, "val", images=NO_FILES)
    assert str(error.value) == str(expected.value) and message in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_gallery_file_lacking_an_image_names_the_row(tmp_path):
    (tmp_path / "val.csv").write_text("reference,caption,target\na.png,x,b.png\nb.png,y,c.png|d.png\n")
    (tmp_path / "val.gallery.txt").write_text("a.png\nb.png\nd.png\n")
    with pytest.raises(CIRError, match=r"val.csv:3: target 'c.png' is not in the gallery val.gallery.txt$"):
        load_triplets(tmp_path, "val", images=NO_FILES)
    (tmp_path / "val.gallery.txt").write_text("b.png\nc.png\nd.png\n")
    with pytest.raises(CIRError, match=r"val.csv:2: reference 'a.png' is not in the gallery"):
        load_triplets(tmp_path, "val", images=NO_FILES)


def test_skipped_images_drop_the_same_queries_as_a_list(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "val.csv").write_text("reference,caption,target\na.png,x,b.png\nb.png,y,gone.png|c.png\n"
                                      "c.png,z,a.png\ngone.png,w,a.png\n")
    check_ = ImageCheck(skip=True)
    (split,) = load_triplets(tmp_path, "val", images=check_)
    assert [q.qid for q in split.queries] == ["2", "4"] and "gone.png" not in split.gallery
    assert check_.dropped_queries == {"triplets/triplets/val": 2} and list(check_.skipped) == ["gone.png"]
    as_list = ImageCheck(skip=True, skipped=dict(check_.skipped))
    (whole,) = load_triplets(tmp_path, "val", images=NO_FILES)
    assert as_list.drop_queries(dataclasses.replace(whole, queries=list(whole.queries)), 4).queries == \
        list(split.queries)


def test_table_and_gallery_behave_as_a_list_and_a_dict(tmp_path):
    (tmp_path / "val.csv").write_text("reference,caption,target\n" + "".join(
        f"i{i}.png,c{i},i{i + 1}.png\n" for i in range(10)))
    (split,) = load_triplets(tmp_path, "val", images=NO_FILES)
    queries, as_list = split.queries, list(split.queries)
    assert len(queries) == 10 and queries[-1] == as_list[-1] and list(queries[2:7:2]) == as_list[2:7:2]
    assert isinstance(queries[1:3], QueryTable) and list(reversed(queries)) == as_list[::-1]
    assert as_list[4] in queries and queries.index(as_list[4]) == 4 and bool(queries)
    with pytest.raises(IndexError):
        queries[10]
    gallery = split.gallery
    assert isinstance(gallery, ImageFiles) and dict(gallery) == {f"i{i}.png": tmp_path / f"i{i}.png" for i in range(11)}
    assert gallery.get("nope") is None and "nope" not in gallery and "i3.png" in gallery
    with pytest.raises(KeyError):
        gallery["nope"]
    assert gallery == dict(gallery.items()) and list(gallery.values())[0] == tmp_path / "i0.png"
    assert list(ImageFiles(strings([]), tmp_path)) == [] and np.asarray(queries.ids).dtype.kind == "i"


REPEATS = ("reference,caption,target\n"
           "a.png,make it red,b.png\n"
           "c.png,add a hat,d.png\n"
           "./a.png, make it red ,b.png\n"
           "b.png,make it red,c.png\n"
           "a.png,make it red,img/../b.png\n")
"""Three listings of one query (however its paths and spaces are written) among five rows."""


@pytest.mark.parametrize("variant", ["csv", "ragged csv", "jsonl"])
def test_a_query_listed_several_times_is_refused_in_an_evaluated_split(variant, tmp_path):
    text, suffix = REPEATS, ".csv"
    if variant == "ragged csv":  # one row with an extra field: read row by row
        text = text.replace("c.png,add a hat,d.png\n", "c.png,add a hat,d.png,extra\n")
    elif variant == "jsonl":
        rows = [line.split(",") for line in REPEATS.splitlines()[1:]]
        text, suffix = "".join(json.dumps(dict(zip(("reference", "caption", "target"), row))) + "\n"
                               for row in rows), ".jsonl"
    path = tmp_path / f"val{suffix}"
    path.write_text(text)
    fast = csv_columns(path, TripletFormat()) if suffix == ".csv" else None
    assert (fast is not None) == (variant == "csv")
    lines = "1, 3, 5" if variant == "jsonl" else "2, 4, 6"
    expected = (f"{path}: lines {lines}: the same query (reference, caption, target) listed 3 times; "
                f"an evaluation would count each listing: list it once")
    with pytest.raises(CIRError) as error:
        load_triplets(tmp_path, "val", images=NO_FILES)
    assert str(error.value) == expected
    with pytest.raises(CIRError) as reference:
        _row_by_row(path, TripletFormat())
    assert str(reference.value) == expected
    # A split trained on keeps every listing (a repeat weighs its triplet more).
    (split,) = load_triplets(tmp_path, "val", images=ImageCheck(require_files=False, used_only=("val",)))
    assert len(split.queries) == 5 and [q.reference for q in split.queries].count("a.png") == 3
    assert list(split.queries) == _row_by_row(path, TripletFormat(), repeats=True)[0][1]


@pytest.mark.parametrize("case", ["ids", "groups", "captions", "targets"])
def test_rows_that_differ_in_id_group_caption_or_targets_are_distinct_queries(case, tmp_path):
    text = {"ids": "id,reference,caption,target\nq1,a.png,x,b.png\nq2,a.png,x,b.png\n",
            "groups": "reference,caption,target,benchmark\na.png,x,b.png,dress\na.png,x,b.png,shirt\n",
            "captions": "reference,caption,target\na.png,x,b.png\na.png,y,b.png\n",
            "targets": "reference,caption,target\na.png,x,b.png|c.png\na.png,x,c.png|b.png\na.png,x,b.png\n"}[case]
    (tmp_path / "val.csv").write_text(text)
    splits = _same_as_row_by_row(tmp_path, "val")
    assert sum(len(s.queries) for s in splits) == text.count("\n") - 1


def test_repeats_in_a_test_split_and_in_lists_of_targets_name_every_line(tmp_path):
    (tmp_path / "test.csv").write_text("reference,caption\n" + "a.png,x\nb.png,y\n" * 12)
    message = (f"{tmp_path / 'test.csv'}: lines 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, ...: the same query "
               f"(reference, caption) listed 12 times (1 other query is repeated too); an evaluation would "
               f"count each listing: list it once")
    with pytest.raises(CIRError) as error:
        load_triplets(tmp_path, "test", images=NO_FILES)
    assert str(error.value) == message
    (tmp_path / "val.jsonl").write_text('{"reference": "a.png", "caption": "x", "target": ["b.png", "c.png"]}\n'
                                        '{"reference": "a.png", "caption": "x", "target": "b.png"}\n'
                                        '{"reference": "a.png", "caption": "x", "target": "b.png|c.png"}\n')
    with pytest.raises(CIRError, match=r"val.jsonl: lines 1, 3: the same query \(reference, caption, target\) "
                                       r"listed 2 times;"):
        load_triplets(tmp_path, "val", images=NO_FILES)
