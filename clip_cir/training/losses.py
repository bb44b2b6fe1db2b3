"""The method's batch contrastive loss, correct under data parallelism.

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

METHOD_LOGIT_SCALE = 100.0


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
