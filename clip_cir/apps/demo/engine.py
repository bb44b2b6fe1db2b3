"""What the web demo computes, without any web: a gallery, its index, and composed queries.

Kept apart from the HTTP layer so scripts and tests can use it directly, and so the cost of a
query is visible in one place. Every feature, query and search goes through the Python API's
objects (`clip_cir.api.CIRModel` and `Gallery`), so the demo and the API are one code path, the
one `clip-cir eval` runs: the gallery's features come from the feature cache (the same entries
`clip-cir eval` writes, so a gallery evaluated once starts instantly), and a query is one text
encoding, plus one image encoding for an uploaded reference, plus one nearest-neighbour search.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from PIL import Image

from clip_cir.api import CIRModel, Gallery, GalleryFeatures
from clip_cir.api import check_caption as check_text
from clip_cir.data.attributes import AttributeCatalogue
from clip_cir.data.types import CIRSplit
from clip_cir.encoding.search import SearchIndex
from clip_cir.encoding.split_features import EncodeOptions
from clip_cir.errors import CIRError
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.combiner import CombiningFunction

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
    caption: str | None
    elapsed_ms: float
    excluded_reference: bool = False
    attribute: str | None = None
    value: str | None = None


class DemoEngine:
    """Composed search over one gallery; thread-safe (one query at a time through CLIP)."""

    def __init__(self, clip: LoadedCLIP, combine: CombiningFunction, gallery: GalleryFeatures, encode: EncodeOptions, *,
                 combining_name: str, dataset: str = "", split: str = "", exclude_reference: bool = False,
                 backend: str = "exact", faiss_options: dict | None = None,
                 attributes: Mapping[str, Sequence[str]] | None = None, model: CIRModel | None = None):
        self.model = model or CIRModel(clip, combine, encode, combining=combining_name)
        self.attributes = {name: list(values) for name, values in (attributes or {}).items()}
        """Each attribute's value names, for searches that change one attribute (empty: no labels)."""
        self.clip = clip
        self.combine = combine
        self.encode = encode
        self.combining_name = combining_name
        self.dataset = dataset
        self.split = split
        self.exclude_reference = exclude_reference
        self.gallery = Gallery(self.model, gallery.names, gallery.paths, gallery.features,
                               exclude_reference=exclude_reference, backend=backend, **(faiss_options or {}))
        self.index: SearchIndex = self.gallery.index
        self.lock = threading.Lock()

    @classmethod
    def from_splits(cls, clip: LoadedCLIP, combine: CombiningFunction, splits: Sequence[CIRSplit],
                    encode: EncodeOptions, **kwargs) -> DemoEngine:
        """One gallery for all splits (FashionIQ: the union of the categories' galleries), by the
        API: each split's gallery encoded exactly as evaluation encodes it (same function, same
        cache key), so a gallery `clip-cir eval` has seen starts without encoding."""
        gallery = CIRModel(clip, combine, encode).gallery_features(list(splits))
        return cls(clip, combine, gallery, encode, dataset=splits[0].dataset, split=splits[0].split,
                   exclude_reference=splits[0].exclude_reference, **kwargs)

    @classmethod
    def from_catalogue(cls, model: CIRModel, catalogue: AttributeCatalogue, split: str, **kwargs) -> DemoEngine:
        """An attribute catalogue's split as the gallery (named as its files list the images), searched
        by `model` (`load(...)`: FLAM's manipulation or the template's caption). The reference stays in
        its results, as `clip-cir eval/rank --catalogue` rank it."""
        gallery = model.gallery_features(dict(zip(catalogue.images, catalogue.paths)))
        return cls(model.clip, model.combine, gallery, model.encode, combining_name=model.combining,
                   dataset="attribute catalogue", split=split, exclude_reference=False, model=model,
                   attributes=dict(zip(catalogue.attributes, catalogue.values)), **kwargs)

    def info(self) -> dict:
        """What the page shows about the setup: model, combining function, gallery, back-end, and
        each attribute's values when the gallery has labels."""
        return {"model": self.clip.describe(), "combining": self.combining_name, "dataset": self.dataset,
                "split": self.split, "gallery_size": len(self.gallery), "embed_dim": self.clip.embed_dim,
                "search": self.index.description, "exclude_reference": self.exclude_reference,
                "attributes": self.attributes}

    def filter_names(self, text: str = "") -> list[str]:
        text = text.strip().lower()
        return [n for n in self.gallery.names if text in n.lower()] if text else self.gallery.names

    def _image_features(self, image: Image.Image) -> torch.Tensor:
        """Raw features of an uploaded image (`CIRModel.image_features`)."""
        return self.model.image_features([image])

    def check_attribute(self, attribute: object, value: object) -> tuple[str, str]:
        """An attribute and one of its values, both named as the gallery's labels name them."""
        if not self.attributes:
            raise CIRError("this gallery has no attribute labels (start the demo with --catalogue DIR)")
        if not isinstance(attribute, str) or attribute not in self.attributes:
            shown = attribute[:100] if isinstance(attribute, str) else type(attribute).__name__
            raise CIRError(f"unknown attribute '{shown}' (the gallery's: {', '.join(self.attributes)})")
        values = self.attributes[attribute]
        if not isinstance(value, str) or value not in values:
            shown = value[:100] if isinstance(value, str) else type(value).__name__
            raise CIRError(f"attribute '{attribute}' has no value '{shown}' (its values: {', '.join(values)})")
        return attribute, value

    def search(self, caption: str | None, k: int, reference: str | None = None, image: Image.Image | None = None,
               attribute: str | None = None, value: str | None = None) -> SearchResult:
        """Top-k gallery images for a reference (a gallery name or an uploaded image) changed by a
        caption, or (caption None) with `attribute` set to `value` (`CIRModel.manipulate`)."""
        if caption is not None:
            caption = check_caption(caption)
        else:
            attribute, value = self.check_attribute(attribute, value)
        if (reference is None) == (image is None):
            raise CIRError("give either a gallery reference or an uploaded image")
        if reference is not None and reference not in self.gallery.index_of:
            raise CIRError(f"reference '{reference[:200]}' is not in the gallery")
        start = time.perf_counter()
        with self.lock:
            if caption is not None:
                found = self.gallery.search(reference if reference is not None else image, caption, k,
                                            exclude_reference=self.exclude_reference)
            else:
                found = self._manipulated_search(reference, image, attribute, value, k)
        hits = [Hit(rank=r + 1, name=name, score=score) for r, (name, score) in enumerate(found)]
        return SearchResult(hits=hits, reference=reference, caption=caption,
                            elapsed_ms=(time.perf_counter() - start) * 1000,
                            excluded_reference=reference is not None and self.exclude_reference,
                            attribute=None if caption is not None else attribute,
                            value=None if caption is not None else value)

    def _manipulated_search(self, reference: str | None, image: Image.Image | None, attribute: str, value: str,
                            k: int) -> list[tuple[str, float]]:
        """A gallery reference's stored features manipulated (no encoding), or an upload's."""
        if reference is None:
            return self.gallery.search_features(self.model.manipulate(image, attribute, value), k)
        row = self.gallery.index_of[reference]
        query = self.model.manipulate_features(self.gallery.features[row:row + 1], [attribute], [value])[0]
        return self.gallery.search_features(query, k, row if self.exclude_reference else None)


def check_caption(caption: object) -> str:
    """The API's check (a string with some text), stripped, and at most `MAX_CAPTION_CHARS` long."""
    caption = check_text(caption).strip()
    if len(caption) > MAX_CAPTION_CHARS:
        raise CIRError(f"caption is too long ({len(caption)} characters, at most {MAX_CAPTION_CHARS})")
    return caption
