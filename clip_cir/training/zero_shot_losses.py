"""The losses the zero-shot methods train their mapping network φ with (`models.zero_shot`),
each on tensors the caller computed: our own code after each authors' training script.

- Pic2Word (google-research/composed_image_retrieval, `src/trainer.py` `get_loss_img2text`): the
  frozen CLIP's image feature f and the text feature of "a photo of $" with $ = φ(f) should find
  each other in the batch: symmetric cross-entropy over the cosine logits scaled by CLIP's own
  `logit_scale.exp()` (the mean of image->text and text->image). Under data parallelism every
  rank's rows are candidates and gradients reach every rank (`losses.gather_with_grad`), where
  the authors' code gathers without gradient; on one process the two are the same loss.
- SEARLE (miccunifi/SEARLE, `src/train_phi.py`, `src/utils.py` `contrastive_loss`,
  `src/oti_inversion.py`): φ is distilled towards tokens found per image by optimisation-based
  textual inversion (OTI) with a symmetric contrastive loss at temperature 0.25 (each predicted
  token and its OTI token are a positive pair; every other token of the 2B, predicted or OTI, a
  negative), plus a regulariser (weight 0.75) that keeps the pseudo-word behaving like a real
  word: 1 - cosine between a phrase about a concept word and the same phrase with the concept
  replaced by the pseudo-word. OTI itself minimises (1·(1 - cos(template prompt, image)) +
  0.5·regulariser) / 1.5 per image (`training.textual_inversion`). The authors' phrases come from
  GPT-Neo continuing "a photo of {concept} that"; we have no language model, so fixed phrases
  stand in for them (`textual_inversion.REGULARISER_TEMPLATES`).
- LinCIR (navervision/lincir, `train_phi.py`): language only. A caption's feature t, noised as
  t + u·ε (u ~ U(0, 1) per caption, ε ~ N(0, I), scale 1.0), goes through φ; the caption with its
  keywords replaced by the pseudo-word (`training.keywords`) must encode to t again: mean squared
  error between the unnormalised features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clip_cir.training.losses import batch_contrastive_loss

SEARLE_TEMPERATURE = 0.25
SEARLE_DISTILLATION_WEIGHT = 1.0
SEARLE_REGULARISER_WEIGHT = 0.75
"""φ's loss weights (`train_phi.py` `--lambda-distil`, `--lambda-gpt`)."""
OTI_COSINE_WEIGHT = 1.0
OTI_REGULARISER_WEIGHT = 0.5
"""OTI's loss weights (`oti_inversion.py` `--lambda_cos`, `--lambda_gpt`)."""
LINCIR_NOISE_SCALE = 1.0


def pic2word_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                  logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Pic2Word's symmetric contrastive loss between image features [B, D] and the features [B, D]
    of their pseudo-word prompts (both raw; normalised here), logits `logit_scale` x cosine
    (`logit_scale`: CLIP's `logit_scale.exp()`, about 100 for OpenAI's weights)."""
    images, texts = F.normalize(image_features.float(), dim=-1), F.normalize(text_features.float(), dim=-1)
    return (batch_contrastive_loss(images, texts, logit_scale) + batch_contrastive_loss(texts, images, logit_scale)) / 2


def searle_distillation_loss(oti_tokens: torch.Tensor, predicted_tokens: torch.Tensor,
                             temperature: float = SEARLE_TEMPERATURE) -> torch.Tensor:
    """SEARLE's contrastive distillation between OTI tokens [B, W] and φ's tokens [B, W]: over the
    2B normalised vectors, each one's positive is its partner; -log(exp(s_pos / τ) / Σ_{j ≠ i}
    exp(s_ij / τ)), the sum over the other 2B - 1 vectors (its positive among them), averaged."""
    joint = F.normalize(torch.cat((oti_tokens.float(), predicted_tokens.float())), dim=-1)
    pairs = oti_tokens.shape[0]
    logits = joint @ joint.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * pairs, dtype=torch.bool, device=logits.device), float("-inf"))
    partner = torch.cat((torch.arange(pairs, 2 * pairs), torch.arange(pairs))).to(logits.device)
    return F.cross_entropy(logits, partner)


def cosine_distance(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(features_i, targets_i): `nn.CosineEmbeddingLoss` with every target label 1."""
    return (1 - F.cosine_similarity(features.float(), targets.float(), dim=-1)).mean()


def searle_regulariser(phrase_features: torch.Tensor, pseudo_phrase_features: torch.Tensor) -> torch.Tensor:
    """SEARLE's regulariser: phrases about concept words [B, D] against the same phrases with the
    concept replaced by the pseudo-word [B, D], 1 - cosine, averaged."""
    return cosine_distance(pseudo_phrase_features, phrase_features)


def searle_phi_loss(oti_tokens: torch.Tensor, predicted_tokens: torch.Tensor, phrase_features: torch.Tensor,
                    pseudo_phrase_features: torch.Tensor, temperature: float = SEARLE_TEMPERATURE,
                    distillation_weight: float = SEARLE_DISTILLATION_WEIGHT,
                    regulariser_weight: float = SEARLE_REGULARISER_WEIGHT) -> torch.Tensor:
    """φ's loss in SEARLE: weighted sum of the distillation and the regulariser (not normalised by the weights)."""
    return (distillation_weight * searle_distillation_loss(oti_tokens, predicted_tokens, temperature)
            + regulariser_weight * searle_regulariser(phrase_features, pseudo_phrase_features))


def oti_loss(template_features: torch.Tensor, image_features: torch.Tensor, phrase_features: torch.Tensor,
             pseudo_phrase_features: torch.Tensor, cosine_weight: float = OTI_COSINE_WEIGHT,
             regulariser_weight: float = OTI_REGULARISER_WEIGHT) -> torch.Tensor:
    """One OTI step's loss: template prompts with the pseudo-word [B, D] against their images'
    features [B, D], and the regulariser; weighted mean (divided by the sum of the weights)."""
    return ((cosine_weight * cosine_distance(template_features, image_features)
             + regulariser_weight * searle_regulariser(phrase_features, pseudo_phrase_features))
            / (cosine_weight + regulariser_weight))


def lincir_noise(text_features: torch.Tensor, scale: float = LINCIR_NOISE_SCALE,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """LinCIR's input to φ: t + scale·u·ε, u ~ U(0, 1) one per row (drawn first), ε ~ N(0, I)."""
    rows = text_features.shape[0]
    amount = torch.rand(rows, generator=generator, device=text_features.device, dtype=text_features.dtype)
    noise = torch.randn(text_features.shape, generator=generator, device=text_features.device,
                        dtype=text_features.dtype)
    return text_features + scale * amount.unsqueeze(-1) * noise


def lincir_loss(masked_features: torch.Tensor, caption_features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the keyword-masked captions' features (pseudo-word in place of
    each keyword) [B, D] and the captions' own [B, D], both unnormalised, over every element."""
    return F.mse_loss(masked_features.float(), caption_features.float())
