"""One training batch's loss for each zero-shot method's mapping network φ, on a frozen CLIP: what a
training stage's forward and loss compute (the stage, its data and its command line are built on
these). Every CLIP feature that does not depend on φ is computed without gradient.

- Pic2Word: φ(image feature) in "a photo of $" (its training prompt: `src/trainer.py`
  `get_text_features` tokenises "a photo of" and inserts the token before the end of text),
  against the batch's images (`zero_shot_losses.pic2word_loss`, CLIP's own logit scale).
- SEARLE: φ(image feature) distilled towards the image's OTI token, plus the regulariser on a
  phrase about one of the image's concept words, drawn uniformly (as `src/train_phi.py` draws one
  of the top-k concepts and one of its phrases).
- LinCIR: the caption's feature, noised, through φ, into every keyword of the caption
  (`keywords.mask_keywords`); a masked caption cut so short by the context length that no
  placeholder is left becomes "a photo of $", LinCIR's own fallback (`loader.py`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from clip_cir.models.pseudo_words import DEFAULT_PLACEHOLDER, encode_with_pseudo_words, placeholder_token_id
from clip_cir.models.towers import encode_text
from clip_cir.models.zero_shot import PseudoWordMapping
from clip_cir.training.keywords import mask_keywords
from clip_cir.training.textual_inversion import REGULARISER_TEMPLATES, regulariser_phrases
from clip_cir.training.zero_shot_losses import lincir_loss, lincir_noise, pic2word_loss, searle_phi_loss

PIC2WORD_TRAINING_PROMPT = "a photo of {}"
FALLBACK_PROMPT = "a photo of {}"


class PseudoWordText:
    """A frozen CLIP's text side with a placeholder: token ids on the model's device, features of
    prompts with pseudo-words, and plain caption features without gradient."""

    def __init__(self, clip, placeholder: str = DEFAULT_PLACEHOLDER, length_multiple: int = 1):
        self.clip, self.placeholder = clip, placeholder
        self.placeholder_id = placeholder_token_id(clip.tokenizer, placeholder)
        self.length_multiple = length_multiple
        """Token batches are padded to a multiple of this many tokens (few lengths for torch.compile)."""
        clip.model.requires_grad_(False)  # gradients pass through the tower to φ; its weights get none

    @property
    def device(self) -> torch.device:
        return next(self.clip.model.parameters()).device

    def ids(self, texts: Sequence[str], remember: bool = True) -> torch.Tensor:
        return self.clip.tokenize(list(texts), remember=remember, length_multiple=self.length_multiple).to(self.device)

    def encode(self, ids: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        return encode_with_pseudo_words(self.clip.model, ids, pseudo.to(self.device), self.placeholder_id)

    @torch.no_grad()
    def encode_plain(self, ids: torch.Tensor) -> torch.Tensor:
        return encode_text(self.clip.model, ids)


def pic2word_batch_loss(text: PseudoWordText, mapping: PseudoWordMapping, image_features: torch.Tensor) -> torch.Tensor:
    """Pic2Word's loss for raw image features [B, D] (computed without gradient)."""
    prompt = PIC2WORD_TRAINING_PROMPT.format(text.placeholder)
    ids = text.ids([prompt] * len(image_features))
    prompt_features = text.encode(ids, mapping(image_features))
    return pic2word_loss(image_features, prompt_features, text.clip.model.logit_scale.exp().detach())


def searle_batch_loss(text: PseudoWordText, mapping: PseudoWordMapping, image_features: torch.Tensor,
                      oti_tokens: torch.Tensor, concepts: Sequence[Sequence[str]],
                      generator: torch.Generator) -> torch.Tensor:
    """SEARLE's φ loss for raw image features [B, D], their OTI tokens [B, W] and concept words."""
    words = [w[int(torch.randint(len(w), (1,), generator=generator))] for w in concepts]
    choices = torch.randint(len(REGULARISER_TEMPLATES), (len(words),), generator=generator).tolist()
    phrases, pseudo_phrases = regulariser_phrases(words, choices, text.placeholder)
    predicted = mapping(image_features)
    pseudo_features = text.encode(text.ids(pseudo_phrases), predicted)
    return searle_phi_loss(oti_tokens.to(predicted.device), predicted, text.encode_plain(text.ids(phrases)),
                           pseudo_features)


def lincir_token_pairs(text: PseudoWordText, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids of the clean captions, of the keyword-masked captions): a masked caption with no
    placeholder token left after tokenising becomes "a photo of $"."""
    pairs = [mask_keywords(c, text.placeholder) for c in captions]
    clean, masked = [p[0] for p in pairs], [p[1] for p in pairs]
    masked_ids = text.ids(masked, remember=False)
    lost = (masked_ids == text.placeholder_id).sum(dim=-1) == 0
    if lost.any():
        masked = [FALLBACK_PROMPT.format(text.placeholder) if gone else m for m, gone in zip(masked, lost.tolist())]
        masked_ids = text.ids(masked, remember=False)
    return text.ids(clean, remember=False), masked_ids


def lincir_batch_loss(text: PseudoWordText, mapping: PseudoWordMapping, captions: Sequence[str],
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """LinCIR's loss for a batch of captions (its noise drawn from `generator`)."""
    clean_ids, masked_ids = lincir_token_pairs(text, captions)
    caption_features = text.encode_plain(clean_ids).float()
    noised = lincir_noise(caption_features.cpu(), generator=generator).to(caption_features.device)
    return lincir_loss(text.encode(masked_ids, mapping(noised)), caption_features)
