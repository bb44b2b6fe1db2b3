"""Features -> query vectors -> rankings -> metrics, the same for every dataset and caller.

The reference image of every query is a gallery member, so its features come from the
gallery features: evaluating a split encodes each gallery image once and each caption once.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from clip_cir.data.fashioniq import caption_orders
from clip_cir.data.types import CIRSplit
from clip_cir.encoding.ranking import GallerySearch, Ranking, rank_split
from clip_cir.encoding.split_features import EncodeOptions, SplitFeatures, TokenRows, split_features, token_request
from clip_cir.errors import CIRError
from clip_cir.evaluation.graded import combine_graded, graded_split_metrics
from clip_cir.evaluation.metrics import combine_benchmarks, split_metrics
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.combiner import CombiningFunction
from clip_cir.models.compositors.base import TokenFeatures
from clip_cir.models.compositors.loading import uses_tokens


@torch.no_grad()
def compose_features(combine: CombiningFunction, reference: torch.Tensor | TokenRows | TokenFeatures,
                     text: torch.Tensor | TokenRows | TokenFeatures, batch_size: int = 4096) -> torch.Tensor:
    """Normalised query vectors [Q, D] (float32, CPU) from raw reference-image and caption
    features, global [Q, D] or token rows (for a compositor that reads tokens, gathered a batch
    at a time); `combine` runs on the device its parameters live on, in float32."""
    params = list(combine.parameters()) if isinstance(combine, torch.nn.Module) else []
    device = params[0].device if params else torch.device("cpu")
    if uses_tokens(combine):
        batch_size = min(batch_size, TOKEN_BATCH)
    parts = []
    for i in range(0, len(reference), batch_size):
        image, caption = reference[i:i + batch_size], text[i:i + batch_size]
        parts.append(combine(image.to(device, torch.float32), caption.to(device, torch.float32)).float().cpu())
    dim = getattr(reference, "pooled", reference).shape[1]
    return torch.cat(parts) if parts else torch.empty(0, dim)


TOKEN_BATCH = 256
"""Queries per forward of a compositor that reads tokens: its attention over a few hundred tokens
per query bounds the batch, not the 4096 global features a Combiner takes at once."""


def reads_captions(combine: object) -> bool:
    """Whether `combine` takes the captions themselves rather than their features (a zero-shot
    pseudo-word composer runs them through the text tower with the reference image in a prompt)."""
    return bool(getattr(combine, "reads_captions", False))


def zero_shot_queries(composer: CombiningFunction, features: SplitFeatures) -> torch.Tensor:
    """A pseudo-word composer's queries: of each evaluation caption, or for FashionIQ's two captions
    of both orders as each method's evaluation code composes them."""
    queries = features.split.queries
    pairs = [caption_orders(q) for q in queries] if features.split.dataset == "fashioniq" else []
    if pairs and all(pair is not None for pair in pairs):
        return composer.compose_caption_pair(features.reference, [p[0] for p in pairs],
                                             [p[1] for p in pairs]).float().cpu()
    return composer(features.reference, [q.eval_caption for q in queries]).float().cpu()


def predict_queries(features: SplitFeatures, combine: CombiningFunction, batch_size: int = 4096) -> torch.Tensor:
    """The split's normalised query vectors (`compose_features` of its references and captions)."""
    if reads_captions(combine):
        return zero_shot_queries(combine, features)
    if not uses_tokens(combine):
        return compose_features(combine, features.reference, features.text, batch_size)
    if features.reference_tokens is None or features.text_tokens is None:
        raise CIRError(f"the {combine.name} compositor reads token features, but these split features "
                       f"hold none (encode with split_features(..., tokens=token_request(combine)))")
    return compose_features(combine, features.reference_tokens, features.text_tokens, batch_size)


IndexFactory = Callable[[torch.Tensor], GallerySearch]
"""Builds a search index over normalised gallery features (`options.search_index_factory`)."""


def rank_features(features: SplitFeatures, combine: CombiningFunction, k: int = 50,
                  index_factory: IndexFactory | None = None) -> Ranking:
    """Rank one split: exact chunked top-k by default, or through the index `index_factory` builds."""
    queries = predict_queries(features, combine)
    gallery = torch.nn.functional.normalize(features.gallery, dim=-1)
    index = index_factory(gallery) if index_factory is not None else None
    return rank_split(features.split, queries, gallery, k, index)


def encode_and_rank(clip: LoadedCLIP, split: CIRSplit, combine: CombiningFunction, options: EncodeOptions, k: int,
                    index_factory: IndexFactory | None = None) -> Ranking:
    """Encode one split (with the token features `combine` reads, if any) and rank its queries."""
    features = split_features(clip, split, options, token_request(combine))
    return rank_features(features, combine, k=k, index_factory=index_factory)


def no_targets_message(split: CIRSplit) -> str:
    """What to do instead of scoring a split without ground truth (a test split)."""
    return (f"{split.dataset} split '{split.split}' has no targets to score (use `clip-cir rank`, or "
            f"`clip-cir submit-cirr` / `submit-circo` to write a test-server file)")


def metrics_from_features(all_features: Sequence[SplitFeatures], combine: CombiningFunction,
                          index_factory: IndexFactory | None = None) -> dict[str, float]:
    """The dataset's metric dictionary (see metrics.combine_benchmarks for the key names, and
    graded.combine_graded for a benchmark of graded judgements, CFQ)."""
    per_split, graded = [], []
    for features in all_features:
        split = features.split
        if split.judgments is not None:  # every judged candidate's score: the whole gallery is ranked
            ranking = rank_features(features, combine, k=len(split.gallery), index_factory=index_factory)
            graded.append((split, graded_split_metrics(split, ranking)))
            continue
        if not split.has_targets:
            raise CIRError(no_targets_message(split))
        ranking = rank_features(features, combine, k=split.rank_depth, index_factory=index_factory)
        per_split.append((split, split_metrics(split, ranking)))
    if graded and per_split:
        raise CIRError("splits with graded judgements and splits with targets cannot be scored together")
    return combine_graded(graded) if graded else combine_benchmarks(per_split)


def evaluate(clip: LoadedCLIP, splits: Sequence[CIRSplit], combine: CombiningFunction,
             options: EncodeOptions, index_factory: IndexFactory | None = None) -> dict[str, float]:
    tokens = token_request(combine)
    return metrics_from_features([split_features(clip, s, options, tokens) for s in splits], combine, index_factory)


