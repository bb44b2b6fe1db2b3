"""Stage-1 memory per backbone by arithmetic, without a GPU or a download: which GPU a large
open_clip model fine-tunes on with `--accum-steps` and `--grad-checkpointing`.

For each model, instantiated on PyTorch's meta device from its open_clip config (no memory, no
weights):
- parameters, counted exactly, per tower;
- training state with float32 master weights: the trained towers' parameters x 4 bytes x (weight
  + gradient + AdamW's two moments), the frozen tower's weights x 4 bytes;
- activations kept for the backward pass per training triplet (`--encoder text`: one caption;
  `--encoder both`: two images and one caption), counted by autograd's saved-tensor hooks on
  the meta device in float32 (model parameters excluded), with and without gradient
  checkpointing (`clip_cir.models.grad_checkpointing`). Captions at the full context length (causal
  CLIP towers trim them to the batch's longest, far shorter on CIRR and FashionIQ).

A step's peak is the state plus the larger of its two phases: forward and backward hold the bf16
copies autocast makes of the trained weights (2 bytes each) and one micro-batch's activations;
AdamW's step holds a float32 temporary per trained parameter (torch's multi-tensor kernel). The
smallest GPU holds that peak and a fixed allowance for the CUDA context and the allocator
(`OVERHEAD_GB`), with the largest micro-batch (a power of two up to `--batch-size`) that fits,
giving `--accum-steps batch / micro-batch`. All of it
is an estimate: activations on the meta device include attention probabilities that GPUs' fused
attention does not keep, and are counted in float32 where autocast keeps most in bf16 (both
overestimate); a real run also holds the data loader's batches and the frozen features.

    python benchmarks/backbone_memory.py [--models NAME ...] [--batch-size 128] [--gpus 16 24 40 48 80]

`--measure M` (CUDA) checks the arithmetic: random-init weights on the GPU, float32 master weights,
AdamW, bf16 autocast, two stage-1 steps of M triplets at the full context length; the peak memory
allocated during the second step (the optimizer state then exists) against the estimate for M.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1024 ** 3
MB = 1024 ** 2
OVERHEAD_GB = 1.5
"""CUDA context, cuBLAS/cuDNN workspaces and allocator slack: an allowance, not a measurement."""
MODELS = ("RN50x4", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14", "ViT-SO400M-14-SigLIP",
          "ViT-SO400M-14-SigLIP-384", "ViT-SO400M-14-SigLIP2", "EVA02-L-14")


def build(name: str):
    """The open_clip model `name` on the meta device, in eval mode (as stage 1 trains)."""
    import open_clip
    import torch

    import clip_cir.models.clip  # noqa: F401 - registers the tiny configs

    with torch.device("meta"):
        return open_clip.create_model(name, device="meta").eval()


def tower_parameters(model) -> dict[str, int]:
    image = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"image": image, "text": total - image}


def saved_bytes(fn, model, counter: dict | None = None) -> int:
    """Bytes of the distinct storages autograd keeps for backward while `fn` runs, parameters
    excluded; `counter["bytes"]` follows the running total."""
    import torch

    params = {p.untyped_storage()._cdata for p in model.parameters()}
    kept: dict[int, int] = {}
    counter = {} if counter is None else counter
    counter["bytes"] = 0

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in params and storage._cdata not in kept:
            kept[storage._cdata] = storage.nbytes()
            counter["bytes"] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(kept.values())


def checkpoint_units(model) -> list[str]:
    """Names of the modules a checkpointed model recomputes one at a time in the backward pass:
    ours (`Checkpointed`) and the blocks of every module open_clip or timm set `grad_checkpointing` on."""
    from torch import nn

    from clip_cir.models.grad_checkpointing import Checkpointed

    names = {module: name for name, module in model.named_modules()}
    units = []
    for module in model.modules():
        if isinstance(module, Checkpointed):
            units.append(names[module])
        elif getattr(module, "grad_checkpointing", False) is True:
            for child in module.children():
                if isinstance(child, (nn.ModuleList, nn.Sequential)):
                    units += [names[block] for block in child.children()]
    return units


def _inputs(model, batch: int):
    import torch

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    context = getattr(model, "context_length", None) or model.text.context_length
    return (torch.zeros(batch, 3, size, size, device="meta"),
            torch.ones(batch, context, dtype=torch.long, device="meta"))


def activations_per_sample(name: str, batch: int = 2) -> dict[str, dict[str, float]]:
    """Per image and per caption (all parameters trainable): bytes kept for backward without and
    with checkpointing, and the largest checkpointed unit's own activations, which the backward
    pass holds again while it recomputes that unit."""
    from clip_cir.models.grad_checkpointing import enable_grad_checkpointing
    from clip_cir.models.towers import encode_text

    plain, checkpointed = build(name), build(name)
    enable_grad_checkpointing(checkpointed)
    units = set(checkpoint_units(checkpointed))
    unit_bytes: dict[str, int] = {}
    counter = {"bytes": 0}
    for module_name, module in plain.named_modules():
        if module_name in units:
            module.register_forward_pre_hook(lambda m, a, n=module_name: unit_bytes.__setitem__(n, -counter["bytes"]))
            module.register_forward_hook(lambda m, a, o, n=module_name: unit_bytes.__setitem__(
                n, unit_bytes[n] + counter["bytes"]))
    images, tokens = _inputs(plain, batch)
    out = {}
    for tower, run in (("image", lambda m: m.encode_image(images)), ("text", lambda m: encode_text(m, tokens))):
        unit_bytes.clear()
        kept = saved_bytes(lambda run=run: run(plain), plain, counter)
        fewer = saved_bytes(lambda run=run: run(checkpointed), checkpointed)
        out[tower] = {"plain": kept / batch, "checkpointed": fewer / batch,
                      "unit": max(unit_bytes.values(), default=0) / batch}
    return out


def trained_parameters(params: dict[str, int], encoder: str) -> int:
    return params["text"] + (params["image"] if encoder == "both" else 0)


def state_bytes(params: dict[str, int], encoder: str) -> float:
    """float32 weights, gradients and AdamW moments of the trained towers; float32 frozen weights."""
    trained = trained_parameters(params, encoder)
    return trained * 4 * 4 + (sum(params.values()) - trained) * 4


def peak_bytes(params: dict[str, int], encoder: str, activations: float) -> float:
    """The state plus the larger phase: bf16 weight copies + `activations` (forward/backward), or
    AdamW's float32 temporaries (its step)."""
    trained = trained_parameters(params, encoder)
    return state_bytes(params, encoder) + max(2 * trained + activations, 4 * trained)


def per_triplet(activations: dict, encoder: str, kind: str) -> float:
    """Bytes per training triplet: `plain`, or `checkpointed` plus the largest unit recomputed in backward."""
    towers = ("text", "image") if encoder == "both" else ("text",)
    per_tower = {"text": 1, "image": 2}  # a triplet's caption; its reference and target images
    kept = sum(per_tower[t] * activations[t][kind] for t in towers)
    if kind == "checkpointed":
        kept += max(per_tower[t] * activations[t]["unit"] for t in towers)
    return kept


def smallest_gpu(params: dict[str, int], encoder: str, triplet: float, batch_size: int, gpus: list[int]) -> str:
    for gpu in gpus:
        micro = batch_size
        while micro >= 1 and peak_bytes(params, encoder, micro * triplet) + OVERHEAD_GB * GB > gpu * GB:
            micro //= 2
        if micro >= 1:
            return f"{gpu} GB, --accum-steps {batch_size // micro}"
    return f"> {gpus[-1]} GB (shard the state: DeepSpeed/FSDP)"


def row(name: str, batch_size: int, gpus: list[int]) -> dict:
    params = tower_parameters(build(name))
    activations = activations_per_sample(name)
    out = {"model": name, "params": params, "activations": activations}
    for encoder in ("text", "both"):
        state = state_bytes(params, encoder)
        checkpointed = per_triplet(activations, encoder, "checkpointed")
        out[encoder] = {"state": state, "plain": per_triplet(activations, encoder, "plain"),
                        "checkpointed": checkpointed,
                        "gpu": smallest_gpu(params, encoder, checkpointed, batch_size, gpus)}
    return out


def measure(name: str, micro: int) -> list[dict]:
    """Peak CUDA memory of a stage-1 step of `micro` triplets, per encoder, without and with checkpointing."""
    import open_clip
    import torch
    import torch.nn.functional as F

    import clip_cir.models.clip  # noqa: F401 - registers the tiny configs
    from clip_cir.models.grad_checkpointing import enable_grad_checkpointing
    from clip_cir.models.towers import encode_text

    with torch.device("cuda"):
        model = open_clip.create_model(name, device="cuda").eval()
    params = tower_parameters(model)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    context = getattr(model, "context_length", None) or model.text.context_length
    vocab = getattr(model, "vocab_size", None) or getattr(model.text, "vocab_size", 32000)
    activations = activations_per_sample(name)
    images = torch.randn(2 * micro, 3, size, size, device="cuda")
    tokens = torch.randint(1, vocab - 1, (micro, context), device="cuda")
    rows = []
    for checkpointed in (False, True):
        if checkpointed:
            enable_grad_checkpointing(model)
        for encoder in ("text", "both"):
            for pname, p in model.named_parameters():
                p.requires_grad = (encoder == "both" or not pname.startswith("visual.")) and not pname.startswith(
                    ("logit_", "text_decoder."))
                p.grad = None
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-9)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                frozen = model.encode_image(images) if encoder == "text" else None
            peak = None
            try:
                for _step in range(2):
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        image = model.encode_image(images) if frozen is None else frozen
                        text = encode_text(model, tokens)
                    reference, target = image.float().chunk(2)
                    query = F.normalize(reference + text.float(), dim=-1)
                    loss = F.cross_entropy(100 * query @ F.normalize(target, dim=-1).T,
                                           torch.arange(micro, device="cuda"))
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated()
            except torch.OutOfMemoryError:
                peak = None
            del optimizer, frozen
            torch.cuda.empty_cache()
            estimate = peak_bytes(params, encoder, micro * per_triplet(
                activations, encoder, "checkpointed" if checkpointed else "plain"))
            rows.append({"model": name, "encoder": encoder, "checkpointed": checkpointed, "micro": micro,
                         "peak": peak, "estimate": estimate})
    del model
    torch.cuda.empty_cache()
    return rows


def print_measured(models: list[str], micro: int) -> None:
    import torch

    print(f"Measured on {torch.cuda.get_device_name()}: peak allocated during a stage-1 step of {micro} triplets "
          f"(bf16 autocast, float32 weights + AdamW), against the estimate (without the {OVERHEAD_GB} GB allowance)\n")
    print("| model | encoder | --grad-checkpointing | measured peak (GB) | estimate (GB) |")
    print("|---|---|---|---|---|")
    for name in models:
        for r in measure(name, micro):
            peak = "out of memory" if r["peak"] is None else f"{r['peak'] / GB:.1f}"
            print(f"| {name} | {r['encoder']} | {'yes' if r['checkpointed'] else 'no'} | {peak} | "
                  f"{r['estimate'] / GB:.1f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="open_clip model names")
    parser.add_argument("--batch-size", type=int, default=128, help="global contrastive batch (default: 128)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[16, 24, 40, 48, 80, 141],
                        help="GPU memory sizes in GB, smallest first")
    parser.add_argument("--measure", type=int, metavar="M", help="measure a step of M triplets on the GPU instead")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # open_clip's per-model INFO/WARNING lines
    if args.measure:
        print_measured(args.models, args.measure)
        return
    print(f"Stage-1 memory estimate, batch {args.batch_size}: float32 weights, gradients and AdamW moments "
          f"(state), bf16 autocast copies or AdamW temporaries, {OVERHEAD_GB} GB overhead; activations per "
          f"triplet at full context length, float32, meta device (estimates, not measurements)\n")
    print("| model | params image + text (M) | encoder | state (GB) | activations / triplet (MB) | "
          "with --grad-checkpointing (MB) | smallest GPU (estimate) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        r = row(name, args.batch_size, sorted(args.gpus))
        params = f"{r['params']['image'] / 1e6:.1f} + {r['params']['text'] / 1e6:.1f}"
        for encoder in ("text", "both"):
            e = r[encoder]
            print(f"| {name} | {params} | {encoder} | {e['state'] / GB:.1f} | {e['plain'] / MB:.0f} | "
                  f"{e['checkpointed'] / MB:.1f} | {e['gpu']} |")


if __name__ == "__main__":
    main()
