"""Reading an attribute catalogue's splits from one folder: the layout from its files, the split
that validates (val, else test), its queries (the files', else ADDE's rule), one-line errors."""

from __future__ import annotations

import shutil

import pytest

from clip_cir.data.attribute_splits import detect_layout, read_attribute_splits
from clip_cir.data.attributes import generate_queries, read_adde_queries, read_csv_catalogue, read_csv_queries
from clip_cir.data.synthetic.attributes import write_attribute_catalogue
from clip_cir.errors import CIRError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_attribute_catalogue(tmp_path_factory.mktemp("catalogue"), seed=1, size=16, n=24, n_test=16)


def test_the_layout_is_found_from_the_files(files, tmp_path):
    assert detect_layout(files.image_root) == "csv" and detect_layout(files.adde) == "adde"
    assert detect_layout(files.adde, "csv") == "csv"  # as given
    with pytest.raises(CIRError, match=r"cannot tell the catalogue.s layout .*neither\); give --catalogue-layout"):
        detect_layout(tmp_path)
    shutil.copy(files.adde / "attr_num.txt", tmp_path / "attr_num.txt")
    shutil.copy(files.train_csv, tmp_path / "attributes_train.csv")
    with pytest.raises(CIRError, match=r"found adde and csv\)"):
        detect_layout(tmp_path)
    with pytest.raises(CIRError, match=r"missing: attribute catalogue folder not found"):
        detect_layout(tmp_path / "missing")


def test_each_layout_reads_the_test_split_and_its_query_files(files):
    csv_splits = read_attribute_splits(files.image_root)
    train = read_csv_catalogue(files.train_csv)
    test = read_csv_catalogue(files.test_csv, values_of=train)
    assert csv_splits.split == "test" and csv_splits.gallery.images == test.images
    assert list(csv_splits.queries) == read_csv_queries(files.queries_csv, test)
    adde_splits = read_attribute_splits(files.adde, image_root=files.image_root)
    assert adde_splits.layout == "adde" and adde_splits.gallery.paths == test.paths
    assert list(adde_splits.queries) == read_adde_queries(files.adde, adde_splits.gallery)
    assert [(q.reference, q.attribute, q.value) for q in adde_splits.queries] == [
        (q.reference, q.attribute, q.value) for q in csv_splits.queries]


def test_a_val_split_validates_and_without_query_files_takes_adde_rule(files, tmp_path):
    root = tmp_path / "catalogue"
    shutil.copytree(files.image_root, root)
    shutil.copy(root / "attributes_test.csv", root / "attributes_val.csv")  # a val split, no queries_val.csv
    splits = read_attribute_splits(root)
    assert splits.split == "val" and list(splits.queries) == generate_queries(splits.gallery)
    assert read_attribute_splits(root, split="test").split == "test"
    lines = (root / "queries_test.csv").read_text().splitlines()
    (root / "queries_val.csv").write_text("\n".join(lines[:3]) + "\n")  # the header and two queries
    splits = read_attribute_splits(root)
    assert list(splits.queries) == read_csv_queries(root / "queries_val.csv", splits.gallery)
    assert len(splits.queries) == 2
    with pytest.raises(CIRError, match=r"catalogue: the catalogue has no split 'dev'"):
        read_attribute_splits(root, split="dev")
