"""The zero-shot methods' losses on fixed tensors against by-hand computations (plain Python
arithmetic, one term at a time), LinCIR's noise and keyword masking, and SEARLE's textual
inversion pieces (phrases, concept features, nearest concepts, the optimisation's start and its
effect)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clip_cir.training.keywords import concept_vocabulary, keyword_spans, mask_keywords
from clip_cir.training.textual_inversion import (
    OTI_TEMPLATES,
    REGULARISER_TEMPLATES,
    concept_features,
    nearest_concepts,
    regulariser_phrases,
    textual_inversion,
)
from clip_cir.training.zero_shot_losses import (
    cosine_distance,
    lincir_loss,
    lincir_noise,
    oti_loss,
    pic2word_loss,
    searle_distillation_loss,
    searle_phi_loss,
    searle_regulariser,
)

IMAGES = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
TEXTS = [[1.0, 1.0], [0.0, 1.0], [-1.0, 0.5]]


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _cos(a: list[float], b: list[float]) -> float:
    return _dot(_unit(a), _unit(b))


def _cross_entropy(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_pic2word_loss_is_the_mean_of_both_directions_cross_entropy_at_clips_scale():
    scale = 2.5
    cos = [[_cos(i, t) for t in TEXTS] for i in IMAGES]  # cos[i][j]: image i, prompt j
    image_to_text = sum(_cross_entropy([scale * c for c in cos[i]], i) for i in range(3)) / 3
    text_to_image = sum(_cross_entropy([scale * cos[i][j] for i in range(3)], j) for j in range(3)) / 3
    got = pic2word_loss(torch.tensor(IMAGES), torch.tensor(TEXTS), scale)
    assert got.item() == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-5)
    assert image_to_text != pytest.approx(text_to_image, rel=1e-3)  # the two directions differ here


def test_searle_distillation_is_a_contrastive_loss_over_both_sets_at_temperature_a_quarter():
    oti, predicted = IMAGES, TEXTS
    joint = oti + predicted  # six vectors; i and i + 3 are partners
    total = 0.0
    for i in range(6):
        partner = (i + 3) % 6
        numerator = math.exp(_cos(joint[i], joint[partner]) / 0.25)
        denominator = sum(math.exp(_cos(joint[i], joint[j]) / 0.25) for j in range(6) if j != i)
        total += -math.log(numerator / denominator)
    got = searle_distillation_loss(torch.tensor(oti), torch.tensor(predicted))
    assert got.item() == pytest.approx(total / 6, rel=1e-5)


def test_regulariser_and_cosine_distance_are_one_minus_the_mean_cosine():
    expected = sum(1 - _cos(a, b) for a, b in zip(IMAGES, TEXTS)) / 3
    assert cosine_distance(torch.tensor(IMAGES), torch.tensor(TEXTS)).item() == pytest.approx(expected, rel=1e-6)
    assert searle_regulariser(torch.tensor(IMAGES), torch.tensor(TEXTS)).item() == pytest.approx(expected, rel=1e-6)
    assert cosine_distance(torch.tensor(IMAGES), 3 * torch.tensor(IMAGES)).item() == pytest.approx(0, abs=1e-6)


def test_searle_phi_loss_weighs_distillation_by_one_and_the_regulariser_by_three_quarters():
    a, b, c, d = (torch.tensor(v) for v in (IMAGES, TEXTS, [[2.0, 1.0], [1.0, 3.0], [0.0, 1.0]], IMAGES))
    distillation = searle_distillation_loss(a, b).item()
    regulariser = sum(1 - _cos(x, y) for x, y in zip([[2.0, 1.0], [1.0, 3.0], [0.0, 1.0]], IMAGES)) / 3
    assert searle_phi_loss(a, b, c, d).item() == pytest.approx(distillation + 0.75 * regulariser, rel=1e-5)


def test_oti_loss_is_the_weighted_mean_of_the_image_cosine_and_the_regulariser():
    templates, phrases, pseudo = TEXTS, [[2.0, 1.0], [1.0, 3.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 2.0], [1.0, 1.0]]
    image_term = sum(1 - _cos(t, i) for t, i in zip(templates, IMAGES)) / 3
    regulariser = sum(1 - _cos(p, q) for p, q in zip(pseudo, phrases)) / 3
    got = oti_loss(*(torch.tensor(v) for v in (templates, IMAGES, phrases, pseudo)))
    assert got.item() == pytest.approx((1 * image_term + 0.5 * regulariser) / 1.5, rel=1e-6)


def test_lincir_noise_scales_a_gaussian_by_one_uniform_draw_per_caption():
    features = torch.tensor(TEXTS)
    draws = torch.Generator().manual_seed(7)
    amount = torch.rand(3, generator=draws)  # one per caption, drawn first
    noise = torch.randn(3, 2, generator=draws)
    expected = [[features[r, c].item() + amount[r].item() * noise[r, c].item() for c in range(2)] for r in range(3)]
    got = lincir_noise(features, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, torch.tensor(expected))
    half = lincir_noise(features, scale=0.5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(half - features, (got - features) / 2)


def test_lincir_loss_is_the_mean_squared_error_over_every_element():
    expected = sum((a - b) ** 2 for row_a, row_b in zip(IMAGES, TEXTS) for a, b in zip(row_a, row_b)) / 6
    assert lincir_loss(torch.tensor(IMAGES), torch.tensor(TEXTS)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("caption, clean, masked", [
    # determiners join the run; stop words and punctuation end it
    ("Is red and has a Big Blue triangle, not a circle", "is red and has a big blue triangle, not a circle",
     "is $ and has $ , not $"),
    ("red, blue car", "red, blue car", "$ , $"),
    ("costs $5 more", "costs 5 more", "$ more"),  # the placeholder is removed from the caption first
    ("is on it", "is on it", "is on $"),  # no keyword: the last word
    ("the the", "the the", "the $"),  # determiners alone are no keyword
    ("", "", "a photo of $"),  # no word at all
    ("$", "", "a photo of $"),
])
def test_keywords_are_runs_of_content_words_and_each_becomes_the_placeholder(caption, clean, masked):
    assert mask_keywords(caption) == (clean, masked)


def test_keyword_spans_and_the_concept_vocabulary():
    assert keyword_spans("a dog that is holding a red ball") == [(0, 5), (22, 32)]
    assert mask_keywords("A dog", "*") == ("a dog", "*")
    captions = ["a red car", "the red dog, a car", "two dogs"]
    assert concept_vocabulary(captions) == ["car", "red", "dog", "dogs", "two"]  # by count, then alphabetical
    assert concept_vocabulary(captions, limit=1) == ["car"]
    assert concept_vocabulary(captions, min_count=2) == ["car", "red"]


def test_regulariser_phrases_put_the_concept_and_the_placeholder_in_the_same_phrase():
    phrases, pseudo = regulariser_phrases(["red car", "dog"], [0, 2])
    assert phrases == ["a photo of red car that was taken outdoors on a sunny day",
                       "a photo of dog that shows its colour and its shape"]
    assert pseudo == ["a photo of $ that was taken outdoors on a sunny day",
                      "a photo of $ that shows its colour and its shape"]
    assert len(REGULARISER_TEMPLATES) == 8 and len(OTI_TEMPLATES) == 24


@torch.no_grad()
def test_concept_features_ensemble_the_templates_and_nearest_concepts_rank_by_cosine(frozen_clip):
    got = concept_features(frozen_clip, ["dog", "red car"], batch_size=1)
    for row, concept in enumerate(["dog", "red car"]):
        prompts = [" ".join(t.format(f" {concept} ").split()) for t in OTI_TEMPLATES]
        assert prompts[0] == f"This is a photo of a {concept}" and prompts[14] == concept
        features = F.normalize(frozen_clip.model.encode_text(frozen_clip.tokenizer(prompts)), dim=-1)
        torch.testing.assert_close(got[row], F.normalize(features.mean(dim=0), dim=0), atol=1e-5, rtol=1e-5)
    concepts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    images = torch.tensor([[3.0, 0.1], [0.0, -1.0]])
    assert nearest_concepts(images, concepts, 2).tolist() == [[0, 2], [0, 2]]
    assert nearest_concepts(images, concepts, 5).tolist() == [[0, 2, 1], [0, 2, 1]]


def test_textual_inversion_starts_from_small_gaussian_tokens_and_moves_prompts_towards_the_images(frozen_clip):
    from clip_cir.models.pseudo_words import encode_with_pseudo_words

    images = torch.randn(2, 128, generator=torch.Generator().manual_seed(1))
    concepts = [["dog", "cat"], ["car"]]
    start = textual_inversion(frozen_clip, images, concepts, steps=0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(start, torch.randn(2, 128, generator=torch.Generator().manual_seed(4)) * 0.02)
    tokens = textual_inversion(frozen_clip, images, concepts, steps=8, ema_decay=0.0,
                               generator=torch.Generator().manual_seed(4))
    again = textual_inversion(frozen_clip, images, concepts, steps=2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again, textual_inversion(frozen_clip, images, concepts, steps=2,
                                                generator=torch.Generator().manual_seed(4)))  # one generator
    one_step = textual_inversion(frozen_clip, images, concepts, steps=1, ema_decay=0.0,
                                 generator=torch.Generator().manual_seed(4))
    averaged = textual_inversion(frozen_clip, images, concepts, steps=1, ema_decay=0.25,
                                 generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(averaged, 0.25 * start + 0.75 * one_step)  # the EMA of the start and one step
    ids = frozen_clip.tokenizer(["A photo of a $"] * 2)
    with torch.no_grad():
        before = F.cosine_similarity(encode_with_pseudo_words(frozen_clip.model, ids, start, 259), images).mean()
        after = F.cosine_similarity(encode_with_pseudo_words(frozen_clip.model, ids, tokens, 259), images).mean()
    print(f"template cosine to the images: {before.item():.3f} -> {after.item():.3f}")
    assert after > before + 0.05
    with pytest.raises(ValueError, match="at least one concept word for every image"):
        textual_inversion(frozen_clip, images, [["dog"], []], steps=1)
