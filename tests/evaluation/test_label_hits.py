"""Hits by label equality (tirg's rule), its word views, a masked entry other than the reference, and
references kept apart from the gallery: each against rankings worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip_cir.data.types import CIRSplit, Query
from clip_cir.encoding.ranking import Ranking, rank_split
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import format_metrics, recall_by_group, split_metrics, validation_recalls

NAMES = ["a", "b", "c", "d", "e"]
LABELS = {"a": "red circle", "b": "blue circle", "c": "red square", "d": "blue circle", "e": "green star"}


def _split(targets: list[str | None], views=(), exclude_reference: bool = True) -> CIRSplit:
    queries = [Query(str(i), NAMES[i], (f"c{i}",), (f"c{i}",), f"c{i}", target_label=t) for i, t in enumerate(targets)]
    return CIRSplit("mitstates", "mitstates", "test", queries, {n: Path(f"/x/{n}.png") for n in NAMES},
                    exclude_reference=exclude_reference, recall_ks=(1, 2, 3), gallery_labels=dict(LABELS),
                    label_views=tuple(views))


def test_any_image_with_the_target_label_is_a_hit():
    split = _split(["blue circle", "red square", "green star", "purple star"])
    ranked = torch.tensor([[2, 3, 1], [0, 4, 2], [1, 3, 4], [4, 0, 1]])
    metrics = split_metrics(split, Ranking(indices=ranked, scores=torch.zeros(4, 3)))
    # Step by step, tirg's `target_caption in [captions[nn] for nn in nns[:k]]`:
    captions = [[LABELS[NAMES[i]] for i in row] for row in ranked.tolist()]
    targets = ["blue circle", "red square", "green star", "purple star"]
    for k in (1, 2, 3):
        expected = 100.0 * sum(t in row[:k] for t, row in zip(targets, captions)) / 4
        assert metrics[f"recall_at{k}"] == pytest.approx(expected)
    # Query 0 hits at rank 2 through "d", a different image from "b" with the same label.
    assert (metrics["recall_at1"], metrics["recall_at2"], metrics["recall_at3"]) == (0.0, 25.0, 75.0)


def test_padding_never_hits_and_an_unknown_label_never_hits():
    split = _split(["red circle", "purple star", "red circle", "red circle"])
    ranked = torch.tensor([[-1, 0, 1], [0, 1, 2], [-1, -1, -1], [1, 2, 3]])
    metrics = split_metrics(split, Ranking(indices=ranked, scores=torch.zeros(4, 3)))
    assert (metrics["recall_at1"], metrics["recall_at2"], metrics["recall_at3"]) == (0.0, 25.0, 25.0)


def test_word_views_score_one_word_of_the_labels():
    split = _split(["blue circle", "red square", "green circle"], views=(("adjective", 0), ("noun", 1)))
    ranked = torch.tensor([[2, 4, 0], [1, 0, 3], [0, 3, 4]])
    metrics = split_metrics(split, Ranking(indices=ranked, scores=torch.zeros(3, 3)))
    words = [[LABELS[NAMES[i]].split() for i in row] for row in ranked.tolist()]
    targets = [t.split() for t in ["blue circle", "red square", "green circle"]]
    for view, w in (("adjective", 0), ("noun", 1)):
        for k in (1, 2, 3):
            expected = 100.0 * sum(t[w] in [c[w] for c in row[:k]] for t, row in zip(targets, words)) / 3
            assert metrics[f"{view}_recall_at{k}"] == pytest.approx(expected)
    assert metrics["adjective_recall_at1"] == 0.0 and metrics["adjective_recall_at3"] == pytest.approx(200 / 3)
    assert metrics["noun_recall_at1"] == pytest.approx(100 / 3)
    # The diagnostics are reported but do not choose checkpoints, and the table gives them rows.
    assert validation_recalls(metrics) == [metrics["recall_at1"], metrics["recall_at2"], metrics["recall_at3"]]
    table = format_metrics(metrics)
    assert "adjective" in table and "noun" in table


def test_recall_by_group_uses_the_label_rule():
    split = _split(["blue circle", "red square", "green star", "red circle"])
    ranked = torch.tensor([[3, 2, 1], [0, 4, 2], [4, 3, 1], [1, 2, 3]])
    groups = recall_by_group(split, Ranking(indices=ranked, scores=torch.zeros(4, 3)), ["x", "y", "x", "y"])
    assert groups == {"x": {"recall_at1": 100.0, "recall_at2": 100.0, "recall_at3": 100.0},
                      "y": {"recall_at1": 0.0, "recall_at2": 0.0, "recall_at3": 50.0}}


def test_a_split_with_labels_has_targets_when_every_query_has_a_label():
    assert _split(["red circle", "blue circle"]).has_targets
    assert not _split(["red circle", None]).has_targets


def test_the_masked_entry_can_differ_from_the_reference_and_the_reference_can_lie_outside_the_gallery():
    gallery = {n: Path(f"/x/{n}.png") for n in NAMES}
    queries = [Query("0", "q0", ("c",), ("c",), "c", target="b", excluded="a"),
               Query("1", "b", ("c",), ("c",), "c", target="c")]
    split = CIRSplit("css", "css", "test", queries, gallery, exclude_reference=True, recall_ks=(1,),
                     query_images={"q0": Path("/x/2d/q0.png")})
    assert split.image_file("q0") == Path("/x/2d/q0.png") and split.image_file("a") == gallery["a"]
    with pytest.raises(CIRError, match="image 'zz' is neither in the gallery nor among the query images"):
        split.image_file("zz")
    scores = torch.tensor([[9.0, 8.0, 1.0, 0.5, 0.0], [1.0, 9.0, 8.0, 0.5, 0.0]])
    ranking = rank_split(split, scores, torch.eye(5), k=3)
    # Query 0 masks "a" (not its reference "q0"): "b" first. Query 1 masks its reference "b": "c" first.
    assert ranking.indices.tolist() == [[1, 2, 3], [2, 0, 3]]
    assert split_metrics(split, ranking)["recall_at1"] == 100.0


def test_a_query_whose_masked_entry_was_skipped_is_dropped(tmp_path):
    from clip_cir.data.images import ImageCheck

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.png").write_bytes(b"")
    images = ImageCheck(skip=True)
    gallery = images.locate({n: [tmp_path / f"{n}.png"] for n in ("a", "b", "c", "d")}, tmp_path / "list.txt")
    assert set(gallery) == {"a", "b", "c"}
    queries = [Query("0", "q0", ("c",), ("c",), "c", target="b", excluded="d"),
               Query("1", "q1", ("c",), ("c",), "c", target="b", excluded="a")]
    split = CIRSplit("css", "css", "test", queries, gallery, exclude_reference=True, recall_ks=(1,),
                     query_images={"q0": tmp_path / "a.png", "q1": tmp_path / "a.png"})
    kept = images.drop_queries(split, 4)
    assert [q.qid for q in kept.queries] == ["1"] and images.dropped_queries == {"css/css/test": 1}
