"""Attribute catalogues in the ADDE and CSV layouts: parsing as ADDE's code reads its files, ADDE's
query rule worked out by hand, one-line errors for bad files, and the synthetic catalogue."""

from pathlib import Path

import numpy as np
import pytest

from clip_cir.data.attributes import (
    MISSING,
    AttributeCatalogue,
    AttributeQuery,
    adde_indicator,
    generate_queries,
    read_adde_catalogue,
    read_adde_queries,
    read_attr_num,
    read_csv_catalogue,
    read_csv_queries,
)
from clip_cir.data.synthetic.attributes import write_attribute_catalogue
from clip_cir.errors import CIRError

# attr_num [2, 3]; labels: img0 (0, 0), img1 (1, 0), img2 (missing, 2), img3 (1, 2).
ADDE = {
    "attr_num.txt": "2 3\n",
    "imgs_test.txt": "a/img0.jpg\na/img1.jpg\nb/img2.jpg\nb/img3.jpg\n",
    # A comment line and a blank line, skipped as np.loadtxt skips them.
    "labels_test.txt": "1 0 1 0 0\n# a comment\n0 1 1 0 0\n\n0 0 0 0 1\n0 1 0 0 1\n",
    # img0 with attribute 0 -> 1 (target (1, 0) = img1); img3 with attribute 1 -> 0 (target (1, 0) = img1).
    "ref_test.txt": "0\n3\n",
    "indfull_test.txt": "-1 1 0 0 0\n0 0 1 0 -1\n",
    "gt_test.txt": "0 1 1 0 0\n0 1 1 0 0\n",
}


def _write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_adde_layout_reads_labels_blocks_missing_labels_and_queries(tmp_path):
    root = _write(tmp_path / "splits", ADDE)
    catalogue = read_adde_catalogue(root, "test", image_root=tmp_path / "images")
    assert catalogue.images == ("a/img0.jpg", "a/img1.jpg", "b/img2.jpg", "b/img3.jpg")
    assert catalogue.paths[2] == tmp_path / "images" / "b" / "img2.jpg"
    assert catalogue.attributes == ("attribute_0", "attribute_1")
    assert catalogue.values == (("0", "1"), ("0", "1", "2"))
    assert catalogue.labels.tolist() == [[0, 0], [1, 0], [MISSING, 2], [1, 2]]
    assert not catalogue.labels.flags.writeable
    queries = read_adde_queries(root, catalogue)
    # The changed attribute is the block holding +1, the new value its position in the block.
    assert queries == [AttributeQuery(0, 0, 1, (1, 0)), AttributeQuery(3, 1, 0, (1, 0))]
    assert adde_indicator(catalogue, queries[1]).tolist() == [0, 0, 1, 0, -1]


def test_attr_num_may_list_one_count_per_line(tmp_path):
    assert read_attr_num(_write(tmp_path, {"attr_num.txt": "16\n17\n2\n"}) / "attr_num.txt") == (16, 17, 2)


def test_adde_rule_queries_every_other_value_whose_target_exists():
    labels = np.array([[0, 0], [1, 0], [0, 1], [MISSING, 1]])
    catalogue = AttributeCatalogue(images=("i0", "i1", "i2", "i3"), paths=(Path("i0"),) * 4, attributes=("x", "y"),
                                   values=(("p", "q"), ("r", "s")), labels=labels, source=Path("c.csv"))
    # i0 (0, 0): x -> 1 gives (1, 0) = i1; y -> 1 gives (0, 1) = i2.
    # i1 (1, 0): x -> 0 gives (0, 0) = i0; y -> 1 gives (1, 1): nobody.
    # i2 (0, 1): x -> 1 gives (1, 1): nobody; y -> 0 gives (0, 0) = i0.
    # i3 (-, 1): x -> 0 gives (0, 1) = i2; x -> 1 gives (1, 1): nobody; y -> 0 gives (-, 0): nobody.
    assert generate_queries(catalogue) == [
        AttributeQuery(0, 0, 1, (1, 0)), AttributeQuery(0, 1, 1, (0, 1)),
        AttributeQuery(1, 0, 0, (0, 0)),
        AttributeQuery(2, 1, 0, (0, 0)),
        AttributeQuery(3, 0, 0, (0, 1)),
    ]


CSV = "image,colour,shape\nimg0.png,red,circle\nimg1.png,blue,\nimg2.png,red,square\nimg3.png,blue,square\n"


def test_csv_layout_numbers_values_by_name_and_reads_queries_by_name(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(CSV)
    catalogue = read_csv_catalogue(path)
    assert catalogue.attributes == ("colour", "shape")
    assert catalogue.values == (("blue", "red"), ("circle", "square"))
    assert catalogue.labels.tolist() == [[1, 0], [0, MISSING], [1, 1], [0, 1]]
    assert catalogue.paths[0] == tmp_path / "img0.png"
    queries_path = tmp_path / "queries.csv"
    queries_path.write_text("reference,attribute,value\nimg2.png,colour,blue\nimg0.png,shape,square\n")
    assert read_csv_queries(queries_path, catalogue) == [AttributeQuery(2, 0, 0, (0, 1)),
                                                         AttributeQuery(0, 1, 1, (1, 1))]
    # Another split takes the training split's numbering.
    test = tmp_path / "test.csv"
    test.write_text("image,colour,shape\nt0.png,red,square\n")
    assert read_csv_catalogue(test, values_of=catalogue).labels.tolist() == [[1, 1]]


@pytest.mark.parametrize("name, text, message", [
    ("labels_test.txt", "1 0 1 0 0\n0 1 1 0\n0 0 0 0 1\n1 0 0 1 0\n",
     r"labels_test.txt:2: 4 numbers, but \S*attr_num.txt gives 2 attributes with 5 values in all"),
    ("labels_test.txt", "1 0 1 0 0\n0 1 1 0 0\n0 0 1 1 0\n1 0 0 1 0\n",
     r"labels_test.txt:3: attribute 1's block \(columns 3-5\) is \[1, 1, 0\], not one of the 3 values "
     r"\S*attr_num.txt gives it"),
    ("labels_test.txt", "1 0 1 0 0\n0 1 1 0 0\n0 0 0 0 2\n1 0 0 1 0\n",
     r"labels_test.txt:3: attribute 1's block .* is \[0, 0, 2\], not one of the 3 values"),
    ("gt_test.txt", "0 1 1 0 0\n0 0 1 0 0\n",
     r"gt_test.txt:2: the query's target labels \[-1, 0\] match no image of \S*labels_test.txt"),
    ("gt_test.txt", "0 1 1 0 0\n0 1 0 0 1\n",
     r"gt_test.txt:2: the target's value of attribute 1 is 2, but indfull_test.txt:2 sets it to 0"),
    ("indfull_test.txt", "-1 1 0 0 0\n0 0 0 0 -1\n", r"indfull_test.txt:2: no \+1 marks the new value"),
    ("ref_test.txt", "0\n4\n", r"ref_test.txt:2: expected one row index of \S*labels_test.txt \(0-3\), got \[4\]"),
    ("ref_test.txt", "0\n", r"1 references \(ref_test.txt\), 2 indicators"),
    ("imgs_test.txt", "a.jpg\nb.jpg\n", r"labels_test.txt: 4 label rows for the 2 images"),
    ("attr_num.txt", "2 x\n", r"attr_num.txt:1: expected whitespace-separated integers, got '2 x'"),
])
def test_bad_adde_files_are_one_line_errors_naming_file_and_line(tmp_path, name, text, message):
    files = dict(ADDE, **{name: text})
    root = _write(tmp_path, files)
    with pytest.raises(CIRError, match=message) as caught:
        read_adde_queries(root, read_adde_catalogue(root, "test"))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("queries, message", [
    # img3 is a blue circle here, so no image is a blue square.
    ("reference,attribute,value\nimg0.png,colour,blue\nimg2.png,colour,blue\n",
     r"queries.csv:3: the query's target labels \[0, 1\] match no image of \S*train.csv"),
    ("reference,attribute,value\nimg0.png,colour,mauve\n",
     r"queries.csv:2: 'mauve' is not a value of attribute 'colour' \(blue, red\)"),
    ("reference,attribute,value\nimg0.png,size,large\n", r"queries.csv:2: 'size' is not an attribute"),
    ("reference,attribute,value\nnope.png,colour,blue\n", r"queries.csv:2: reference 'nope.png' is not an image"),
    ("reference,attribute,value\nimg0.png,colour,red\n",
     r"queries.csv:2: reference 'img0.png' already has colour 'red'"),
    ("reference,attribute\nimg0.png,colour\n", r"queries.csv:1: the header should be reference,attribute,value"),
])
def test_bad_csv_queries_are_one_line_errors_naming_file_and_line(tmp_path, queries, message):
    (tmp_path / "train.csv").write_text(CSV.replace("img3.png,blue,square", "img3.png,blue,circle"))
    (tmp_path / "queries.csv").write_text(queries)
    with pytest.raises(CIRError, match=message):
        read_csv_queries(tmp_path / "queries.csv", read_csv_catalogue(tmp_path / "train.csv"))


def test_bad_csv_catalogues_are_one_line_errors(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text(CSV)
    test = tmp_path / "test.csv"
    test.write_text("image,colour,shape\nt0.png,red,square\nt1.png,mauve,circle\n")
    with pytest.raises(CIRError, match=r"test.csv:3: 'mauve' is not a value of attribute 'colour' "
                                       r"\(values in \S*train.csv: blue, red\)"):
        read_csv_catalogue(test, values_of=read_csv_catalogue(train))
    test.write_text("image,colour,shape\nt0.png,red\n")
    with pytest.raises(CIRError, match=r"test.csv:2: 2 cells, but the header has 3"):
        read_csv_catalogue(test)
    test.write_text("picture,colour\nt0.png,red\n")
    with pytest.raises(CIRError, match=r"test.csv:1: the header should start with 'image'"):
        read_csv_catalogue(test)


def test_synthetic_catalogue_reads_back_identically_in_both_layouts(tmp_path):
    files = write_attribute_catalogue(tmp_path, seed=3, size=32, n=40, n_test=30)
    csv_train = read_csv_catalogue(files.train_csv)
    csv_test = read_csv_catalogue(files.test_csv, values_of=csv_train)
    for split, csv_catalogue in (("train", csv_train), ("test", csv_test)):
        adde = read_adde_catalogue(files.adde, split, image_root=files.image_root)
        assert adde.images == csv_catalogue.images and len(adde.images) == (40 if split == "train" else 30)
        assert adde.paths == csv_catalogue.paths and all(p.is_file() for p in adde.paths)
        assert np.array_equal(adde.labels, csv_catalogue.labels)
        assert adde.value_counts == csv_catalogue.value_counts == (4, 4, 2, 4)
    assert csv_train.attributes == ("colour", "shape", "size", "position")
    assert (csv_train.labels == MISSING).any()  # the training split is partly labelled
    test = read_csv_catalogue(files.test_csv, values_of=csv_train)
    assert not (test.labels == MISSING).any()
    queries = read_csv_queries(files.queries_csv, test)
    assert queries == read_adde_queries(files.adde, read_adde_catalogue(files.adde, "test", files.image_root))
    assert queries == generate_queries(test) and len(queries) > 0
    # Every query's target labels an image, and differs from its reference in one attribute only.
    for q in queries:
        assert test.matches(q.target).any()
        assert [a for a in range(4) if q.target[a] != test.labels[q.reference, a]] == [q.attribute]


def test_synthetic_catalogue_is_deterministic(tmp_path):
    first = write_attribute_catalogue(tmp_path / "a", seed=1, n=12, n_test=8)
    second = write_attribute_catalogue(tmp_path / "b", seed=1, n=12, n_test=8)
    for name in ("attributes_train.csv", "attributes_test.csv", "queries_test.csv"):
        assert (first.image_root / name).read_bytes() == (second.image_root / name).read_bytes()
    assert (first.image_root / "images" / "train_0003.png").read_bytes() == \
        (second.image_root / "images" / "train_0003.png").read_bytes()
