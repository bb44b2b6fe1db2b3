"""The method's batch contrastive loss, and TIRG's soft triplet and batch classification losses
(which LBF trains with, summed), all correct under data parallelism.

Each query is scored against the targets of every rank. Accelerate's `gather` carries no
gradient, so targets are gathered with `torch.distributed.nn.all_gather`, whose backward sends
each rank the gradient of every rank's loss w.r.t. its own targets (as open_clip's ClipLoss
does with `gather_with_grad=True`). N processes x batch B then train like one process with
batch N*B.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from clip_cir.errors import CIRError

METHOD_LOGIT_SCALE = 100.0
TIRG_INITIAL_SCALE = 4.0
"""TIRG's feature scale before learning (torch_functions.NormalizationLayer, normalize_scale=4.0)."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, in rank order, keeping the autograd graph."""
    if not _distributed():
        return tensor
    import torch.distributed.nn  # registers the differentiable collectives

    return torch.cat(torch.distributed.nn.all_gather(tensor.contiguous()), dim=0)


def batch_contrastive_loss(queries: torch.Tensor, targets: torch.Tensor,
                           scale: float = METHOD_LOGIT_SCALE) -> torch.Tensor:
    """Cross-entropy of each normalised query against all normalised targets (query -> target only).

    Query i's positive is target i of the same rank; every other target, on any rank, is a negative.
    """
    all_targets = gather_with_grad(targets)
    offset = dist.get_rank() * queries.shape[0] if _distributed() else 0
    logits = scale * queries.float() @ all_targets.float().t()
    labels = torch.arange(queries.shape[0], device=queries.device) + offset
    return F.cross_entropy(logits, labels)


class LearnedScale(nn.Module):
    """TIRG's normalisation layer: features -> s * x / ||x|| with s learned (TIRG's NormalizationLayer,
    learn_scale=True). Query and target features both pass through it before TIRG's losses, so
    the classification logits are s^2 * cosine and the triplet distances s^2 * ||x^ - y^||^2."""

    def __init__(self, initial: float = TIRG_INITIAL_SCALE):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(initial)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features.float(), dim=-1)


def soft_triplet_loss(queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """TIRG's soft triplet loss (compute_soft_triplet_loss_) on features already scaled by `LearnedScale`.

    Queries and targets form one set in which query i and target i share label i. Every member is
    an anchor; its positive is the other member of its pair, its negatives are all members of the
    other pairs (queries and targets alike), and each (anchor, negative) costs
    log(1 + exp(d(anchor, positive) - d(anchor, negative))), d the squared Euclidean distance.
    The loss is the mean over all of them: the expectation of TIRG's, which samples 3 negatives
    per anchor. Under DDP every rank's pairs are members and each rank's anchors are its own.
    """
    all_queries, all_targets = gather_with_grad(queries.float()), gather_with_grad(targets.float())
    pairs = all_queries.shape[0]
    if pairs < 2:
        raise CIRError("the soft triplet loss needs at least 2 query-target pairs in a batch (it has no negative)")
    members = torch.cat((all_queries, all_targets))
    offset = dist.get_rank() * queries.shape[0] if _distributed() else 0
    local = torch.arange(queries.shape[0], device=queries.device) + offset
    anchors, partners = torch.cat((local, local + pairs)), torch.cat((local + pairs, local))
    squared_norms = (members * members).sum(dim=1)
    distances = (squared_norms[anchors, None] + squared_norms[None, :]
                 - 2 * members[anchors] @ members.t()).clamp_min(0)
    positive = distances.gather(1, partners[:, None])
    labels = torch.arange(2 * pairs, device=queries.device) % pairs
    negative = labels[None, :] != labels[anchors, None]
    return F.softplus(positive - distances)[negative].mean()


def batch_classification_loss(queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """TIRG's batch-based classification loss (compute_batch_based_classification_loss_) on features
    already scaled by `LearnedScale`: cross-entropy of query i over the batch's targets, logits
    the dot products (s^2 * cosine), positive target i; targets gathered from every rank."""
    return batch_contrastive_loss(queries, targets, scale=1.0)


def lbf_loss(queries: torch.Tensor, targets: torch.Tensor, scale: LearnedScale) -> torch.Tensor:
    """LBF's training loss: TIRG's soft triplet plus batch classification losses, summed, on the
    query and target features both scaled by the learned `scale` (raw or unit features in)."""
    scaled_queries, scaled_targets = scale(queries), scale(targets)
    return (soft_triplet_loss(scaled_queries, scaled_targets)
            + batch_classification_loss(scaled_queries, scaled_targets))


class SoftTripletClassificationLoss(nn.Module):
    """`lbf_loss` with its learned scale as a module (`--loss soft-triplet-classification`): the
    stage prepares it with Accelerate and calls it, so under DDP the scale's gradient is averaged
    across processes like the compositor's."""

    def __init__(self, initial_scale: float = TIRG_INITIAL_SCALE):
        super().__init__()
        self.scale = LearnedScale(initial_scale)

    def forward(self, queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # In float32 even under mixed precision: the triplet's distances are differences of
        # squared norms, which half-precision products get wrong by a large share of their range.
        with torch.autocast(queries.device.type, enabled=False):
            return lbf_loss(queries.float(), targets.float(), self.scale)
