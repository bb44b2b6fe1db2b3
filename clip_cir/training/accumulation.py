"""One optimizer step's gradient, in one piece or accumulated over micro-batches, exactly.

A contrastive loss couples every example of the batch with every other (each target is a
negative for all other queries), so plain gradient accumulation (sum the losses of K small
batches) trains a different, weaker objective. open_clip's `--accum-freq` keeps the objective:

1. each micro-batch's features are computed without gradients (memory of one micro-batch);
2. the loss is taken over the whole batch of features (other ranks' targets gathered as in
   one piece) and differentiated with respect to the features only;
3. each micro-batch is run again with gradients, and the cached feature gradients are pushed
   through it: d(loss)/d(params) = sum over micro-batches of (d loss/d features) . (d features/d params).

Step 3 re-runs each micro-batch with the random state it had in step 1, so dropout draws the
same masks. Step 2 runs in float32 outside autocast (its gradient never meets the fp16 loss
scaler, and fp16 logits would underflow), and the re-forwards go through `accelerator.backward`,
so fp16 loss scaling (and its skipped steps on overflow) works as in one piece. Under DDP the
gradient all-reduce runs once, with the last micro-batch. Train-mode BatchNorm statistics are
restored after step 1, so the feature pass does not update them a second time.

Unlike open_clip's `--accum-freq`, K splits `--batch-size` (it does not multiply it), and a learnt
temperature gets its gradient once per step, not once per micro-batch.

What the step needs from a stage: `forward(batch) -> tuple of per-example tensors` (rows are the
batch's examples, in order; a tensor that must enter the loss once, like a learnt logit scale,
is expanded to one row per example and the loss reads row 0) and `loss(features) -> scalar`
over the whole local batch. BatchNorm in train mode normalises each micro-batch with its own
statistics, as in open_clip: only the method's eval-mode CLIP (stage 1) is exact with it.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch

Features = Sequence[torch.Tensor]


def split_batch(batch: Any, pieces: int) -> list[Any]:
    """`pieces` equal consecutive slices of a batch (dict, tensor or list)."""
    if isinstance(batch, dict):
        parts = {key: split_batch(value, pieces) for key, value in batch.items()}
        return [{key: parts[key][i] for key in batch} for i in range(pieces)]
    size = len(batch)
    if size % pieces:
        raise ValueError(f"a batch of {size} does not split into {pieces} equal micro-batches")
    step = size // pieces
    return [batch[i * step:(i + 1) * step] for i in range(pieces)]


class RngSnapshot:
    """The CPU and current-device random states, to replay a forward's dropout exactly."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _batchnorm_statistics(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every train-mode BatchNorm's running statistics: the feature pass must
    not update them on top of the re-forward."""
    return [(buffer, buffer.clone()) for module in model.modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training
            for buffer in module.buffers()]


def training_step(accelerator, model: torch.nn.Module, forward: Callable[[Any], Features],
                  loss: Callable[[Features], torch.Tensor], batch: Any, accum_steps: int = 1) -> torch.Tensor:
    """Backpropagate one batch's loss (the optimizer step is the caller's); return the loss."""
    if accum_steps == 1:
        with accelerator.autocast():
            value = loss(forward(batch))
        accelerator.backward(value)
        return value.detach()

    micro_batches = split_batch(batch, accum_steps)
    states, cached = [], []
    statistics = _batchnorm_statistics(model)
    with torch.no_grad():
        for micro in micro_batches:
            states.append(RngSnapshot(accelerator.device))
            with accelerator.autocast():
                cached.append([f.detach().float() for f in forward(micro)])
    for buffer, saved in statistics:  # only the re-forwards below update them
        buffer.copy_(saved)
    leaves = [torch.cat(parts).requires_grad_() for parts in zip(*cached)]
    # In float32, outside autocast: this gradient does not pass through the fp16 loss scaler, and
    # an fp16 logits matmul would underflow its ~1/B entries at large B.
    with torch.autocast(accelerator.device.type, enabled=False):
        value = loss(leaves)
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]
    rows = [f.shape[0] for f in cached[0]]
    for i, (micro, state) in enumerate(zip(micro_batches, states)):
        state.restore()
        last = i == accum_steps - 1
        with (nullcontext() if last else accelerator.no_sync(model)):
            with accelerator.autocast():
                outputs = forward(micro)
            surrogate = sum((out.float() * g[i * n:(i + 1) * n]).sum()
                            for out, g, n in zip(outputs, grads, rows) if out.requires_grad)
            accelerator.backward(surrogate)
    return value.detach()
