"""The commands on benchmarks whose hits are labels: `clip-cir rank` on MIT-States' test split
(queries with a target label and no target image) and the web demo serving Fashion200k's gallery,
checked against `clip-cir eval` and `clip-cir rank` of the same model."""

from __future__ import annotations

import json

import pytest
from helpers import demo_search

from clip_cir.data import load_splits
from clip_cir.data.synthetic.fashion200k import write_fashion200k
from clip_cir.data.synthetic.mitstates import write_mitstates


def test_rank_mitstates_test_records_labels_and_scores_as_eval(cli, tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    write_mitstates(data, size=32)
    common = ("--dataset", "mitstates", "--data-root", data, "--pretrained", tiny_checkpoint, "--num-workers", "0",
              "--cache-dir", tmp_path / "cache")
    ranks, metrics = tmp_path / "ranks.json", tmp_path / "metrics.json"
    result = cli("rank", *common, "--top-k", "10", "--output", ranks)  # the default split: test
    assert result.code == 0, result.err
    assert cli("eval", *common, "--output", metrics).code == 0
    written, evaluated = json.loads(ranks.read_text()), json.loads(metrics.read_text())
    (split,) = load_splits("mitstates", data, "test")
    assert (written["dataset"], written["split"], written["top_k"]) == ("mitstates", "test", 10)
    assert [q["qid"] for q in written["queries"]] == [q.qid for q in split.queries] and len(split.queries) == 24
    for entry, query in zip(written["queries"], split.queries):
        assert entry["target"] is None and entry["target_label"] == query.target_label
        names = [hit["name"] for hit in entry["ranking"]]
        assert len(names) == 10 and query.reference not in names and set(names) <= set(split.gallery)
        scores = [hit["score"] for hit in entry["ranking"]]
        assert scores == sorted(scores, reverse=True)
    # tirg's rule on the written ranking: a hit when any of the top K carries the target label.
    for k in (1, 5, 10):
        hits = [any(split.gallery_labels[hit["name"]] == entry["target_label"] for hit in entry["ranking"][:k])
                for entry in written["queries"]]
        assert evaluated[f"recall_at{k}"] == pytest.approx(100 * sum(hits) / len(hits), abs=1e-4), k
        nouns = [any(split.gallery_labels[hit["name"]].split()[1] == entry["target_label"].split()[1]
                     for hit in entry["ranking"][:k]) for entry in written["queries"]]
        assert evaluated[f"noun_recall_at{k}"] == pytest.approx(100 * sum(nouns) / len(nouns), abs=1e-4), k


def test_demo_serves_fashion200k_and_ranks_as_rank_does(cli, tiny_checkpoint, tmp_path):
    pytest.importorskip("flask", reason="the demo needs Flask (pip install 'clip-cir[demo]')")
    from clip_cir.apps.demo.app import _build_app
    from clip_cir.params import demo_parser

    data = tmp_path / "data"
    write_fashion200k(data, size=32)
    common = ["--dataset", "fashion200k", "--data-root", str(data), "--pretrained", str(tiny_checkpoint),
              "--num-workers", "0", "--cache-dir", str(tmp_path / "cache")]
    client = _build_app(demo_parser().parse_args(common)).test_client()  # the default split: test
    (split,) = load_splits("fashion200k", data, "test")
    info = client.get("/api/info").get_json()
    assert (info["dataset"], info["split"], info["gallery_size"], info["exclude_reference"]) == \
        ("fashion200k", "test", 24, True)
    page = client.get("/api/gallery?per_page=100").get_json()
    assert [item["name"] for item in page["items"]] == list(split.gallery) and page["total"] == 24
    name = page["items"][3]["name"]  # women/<category>/<description>/<product>/<product>_0.jpeg
    image = client.get(page["items"][3]["url"])
    assert name.count("/") == 4 and image.status_code == 200 and image.data == split.gallery[name].read_bytes()

    ranks = tmp_path / "ranks.json"
    assert cli("rank", *common, "--top-k", "5", "--output", ranks).code == 0
    for entry in json.loads(ranks.read_text())["queries"][:4]:
        answer = demo_search(client, reference=entry["reference"], caption=entry["caption"], k=5).get_json()
        assert answer["excluded_reference"] is True
        assert [hit["name"] for hit in answer["results"]] == [hit["name"] for hit in entry["ranking"]]
        assert [hit["score"] for hit in answer["results"]] == pytest.approx(
            [hit["score"] for hit in entry["ranking"]], abs=2e-6)
        assert entry["target_label"] == split.gallery_labels[entry["target"]]  # a test target carries the label
