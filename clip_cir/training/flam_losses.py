"""FLAM's losses (Shin, Park and Kim, BMVC 2019, equations (1)-(5)) and its online sampling (§4.1).

- (1) ℓ(f, f+, f-) = max(0, dist(f, f+) - dist(f, f-) + μ), dist the cosine distance 1 - cos.
- (2) L_emb = ℓ(d_a, e+, e-) + ℓ(e_a, d+, d-): each class's dictionary vector as the anchor of the
  embeddings of its images against those of other classes, and each embedding as the anchor of
  its class's dictionary vector against the other classes'. The paper does not say how triplets
  are drawn: here every valid triplet of the batch counts (every image of another class, every
  other class's vector) and each term is their mean. Images without a label of the attribute
  take no part: the embedders learn from whatever is labelled (the semi-supervised setting).
- (3) L_adv: D maximises log D(x) + log(1 - D(G(x, e-))); G minimises -log D(G(x, e-)), the
  non-saturating form the GAN paper recommends. On logits, with binary cross-entropy.
- (4) L_match: D's matching branch f is pulled to [φ_a(x) ⊕ φ_ā1(x) ⊕ ...] on real features (D
  learns the embedders' knowledge), and f(x~) to [φ_a(x-) ⊕ φ_ā1(x) ⊕ ...] on manipulated ones (G
  learns to give x~ x-'s value of a and x's others). The paper sums both terms; here D minimises
  the real one and G the fake one (D fitting fakes to their wanted embeddings would let G ignore
  them). Without the remaining attributes (the "S" variant) the target is φ_a alone.
- (5) L_cycle = E ||x - G(G(x, e-), e)||, e = φ_a(x).

||·|| is the Euclidean norm of each row, averaged over the batch (the paper writes ||·|| without a
subscript). The paper gives neither μ nor the weights of (3)-(5): the defaults below are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

FLAM_MARGIN = 0.2
"""μ of (1), on the cosine distance (not given in the paper)."""


@dataclass(frozen=True)
class FLAMLossWeights:
    """Weights of G's losses (3)-(5) (not given in the paper: 1 each)."""

    adversarial: float = 1.0
    matching: float = 1.0
    cycle: float = 1.0


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) along the last dimension (broadcasting)."""
    return 1 - F.cosine_similarity(a, b, dim=-1)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = FLAM_MARGIN) -> torch.Tensor:
    """(1): mean over rows of max(0, dist(a, p) - dist(a, n) + μ); 0 for no rows."""
    if anchor.numel() == 0:
        return anchor.new_zeros(())
    return F.relu(cosine_distance(anchor, positive) - cosine_distance(anchor, negative) + margin).mean()


def embedding_loss(embeddings: torch.Tensor, labels: torch.Tensor, dictionary: torch.Tensor,
                   margin: float = FLAM_MARGIN) -> torch.Tensor:
    """(2) over a batch of embeddings [B, k] of one attribute, labels [B] (-1 = missing) and its
    dictionary [C, k]: the mean of ℓ(d_{y_i}, e_i, e_j) over pairs of images of different classes
    plus the mean of ℓ(e_i, d_{y_i}, d_c) over images and classes c other than theirs. Every
    distance is one entry of the [C, B] cosine matrix between dictionary and embeddings."""
    known = labels >= 0
    y = labels[known]
    cosine = F.normalize(dictionary, dim=-1) @ F.normalize(embeddings[known], dim=-1).t()  # [C, B]
    own = cosine[y, torch.arange(len(y), device=y.device)]  # cos(d_{y_i}, e_i)
    other_image = y.unsqueeze(1) != y.unsqueeze(0)  # [B, B]: image j is of another class than image i
    # dist(d_{y_i}, e_i) - dist(d_{y_i}, e_j) = cos(d_{y_i}, e_j) - cos(d_{y_i}, e_i)
    first = F.relu(cosine[y] - own.unsqueeze(1) + margin)[other_image]
    other_class = F.one_hot(y, dictionary.shape[0]).t() == 0  # [C, B]: class c is not image i's
    # dist(e_i, d_{y_i}) - dist(e_i, d_c) = cos(d_c, e_i) - cos(d_{y_i}, e_i)
    second = F.relu(cosine - own.unsqueeze(0) + margin)[other_class]
    zero = embeddings.sum() * 0
    return (first.mean() if first.numel() else zero) + (second.mean() if second.numel() else zero)


def discriminator_adversarial_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """(3) for D: -(log D(x) + log(1 - D(x~))), each averaged over its batch."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """(3) for G, non-saturating: -log D(x~)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def matching_target(embeddings: Sequence[torch.Tensor], attribute: int, target_embedding: torch.Tensor | None = None,
                    include_remaining: bool = True) -> torch.Tensor:
    """The target of D's matching branch in (4): the manipulated attribute's embedding first
    (`target_embedding`, φ_a(x-) for a manipulated feature; by default φ_a(x) itself), then the
    embeddings of x for every other attribute in order; `embeddings` = [φ_a(x) for every a]."""
    first = embeddings[attribute] if target_embedding is None else target_embedding
    if not include_remaining:
        return first
    return torch.cat([first] + [e for a, e in enumerate(embeddings) if a != attribute], dim=-1)


def feature_matching_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One term of (4): E ||f(x) - target||."""
    return (predicted - target).norm(dim=-1).mean()


def cycle_loss(manipulator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], features: torch.Tensor,
               wanted: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """(5): E ||x - G(G(x, e-), e)||, with e- = `wanted` (φ_a(x-)) and e = `own` (φ_a(x))."""
    recovered = manipulator(manipulator(features, wanted), own)
    return (features - recovered).norm(dim=-1).mean()


def online_negatives(remaining: Sequence[torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
    """Online sampling (§4.1): for each row, the row of another class of the manipulated attribute
    (classes [B], -1 = unknown: never paired) closest to it in the remaining attributes' embedding
    spaces (the sum of cosine distances over `remaining`, each [B, k]); -1 where there is none.
    Without remaining attributes the first row of another class is taken."""
    distance = torch.zeros(len(classes), len(classes), device=classes.device)
    for e in remaining:
        distance = distance + cosine_distance(e.unsqueeze(1), e.unsqueeze(0))
    allowed = (classes.unsqueeze(1) != classes.unsqueeze(0)) & (classes >= 0).unsqueeze(1) & (classes >= 0).unsqueeze(0)
    distance = distance.masked_fill(~allowed, float("inf"))
    best = distance.argmin(dim=1)
    return torch.where(allowed.any(dim=1), best, torch.full_like(best, -1))


def random_negatives(classes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Without online sampling: for each row, a random row of another class (-1 where none)."""
    allowed = (classes.unsqueeze(1) != classes.unsqueeze(0)) & (classes >= 0).unsqueeze(1) & (classes >= 0).unsqueeze(0)
    scores = torch.rand(allowed.shape, generator=generator).to(classes.device).masked_fill(~allowed, -1.0)
    best = scores.argmax(dim=1)
    return torch.where(allowed.any(dim=1), best, torch.full_like(best, -1))
