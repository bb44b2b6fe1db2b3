"""The Python API: load a model in one call, then encode, compose and search.

    import clip_cir
    model = clip_cir.load("runs/cirr-stage2")          # its CLIP and its Combiner
    gallery = model.index("photos/")                    # features through the feature cache
    hits = gallery.search("photos/a.jpg", "is red with long sleeves", k=10)   # [(name, score), ...]

Every number comes from the functions `clip-cir eval` runs: the same loaders, the same transform
(`--transform` default targetpad), the same image encoding and feature cache keys, the same
combining function and normalisation, the same search back-ends. The web demo answers its
queries through these objects too. Documented in docs/api.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from clip_cir.api.inputs import GallerySource, ImageInput, check_caption, image_file, image_list, listed_gallery
from clip_cir.config import SearchConfig
from clip_cir.data.folder import folder_gallery
from clip_cir.data.io import load_image
from clip_cir.data.types import CIRSplit
from clip_cir.encoding.extraction import (
    encode_counts,
    eval_mode,
)
from clip_cir.encoding.search import SearchIndex, build_index
from clip_cir.encoding.split_features import EncodeOptions, encode_captions, encode_image_files, no_tokens
from clip_cir.errors import CIRError
from clip_cir.evaluation.evaluate import compose_features, reads_captions
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.combiner import CombiningFunction
from clip_cir.models.compositors.base import TokenFeatures
from clip_cir.models.compositors.loading import reads_caption_tokens, uses_tokens
from clip_cir.models.towers import is_channels_last, tower_input
from clip_cir.models.transforms import ImageTransform

log = logging.getLogger("clip_cir")

CACHE_MIN_ROWS = 256
"""Lists of image files or captions at least this long (a default batch) go through the feature
cache; a shorter list is encoded directly, since a cache key hashes the whole tower, which costs
more than encoding a few inputs (and a service's queries would each leave an entry). Cached or
not, the features are the same. `index` always uses the cache."""


class CIRModel:
    """A CLIP, its combining function and how to encode (device, transform, batches, cache).

    Made by `load`. Image and text features are rows of float32 CPU tensors."""

    def __init__(self, clip: LoadedCLIP, combine: CombiningFunction, encode: EncodeOptions, *,
                 combining: str = "element-wise sum", attributes: Any = None,
                 attribute_template: str = "change the {attribute} to {value}"):
        self.clip = clip
        self.combine = combine
        self.encode = encode
        self.combining = combining
        """The combining function's name for people: a Combiner and its source, or the sum's."""
        self.attributes, self.attribute_template = attributes, attribute_template
        """`manipulate`'s FLAM (a `LoadedFLAM`, `load(..., attributes=RUN)`), or None: the template's caption."""

    @property
    def device(self) -> torch.device:
        return torch.device(self.encode.device)

    @property
    def embed_dim(self) -> int:
        return self.clip.embed_dim

    @property
    def transform(self) -> ImageTransform:
        return self.encode.transform

    def __repr__(self) -> str:
        return (f"CIRModel({self.clip.describe()}, combining={self.combining}, device={self.device}, "
                f"transform={self.transform.signature.split('|')[0]})")

    # --- raw features (what the feature cache stores and the combining function takes) -----------------

    def image_features(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """Raw CLIP image features [N, D]. Files are encoded as `clip-cir eval` encodes a gallery
        (the same batches, and for lists of `CACHE_MIN_ROWS` files or more the same feature cache
        entry for the same list); PIL images and pixel tensors in batches of the same size."""
        items = image_list(images)
        files = [i for i, item in enumerate(items) if isinstance(item, (str, os.PathLike))]
        options = self.encode if len(files) >= CACHE_MIN_ROWS else replace(self.encode, image_cache=None)
        if len(files) == len(items):
            return encode_image_files(self.clip, [image_file(p) for p in items], options, "image features")
        out = torch.empty(len(items), self.embed_dim)
        if files:
            out[files] = encode_image_files(self.clip, [image_file(items[i]) for i in files], options,
                                            "image features")
        listed = set(files)
        others = [i for i in range(len(items)) if i not in listed]
        out[others] = self._encode_in_memory([items[i] for i in others])
        return out

    def _pixel_batches(self, images: list[ImageInput]) -> Iterator[torch.Tensor]:
        """Images (files, decoded, or pixel tensors) as the tower's normalised input batches on the
        device, as `extraction.encode_images` runs files: uint8 pixels to the device, normalised there."""
        transform, device = self.encode.transform, self.device
        channels_last = is_channels_last(self.clip.model.visual)
        size = self.clip.input_size
        for image in images:
            if isinstance(image, torch.Tensor) and tuple(image.shape) != (3, size, size):
                raise CIRError(f"a pixel tensor for this model is [3, {size}, {size}] (preprocessed by "
                               f"model.transform), got shape {tuple(image.shape)}")
        for start in range(0, len(images), self.encode.batch_size):
            pixels = [image.cpu() if isinstance(image, torch.Tensor) else transform.pixels(
                image if isinstance(image, Image.Image) else load_image(image_file(image)))
                for image in images[start:start + self.encode.batch_size]]
            if len({p.dtype for p in pixels}) > 1:  # uint8 pixels next to float ones: all as model input
                pixels = [transform.normalize(p) for p in pixels]
            yield transform.normalize(tower_input(torch.stack(pixels).to(device), channels_last))

    @torch.no_grad()
    def _encode_in_memory(self, images: list[Image.Image | torch.Tensor]) -> torch.Tensor:
        """Decoded images and pixel tensors through the image tower, batch by batch."""
        parts = []
        with eval_mode(self.clip.model):
            for batch in self._pixel_batches(images):
                with (self.encode.autocast or nullcontext)():
                    features = self.clip.model.encode_image(batch)
                encode_counts["image"] += len(batch)
                parts.append(features.float().cpu())
        return torch.cat(parts)

    @torch.no_grad()
    def token_features(self, images: ImageInput | Sequence[ImageInput],
                       captions: str | Sequence[str]) -> tuple[TokenFeatures, TokenFeatures]:
        """Global and token features of reference images and captions, for a compositor that reads
        tokens: encoded directly (no cache), tokens rounded to float16 as the token cache stores them,
        so a query gets the numbers `clip-cir eval` gives it."""
        from clip_cir.models.token_features import image_token_features, text_token_features

        items, captions = image_list(images), [captions] if isinstance(captions, str) else list(captions)
        grid = getattr(self.combine, "token_grid", None)
        with eval_mode(self.clip.model), (self.encode.autocast or nullcontext)():
            image_parts = [image_token_features(self.clip.model, batch, grid) for batch in self._pixel_batches(items)]
            if reads_caption_tokens(self.combine):
                tokens = self.clip.tokenize([check_caption(c) for c in captions]).to(self.device)
                text = text_token_features(self.clip.model, tokens)
            else:  # the compositor reads the caption's global feature only
                text = no_tokens(self.text_features(captions))
        image = TokenFeatures(*(torch.cat([getattr(p, f) for p in image_parts]) for f in ("pooled", "tokens", "mask")),
                              image_parts[0].grid)
        return tuple(TokenFeatures(f.pooled.float().cpu(), f.tokens.half().float().cpu(), f.mask.cpu(), f.grid)
                     for f in (image, text))

    def text_features(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Raw CLIP text features [N, D], encoded as `clip-cir eval` encodes a split's captions."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for text in texts:
            check_caption(text)
        options = self.encode if len(texts) >= CACHE_MIN_ROWS else replace(self.encode, text_cache=None)
        return encode_captions(self.clip, texts, options, "text features")

    def compose_features(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Query vectors [N, D] from raw image and text features: the combining function, as evaluation runs it."""
        if reads_captions(self.combine):
            raise CIRError(f"the {self.combine.name} pseudo-word composition reads the captions themselves: compose "
                           f"with model.compose(images, captions)")
        if uses_tokens(self.combine) and isinstance(image_features, torch.Tensor):
            raise CIRError(f"the {self.combine.name} compositor reads token features: compose images and captions "
                           f"with model.compose, or pass model.token_features(images, captions)")
        return compose_features(self.combine, image_features, text_features)

    # --- the API ----------------------------------------------------------------------------------------

    def encode_images(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """Image features [N, D] with unit rows: what a gallery is searched by."""
        return F.normalize(self.image_features(images), dim=-1)

    def encode_texts(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Text features [N, D] with unit rows."""
        return F.normalize(self.text_features(texts), dim=-1)

    def compose(self, images: ImageInput | Sequence[ImageInput], captions: str | Sequence[str]) -> torch.Tensor:
        """Query vectors [N, D] with unit rows: reference image i changed by caption i."""
        items = image_list(images)
        captions = [captions] if isinstance(captions, str) else list(captions)
        if len(items) != len(captions):
            raise CIRError(f"{len(items)} images but {len(captions)} captions: give one caption per image")
        if uses_tokens(self.combine):
            return compose_features(self.combine, *self.token_features(items, captions))
        if reads_captions(self.combine):
            return self.combine(self.image_features(items), [check_caption(c) for c in captions]).cpu()
        text = self.text_features(captions)
        return self.compose_features(self.image_features(items), text)

    def manipulate(self, image: ImageInput, attribute: str, value: str) -> torch.Tensor:
        """A unit query vector [D]: `image` with `attribute` set to `value` (names), by FLAM when the
        model was loaded with `attributes=`, else by composing the template caption."""
        if len(image_list(image)) != 1:
            raise CIRError("manipulate takes one image (manipulate_features takes many)")
        return self.manipulate_features(self.image_features(image), [attribute], [value])[0]

    def manipulate_features(self, image_features: torch.Tensor, attributes: Sequence[str],
                            values: Sequence[str]) -> torch.Tensor:
        """Unit query vectors [N, D] from raw image features [N, D], one attribute and value each."""
        from clip_cir.api.attributes import manipulated_features

        return manipulated_features(self, image_features, attributes, values)

    def index(self, images: GallerySource, *, exclude_reference: bool | None = None,
              backend: str = SearchConfig.search,
              **faiss_options: Any) -> Gallery:
        """A searchable gallery: a folder (every image below it, named by its path in the folder,
        as `--gallery-dir`), a list of image files (named as given), a mapping name -> file, or
        dataset splits (`clip_cir.data.load_splits`; their galleries' union). Features come
        from the feature cache when `clip-cir eval`, `rank` or the demo computed them.
        `exclude_reference`: whether a reference from the gallery is left out of its own results;
        default: as the splits' protocol for dataset splits (CIRR removes it, FashionIQ and CIRCO
        keep it), removed for a folder or a list.
        `backend`: "exact" or "faiss" (with `index="flat"|"ivf"|"hnsw"`, `nprobe=`)."""
        if exclude_reference is None:
            splits = [images] if isinstance(images, CIRSplit) else images if (
                isinstance(images, Sequence) and images and all(isinstance(s, CIRSplit) for s in images)) else []
            exclude_reference = all(s.exclude_reference for s in splits) if splits else True
        images = self.gallery_features(images)
        return Gallery(self, images.names, images.paths, images.features, exclude_reference=exclude_reference,
                       backend=backend, **faiss_options)

    def gallery_features(self, images: GallerySource) -> GalleryFeatures:
        """What `index` searches, without the index: names, files and raw features."""
        if isinstance(images, (str, os.PathLike)):
            root = Path(images)
            if root.is_file():
                raise CIRError(f"{root}: a gallery is a folder or a list of images, not one file")
            splits = [folder_gallery(root)]
        elif isinstance(images, CIRSplit):
            splits = [images]
        elif isinstance(images, Sequence) and images and all(isinstance(s, CIRSplit) for s in images):
            splits = list(images)
        else:
            splits = [listed_gallery(images)]
        names: list[str] = []
        paths: dict[str, Path] = {}
        parts = []
        for split in splits:  # each split's files as evaluation lists them: its feature cache entry
            features = encode_image_files(self.clip, list(split.gallery.values()), self.encode,
                                          f"{split.name} {split.split} gallery")
            keep = []
            for i, (name, path) in enumerate(split.gallery.items()):
                if name not in paths:
                    keep.append(i)
                    names.append(name)
                    paths[name] = path
            parts.append(features if len(keep) == len(features) else features[keep])  # no copy of a large gallery
        if not names:
            raise CIRError("the gallery is empty: it lists no images")
        return GalleryFeatures(names, paths, parts[0] if len(parts) == 1 else torch.cat(parts))


@dataclass(eq=False)
class GalleryFeatures:
    """Named gallery images, their files and their raw CLIP features, in index order."""

    names: list[str]
    paths: dict[str, Path]
    features: torch.Tensor


class Gallery(GalleryFeatures):
    """Named images, their raw CLIP features (index order) and a search index over them."""

    def __init__(self, model: CIRModel, names: Sequence[str], paths: Mapping[str, Path], features: torch.Tensor,
                 *, exclude_reference: bool = True, backend: str = SearchConfig.search, **faiss_options: Any):
        self.model = model
        self.names = list(names)
        self.paths = dict(paths)
        self.features = features
        """Raw features [N, D], as the feature cache stores them; the index holds them normalised."""
        self.exclude_reference = exclude_reference
        self.index_of = {name: i for i, name in enumerate(self.names)}
        self.index: SearchIndex = build_index(F.normalize(features, dim=-1), backend, **faiss_options)
        self._by_file: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Gallery({len(self)} images, search: {self.index.description})"

    def locate(self, reference: ImageInput) -> int | None:
        """The gallery row a reference is (a name, or the path of a gallery file), else None."""
        if isinstance(reference, str) and reference in self.index_of:
            return self.index_of[reference]
        if isinstance(reference, (str, os.PathLike)):
            if self._by_file is None:
                self._by_file = {os.path.normcase(os.path.abspath(p)): i
                                 for i, p in enumerate(self.paths[n] for n in self.names)}
            row = self._by_file.get(os.path.normcase(os.path.abspath(reference)))
            if row is None and not Path(reference).is_file():
                raise CIRError(f"reference '{os.fspath(reference)[:200]}' is neither an image of the gallery "
                               f"nor an image file")
            return row
        if isinstance(reference, (Image.Image, torch.Tensor)):
            return None
        raise CIRError(f"a reference is a gallery name, a path, a PIL image or a tensor, "
                       f"got {type(reference).__name__}")

    def search(self, reference: ImageInput, caption: str, k: int = 10, *,
               exclude_reference: bool | None = None) -> list[tuple[str, float]]:
        """The k gallery images that best match `reference` changed by `caption`: (name, score)
        best first, scores being cosine similarities. A reference that is a gallery image (by name
        or path) is left out of its own results unless `exclude_reference=False` (default: the
        gallery's setting, True unless `index` was told otherwise)."""
        caption = check_caption(caption)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise CIRError(f"k must be a positive integer, got {k!r}")
        row = self.locate(reference)
        if uses_tokens(self.model.combine):  # the reference's tokens, encoded now (a gallery keeps global features)
            query = self.model.compose([self.paths[self.names[row]] if row is not None else reference], [caption])
        else:
            image = self.features[row:row + 1] if row is not None else self.model.image_features([reference])
            if reads_captions(self.model.combine):
                query = self.model.combine(image, [caption]).cpu()
            else:
                query = self.model.compose_features(image, self.model.text_features([caption]))
        exclude = self.exclude_reference if exclude_reference is None else exclude_reference
        return self.search_features(query, k, row if exclude else None)

    def search_features(self, query: torch.Tensor, k: int, exclude: int | None = None) -> list[tuple[str, float]]:
        """(name, score) of the k gallery images nearest one query vector, minus row `exclude`."""
        scores, indices = self.index.search(query.reshape(1, -1), k,
                                            None if exclude is None else torch.tensor([exclude]))
        return [(self.names[i], float(s)) for i, s in zip(indices[0].tolist(), scores[0].tolist()) if i >= 0]
