"""The raw features of a whole split that evaluation, validation and the demo rank with (and
`EncodeOptions`, how to run CLIP, from `encoding.options`).

A query's reference image is usually a gallery member, so its features come from the gallery
features: a split encodes each gallery image once and each caption once. References kept apart
from the gallery (`CIRSplit.query_images`) are encoded once each besides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from clip_cir.data.types import CIRSplit
from clip_cir.encoding.extraction import encode_images, encode_texts
from clip_cir.encoding.options import EncodeOptions
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.compositors.base import TokenFeatures
from clip_cir.models.compositors.loading import reads_caption_tokens, uses_tokens

if TYPE_CHECKING:
    from clip_cir.encoding.token_store import TokenTable

__all__ = ["EncodeOptions", "SplitFeatures", "TokenRequest", "TokenRows", "encode_captions", "encode_image_files",
           "no_tokens", "split_features", "token_request"]


@dataclass(frozen=True)
class TokenRequest:
    """A compositor that reads token features wants them, its image grid pooled to `grid` cells a
    side, and the captions' tokens only if it reads them (`captions`)."""

    grid: int | None = None
    captions: bool = True


def token_request(combine: Any) -> TokenRequest | None:
    """What token features a combining function needs: none, or those its checkpoint was trained on."""
    if not uses_tokens(combine):
        return None
    return TokenRequest(getattr(combine, "token_grid", None), reads_caption_tokens(combine))


@dataclass
class TokenRows:
    """Token features of N inputs, gathered a batch at a time from a memory-mapped `TokenTable`:
    item i is the table's row `rows[i]` with the global feature `pooled[i]`. Indexing by a slice
    or an index tensor gives `TokenFeatures` (tokens as stored, float16). Without a table (a
    compositor that reads only the captions' global features), the features hold no tokens."""

    pooled: torch.Tensor
    table: TokenTable | None
    rows: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: slice | torch.Tensor) -> TokenFeatures:
        if not isinstance(index, (slice, torch.Tensor)):
            raise TypeError(f"token rows are taken by a slice or an index tensor, not {type(index).__name__}")
        pooled = self.pooled[index.to(self.pooled.device) if isinstance(index, torch.Tensor) else index]
        if self.table is None:
            return no_tokens(pooled)
        tokens, mask = self.table.gather(self.rows[index.cpu() if isinstance(index, torch.Tensor) else index])
        return TokenFeatures(pooled, tokens.to(pooled.device), mask.to(pooled.device), self.table.grid)


def no_tokens(pooled: torch.Tensor) -> TokenFeatures:
    """Global features [B, D] as `TokenFeatures` with no tokens (for a compositor that reads only them)."""
    return TokenFeatures(pooled, pooled.new_zeros(len(pooled), 0, pooled.shape[-1]),
                         torch.zeros(len(pooled), 0, dtype=torch.bool, device=pooled.device))


@dataclass
class SplitFeatures:
    """Raw CLIP features of one split: its gallery, and per query its reference and caption
    (global, and per token where a compositor reads tokens)."""

    split: CIRSplit
    gallery: torch.Tensor
    reference: torch.Tensor
    text: torch.Tensor
    reference_tokens: TokenRows | None = None
    text_tokens: TokenRows | None = None


def encode_image_files(clip: LoadedCLIP, paths: Sequence[Path], options: EncodeOptions, desc: str) -> torch.Tensor:
    return encode_images(clip, paths, options.transform, device=options.device, batch_size=options.batch_size,
                         num_workers=options.num_workers, cache=options.image_cache, autocast=options.autocast,
                         pixel_cache=options.pixel_cache, sharded=options.sharded,
                         precision=options.precision, desc=desc, progress=options.progress)


def encode_captions(clip: LoadedCLIP, texts: Sequence[str], options: EncodeOptions, desc: str) -> torch.Tensor:
    return encode_texts(clip, texts, device=options.device, batch_size=max(options.batch_size, 256),
                        cache=options.text_cache, autocast=options.autocast, precision=options.precision,
                        desc=desc, progress=options.progress, sharded=options.sharded)


def split_features(clip: LoadedCLIP, split: CIRSplit, options: EncodeOptions,
                   tokens: TokenRequest | None = None) -> SplitFeatures:
    """The split's features; with `tokens`, also the token features of its reference images and
    captions (through the token cache, computed once per model like the global features)."""
    name = f"{split.name} {split.split}"
    paths = list(split.gallery.values())
    files = list(dict.fromkeys(paths))  # entries that share a file (Spot-the-Diff's copies) encode it once
    gallery = encode_image_files(clip, files, options, f"{name} gallery")
    if len(files) < len(paths):
        row = {path: i for i, path in enumerate(files)}
        gallery = gallery[torch.tensor([row[path] for path in paths], dtype=torch.long)]
    index = {name: i for i, name in enumerate(split.gallery)}
    apart = list(dict.fromkeys(q.reference for q in split.queries if q.reference not in index))
    images = gallery
    if apart:  # references that are not gallery entries (CSS's 2D queries)
        index.update({ref: len(index) + i for i, ref in enumerate(apart)})
        images = torch.cat([gallery, encode_image_files(clip, [split.image_file(r) for r in apart], options,
                                                        f"{name} query images")])
    reference_rows = torch.tensor([index[q.reference] for q in split.queries], dtype=torch.long)
    reference = images[reference_rows]
    captions = [q.eval_caption for q in split.queries]
    text = encode_captions(clip, captions, options, f"{name} captions")
    features = SplitFeatures(split=split, gallery=gallery, reference=reference, text=text)
    if tokens is not None:
        from clip_cir.encoding.token_store import encode_image_tokens, encode_text_tokens

        # Only the references' tokens: the gallery is ranked by global features (CIRCO: 800
        # references against 123k gallery images).
        references = list(dict.fromkeys(q.reference for q in split.queries))
        at = {reference: row for row, reference in enumerate(references)}
        image_table = encode_image_tokens(clip, [split.image_file(r) for r in references], options,
                                          f"{name} reference tokens", grid=tokens.grid)
        text_table = encode_text_tokens(clip, captions, options, f"{name} caption tokens") if tokens.captions else None
        features.reference_tokens = TokenRows(reference, image_table,
                                              torch.tensor([at[q.reference] for q in split.queries], dtype=torch.long))
        features.text_tokens = TokenRows(text, text_table, torch.arange(len(captions)))
    return features
