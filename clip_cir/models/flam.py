"""FLAM (Shin, Park and Kim, "Semi-supervised Feature-Level Attribute Manipulation for Fashion Image
Retrieval", BMVC 2019) on frozen CLIP image features: its networks.

- Attribute-specific embedders φ_a (§3.1): a feature x -> e_a = φ_a(x) in a k-dimensional space
  (k = 32, §4.1), each with a dictionary of one vector d_{a,i} per value i of attribute a.
- Query feature manipulator G (§3.2): G(x, e) from the concatenation [x, e], a feature that should
  hold e's value of the manipulated attribute and keep x's others; a query is G(x, d_{a,i}) (§3.3).
- Discriminator D (§3.2) whose last layer is split in two branches: a real/fake logit, and f(x) to
  be matched with the embeddings of every attribute (k per attribute: the manipulated one first,
  then the others in order; k alone without the others, the paper's "S" variant).

Adaptations, none of which the paper fixes otherwise:
- x is CLIP's global image feature, L2-normalised, instead of the paper's ResNet50-SPoC feature
  (1024-d, trained for instance retrieval); CLIP stays frozen, as FLAM's backbone does.
- Embeddings and dictionary vectors are used on the unit sphere (the triplet loss's cosine distance
  sees only directions). The paper learns d by its loss (2) and calls d_{a,i} the centroid of class
  i's cluster (§3.3); `set_dictionary_to_centroids` makes that literal: the normalised mean of the
  embeddings of the images labelled i (missing labels ignored), used for queries.
- The paper gives no layer sizes besides k. φ_a, G and D are MLPs with LeakyReLU(0.2) as in
  DiscoGAN (its reference [21], by the same authors): φ_a with one hidden layer (0: a linear map),
  G and D with two. G synthesises x~ from [x, e] as the paper's does; `residual` makes it x plus
  the MLP's output instead (worse on the synthetic catalogue).
- Every network works in a centred and scaled copy of CLIP's space (`fit_feature_space`): CLIP's
  normalised features fill a narrow cone (a random-init tiny CLIP's: mean cosine 0.99 between
  images), so they are moved to zero mean and unit mean norm, and manipulated queries are moved
  back and normalised before they are ranked against the gallery's CLIP features.
- Each attribute has its own G and D: the matching target puts the manipulated attribute first,
  so its layout depends on which attribute is changed; one conditional network for all
  attributes would not know which slot e belongs to.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.errors import CIRError

FLAM_EMBEDDING_DIM = 32
"""k, the dimension of an attribute-specific embedding (§4.1)."""
FLAM_EMBEDDER_HIDDEN = 512
"""Hidden width of φ_a; 0 = a single linear layer (the paper does not say)."""
FLAM_MANIPULATOR_HIDDEN = 512
FLAM_DISCRIMINATOR_HIDDEN = 512
"""Hidden widths of G and D (two hidden layers each; not given in the paper)."""
LEAKY_SLOPE = 0.2


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(width_in, width_out))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    return nn.Sequential(*layers)


def class_centroids(embeddings: torch.Tensor, labels: torch.Tensor, n_values: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised mean of the normalised embeddings [N, k] of each class (labels [N], -1 = missing):
    ([n_values, k] centroids, [n_values] bool: whether a class has any labelled embedding; the
    centroid of a class without one is zero)."""
    known = labels >= 0
    one_hot = F.one_hot(labels[known], n_values).to(embeddings.dtype)  # [N_known, C]
    sums = one_hot.t() @ F.normalize(embeddings[known], dim=-1)
    present = one_hot.sum(dim=0) > 0
    return F.normalize(sums, dim=-1), present


class AttributeEmbedder(nn.Module):
    """φ_a: features [B, D] -> normalised embeddings [B, k], and the dictionary d_a [n_values, k]."""

    def __init__(self, feature_dim: int, n_values: int, embedding_dim: int = FLAM_EMBEDDING_DIM,
                 hidden_dim: int = FLAM_EMBEDDER_HIDDEN):
        super().__init__()
        sizes = [feature_dim] + ([hidden_dim] if hidden_dim > 0 else []) + [embedding_dim]
        self.net = _mlp(sizes)
        self.dictionary = nn.Parameter(F.normalize(torch.randn(n_values, embedding_dim), dim=-1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=-1)

    def dictionary_vectors(self) -> torch.Tensor:
        """d_a on the unit sphere, [n_values, k]."""
        return F.normalize(self.dictionary, dim=-1)


class QueryManipulator(nn.Module):
    """G: (x [B, D], e [B, k]) -> manipulated features [B, D] (in the space x is given in)."""

    def __init__(self, feature_dim: int, embedding_dim: int = FLAM_EMBEDDING_DIM,
                 hidden_dim: int = FLAM_MANIPULATOR_HIDDEN, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.net = _mlp([feature_dim + embedding_dim, hidden_dim, hidden_dim, feature_dim])

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        out = self.net(torch.cat((features, embedding), dim=-1))
        return features + out if self.residual else out


class ManipulationDiscriminator(nn.Module):
    """D: features [B, D] -> (real/fake logits [B], f(x) [B, matching_dim]) from one shared trunk."""

    def __init__(self, feature_dim: int, matching_dim: int, hidden_dim: int = FLAM_DISCRIMINATOR_HIDDEN):
        super().__init__()
        self.trunk = nn.Sequential(_mlp([feature_dim, hidden_dim, hidden_dim]), nn.LeakyReLU(LEAKY_SLOPE))
        self.real_fake = nn.Linear(hidden_dim, 1)
        self.matching = nn.Linear(hidden_dim, matching_dim)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(features)
        return self.real_fake(hidden).squeeze(-1), self.matching(hidden)


class FLAM(nn.Module):
    """The embedders of every attribute, and a manipulator G and discriminator D per attribute.

    `options` holds the constructor's keyword arguments, so saved weights rebuild their network."""

    def __init__(self, feature_dim: int, value_counts: Sequence[int], embedding_dim: int = FLAM_EMBEDDING_DIM,
                 embedder_hidden: int = FLAM_EMBEDDER_HIDDEN, manipulator_hidden: int = FLAM_MANIPULATOR_HIDDEN,
                 discriminator_hidden: int = FLAM_DISCRIMINATOR_HIDDEN, match_remaining: bool = True,
                 residual: bool = False):
        if feature_dim < 1 or embedding_dim < 1 or not value_counts or min(value_counts) < 1:
            raise CIRError(f"FLAM needs positive sizes and at least one attribute with values, got feature_dim "
                           f"{feature_dim}, embedding_dim {embedding_dim}, value counts {list(value_counts)}")
        super().__init__()
        self.options: dict[str, Any] = dict(
            feature_dim=feature_dim, value_counts=[int(c) for c in value_counts], embedding_dim=embedding_dim,
            embedder_hidden=embedder_hidden, manipulator_hidden=manipulator_hidden,
            discriminator_hidden=discriminator_hidden, match_remaining=match_remaining, residual=residual)
        self.value_counts = tuple(int(c) for c in value_counts)
        self.match_remaining = match_remaining
        matching_dim = embedding_dim * (len(value_counts) if match_remaining else 1)
        self.embedders = nn.ModuleList(AttributeEmbedder(feature_dim, c, embedding_dim, embedder_hidden)
                                       for c in value_counts)
        self.manipulators = nn.ModuleList(QueryManipulator(feature_dim, embedding_dim, manipulator_hidden, residual)
                                          for _ in value_counts)
        self.discriminators = nn.ModuleList(ManipulationDiscriminator(feature_dim, matching_dim, discriminator_hidden)
                                            for _ in value_counts)
        self.register_buffer("center", torch.zeros(feature_dim))
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def fit_feature_space(self, features: torch.Tensor) -> None:
        """Center and scale of the working space from (training) CLIP features [N, D]: their
        normalised mean, and the mean norm of the normalised features minus it."""
        unit = F.normalize(features.float(), dim=-1)
        self.center.copy_(unit.mean(dim=0))
        self.scale.copy_((unit - self.center).norm(dim=-1).mean().clamp_min(1e-12))

    def to_working_space(self, features: torch.Tensor) -> torch.Tensor:
        """CLIP features [B, D] -> the space every FLAM network works in: normalised, centred, scaled."""
        return (F.normalize(features.float(), dim=-1) - self.center) / self.scale

    def from_working_space(self, features: torch.Tensor) -> torch.Tensor:
        """Back to CLIP's space, normalised (where galleries are ranked)."""
        return F.normalize(features * self.scale + self.center, dim=-1)

    def embed(self, features: torch.Tensor) -> list[torch.Tensor]:
        """[φ_a(x) for every attribute a], each [B, k]."""
        return [embedder(features) for embedder in self.embedders]

    @torch.no_grad()
    def set_dictionary_to_centroids(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """d_{a,i} := the centroid of the embeddings of the features [N, D] labelled i for attribute a
        (labels [N, A], -1 = missing); a value no feature is labelled with keeps its vector."""
        for a, embedder in enumerate(self.embedders):
            centroids, present = class_centroids(embedder(features), labels[:, a], self.value_counts[a])
            embedder.dictionary[present] = centroids[present]

    def manipulate(self, features: torch.Tensor, attribute: int, values: torch.Tensor | int) -> torch.Tensor:
        """G_a(x, d_{a,v}): working-space features [B, D] with attribute `attribute` set to `values`
        (one or [B]), in the working space."""
        dictionary = self.embedders[attribute].dictionary_vectors()
        if isinstance(values, int):
            values = torch.full((features.shape[0],), values, dtype=torch.long, device=features.device)
        return self.manipulators[attribute](features, dictionary[values])

    def manipulate_queries(self, features: torch.Tensor, attributes: torch.Tensor,
                           values: torch.Tensor) -> torch.Tensor:
        """CLIP features [B, D], each row manipulated by its own attribute and value ([B] each):
        normalised query features in CLIP's space."""
        working = self.to_working_space(features)
        out = torch.empty_like(working)
        for a in attributes.unique().tolist():
            rows = attributes == a
            out[rows] = self.manipulate(working[rows], int(a), values[rows])
        return self.from_working_space(out)
