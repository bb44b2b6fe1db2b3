"""The attribute-manipulation options: `clip-cir train-attributes` (and attributes/train_flam.py)
and what eval and rank add for an attribute catalogue (docs/attribute-manipulation.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from clip_cir.config import AttributeDataConfig, AttributesConfig
from clip_cir.constants import ADDE_TOP_K
from clip_cir.params.groups import add_model_args, add_transform_args, required_option
from clip_cir.params.training import add_training_args

if TYPE_CHECKING:
    from clip_cir.params.groups import Group


def add_top_k_arg(parser: Group, default: int | None, help: str) -> None:
    """`--top-k` (rank, the demo, the attribute programs), with each program's default and help."""
    parser.add_argument("--top-k", type=int, default=default, help=help)


CATALOGUE_HELP = ("attribute catalogue folder: ADDE's files (attr_num.txt, imgs_<split>.txt, labels_<split>.txt, "
                  "ref/indfull/gt_test.txt) or attributes_<split>.csv with queries_<split>.csv "
                  "(docs/attribute-manipulation.md)")


def add_catalogue_args(group: Group, required: bool | None) -> None:
    """`--catalogue DIR` (`required`: True, False = MISSING when not given, None = optional), its layout
    and its images' folder."""
    option = {"default": AttributeDataConfig.catalogue} if required is None else required_option(required)
    group.add_argument("--catalogue", type=Path, metavar="DIR", help=CATALOGUE_HELP, **option)
    group.add_argument("--catalogue-layout", choices=("adde", "csv"), default=AttributeDataConfig.catalogue_layout,
                       help="the catalogue's layout (default: found from its files)")
    group.add_argument("--image-root", type=Path, default=AttributeDataConfig.image_root,
                       help="folder the catalogue's image names are relative to (default: the catalogue folder)")


def add_attribute_eval_args(parser: argparse.ArgumentParser, evaluating: bool,
                            purpose: str = "rank an attribute catalogue's split") -> None:
    """eval's, rank's and the demo's attribute-catalogue options: with --catalogue, queries change one
    attribute of a catalogue image (top-k accuracy and NDCG@k, docs/attribute-manipulation.md)."""
    group = parser.add_argument_group("attribute catalogue", f"{purpose} (--split, default val or test) instead "
                                      f"of a triplet benchmark")
    add_catalogue_args(group, None)
    group.add_argument("--attributes", metavar="RUN", default=None,
                       help="a `clip-cir train-attributes` run or flam.safetensors: FLAM's manipulated queries "
                            "(else the change is a caption composed by --combining or --combiner)")
    group.add_argument("--attribute-template", default=None,
                       help='the caption that says a change (default: "change the {attribute} to {value}")')
    if evaluating:
        add_top_k_arg(group, None, f"with --catalogue: k of top-k accuracy and NDCG@k (default: {ADDE_TOP_K}, ADDE's)")


def attributes_parser(prog: str = "attributes/train_flam.py", required: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Attribute manipulation: train FLAM (attribute embedders, then a query "
                               "manipulator and discriminator per attribute) on frozen CLIP image features of an "
                               "attribute catalogue; epochs 1..--embedding-epochs train the embedders, the later "
                               "ones the manipulators. Run with `accelerate launch` or plain python.")
    data = parser.add_argument_group("data")
    add_catalogue_args(data, required)
    data.add_argument("--validation-split", default=AttributeDataConfig.validation_split,
                      help="split that validates (default: val, or test when the catalogue has no val)")
    add_model_args(parser)
    add_transform_args(parser)
    flam = parser.add_argument_group("FLAM", "the paper's k = 32; what it leaves open, ours (clip_cir/models/flam.py)")
    defaults = AttributesConfig()
    flam.add_argument("--embedding-epochs", type=int, default=defaults.embedding_epochs, metavar="E",
                      help="epochs 1..E train the embedders, the rest the manipulators (default: %(default)s)")
    flam.add_argument("--gan-lr", type=float, default=defaults.gan_lr,
                      help="learning rate of G and D, Adam betas (0.5, 0.999); --lr is the embedders' "
                           "(default: %(default)s)")
    for name, kind, text in (("embedding_dim", int, "k, the size of an attribute embedding"),
                             ("embedder_hidden", int, "hidden width of each embedder (0: linear)"),
                             ("manipulator_hidden", int, "hidden width of each manipulator G"),
                             ("discriminator_hidden", int, "hidden width of each discriminator D"),
                             ("margin", float, "triplet margin on the cosine distance"),
                             ("adversarial_weight", float, "weight of G's adversarial loss (3)"),
                             ("matching_weight", float, "weight of the feature-matching loss (4)"),
                             ("cycle_weight", float, "weight of the cycle loss (5)")):
        flam.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(defaults, name),
                          help=f"{text} (default: %(default)s)")
    flam.add_argument("--single-matching", action="store_true",
                      help="D matches the manipulated attribute's embedding only (the paper's 'S' variant)")
    flam.add_argument("--residual", action="store_true", help="G adds its output to the reference feature")
    flam.add_argument("--random-pairs", action="store_true", help="x- at random instead of by online sampling")
    flam.add_argument("--learned-dictionary", action="store_true",
                      help="query with the learned dictionary vectors, not the class centroids")
    add_top_k_arg(flam, defaults.top_k,
                  "k of the validation's top-k accuracy (the selection score) and NDCG@k (default: %(default)s)")
    add_training_args(parser, defaults)
    return parser
