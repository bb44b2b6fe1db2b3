"""What the device can do, for `gpu.py`: the image tower alone (no data, no loss), FLOP counts and a
matrix-product peak, so each measured rate reads as a fraction of the device's limit.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and
attention, forward and backward; element-wise work is not counted), measured once per model on
a batch of two and divided per item: a rate in items/s times FLOPs per item is the achieved
TFLOP/s.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.towers import can_trim_text, encode_text, set_memory_format, tower_input

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counted_flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@dataclass
class Flops:
    """FLOPs per item of the work each benchmark row does."""

    image_forward: float
    image_train: float
    """Image tower forward + backward (weight gradients; the pixels need none), per image."""
    text_train_trimmed: float
    """Text tower forward + backward per caption at the training batches' trimmed length."""
    text_train_full: float
    """The same at the full context length (the published code's captions)."""
    trimmed_length: int

    def per_unit(self, key: str) -> float | None:
        """FLOPs per triplet or image of a `gpu.py` row; None where no model runs (loader) or the
        unit is seconds (stage 2)."""
        if key == "text":
            return self.text_train_trimmed
        if key == "text_published":
            return 2 * self.image_forward + self.text_train_full
        if key.startswith("both"):
            return 2 * self.image_train + self.text_train_trimmed
        if key.startswith("tower_train"):
            return self.image_train
        if key.startswith(("tower_forward", "extract")):
            return self.image_forward
        return None


def measure_flops(clip: LoadedCLIP, device: torch.device, trimmed_length: int) -> Flops:
    """Count once, on `device` (the counts do not depend on the precision or the layout)."""
    model = clip.model.to(device).eval()
    trainable = {p: p.requires_grad for p in model.parameters()}
    size = clip.input_size
    images = torch.randn(2, 3, size, size, device=device)

    def image_train() -> None:
        model.encode_image(images).float().sum().backward()

    full = model.positional_embedding.shape[0]
    if not can_trim_text(model):
        trimmed_length = full  # the programs keep such towers at the full context length

    def text_train(length: int) -> Callable[[], None]:
        tokens = torch.randint(1, 1000, (2, min(length, full)), device=device)
        tokens[:, -1] = 1000  # the end-of-text token: the largest id, where the tower pools
        return lambda: encode_text(model, tokens).float().sum().backward()

    try:
        for p in model.parameters():
            p.requires_grad_(True)
        # Counted with gradients on: under no_grad, eval-mode attention takes torch's fused
        # multi-head-attention kernel, whose projections the counter does not see (same products).
        forward = counted_flops(lambda: model.encode_image(images)) / 2
        train = counted_flops(image_train) / 2
        text_trimmed = counted_flops(text_train(trimmed_length)) / 2
        text_full = counted_flops(text_train(full)) / 2
    finally:
        for p, flag in trainable.items():
            p.grad = None
            p.requires_grad_(flag)
    return Flops(forward, train, text_trimmed, text_full, trimmed_length)


def trimmed_caption_length(clip: LoadedCLIP, captions: list[str], batch_size: int, seed: int) -> int:
    """The training batches' mean longest caption in tokens (stage 1 trims each batch to its
    longest), over one random order of the captions."""
    tokens = clip.tokenizer(captions)
    lengths = tokens.argmax(dim=-1) + 1  # through the end-of-text token (the largest id)
    order = torch.randperm(len(captions), generator=torch.Generator().manual_seed(seed))
    batches = [lengths[order[i:i + batch_size]].max() for i in range(0, len(order) - batch_size + 1, batch_size)]
    return round(float(torch.stack(batches).float().mean())) if batches else int(lengths.max())


def tower_rate(clip: LoadedCLIP, device: torch.device, autocast: Callable | None, *, batch_size: int,
               channels_last: bool, train: bool, steps: int, warmup: int = 3) -> float:
    """Images/s of the image tower alone on random pixels already on the device: forward under
    no_grad (extraction's work) or forward + backward with the tower's weights trainable (stage
    1's image work, in eval mode as stage 1 trains). `channels_last` converts tower and input."""
    model = clip.model.to(device).eval()
    set_memory_format(model, device, "on" if channels_last else "off")
    size = clip.input_size
    images = tower_input(torch.randn(batch_size, 3, size, size, device=device), channels_last)
    visual = list(model.visual.parameters())
    trainable = [p.requires_grad for p in visual]
    autocast = autocast or nullcontext

    def step() -> None:
        if train:
            with autocast():
                out = model.encode_image(images)
            out.float().sum().backward()
            for p in visual:
                p.grad = None
        else:
            with torch.no_grad(), autocast():
                model.encode_image(images)

    try:
        for p in visual:
            p.requires_grad_(train)
        for _ in range(warmup):
            step()
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        return batch_size * steps / (time.perf_counter() - started)
    finally:
        for p, flag in zip(visual, trainable):
            p.requires_grad_(flag)


def matmul_peak(device: torch.device, precision: str, size: int, steps: int = 10) -> float:
    """TFLOP/s of a square matrix product in the precision's dtype: what the device reaches on the
    friendliest work, the ceiling the rows are read against."""
    dtype = DTYPES[precision]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        a @ b
    synchronize(device)
    return 2 * size ** 3 * steps / (time.perf_counter() - started) / 1e12


@dataclass
class Stage1Step:
    """One stage-1 `--encoder both` optimizer step as the program takes it (`ClipEncoder` through
    `accelerator.prepare`, `training_step`, the loss), on random pixels and fixed captions already
    on the device: the work of a step without the data loading."""

    accelerator: object
    encoder: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batch: dict
    channels_last: bool
    forward: Callable[[dict], tuple[torch.Tensor, torch.Tensor]]

    def run(self, accum: int = 1) -> torch.Tensor:
        from clip_cir.training.accumulation import training_step
        from clip_cir.training.losses import batch_contrastive_loss

        loss = training_step(self.accelerator, self.encoder, self.forward, lambda f: batch_contrastive_loss(*f),
                             self.batch, accum)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def stage1_step(model_name: str, batch_size: int, *, cpu: bool, seed: int, precision: str = "no",
                channels_last: str = "auto", compile: bool = False) -> Stage1Step:
    """Build the model, optimizer (its state allocated by a zero-gradient step) and batch of a
    stage-1 `--encoder both` step with random init."""
    import torch.nn.functional as F
    from accelerate import Accelerator

    from clip_cir.models.clip import load_clip
    from clip_cir.models.combiner import element_wise_sum
    from clip_cir.training.encoders import ClipEncoder
    from clip_cir.training.optim import make_optimizer

    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision)
    clip = load_clip(model_name)
    model = clip.model.to(accelerator.device).eval()  # stage 1 keeps CLIP in eval mode while it trains
    layout = set_memory_format(model, accelerator.device, channels_last)
    size = clip.input_size
    optimizer = make_optimizer(torch.optim.AdamW, list(model.parameters()), lr=2e-6, betas=(0.9, 0.999), eps=1e-7,
                               weight_decay=0.01)  # stage 1's (fused where the device has it)
    module = ClipEncoder(model, compile=compile)
    encoder, optimizer = accelerator.prepare(module, optimizer)
    captions = [f"is red and has {i % 7} stripes instead of dots, larger" for i in range(batch_size)]
    batch = {"reference": torch.rand(batch_size, 3, size, size, device=accelerator.device),
             "target": torch.rand(batch_size, 3, size, size, device=accelerator.device),
             "tokens": clip.tokenize(captions, length_multiple=module.length_multiple).to(accelerator.device)}

    def forward(b: dict) -> tuple[torch.Tensor, torch.Tensor]:
        images, text = encoder(images=tower_input(torch.cat([b["reference"], b["target"]]), layout),
                               tokens=b["tokens"])
        reference, target = images.chunk(2)
        return element_wise_sum(reference, text), F.normalize(target, dim=-1)

    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return Stage1Step(accelerator, encoder, optimizer, batch, layout, forward)
