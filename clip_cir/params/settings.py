"""Typed settings from parsed command lines: the one place where a namespace becomes the
`clip_cir.config` classes the library takes."""

from __future__ import annotations

import argparse
from typing import TypeVar

from clip_cir.config import DataConfig, Options, RankingConfig
from clip_cir.params.groups import MISSING

C = TypeVar("C", bound=Options)


def program_settings(cls: type[C], args: argparse.Namespace) -> C:
    """A program's settings from its whole command line: every option is one of the settings'."""
    return cls.from_options({k: v for k, v in vars(args).items() if v is not MISSING})


def ranking_settings(args: argparse.Namespace) -> RankingConfig:
    """What a command that ranks shares with the others (data, model, combining, encoding, caches,
    device, search); its own options (output, top-k, ...) stay on its command line."""
    known = set(RankingConfig.option_names())
    return RankingConfig.from_options({k: v for k, v in vars(args).items() if k in known and v is not MISSING})


def data_settings(args: argparse.Namespace, **given: object) -> DataConfig:
    """The data settings among a command's options (`convert`'s reading options), plus `given`
    (e.g. the dataset, where the command names it otherwise)."""
    known = set(DataConfig.option_names())
    return DataConfig.from_options({**{k: v for k, v in vars(args).items() if k in known and v is not MISSING},
                                    **given})
