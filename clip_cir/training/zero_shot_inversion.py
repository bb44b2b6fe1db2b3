"""SEARLE's first step over a whole training set: each image's concept words, then its
optimisation-based textual inversion (OTI) token, computed once per run and kept in the run
directory (`RUN/oti/`), so that a resumed run, or one interrupted during the inversion, does not
redo finished work.

As SEARLE's `oti_inversion.py`, images are inverted in batches of `--oti-batch-size`, each batch
on its own (its tokens, optimiser and EMA); a batch's random draws come from a generator seeded by
(seed, batch index) alone, so the tokens do not depend on how many processes share the work or
where a run was interrupted. Under data parallelism each process inverts every P-th batch of a
chunk and the main process writes the chunk. The inversion runs in float32 without autocast.
Concepts are the `--oti-top-k` words of the vocabulary nearest to the image by CLIP similarity
(SEARLE's `image_concepts_association.py`, over our vocabulary instead of Open Images' classes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from clip_cir.config import TextualInversionConfig
from clip_cir.models.files import META_KEY, atomic_write, read_safetensors
from clip_cir.training.textual_inversion import concept_features, nearest_concepts, textual_inversion

log = logging.getLogger("clip_cir")

OTI_FOLDER = "oti"
CHUNK_BATCHES = 32
"""Batches per file in RUN/oti/: what an interrupted inversion keeps."""


def image_concepts(clip, image_features: torch.Tensor, vocabulary: Sequence[str], k: int) -> list[list[str]]:
    """Each image's `k` nearest concept words (by cosine between its feature and each word's
    prompt-ensembled feature), nearest first."""
    nearest = nearest_concepts(image_features, concept_features(clip, vocabulary), k)
    return [[vocabulary[j] for j in row] for row in nearest.tolist()]


def inversion_key(settings: TextualInversionConfig, seed: int, placeholder: str, identity: dict[str, Any],
                  image_paths: Sequence[Path], concepts: Sequence[Sequence[str]]) -> str:
    """What the tokens depend on, hashed: a chunk written with another key is recomputed."""
    what = {"settings": settings.to_options(), "seed": seed, "placeholder": placeholder, "clip": identity,
            "images": [str(p) for p in image_paths], "concepts": [list(c) for c in concepts]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _read_chunk(path: Path, key: str, rows: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    tensors, meta = read_safetensors(path)
    tokens = tensors.get("tokens")
    if meta.get("key") != key or tokens is None or tokens.shape[0] != rows:
        return None
    return tokens


def _write_chunk(path: Path, tokens: torch.Tensor, key: str) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    header = {META_KEY: json.dumps({"kind": "oti-tokens", "key": key, "rows": tokens.shape[0]})}
    atomic_write(path, lambda tmp: save_file({"tokens": tokens.contiguous()}, tmp, metadata=header))


def _agree(accelerator, value: bool) -> bool:
    """The main process's `value` on every process."""
    if accelerator is None or accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    shared = [value]
    broadcast_object_list(shared)
    return bool(shared[0])


def invert_images(clip, image_features: torch.Tensor, concepts: Sequence[Sequence[str]],
                  settings: TextualInversionConfig, seed: int, folder: Path, key: str, accelerator=None,
                  placeholder: str = "$", progress: bool = False) -> torch.Tensor:
    """[N, W] OTI tokens (their EMA, on the CPU) of N raw image features, image i regularised with
    `concepts[i]`; chunks already in `folder` under `key` are read, the others computed and written."""
    count, size = len(image_features), settings.oti_batch_size
    rank, processes = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    is_main = rank == 0
    chunk_rows = CHUNK_BATCHES * size
    chunks = []
    bar = tqdm(total=count, desc="textual inversion", unit="img", disable=None if progress else True)
    for number, start in enumerate(range(0, count, chunk_rows)):
        rows = min(chunk_rows, count - start)
        path = folder / f"tokens_{number:05d}.safetensors"
        cached = _read_chunk(path, key, rows)
        if _agree(accelerator, cached is not None):
            chunks.append(cached if cached is not None else _read_chunk(path, key, rows))
            bar.update(rows)
            continue
        mine = {}
        for offset in range(0, rows, size):
            batch = (start + offset) // size
            if batch % processes != rank:
                continue
            index = slice(start + offset, start + min(offset + size, rows))
            generator = torch.Generator().manual_seed(seed * 1_000_003 + batch)
            mine[batch] = textual_inversion(
                clip, image_features[index], concepts[index], steps=settings.oti_steps, lr=settings.oti_lr,
                weight_decay=settings.oti_weight_decay, ema_decay=settings.oti_ema_decay, placeholder=placeholder,
                generator=generator).cpu()
            bar.update(index.stop - index.start)
        if processes > 1:
            from accelerate.utils import gather_object

            mine = {b: t for part in gather_object([mine]) for b, t in part.items()}
        tokens = torch.cat([mine[b] for b in sorted(mine)])
        if is_main:
            _write_chunk(path, tokens, key)
        chunks.append(tokens)
        log.debug("textual inversion: %d of %d images", start + rows, count)
    bar.close()
    return torch.cat(chunks) if chunks else torch.empty(0)
