"""The options of `clip-cir zero-shot` (and zero_shot/train_mapping.py): which mapping network,
what it trains on, SEARLE's textual inversion, and the training options every program has."""

from __future__ import annotations

import argparse
from pathlib import Path

from clip_cir.config import TextualInversionConfig, ZeroShotConfig, ZeroShotDataConfig
from clip_cir.constants import ZERO_SHOT_METHODS
from clip_cir.params.groups import (
    add_data_args,
    add_gallery_dir_arg,
    add_model_args,
    add_prompt_template_arg,
    add_transform_args,
)
from clip_cir.params.training import add_tower_training_args, add_training_args

ZERO_SHOT_DESCRIPTION = (
    "Train a zero-shot mapping network (Pic2Word, SEARLE or LinCIR) on a frozen CLIP: it turns a reference image's "
    "CLIP feature into a pseudo-word, and the prompt 'a photo of $ that {caption}' with it is the query. No triplets: "
    "Pic2Word and SEARLE train on images, LinCIR on captions. --dataset/--data-root give a benchmark's training "
    "images and captions (unless --gallery-dir, --image-list or --captions name others) and its validation split, "
    "on which the best checkpoints are kept; without it there is no validation and last/ holds the network "
    "(phi.safetensors); the commands that rank read the run with --zero-shot RUN_DIR. Run with `accelerate "
    "launch` or plain python; docs/training.md.")


def zero_shot_parser(prog: str = "zero_shot/train_mapping.py", required: bool = True) -> argparse.ArgumentParser:
    """`clip-cir zero-shot` (`required`: every program parser's argument; no option is required here)."""
    parser = argparse.ArgumentParser(prog=prog, description=ZERO_SHOT_DESCRIPTION)
    method = parser.add_argument_group("method", "which mapping network and prompt (docs/zero-shot.md)")
    method.add_argument("--method", choices=ZERO_SHOT_METHODS, default=ZeroShotConfig.method,
                        help="pic2word: φ(image) in 'a photo of $' must find its image among the batch's; searle: φ "
                             "distils per-image textual-inversion tokens, regularised to act like a word; lincir: "
                             "φ of a noised caption feature must stand for the caption's keywords "
                             "(default: %(default)s)")
    add_prompt_template_arg(method, ZeroShotConfig.prompt_template, "TEMPLATE",
                            "the query prompt validation uses and the checkpoint records, with $ for the image and "
                            "{caption} for the caption (default: the method's: 'a photo of $ , {caption}' for "
                            "pic2word, 'a photo of $ that {caption}' for searle and lincir)")
    method.add_argument("--phi-hidden-dim", type=int, default=ZeroShotConfig.phi_hidden_dim, metavar="N",
                        help="φ's hidden width (default: the method's: 512 for pic2word, 4x the CLIP embedding size "
                             "for searle and lincir)")
    method.add_argument("--phi-layers", type=int, default=ZeroShotConfig.phi_layers, metavar="N",
                        help="pic2word: φ's hidden blocks (default: 2)")
    method.add_argument("--phi-dropout", type=float, default=ZeroShotConfig.phi_dropout, metavar="P",
                        help="φ's dropout (default: the method's: 0.1 for pic2word, 0.5 for searle and lincir)")
    add_data_args(parser, split=False, required=False)
    data = parser.add_argument_group("training data", "instead of --dataset's training images and captions")
    add_gallery_dir_arg(data, queries=False, help="train on every image under this folder (recursively)")
    data.add_argument("--image-list", type=Path, default=ZeroShotDataConfig.image_list, metavar="FILE",
                      help="train on the images FILE lists, one path a line (relative to FILE's folder or absolute)")
    data.add_argument("--captions", type=Path, default=ZeroShotDataConfig.captions, metavar="FILE",
                      help="lincir's captions (and searle's concept words, unless --concepts): one caption a line, or "
                           "a .csv/.tsv file with --caption-column")
    data.add_argument("--caption-column", default=ZeroShotDataConfig.caption_column, metavar="NAME",
                      help="the caption column of a .csv/.tsv --captions file")
    data.add_argument("--concepts", type=Path, default=ZeroShotDataConfig.concepts, metavar="FILE",
                      help="searle: concept words, one a line (default: the content words of the captions)")
    add_model_args(parser)
    add_transform_args(parser)
    inversion = parser.add_argument_group("searle's textual inversion",
                                          "each training image's token, computed once before φ trains and kept in "
                                          "RUN_DIR/oti/ (SEARLE's defaults)")
    defaults = TextualInversionConfig()
    inversion.add_argument("--oti-steps", type=int, default=defaults.oti_steps,
                           help="optimisation steps per batch of images (default: %(default)s)")
    inversion.add_argument("--oti-lr", type=float, default=defaults.oti_lr,
                           help="AdamW learning rate (default: %(default)s)")
    inversion.add_argument("--oti-weight-decay", type=float, default=defaults.oti_weight_decay,
                           help="AdamW weight decay (default: %(default)s)")
    inversion.add_argument("--oti-ema-decay", type=float, default=defaults.oti_ema_decay,
                           help="the tokens kept are this exponential moving average (default: %(default)s)")
    inversion.add_argument("--oti-batch-size", type=int, default=defaults.oti_batch_size,
                           help="images inverted together (default: %(default)s)")
    inversion.add_argument("--oti-top-k", type=int, default=defaults.oti_top_k, metavar="K",
                           help="concept words per image, the nearest by CLIP similarity: the regulariser talks "
                                "about one of them (default: %(default)s)")
    add_training_args(parser, ZeroShotConfig())
    add_tower_training_args(parser)
    return parser
