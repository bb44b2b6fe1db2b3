"""What the web demo computes, without any web: a gallery, its index, and composed queries.

Kept apart from the HTTP layer so scripts and tests can use it directly, and so the cost of a
query is visible in one place: the gallery's features come from the foundation's feature cache
(the same cache entries `clip-cir eval` writes, so a gallery evaluated once starts instantly), and
a query is one text encoding, plus one image encoding for an uploaded reference, plus one
nearest-neighbour search.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from clip_cir.data.types import CIRSplit
from clip_cir.encoding.encode import EncodeOptions, encode_image_files
from clip_cir.encoding.features import encode_counts
from clip_cir.encoding.search import SearchIndex, build_index
from clip_cir.errors import CIRError
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.combiner import CombiningFunction
from clip_cir.models.towers import encode_text, is_channels_last, tower_input

MAX_CAPTION_CHARS = 1000


@dataclass
class Hit:
    rank: int
    name: str
    score: float


@dataclass
class SearchResult:
    hits: list[Hit]
    reference: str | None
    caption: str
    elapsed_ms: float
    excluded_reference: bool = False


@dataclass
class Gallery:
    """Image names in index order, their files, and their raw CLIP features."""

    names: list[str]
    paths: dict[str, Path]
    features: torch.Tensor
    index_of: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index_of = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)


def gallery_from_splits(clip: LoadedCLIP, splits: Sequence[CIRSplit], encode: EncodeOptions) -> Gallery:
    """One gallery for all splits (FashionIQ: the union of the categories' galleries).

    Each split's gallery is encoded exactly as evaluation encodes it (same function, same cache
    key), so a gallery `clip-cir eval` has seen starts without encoding; an image listed by
    several categories is kept once.
    """
    names: list[str] = []
    paths: dict[str, Path] = {}
    parts = []
    for split in splits:
        features = encode_image_files(clip, list(split.gallery.values()), encode,
                                      f"{split.name} {split.split} gallery")
        keep = []
        for i, (name, path) in enumerate(split.gallery.items()):
            if name not in paths:
                keep.append(i)
                names.append(name)
                paths[name] = path
        parts.append(features if len(keep) == len(features) else features[keep])  # no copy of a 123k gallery
    if not names:
        raise CIRError("the gallery is empty: the split lists no images")
    return Gallery(names=names, paths=paths, features=parts[0] if len(parts) == 1 else torch.cat(parts))


class DemoEngine:
    """Composed search over one gallery; thread-safe (one query at a time through CLIP)."""

    def __init__(self, clip: LoadedCLIP, combine: CombiningFunction, gallery: Gallery, encode: EncodeOptions, *,
                 combining_name: str, dataset: str = "", split: str = "", exclude_reference: bool = False,
                 backend: str = "exact", faiss_options: dict | None = None):
        self.clip = clip
        self.combine = combine
        self.gallery = gallery
        self.encode = encode
        self.combining_name = combining_name
        self.dataset = dataset
        self.split = split
        self.exclude_reference = exclude_reference
        self.index: SearchIndex = build_index(F.normalize(gallery.features, dim=-1), backend,
                                              **(faiss_options or {}))
        self.lock = threading.Lock()
        self.channels_last = is_channels_last(clip.model.visual)  # the layout the commands set (prepare)
        self.combine_device = next(iter(getattr(combine, "parameters", lambda: iter(()))()),
                                   torch.empty(0)).device

    @classmethod
    def from_splits(cls, clip: LoadedCLIP, combine: CombiningFunction, splits: Sequence[CIRSplit],
                    encode: EncodeOptions, **kwargs) -> DemoEngine:
        gallery = gallery_from_splits(clip, splits, encode)
        return cls(clip, combine, gallery, encode, dataset=splits[0].dataset, split=splits[0].split,
                   exclude_reference=splits[0].exclude_reference, **kwargs)

    def info(self) -> dict:
        """What the page shows about the setup: model, combining function, gallery, back-end."""
        return {"model": self.clip.describe(), "combining": self.combining_name, "dataset": self.dataset,
                "split": self.split, "gallery_size": len(self.gallery), "embed_dim": self.clip.embed_dim,
                "search": self.index.description, "exclude_reference": self.exclude_reference}

    def filter_names(self, text: str = "") -> list[str]:
        text = text.strip().lower()
        return [n for n in self.gallery.names if text in n.lower()] if text else self.gallery.names

    @torch.no_grad()
    def _text_features(self, caption: str) -> torch.Tensor:
        # Not features.encode_texts: its cache key hashes the whole text tower on every call, which
        # would cost more than the encoding itself for one caption.
        tokens = self.clip.tokenize([caption]).to(self.encode.device)
        with (self.encode.autocast or nullcontext)():
            features = encode_text(self.clip.model, tokens).float().cpu()
        encode_counts["text"] += 1
        return features

    @torch.no_grad()
    def _image_features(self, image: Image.Image) -> torch.Tensor:
        pixels = tower_input(self.encode.transform(image).unsqueeze(0).to(self.encode.device),
                             self.channels_last)
        self.clip.model.eval()
        with (self.encode.autocast or nullcontext)():
            features = self.clip.model.encode_image(pixels).float().cpu()
        encode_counts["image"] += 1
        return features

    @torch.no_grad()
    def _query(self, image_features: torch.Tensor, caption: str) -> torch.Tensor:
        text_features = self._text_features(caption)
        query = self.combine(image_features.to(self.combine_device), text_features.to(self.combine_device))
        return F.normalize(query.float().cpu(), dim=-1)

    def search(self, caption: str, k: int, reference: str | None = None,
               image: Image.Image | None = None) -> SearchResult:
        """Top-k gallery images for a reference (a gallery name or an uploaded image) + caption."""
        caption = check_caption(caption)
        if (reference is None) == (image is None):
            raise CIRError("give either a gallery reference or an uploaded image")
        if reference is not None and reference not in self.gallery.index_of:
            raise CIRError(f"reference '{reference[:200]}' is not in the gallery")
        start = time.perf_counter()
        exclude = None
        with self.lock:
            if reference is not None:
                ref_index = self.gallery.index_of[reference]
                image_features = self.gallery.features[ref_index:ref_index + 1]
                if self.exclude_reference:
                    exclude = torch.tensor([ref_index])
            else:
                image_features = self._image_features(image)
            query = self._query(image_features, caption)
            scores, indices = self.index.search(query, k, exclude)
        hits = [Hit(rank=r + 1, name=self.gallery.names[i], score=float(s))
                for r, (i, s) in enumerate(zip(indices[0].tolist(), scores[0].tolist())) if i >= 0]
        return SearchResult(hits=hits, reference=reference, caption=caption,
                            elapsed_ms=(time.perf_counter() - start) * 1000, excluded_reference=exclude is not None)


def check_caption(caption: object) -> str:
    if not isinstance(caption, str):
        raise CIRError(f"caption must be a string, got {type(caption).__name__}")
    caption = caption.strip()
    if not caption:
        raise CIRError("caption is empty: type how the reference should change")
    if len(caption) > MAX_CAPTION_CHARS:
        raise CIRError(f"caption is too long ({len(caption)} characters, at most {MAX_CAPTION_CHARS})")
    return caption
