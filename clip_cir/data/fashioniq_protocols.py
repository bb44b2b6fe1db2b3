"""FashionIQ's evaluation protocols besides CLIP4Cir's (`clip_cir.data.fashioniq`, the default).

Papers report FashionIQ under different protocols, whose numbers are not comparable with each other:

- `val`, VAL's (Chen et al., CVPR 2020; yanbeic/VAL `generate_caption_pairs.py`,
  `datasets/fashion_iq.py`, `generate_groundtruth.py`, `test_val.py`): each of a triplet's two
  captions (stripped; an empty one is left out) is a query of its own; a category's gallery is the
  images its val triplets name, candidates and targets (sorted), not the split file; the reference
  is removed from its own ranking; R@1/10/50 (the paper's tables show R@10 and R@50).
- `cosmo`, CoSMo's released code (Lee et al., CVPR 2021; postBG/CosMo.pytorch `data/fashionIQ.py`,
  `evaluators/metric_calculators.py`, `configs/FashionIQ_trans_g2_res50_config.json`): two queries
  per triplet, "c0 and c1" and "c1 and c0" (joined as written); the gallery is the split file; the
  reference is removed (its score set to the lowest); R@1/5/10/50. Training draws each order as a
  triplet of its own, as the code's training set does.
- `cosmo-val`: CoSMo's queries over VAL's gallery, which is what CoSMo's paper reports (its
  Table 1 follows VAL's evaluation; the code keeps that gallery in a commented-out block).

A hit is the exact target image in every protocol. Each form of a triplet is a query with its own
id, `<category>/<entry>/<form>` (VAL: the caption's position; CoSMo: 0 for "c0 and c1", 1 for
"c1 and c0"), so the training set holds every form once per epoch, as both codes' training sets do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from clip_cir.data.types import Query

QueryForms = Callable[[Sequence[str]], list[tuple[int, str]]]


@dataclass(frozen=True)
class FashionIQProtocol:
    """How one protocol makes queries and a gallery out of a category's files."""

    name: str
    gallery_from_triplets: bool
    """The gallery is the images the triplets name (sorted) rather than the split file."""
    exclude_reference: bool
    recall_ks: tuple[int, ...]
    make_queries: Callable[[str, int, Sequence[str], str, str | None], list[Query]]
    """(category, entry index, captions, candidate, target or None) -> the entry's queries."""


def val_forms(captions: Sequence[str]) -> list[tuple[int, str]]:
    """VAL: each caption stripped, a query of its own, empty ones left out."""
    return [(j, c.strip()) for j, c in enumerate(captions) if c.strip()]


def cosmo_forms(captions: Sequence[str]) -> list[tuple[int, str]]:
    """CoSMo: "c0 and c1" then "c1 and c0", the captions as written."""
    c0, c1 = captions
    return [(0, f"{c0} and {c1}"), (1, f"{c1} and {c0}")]


def _separate_queries(forms: QueryForms) -> Callable[[str, int, Sequence[str], str, str | None], list[Query]]:
    def make(category: str, index: int, captions: Sequence[str], candidate: str, target: str | None) -> list[Query]:
        return [Query(qid=f"{category}/{index}/{form}", reference=candidate, captions=tuple(captions),
                      train_captions=(text,), eval_caption=text, target=target)
                for form, text in forms(captions)]
    return make


OTHER_PROTOCOLS = {
    "val": FashionIQProtocol("val", gallery_from_triplets=True, exclude_reference=True, recall_ks=(1, 10, 50),
                             make_queries=_separate_queries(val_forms)),
    "cosmo": FashionIQProtocol("cosmo", gallery_from_triplets=False, exclude_reference=True,
                               recall_ks=(1, 5, 10, 50), make_queries=_separate_queries(cosmo_forms)),
    "cosmo-val": FashionIQProtocol("cosmo-val", gallery_from_triplets=True, exclude_reference=True,
                                   recall_ks=(1, 5, 10, 50), make_queries=_separate_queries(cosmo_forms)),
}
