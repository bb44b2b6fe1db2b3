"""Attribute-manipulation metrics on a small ADDE-layout catalogue written by hand, scored as
amzn/fashion-attribute-disentanglement's src/eval.py does, every number worked out step by step."""

import math

import numpy as np
import pytest
import torch

from clip_cir.data.attributes import AttributeQuery, read_adde_catalogue, read_adde_queries
from clip_cir.evaluation.attribute_metrics import (
    ADDE_TOP_K,
    attribute_manipulation_metrics,
    ndcg_at_k,
    rank_attribute_gallery,
    top_k_accuracy,
)

# attr_num [2, 3]: attribute 0 has values 0-1, attribute 1 values 0-2.
# Gallery labels (attribute 0, attribute 1): img0 (0, 0), img1 (1, 0), img2 (0, 2), img3 (1, 2), img4 (missing, 1).
ADDE_FILES = {
    "attr_num.txt": "2\n3\n",
    "imgs_test.txt": "img0.jpg\nimg1.jpg\nimg2.jpg\nimg3.jpg\nimg4.jpg\n",
    "labels_test.txt": "1 0 1 0 0\n0 1 1 0 0\n1 0 0 0 1\n0 1 0 0 1\n0 0 0 1 0\n",
    # q0: img0 with attribute 0 -> 1, target (1, 0); q1: img3 with attribute 1 -> 0, target (1, 0);
    # q2: img2 with attribute 0 -> 1, target (1, 2).
    "ref_test.txt": "0\n3\n2\n",
    "indfull_test.txt": "-1 1 0 0 0\n0 0 1 0 -1\n-1 1 0 0 0\n",
    "gt_test.txt": "0 1 1 0 0\n0 1 1 0 0\n0 1 0 0 1\n",
}


def _unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# Gallery features at 0, 40, 100, 170 and 250 degrees; some scaled, as the ranking normalises.
GALLERY = torch.tensor([_unit(a) for a in (0, 40, 100, 170, 250)]) * torch.tensor([[3.0], [1], [0.5], [1], [7]])
# Queries at 10, 160 and 95 degrees. Angular distances to the gallery:
# q0 (10):  10, 30, 90, 160, 120 -> ranking img0, img1, img2, img4, img3
# q1 (160): 160, 120, 60, 10, 90 -> ranking img3, img2, img4, img1, img0
# q2 (95):  95, 55, 5, 75, 155   -> ranking img2, img1, img3, img0, img4
QUERIES = torch.tensor([_unit(10), _unit(160), _unit(95)]) * torch.tensor([[0.1], [2], [1]])

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
HALF_GAIN = 2 ** 0.5 - 1  # 2^0.5 - 1: the gain of an image matching one of the two attributes
IDEAL_AT_3 = 1 / LN2 + 1 / LN3 + 1 / LN4  # eval.py's ideal: three retrieved images of relevance 1


@pytest.fixture
def adde(tmp_path):
    for name, text in ADDE_FILES.items():
        (tmp_path / name).write_text(text)
    gallery = read_adde_catalogue(tmp_path, "test")
    return gallery, read_adde_queries(tmp_path, gallery)


def test_the_hand_written_catalogue_reads_as_described(adde):
    gallery, queries = adde
    assert gallery.labels.tolist() == [[0, 0], [1, 0], [0, 2], [1, 2], [-1, 1]]
    assert queries == [AttributeQuery(0, 0, 1, (1, 0)), AttributeQuery(3, 1, 0, (1, 0)),
                       AttributeQuery(2, 0, 1, (1, 2))]


def test_ranking_is_by_cosine_of_normalised_features_and_keeps_the_reference():
    ranked = rank_attribute_gallery(QUERIES, GALLERY, 3)
    # q0's reference img0 is its own nearest image: eval.py does not remove it.
    assert ranked.tolist() == [[0, 1, 2], [3, 2, 4], [2, 1, 3]]


def test_top_3_accuracy_and_ndcg_at_3_step_by_step(adde):
    gallery, queries = adde
    metrics = attribute_manipulation_metrics(QUERIES, GALLERY, gallery, queries, k=3)
    # Top-3 accuracy: a hit is an image whose labels equal the target in every attribute.
    # q0 target (1, 0): img0 (0, 0), img1 (1, 0) hit.            -> hit
    # q1 target (1, 0): img3 (1, 2), img2 (0, 2), img4 (-, 1).   -> miss (img1 is 4th)
    # q2 target (1, 2): img2 (0, 2), img1 (1, 0), img3 (1, 2).   -> hit
    assert metrics["top3_accuracy"] == pytest.approx(2 / 3)
    # Relevance = matching attributes / 2; gain 2^rel - 1; discount ln(rank + 1), rank from 1.
    # q0: img0 matches attribute 1 (0.5), img1 both (1), img2 none (0).
    q0 = (HALF_GAIN / LN2 + 1 / LN3 + 0 / LN4) / IDEAL_AT_3
    # q1: img3 matches attribute 0 (0.5), img2 none, img4 none (a missing label is not a value).
    q1 = (HALF_GAIN / LN2) / IDEAL_AT_3
    # q2: img2 matches attribute 1 (0.5), img1 attribute 0 (0.5), img3 both (1).
    q2 = (HALF_GAIN / LN2 + HALF_GAIN / LN3 + 1 / LN4) / IDEAL_AT_3
    assert metrics["ndcg_at3"] == pytest.approx((q0 + q1 + q2) / 3)
    # Target only: relevance 1 where the changed attribute has the new value.
    # q0 (attribute 0 = 1): img1. q1 (attribute 1 = 0): none. q2 (attribute 0 = 1): img1, img3.
    t0, t1, t2 = (1 / LN3) / IDEAL_AT_3, 0.0, (1 / LN3 + 1 / LN4) / IDEAL_AT_3
    assert metrics["ndcg_target_at3"] == pytest.approx((t0 + t1 + t2) / 3)
    # Others only: the fraction of the one other attribute that matches.
    # q0 (attribute 1 = 0): img0, img1. q1 (attribute 0 = 1): img3. q2 (attribute 1 = 2): img2, img3.
    o0, o1, o2 = (1 / LN2 + 1 / LN3) / IDEAL_AT_3, (1 / LN2) / IDEAL_AT_3, (1 / LN2 + 1 / LN4) / IDEAL_AT_3
    assert metrics["ndcg_others_at3"] == pytest.approx((o0 + o1 + o2) / 3)
    assert set(metrics) == {"top3_accuracy", "ndcg_at3", "ndcg_target_at3", "ndcg_others_at3"}


def test_default_k_is_eval_pys_30_and_a_smaller_gallery_is_ranked_whole(adde):
    gallery, queries = adde
    assert ADDE_TOP_K == 30
    metrics = attribute_manipulation_metrics(QUERIES, GALLERY, gallery, queries)
    # All five images ranked: q1 now reaches img1 (4th), so every query hits.
    assert metrics["top30_accuracy"] == 1.0
    # q1's five relevances: img3 0.5, img2 0, img4 0, img1 1, img0 0.5; the ideal is five 1s.
    ideal = sum(1 / math.log(r + 1) for r in range(1, 6))
    q1 = (HALF_GAIN / LN2 + 1 / math.log(5) + HALF_GAIN / math.log(6)) / ideal
    only_q1 = attribute_manipulation_metrics(QUERIES[1:2], GALLERY, gallery, queries[1:2])
    assert only_q1["ndcg_at30"] == pytest.approx(q1)


def test_a_hit_needs_every_other_attribute_unchanged():
    # Three attributes; target (1, 1, 1). Image 0 has the new value but another attribute changed,
    # image 1 matches everything: only a ranking reaching image 1 hits.
    labels = np.array([[1, 0, 1], [1, 1, 1], [0, 1, 1]])
    queries = [AttributeQuery(2, 0, 1, (1, 1, 1))]
    assert top_k_accuracy(torch.tensor([[0, 2, 1]]), queries, labels, k=2) == 0.0
    assert top_k_accuracy(torch.tensor([[0, 2, 1]]), queries, labels, k=3) == 1.0


def test_ndcg_others_with_three_attributes_divides_by_two():
    labels = np.array([[0, 1, 1]])  # against target (1, 1, 0) changing attribute 0: one of two others
    queries = [AttributeQuery(0, 0, 1, (1, 1, 0))]
    scores = ndcg_at_k(torch.tensor([[0]]), queries, labels, k=1)
    assert scores["ndcg_others"] == pytest.approx(2 ** 0.5 - 1)  # (2^(1/2) - 1) / (2^1 - 1)
    assert scores["ndcg"] == pytest.approx(2 ** (1 / 3) - 1)
    assert scores["ndcg_target"] == 0.0
