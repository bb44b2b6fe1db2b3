"""The training programs' entry points: `stage1/finetune.py` and `clip-cir finetune`,
`stage2/train_combiner.py` and `clip-cir train-combiner`, `clip-cir pretrain`,
`attributes/train_flam.py` and `clip-cir train-attributes`, `zero_shot/train_mapping.py` and
`clip-cir zero-shot`. Each parses its command line into its settings and runs the Python API's
function with them."""

from __future__ import annotations

import argparse
from functools import partial

from clip_cir import api
from clip_cir.apps.entry import program_main
from clip_cir.config import AttributesConfig, PretrainConfig, Stage1Config, Stage2Config, ZeroShotConfig
from clip_cir.params import pretrain_parser, stage1_parser, stage2_parser, zero_shot_parser
from clip_cir.params.programs import attributes_parser
from clip_cir.params.settings import program_settings
from clip_cir.training.loop import TrainedRun


def finetune(args: argparse.Namespace) -> TrainedRun:
    return api.finetune(program_settings(Stage1Config, args))


def train_combiner(args: argparse.Namespace) -> TrainedRun:
    return api.train_combiner(program_settings(Stage2Config, args))


def pretrain(args: argparse.Namespace) -> TrainedRun:
    return api.pretrain(program_settings(PretrainConfig, args))


def train_attributes(args: argparse.Namespace) -> TrainedRun:
    return api.train_attributes(program_settings(AttributesConfig, args))


def zero_shot(args: argparse.Namespace) -> TrainedRun:
    return api.train_zero_shot(program_settings(ZeroShotConfig, args))


def finetune_main(argv: list[str] | None = None, prog: str = "stage1/finetune.py") -> None:
    program_main(partial(stage1_parser, prog), finetune, argv, prog)


def train_combiner_main(argv: list[str] | None = None, prog: str = "stage2/train_combiner.py") -> None:
    program_main(partial(stage2_parser, prog), train_combiner, argv, prog)


def pretrain_main(argv: list[str] | None = None, prog: str = "clip-cir pretrain") -> None:
    program_main(partial(pretrain_parser, prog), pretrain, argv, prog)


def train_attributes_main(argv: list[str] | None = None, prog: str = "attributes/train_flam.py") -> None:
    program_main(partial(attributes_parser, prog), train_attributes, argv, prog)


def zero_shot_main(argv: list[str] | None = None, prog: str = "zero_shot/train_mapping.py") -> None:
    program_main(partial(zero_shot_parser, prog), zero_shot, argv, prog)
