"""An attribute catalogue's splits as the programs read them from one folder (`--catalogue DIR`):
the layout (ADDE's files or the CSVs of `clip_cir.data.attributes`) found from the files in it,
the training split, the split that validates or is evaluated, and that split's queries.

- ADDE layout: `attr_num.txt`, `imgs_<split>.txt` and `labels_<split>.txt` in DIR; the test queries
  `ref_test.txt`, `indfull_test.txt`, `gt_test.txt` when present.
- CSV layout: `attributes_<split>.csv` in DIR (every split numbers its values as the training
  split does), and queries in `queries_<split>.csv` when present.

A split without query files takes ADDE's rule (`generate_queries`). Validation reads `val` when
the catalogue has one, else `test`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clip_cir.data.attributes import (
    ADDE_ATTR_NUM,
    ADDE_INDICATORS,
    ADDE_REFERENCES,
    ADDE_TARGETS,
    AttributeCatalogue,
    AttributeQuery,
    adde_images_file,
    generate_queries,
    read_adde_catalogue,
    read_adde_queries,
    read_csv_catalogue,
    read_csv_queries,
)
from clip_cir.errors import CIRError

CATALOGUE_LAYOUTS = ("adde", "csv")
TRAIN_SPLIT = "train"


def csv_catalogue_file(split: str) -> str:
    return f"attributes_{split}.csv"


def csv_queries_file(split: str) -> str:
    return f"queries_{split}.csv"


def detect_layout(root: str | os.PathLike, layout: str | None = None) -> str:
    """`layout` if given, else the one whose files DIR holds (ADDE's `attr_num.txt`, or
    `attributes_train.csv`); a one-line error when neither or both."""
    root = Path(root)
    if not root.is_dir():
        raise CIRError(f"{root}: attribute catalogue folder not found")
    if layout is not None:
        if layout not in CATALOGUE_LAYOUTS:
            raise CIRError(f"--catalogue-layout must be one of {', '.join(CATALOGUE_LAYOUTS)}, got {layout!r}")
        return layout
    found = [name for name, marker in (("adde", ADDE_ATTR_NUM), ("csv", csv_catalogue_file(TRAIN_SPLIT)))
             if (root / marker).is_file()]
    if len(found) != 1:
        raise CIRError(f"{root}: cannot tell the catalogue's layout ({ADDE_ATTR_NUM}: ADDE's, "
                       f"{csv_catalogue_file(TRAIN_SPLIT)}: CSV; found {' and '.join(found) or 'neither'}); "
                       f"give --catalogue-layout")
    return found[0]


def has_split(root: str | os.PathLike, layout: str, split: str) -> bool:
    name = adde_images_file(split) if layout == "adde" else csv_catalogue_file(split)
    return (Path(root) / name).is_file()


def read_split(root: str | os.PathLike, layout: str, split: str, image_root: str | os.PathLike | None = None,
               values_of: AttributeCatalogue | None = None) -> AttributeCatalogue:
    """One split's catalogue; CSV splits number their values as `values_of` (the training split) does."""
    root = Path(root)
    if layout == "adde":
        return read_adde_catalogue(root, split, image_root)
    return read_csv_catalogue(root / csv_catalogue_file(split), image_root if image_root is not None else root,
                              values_of=values_of)


def read_split_queries(root: str | os.PathLike, layout: str, split: str,
                       catalogue: AttributeCatalogue) -> list[AttributeQuery]:
    """The split's query files when it has them (ADDE's are the test split's), else ADDE's rule."""
    root = Path(root)
    if layout == "adde" and split == "test" and all((root / f).is_file()
                                                     for f in (ADDE_REFERENCES, ADDE_INDICATORS, ADDE_TARGETS)):
        return read_adde_queries(root, catalogue)
    if layout == "csv" and (root / csv_queries_file(split)).is_file():
        return read_csv_queries(root / csv_queries_file(split), catalogue)
    return generate_queries(catalogue)


@dataclass(frozen=True)
class AttributeSplits:
    """The training catalogue and an evaluated split (its catalogue is the gallery) with its queries."""

    layout: str
    train: AttributeCatalogue
    split: str
    gallery: AttributeCatalogue
    queries: tuple[AttributeQuery, ...]


def evaluation_split(root: str | os.PathLike, layout: str, split: str | None = None) -> str:
    """`split`, or `val` when the catalogue has one, else `test`."""
    if split is not None:
        if not has_split(root, layout, split):
            raise CIRError(f"{root}: the catalogue has no split '{split}'")
        return split
    return "val" if has_split(root, layout, "val") else "test"


def read_attribute_splits(root: str | os.PathLike, layout: str | None = None, split: str | None = None,
                          image_root: str | os.PathLike | None = None) -> AttributeSplits:
    """The training split and the evaluated one (`split`, default val or test), with its queries;
    an evaluated split with no query is a one-line error."""
    layout = detect_layout(root, layout)
    train = read_split(root, layout, TRAIN_SPLIT, image_root)
    name = evaluation_split(root, layout, split)
    gallery = read_split(root, layout, name, image_root, values_of=train)
    if gallery.value_counts != train.value_counts:
        raise CIRError(f"{gallery.source}: attributes with {list(gallery.value_counts)} values, but "
                       f"{train.source} has {list(train.value_counts)}")
    queries = tuple(read_split_queries(root, layout, name, gallery))
    if not queries:
        raise CIRError(f"{gallery.source}: no query (no target of a changed attribute is in the split)")
    return AttributeSplits(layout, train, name, gallery, queries)
