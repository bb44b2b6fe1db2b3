"""Each zero-shot method's batch loss on a tiny frozen CLIP equals its loss function applied to
features computed here step by step (full-length token ids, open_clip's own `encode_text`), and
only the mapping network gets gradients."""

from __future__ import annotations

import torch

from clip_cir.models.pseudo_words import encode_with_pseudo_words
from clip_cir.models.zero_shot import mapping_for
from clip_cir.training.textual_inversion import REGULARISER_TEMPLATES
from clip_cir.training.zero_shot import (
    PseudoWordText,
    lincir_batch_loss,
    lincir_token_pairs,
    pic2word_batch_loss,
    searle_batch_loss,
)
from clip_cir.training.zero_shot_losses import lincir_loss, lincir_noise, pic2word_loss, searle_phi_loss

TOL = dict(atol=1e-5, rtol=1e-5)


def _images(rows: int = 3) -> torch.Tensor:
    return torch.randn(rows, 128, generator=torch.Generator().manual_seed(1))


def _only_phi_has_gradients(clip, mapping) -> None:
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mapping.parameters())
    assert all(p.grad is None for p in clip.model.parameters())


def test_pic2word_batch_loss_puts_phi_of_each_image_in_a_photo_of_the_placeholder(frozen_clip):
    torch.manual_seed(0)
    mapping = mapping_for("pic2word", frozen_clip).eval()
    images = _images()
    got = pic2word_batch_loss(PseudoWordText(frozen_clip), mapping, images)
    ids = frozen_clip.tokenizer(["a photo of $"] * 3)
    with torch.no_grad():
        prompts = encode_with_pseudo_words(frozen_clip.model, ids, mapping(images), 259)
        expected = pic2word_loss(images, prompts, frozen_clip.model.logit_scale.exp())
    torch.testing.assert_close(got, expected, **TOL)
    got.backward()
    _only_phi_has_gradients(frozen_clip, mapping)


def test_searle_batch_loss_distils_and_regularises_with_a_drawn_concept_and_phrase(frozen_clip):
    torch.manual_seed(0)
    mapping = mapping_for("searle", frozen_clip).eval()
    images, oti = _images(), torch.randn(3, 128, generator=torch.Generator().manual_seed(2))
    concepts = [["dog", "cat"], ["red car"], ["tree", "house", "hat"]]
    got = searle_batch_loss(PseudoWordText(frozen_clip), mapping, images, oti, concepts,
                            torch.Generator().manual_seed(9))
    draws = torch.Generator().manual_seed(9)  # the same draws, in the same order
    words = [w[int(torch.randint(len(w), (1,), generator=draws))] for w in concepts]
    templates = [REGULARISER_TEMPLATES[i] for i in torch.randint(8, (3,), generator=draws).tolist()]
    phrases = [" ".join(t.format(f" {w} ").split()) for t, w in zip(templates, words)]
    pseudo_phrases = [" ".join(t.format(" $ ").split()) for t in templates]
    with torch.no_grad():
        predicted = mapping(images)
        model, tokenize = frozen_clip.model, frozen_clip.tokenizer
        expected = searle_phi_loss(oti, predicted, model.encode_text(tokenize(phrases)),
                                   encode_with_pseudo_words(model, tokenize(pseudo_phrases), predicted, 259))
    torch.testing.assert_close(got, expected, **TOL)
    got.backward()
    _only_phi_has_gradients(frozen_clip, mapping)


def test_lincir_batch_loss_masks_keywords_and_falls_back_when_the_placeholder_is_cut_off(frozen_clip):
    torch.manual_seed(0)
    mapping = mapping_for("lincir", frozen_clip).eval()
    captions = ["A red car", "is on it", "is " * 40 + "red"]  # the third's keyword is past the context
    text = PseudoWordText(frozen_clip)
    clean_ids, masked_ids = lincir_token_pairs(text, captions)
    clean = ["a red car", "is on it", ("is " * 40 + "red").strip()]
    masked = ["$", "is on $", "a photo of $"]
    full_clean, full_masked = frozen_clip.tokenizer(clean), frozen_clip.tokenizer(masked)
    assert torch.equal(clean_ids, full_clean[:, :clean_ids.shape[1]])
    assert torch.equal(masked_ids, full_masked[:, :masked_ids.shape[1]])

    got = lincir_batch_loss(text, mapping, captions, torch.Generator().manual_seed(5))
    with torch.no_grad():
        features = frozen_clip.model.encode_text(full_clean)
        noised = lincir_noise(features, generator=torch.Generator().manual_seed(5))
        expected = lincir_loss(encode_with_pseudo_words(frozen_clip.model, full_masked, mapping(noised), 259), features)
    torch.testing.assert_close(got, expected, **TOL)
    got.backward()
    _only_phi_has_gradients(frozen_clip, mapping)
