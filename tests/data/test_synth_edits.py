"""Each synthetic query's kind of edit, recorded beside the real layouts (`clip_cir.data.synthetic.edits`):
the layouts' files stay what they were, and every recorded kind is the one its caption was written for."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from clip_cir.data import load_splits
from clip_cir.data.synthetic import EDIT_KINDS, edit_kinds, generate
from clip_cir.data.synthetic.captions import TEMPLATES
from clip_cir.data.synthetic.world import COLOURS, SHAPES
from clip_cir.data.types import CIRSplit
from clip_cir.errors import CIRError

SMALL = dict(n_train=12, n_val=12, n_test=6, size=16, seed=5, n_circo=4, circo_distractors=4)
PINNED = {
    "cirr_dataset/cirr/captions/cap.rc2.val.json": "9206eeb78d1b2efc1a86fcfd989f7ef904637e319faf816bdf705ea1259d05e2",
    "fashionIQ_dataset/captions/cap.dress.val.json": "47e1187cb3d523e15b4477213a487de36a3dbfee5d38e2082db95e124788853b",
    "CIRCO/annotations/val.json": "96848e20d3705af0f4c8880b9b49bd9c0cdec1b890229654dc3085d40aa0fe53",
    "synth_info.json": "abd99e2430176386856392e51490bf538aa7cb44aad66997874cf3de38a15a45",
}
"""sha256 of files of the world `SMALL` describes, as the generator wrote them before it recorded edit kinds."""

PLACEHOLDERS = {
    "ref": "the .+", "obj": "a .+", "loc": "(?:at the .+|in the center)", "dest": "to the .+",
    "new": "(?:" + "|".join(list(COLOURS) + list(SHAPES)) + ")",
}


def _template_pattern(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, regex in PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), regex)
    return re.compile(pattern)


PATTERNS = {kind: [_template_pattern(t) for t in templates] for kind, templates in TEMPLATES.items()}


def caption_kinds(caption: str) -> set[str]:
    """The reported kinds whose caption templates could have written `caption` (case of the first letter
    and a final full stop aside); a resize of either direction is "size"."""
    text = caption[0].lower() + caption[1:]
    text = text[:-1] if text.endswith(".") else text
    kinds = {kind for kind, patterns in PATTERNS.items() if any(p.fullmatch(text) for p in patterns)}
    return {"size" if k in ("bigger", "smaller") else k for k in kinds}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edits_world")
    generate(root, n_train=12, n_val=60, n_test=6, size=16, seed=1, progress=False, n_circo=12, circo_distractors=0)
    return root


def test_layout_files_unchanged_by_recording_kinds(tmp_path):
    generate(tmp_path, progress=False, **SMALL)
    for rel, digest in PINNED.items():
        assert hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest() == digest, rel
    assert (tmp_path / "synthetic_edits" / "cirr_-_val.json").is_file()


def _check_against_captions(split: CIRSplit, kinds: list[str]) -> int:
    """Every query's recorded kind is one its caption(s) can come from; returns how many captions
    fit exactly one kind (so the check is not vacuous)."""
    assert len(kinds) == len(split.queries) > 0
    unique = 0
    for query, kind in zip(split.queries, kinds):
        for caption in query.captions:
            possible = caption_kinds(caption)
            assert kind in possible, (split.dataset, query.qid, caption, kind, possible)
            unique += possible == {kind}
    return unique


@pytest.mark.parametrize("split_name", ["train", "val", "test1"])
def test_cirr_kinds_match_captions(world, split_name):
    [split] = load_splits("cirr", world, split_name)
    kinds = edit_kinds(world, split)
    assert _check_against_captions(split, kinds) >= len(kinds) // 2
    assert set(kinds) <= set(EDIT_KINDS)


def test_cirr_val_has_every_kind(world):
    [split] = load_splits("cirr", world, "val")
    counts = Counter(edit_kinds(world, split))
    assert set(counts) == set(EDIT_KINDS), counts
    assert sum(counts.values()) == 60


@pytest.mark.parametrize("split_name", ["train", "val", "test"])
def test_fashioniq_kinds_match_both_captions(world, split_name):
    splits = load_splits("fashioniq", world, split_name)
    assert [s.name for s in splits] == ["dress", "shirt", "toptee"]
    for split in splits:
        kinds = edit_kinds(world, split)
        assert _check_against_captions(split, kinds) >= len(kinds)  # two captions a query


def test_circo_kinds_match_captions(world):
    for split_name in ("val", "test"):
        [split] = load_splits("circo", world, split_name)
        kinds = edit_kinds(world, split)
        assert _check_against_captions(split, kinds) >= len(kinds) // 2


def test_sidecar_is_keyed_by_the_layout_identity(world):
    """CIRR by pairid, FashionIQ by the entry's position in its caption file: reordering the split's
    queries reorders the kinds with them."""
    body = json.loads((world / "synthetic_edits" / "fashioniq_shirt_val.json").read_text())
    assert (body["dataset"], body["category"], body["split"]) == ("fashioniq", "shirt", "val")
    entries = json.loads((world / "fashionIQ_dataset" / "captions" / "cap.shirt.val.json").read_text())
    assert sorted(body["kinds"], key=int) == [str(i) for i in range(len(entries))]
    [split] = load_splits("fashioniq", world, "val", categories=["shirt"])
    kinds = edit_kinds(world, split)
    split.queries = list(reversed(split.queries))
    assert edit_kinds(world, split) == list(reversed(kinds))
    assert kinds == [body["kinds"][str(i)] for i in range(len(entries))]


def test_real_data_has_no_edit_kinds(world, tmp_path):
    [split] = load_splits("cirr", world, "val")
    with pytest.raises(CIRError) as error:
        edit_kinds(tmp_path, split)
    assert str(error.value) == f"{tmp_path / 'synthetic_edits' / 'cirr_-_val.json'}: no edit kinds recorded " \
                               f"(not a synthetic world?)"


def test_query_missing_from_the_sidecar(world, tmp_path):
    [split] = load_splits("cirr", world, "val")
    folder = tmp_path / "synthetic_edits"
    folder.mkdir()
    body = json.loads((world / "synthetic_edits" / "cirr_-_val.json").read_text())
    del body["kinds"]["7"]
    (folder / "cirr_-_val.json").write_text(json.dumps(body))
    with pytest.raises(CIRError, match="no edit kind recorded for query 7 of cirr val$"):
        edit_kinds(tmp_path, split)
    (folder / "cirr_-_val.json").write_text("[]")
    with pytest.raises(CIRError, match="no 'kinds' object"):
        edit_kinds(tmp_path, split)


def test_overwrite_replaces_old_kinds(tmp_path):
    small = dict(n_train=2, n_val=2, n_test=2, size=16, progress=False)
    generate(tmp_path, seed=0, n_circo=2, circo_distractors=0, **small)
    assert (tmp_path / "synthetic_edits" / "circo_-_val.json").is_file()
    generate(tmp_path, seed=1, overwrite=True, **small)
    assert not (tmp_path / "synthetic_edits" / "circo_-_val.json").exists()
