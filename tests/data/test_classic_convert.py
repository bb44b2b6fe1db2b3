"""Every benchmark's stand-in, under every value of its reading options, goes through `clip-cir
convert` and evaluates exactly as the original: the same metrics dictionary, split by split, for
one tiny random CLIP. What the triplet layout cannot hold (CFQ's graded judgements, the FashionIQ
protocols without a test split) stops the command with one line and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_cir.data import dataset_splits, load_splits
from clip_cir.data.synthetic import CLASSIC, generate
from clip_cir.data.types import CIRSplit, ReaderOptions
from clip_cir.encoding.extraction import FeatureCache
from clip_cir.encoding.split_features import EncodeOptions
from clip_cir.evaluation.evaluate import evaluate
from clip_cir.models.clip import load_clip
from clip_cir.models.combiner import element_wise_sum

CASES = [
    ("fashion200k", {}),
    ("mitstates", {}),
    ("css", {"css_query_images": "3d"}),
    ("css", {"css_query_images": "2d"}),
    ("shoes", {"shoes_protocol": "val"}),
    ("shoes", {"shoes_protocol": "artemis"}),
    ("birdstowords", {}),
    ("spotthediff", {}),
    ("fashioniq", {"fashioniq_protocol": "clip4cir"}),
    ("fashioniq", {"fashioniq_protocol": "cosmo"}),
    ("circo", {"circo_query_text": "caption"}),
    ("circo", {"circo_query_text": "concept-and-caption"}),
    ("cirr", {}),
]
"""(benchmark, its reading options): every benchmark but CFQ, every protocol the layout can hold."""
SCORED_SPLITS = {"fashion200k": 2, "mitstates": 2, "css": 2, "shoes": 2, "birdstowords": 3, "spotthediff": 3,
                 "fashioniq": 2, "circo": 1, "cirr": 2}
"""Splits with targets (all but FashionIQ's test, CIRCO's test and CIRR's test1)."""
CIRR_ONLY = ("recall_subset", "soft_", "recall_avg")
"""CIRR's metrics of image sets and soft labels, which the layout has no place for."""


def _flags(options: dict[str, str]) -> list[str]:
    return [part for key, value in options.items() for part in (f"--{key.replace('_', '-')}", value)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Every stand-in at 32 px beside a tiny CIRR, FashionIQ and CIRCO."""
    root = tmp_path_factory.mktemp("classic_world")
    generate(root, n_train=6, n_val=6, n_test=3, size=32, seed=0, progress=False, n_circo=3, circo_distractors=6,
             classic=list(CLASSIC))
    return root


@pytest.fixture(scope="module")
def score(tiny_checkpoint, tmp_path_factory):
    """`score(splits) -> metrics`: the tiny CLIP and element-wise sum, as `clip-cir eval` scores;
    one feature cache for the module (a converted copy names the original's files)."""
    clip = load_clip(None, str(tiny_checkpoint))
    cache = FeatureCache(tmp_path_factory.mktemp("classic_features"))
    options = EncodeOptions(transform=clip.image_transform(), batch_size=256, image_cache=cache, text_cache=cache,
                            progress=False)
    return lambda splits: evaluate(clip, splits, element_wise_sum, options)


def _queries(parts: list[CIRSplit]) -> list[tuple[str, int]]:
    return [(part.name, len(part.queries)) for part in parts]


@pytest.mark.parametrize(("benchmark", "options"), CASES,
                         ids=[f"{b}-{'-'.join(o.values()) or 'default'}" for b, o in CASES])
def test_converted_stand_in_evaluates_exactly_as_the_original(benchmark, options, world, score, cli, tmp_path):
    out = tmp_path / "converted"
    result = cli("convert", benchmark, "--data-root", world, "--output", out, *_flags(options))
    assert result.code == 0, result.err
    assert json.loads((out / "clip_cir.json").read_text())["source"] == benchmark
    scored = 0
    for split in dataset_splits(benchmark):
        originals = load_splits(benchmark, world, split, options=ReaderOptions(**options))
        converted = load_splits("triplets", out, split)
        grouped = len(originals) > 1
        assert _queries(converted) == (_queries(originals) if grouped else [("triplets", len(originals[0].queries))])
        if not all(part.has_targets for part in originals):
            assert not any(part.has_targets for part in converted)
            continue
        expected = {k: v for k, v in score(originals).items() if not k.startswith(CIRR_ONLY)}
        assert score(converted) == expected, split
        first = "dress_" if grouped else ""
        keys = {f"{first}{view}recall_at{k}" for k in originals[0].recall_ks
                for view in ["", *(f"{name}_" for name, _ in originals[0].label_views)]}
        assert keys <= set(expected)  # MIT-States: its adjective and noun recalls too
        scored += 1
    assert scored == SCORED_SPLITS[benchmark]


def test_the_reading_options_change_what_is_converted(world, cli, tmp_path):
    """Each option reaches the reader through convert: the written rows differ as the protocols do
    (Shoes' ARTEMIS protocol drops the test pairs whose reference is in no list; CSS's 2-D queries
    name drawings kept apart from the gallery; CoSMo's FashionIQ has two queries per triplet)."""
    def rows(benchmark: str, split: str, *flags: str) -> list[dict]:
        out = tmp_path / "-".join((benchmark, *flags)).replace("--", "")
        assert cli("convert", benchmark, "--data-root", world, "--output", out, *flags).code == 0
        return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]

    val, artemis = rows("shoes", "test"), rows("shoes", "test", "--shoes-protocol", "artemis")
    assert len(artemis) == len(load_splits("shoes", world, "test", options=ReaderOptions(shoes_protocol="artemis"))[0]
                               .queries) < len(val)
    flat, drawn = rows("css", "test"), rows("css", "test", "--css-query-images", "2d")
    assert all("excluded" not in row for row in flat) and all(row["reference"].endswith("_2d.png") for row in drawn)
    clip4cir, cosmo = rows("fashioniq", "val"), rows("fashioniq", "val", "--fashioniq-protocol", "cosmo")
    assert len(cosmo) == 2 * len(clip4cir)
    assert [row["caption"] for row in cosmo[:2]] == [" and ".join(c) for c in _fiq_captions(world, 0)]


def _fiq_captions(world: Path, entry: int) -> list[tuple[str, str]]:
    """Entry `entry` of dress's val caption file, in CoSMo's two orders."""
    c0, c1 = json.loads((world / "fashionIQ_dataset/captions/cap.dress.val.json").read_text())[entry]["captions"]
    return [(c0, c1), (c1, c0)]


def test_convert_lists_the_reading_options_the_data_commands_list():
    """One option group: convert's reading options are the data group of eval (and of training)
    less what names the data (dataset, root, split) and the generic layout's columns, which
    convert cannot read."""
    from clip_cir.params import cli_parser, stage1_parser

    def options(group) -> set[str]:
        return {o for action in group._group_actions for o in action.option_strings}

    commands = cli_parser()._subparsers._group_actions[0].choices
    reading = {g.title: options(g) for g in commands["convert"]._action_groups}["reading"]
    data = {g.title: options(g) for g in commands["eval"]._action_groups}["data"]
    assert data - reading == {"--dataset", "--data-root", "--split", "--csv-reference-key", "--csv-caption-key",
                              "--csv-target-key", "--csv-separator", "--keep-reference"}
    assert reading == {"--fashioniq-categories", "--fashioniq-protocol", "--shoes-protocol", "--circo-query-text",
                       "--css-query-images"} < data
    assert reading < {g.title: options(g) for g in stage1_parser()._action_groups}["data"]


@pytest.mark.parametrize(("benchmark", "flags", "message"), [
    ("fashioniq", ("--fashioniq-protocol", "val"),
     "FashionIQ protocol 'val' has no test split: its gallery is the images of the split's triplets, targets "
     "included, and test triplets have no targets"),
    ("fashioniq", ("--fashioniq-protocol", "cosmo-val"),
     "FashionIQ protocol 'cosmo-val' has no test split: its gallery is the images of the split's triplets, targets "
     "included, and test triplets have no targets"),
    ("cfq", (), "cfq: graded judgements (not targets) have no place in the triplet layout"),
])
def test_what_the_layout_cannot_hold_is_one_line(benchmark, flags, message, world, cli, tmp_path):
    out = tmp_path / "converted"
    result = cli("convert", benchmark, "--data-root", world, "--output", out, *flags)
    assert result.code == 2
    assert result.err.strip().splitlines() == [f"clip-cir: error: {message}"]
    assert not out.exists()
