"""SEARLE's optimisation-based textual inversion (OTI): for each image, a pseudo-word vector
optimised so that prompts with it match the image, regularised to behave like a real word. Its
tokens are what SEARLE distils φ towards (`zero_shot_losses.searle_phi_loss`).

After miccunifi/SEARLE (`src/oti_inversion.py`, `src/image_concepts_association.py`,
`src/utils.py` `get_templates`); our own code, with these adaptations:

- Concepts: SEARLE ranks Open Images' class names by CLIP similarity to each image (each name
  embedded as the normalised mean of its prompt features over `OTI_TEMPLATES`) and keeps the top
  k. We rank whatever concept words the caller gives (`concept_features`, `nearest_concepts`),
  such as the training captions' content words (`keywords.concept_vocabulary`).
- Regulariser phrases: SEARLE's come from GPT-Neo 2.7B continuing "a photo of {concept} that"
  (`src/gpt_phrases_generation.py`). Without a language model, `REGULARISER_TEMPLATES` (fixed
  phrases of that form, written for clip-cir) stand in: a step draws one per image.
- Randomness comes from one `torch.Generator` (templates, concepts, phrases, the tokens' initial
  N(0, 0.02²) draw), so a run is repeatable; the optimiser, steps, learning rate, weight decay
  and EMA are SEARLE's defaults (AdamW, 350 steps, 2e-2, 0.01, EMA decay 0.99, the EMA tokens
  being the result).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from clip_cir.models.pseudo_words import (
    DEFAULT_PLACEHOLDER,
    encode_with_pseudo_words,
    placeholder_token_id,
    token_embedding_dim,
)
from clip_cir.models.towers import encode_text
from clip_cir.training.zero_shot_losses import OTI_COSINE_WEIGHT, OTI_REGULARISER_WEIGHT, oti_loss

OTI_TEMPLATES = (
    "This is a photo of a {}", "This photo contains a {}", "A photo of a {}", "This is an illustration of a {}",
    "This illustration contains a {}", "An illustrations of a {}", "This is a sketch of a {}",
    "This sketch contains a {}", "A sketch of a {}", "This is a diagram of a {}", "This diagram contains a {}",
    "A diagram of a {}", "A {}", "We see a {}", "{}", "We see a {} in this photo", "We see a {} in this image",
    "We see a {} in this illustration", "We see a {} photo", "We see a {} image", "We see a {} illustration",
    "{} photo", "{} image", "{} illustration",
)
"""PALAVRA's prompt templates, as SEARLE uses them for OTI and for embedding concepts."""

REGULARISER_TEMPLATES = (
    "a photo of {} that was taken outdoors on a sunny day",
    "a photo of {} that is standing on a wooden table",
    "a photo of {} that shows its colour and its shape",
    "a photo of {} that someone took in the middle of a city",
    "a photo of {} that is seen up close in bright light",
    "a photo of {} that sits in front of a plain white wall",
    "a photo of {} that appeared in a magazine",
    "a photo of {} that was found in an old family album",
)
"""Stand-ins for SEARLE's GPT phrases: "a photo of {concept} that ..." with fixed continuations."""

OTI_STEPS, OTI_LEARNING_RATE, OTI_WEIGHT_DECAY, OTI_EMA_DECAY = 350, 2e-2, 0.01, 0.99


def _fill(template: str, word: str) -> str:
    return " ".join(template.format(f" {word} ").split())


def regulariser_phrases(concepts: Sequence[str], choices: Sequence[int],
                        placeholder: str = DEFAULT_PLACEHOLDER) -> tuple[list[str], list[str]]:
    """(phrases about each concept, the same phrases with the concept replaced by the
    placeholder), phrase i from `REGULARISER_TEMPLATES[choices[i]]`."""
    templates = [REGULARISER_TEMPLATES[c] for c in choices]
    return ([_fill(t, c) for t, c in zip(templates, concepts)], [_fill(t, placeholder) for t in templates])


@torch.no_grad()
def concept_features(clip, concepts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """[C, D] each concept's unit feature: the normalised mean of its normalised prompt features
    over `OTI_TEMPLATES` (SEARLE's prompt ensembling); on the CLIP's device."""
    device = next(clip.model.parameters()).device
    rows = []
    for start in range(0, len(concepts), batch_size):
        chunk = concepts[start:start + batch_size]
        prompts = [_fill(t, c) for c in chunk for t in OTI_TEMPLATES]
        features = F.normalize(encode_text(clip.model, clip.tokenize(prompts).to(device)).float(), dim=-1)
        rows.append(F.normalize(features.view(len(chunk), len(OTI_TEMPLATES), -1).mean(dim=1), dim=-1))
    return torch.cat(rows)


def nearest_concepts(image_features: torch.Tensor, concepts: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k] indices of the k concepts (unit features [C, D]) most similar to each image, best first."""
    similarity = F.normalize(image_features.float(), dim=-1) @ concepts.to(image_features.device).float().t()
    return similarity.topk(min(k, concepts.shape[0]), dim=-1).indices


def _draw(n: int, high: int, generator: torch.Generator) -> list[int]:
    return torch.randint(high, (n,), generator=generator).tolist()


def textual_inversion(clip, image_features: torch.Tensor, concepts: Sequence[Sequence[str]],
                      steps: int = OTI_STEPS, lr: float = OTI_LEARNING_RATE, weight_decay: float = OTI_WEIGHT_DECAY,
                      ema_decay: float = OTI_EMA_DECAY, cosine_weight: float = OTI_COSINE_WEIGHT,
                      regulariser_weight: float = OTI_REGULARISER_WEIGHT, placeholder: str = DEFAULT_PLACEHOLDER,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """[N, W] OTI pseudo-word tokens (their EMA) for the raw image features [N, D] of one batch,
    image i regularised with `concepts[i]` (at least one word each). The CLIP stays frozen."""
    if any(not words for words in concepts) or len(concepts) != len(image_features):
        raise ValueError("textual inversion needs at least one concept word for every image")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    clip.model.requires_grad_(False)  # only the tokens learn: no weight gradients computed or kept
    model, placeholder_id = clip.model, placeholder_token_id(clip.tokenizer, placeholder)
    device = next(model.parameters()).device
    count, width = image_features.shape[0], token_embedding_dim(model)
    tokens = torch.nn.Parameter((torch.randn(count, width, generator=generator) * 0.02).to(device))
    ema = tokens.detach().clone()
    optimizer = torch.optim.AdamW([tokens], lr=lr, weight_decay=weight_decay)
    images = image_features.to(device).float()
    for _ in range(steps):
        templates = [_fill(OTI_TEMPLATES[t], placeholder) for t in _draw(count, len(OTI_TEMPLATES), generator)]
        words = [w[int(torch.randint(len(w), (1,), generator=generator))] for w in concepts]
        phrases, pseudo_phrases = regulariser_phrases(words, _draw(count, len(REGULARISER_TEMPLATES), generator),
                                                      placeholder)
        with torch.no_grad():
            phrase_features = encode_text(model, clip.tokenize(phrases, remember=True).to(device))
        template_features = encode_with_pseudo_words(model, clip.tokenize(templates, remember=True).to(device),
                                                     tokens, placeholder_id)
        pseudo_features = encode_with_pseudo_words(model, clip.tokenize(pseudo_phrases, remember=True).to(device),
                                                   tokens, placeholder_id)
        loss = oti_loss(template_features, images, phrase_features, pseudo_features, cosine_weight,
                        regulariser_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema = ema_decay * ema + (1 - ema_decay) * tokens.detach()
    return ema
