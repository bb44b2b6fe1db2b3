"""Training FLAM on a tensor of frozen CLIP image features, in the paper's two stages (§3, Figure 1):

1. the embedding stage: every φ_a and its dictionary with loss (2), on the images labelled for a;
   then (by default) each dictionary vector becomes its class's centroid (`FLAM.set_dictionary_to_centroids`);
2. the manipulating stage, per attribute a with the embedders frozen: pairs (x, x-) of different
   classes of a, x- chosen by online sampling (§4.1; at random without it), x~ = G(x, φ_a(x-));
   D steps on (3) and the real term of (4), G steps on (3), the fake term of (4) and (5).

The paper trains its manipulator on images without attribute labels, the embedders serving as
pseudo-labellers: here an image without a label of a takes the class of the nearest dictionary
vector to φ_a(x). The paper gives no optimiser settings: Adam, with DCGAN's (2e-4, β1 = 0.5) for G
and D. The initial weights, batches and random pairs are drawn from CPU generators seeded by
`seed`, and the caller's global RNG state is left as it was.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from clip_cir.data.attributes import AttributeQuery
from clip_cir.errors import CIRError
from clip_cir.models.flam import FLAM
from clip_cir.training.flam_losses import (
    FLAM_MARGIN,
    FLAMLossWeights,
    cycle_loss,
    discriminator_adversarial_loss,
    embedding_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    matching_target,
    online_negatives,
    random_negatives,
)

EMBEDDING_EPOCHS = 100
MANIPULATION_EPOCHS = 100
BATCH_SIZE = 64
EMBEDDING_LEARNING_RATE = 1e-3
GAN_LEARNING_RATE = 2e-4
GAN_BETAS = (0.5, 0.999)
DEFAULT_WEIGHTS = FLAMLossWeights()


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator).to(device)
    return [order[start:start + batch_size] for start in range(0, n, batch_size)]


def train_embedders(model: FLAM, features: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int,
                    learning_rate: float, margin: float, generator: torch.Generator) -> list[float]:
    """Stage 1: loss (2) summed over attributes; returns each epoch's mean loss."""
    optimizer = torch.optim.Adam(model.embedders.parameters(), lr=learning_rate)
    history = []
    for _ in range(epochs):
        total, steps = 0.0, 0
        for rows in _batches(len(features), batch_size, generator, features.device):
            x, y = features[rows], labels[rows]
            loss = sum(embedding_loss(embedder(x), y[:, a], embedder.dictionary_vectors(), margin)
                       for a, embedder in enumerate(model.embedders))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        history.append(total / max(steps, 1))
    return history


@torch.no_grad()
def manipulation_classes(model: FLAM, embeddings: Sequence[torch.Tensor], labels: torch.Tensor,
                         attribute: int) -> torch.Tensor:
    """Each image's class of `attribute`: its label, or the nearest dictionary vector's when missing."""
    pseudo = (embeddings[attribute] @ model.embedders[attribute].dictionary_vectors().t()).argmax(dim=1)
    return torch.where(labels[:, attribute] >= 0, labels[:, attribute], pseudo)


def pair_negatives(embeddings: Sequence[torch.Tensor], classes: torch.Tensor, attribute: int, online_sampling: bool,
                   generator: torch.Generator) -> torch.Tensor:
    """x- for each row of a batch (-1: none): of another class of `attribute`, the closest in the
    other attributes' embeddings with online sampling, else a random one."""
    if online_sampling:
        return online_negatives([e for a, e in enumerate(embeddings) if a != attribute], classes)
    return random_negatives(classes, generator)


def discriminator_loss(D: nn.Module, features: torch.Tensor, fake: torch.Tensor, embeddings: Sequence[torch.Tensor],
                       attribute: int, weights: FLAMLossWeights, match_remaining: bool) -> torch.Tensor:
    """D's loss: (3) on real features and detached manipulated ones, and the real term of (4)."""
    real_logits, real_matching = D(features)
    fake_logits, _ = D(fake.detach())
    target = matching_target(embeddings, attribute, include_remaining=match_remaining)
    return (discriminator_adversarial_loss(real_logits, fake_logits)
            + weights.matching * feature_matching_loss(real_matching, target))


def generator_losses(G: nn.Module, D: nn.Module, features: torch.Tensor, fake: torch.Tensor, wanted: torch.Tensor,
                     embeddings: Sequence[torch.Tensor], attribute: int,
                     match_remaining: bool) -> dict[str, torch.Tensor]:
    """G's unweighted terms for x~ = G(x, e-), e- = `wanted`: `adversarial` (3), `matching` (the
    fake term of (4), towards [e- ⊕ x's other embeddings]) and `cycle` (5), back with φ_a(x)."""
    fake_logits, fake_matching = D(fake)
    return {"adversarial": generator_adversarial_loss(fake_logits),
            "matching": feature_matching_loss(fake_matching, matching_target(embeddings, attribute, wanted,
                                                                             include_remaining=match_remaining)),
            "cycle": cycle_loss(G, features, wanted, embeddings[attribute])}


def train_manipulator(model: FLAM, attribute: int, features: torch.Tensor, labels: torch.Tensor, epochs: int,
                      batch_size: int, learning_rate: float, weights: FLAMLossWeights, online_sampling: bool,
                      generator: torch.Generator) -> list[dict[str, float]]:
    """Stage 2 for one attribute (G_a and D_a); returns each epoch's mean losses."""
    G, D = model.manipulators[attribute], model.discriminators[attribute]
    optimizer_g = torch.optim.Adam(G.parameters(), lr=learning_rate, betas=GAN_BETAS)
    optimizer_d = torch.optim.Adam(D.parameters(), lr=learning_rate, betas=GAN_BETAS)
    with torch.no_grad():
        all_embeddings = model.embed(features)
    classes = manipulation_classes(model, all_embeddings, labels, attribute)
    history = []
    for _ in range(epochs):
        sums = {"d": 0.0, "g": 0.0, "cycle": 0.0}
        steps = 0
        for rows in _batches(len(features), batch_size, generator, features.device):
            embeddings = [e[rows] for e in all_embeddings]
            negatives = pair_negatives(embeddings, classes[rows], attribute, online_sampling, generator)
            keep = negatives >= 0
            if not keep.any():
                continue
            x = features[rows][keep]
            wanted = embeddings[attribute][negatives[keep]]  # φ_a(x-)
            embeddings = [e[keep] for e in embeddings]
            fake = G(x, wanted)

            loss_d = discriminator_loss(D, x, fake, embeddings, attribute, weights, model.match_remaining)
            optimizer_d.zero_grad()
            loss_d.backward()
            optimizer_d.step()

            terms = generator_losses(G, D, x, fake, wanted, embeddings, attribute, model.match_remaining)
            loss_g = (weights.adversarial * terms["adversarial"] + weights.matching * terms["matching"]
                      + weights.cycle * terms["cycle"])
            optimizer_g.zero_grad()
            loss_g.backward()
            optimizer_g.step()
            sums["d"] += loss_d.item()
            sums["g"] += loss_g.item()
            sums["cycle"] += terms["cycle"].item()
            steps += 1
        history.append({key: value / max(steps, 1) for key, value in sums.items()})
    return history


def train_flam(features: torch.Tensor, labels: torch.Tensor | np.ndarray, value_counts: Sequence[int], seed: int = 0,
               embedding_epochs: int = EMBEDDING_EPOCHS, manipulation_epochs: int = MANIPULATION_EPOCHS,
               batch_size: int = BATCH_SIZE, embedding_learning_rate: float = EMBEDDING_LEARNING_RATE,
               gan_learning_rate: float = GAN_LEARNING_RATE, margin: float = FLAM_MARGIN,
               weights: FLAMLossWeights = DEFAULT_WEIGHTS, online_sampling: bool = True,
               centroid_dictionary: bool = True, **model_options: Any) -> FLAM:
    """A FLAM trained on image features [N, D] (normalised here) with labels [N, A] (-1 = missing);
    `model_options` go to `FLAM` (sizes, `match_remaining`, `residual`). The same arguments give the
    same weights."""
    labels = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.array(labels))
    labels = labels.to(features.device, torch.long)
    if features.ndim != 2 or labels.shape != (len(features), len(value_counts)):
        raise CIRError(f"FLAM training needs features [N, D] and labels [N, {len(value_counts)}], got "
                       f"{list(features.shape)} and {list(labels.shape)}")
    if (labels < -1).any() or (labels >= torch.tensor(value_counts, device=labels.device)).any():
        raise CIRError(f"a label is out of range for the value counts {list(value_counts)} (-1: missing)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FLAM(features.shape[1], value_counts, **model_options).to(features.device)
    model.fit_feature_space(features)
    features = model.to_working_space(features)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    train_embedders(model, features, labels, embedding_epochs, batch_size, embedding_learning_rate, margin, generator)
    if centroid_dictionary:
        model.set_dictionary_to_centroids(features, labels)
    for attribute in range(len(value_counts)):
        train_manipulator(model, attribute, features, labels, manipulation_epochs, batch_size, gan_learning_rate,
                          weights, online_sampling, generator)
    return model.eval()


@torch.no_grad()
def flam_query_features(model: FLAM, catalogue_features: torch.Tensor,
                        queries: Sequence[AttributeQuery]) -> torch.Tensor:
    """The manipulated features [Q, D] of queries on a catalogue whose image features [N, D] are given."""
    if not queries:
        return catalogue_features.new_zeros(0, catalogue_features.shape[1])
    features, device = catalogue_features, catalogue_features.device
    references = torch.tensor([q.reference for q in queries], device=device)
    attributes = torch.tensor([q.attribute for q in queries], device=device)
    values = torch.tensor([q.value for q in queries], device=device)
    return model.manipulate_queries(features[references], attributes, values)
