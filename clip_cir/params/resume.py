"""Parsing a program's command line, with --resume: a resumed run takes its settings from the
run's config.json, and the command line may change only how long and how it runs
(`clip_cir.config.RESUME_OVERRIDABLE`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clip_cir.config import check_resumed_options, option_flag, read_run_config
from clip_cir.errors import CIRError
from clip_cir.params.groups import MISSING

ParserBuilder = Callable[..., argparse.ArgumentParser]
"""A program's parser: `build(required=True)`, or with `required=False` a parser whose required
options default to `MISSING` (a resumed run's config supplies them)."""

_NOT_GIVEN = object()


def given_options(build: ParserBuilder, argv: list[str], dests: list[str]) -> dict[str, Any]:
    """The options the command line gives (abbreviated or not), with their parsed values: the
    parser fills in defaults only where the namespace has no value yet, so a namespace holding a
    marker for every option keeps the marker wherever the command line is silent."""
    parsed = build(required=False).parse_args(argv, argparse.Namespace(**dict.fromkeys(dests, _NOT_GIVEN)))
    return {k: v for k, v in vars(parsed).items() if v is not _NOT_GIVEN}


def parse_with_resume(build: ParserBuilder, argv: list[str] | None) -> argparse.Namespace:
    """The program's arguments; with --resume RUN, RUN/config.json's settings are the defaults, and
    an option the command line gives must either be in `RESUME_OVERRIDABLE` or agree with the run's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    strict = build()
    # With required options optional, to find --resume; the usage line stays the program's.
    loose = build(required=False)
    loose.usage = strict.format_usage().removeprefix("usage: ").rstrip("\n").replace("%", "%%")
    args = loose.parse_args(argv)
    if getattr(args, "resume", None) is None:
        return strict.parse_args(argv)
    saved = read_run_config(args.resume)
    dests = [k for k in vars(args) if k != "resume"]
    check_resumed_options(saved, given_options(build, argv, dests), dests)
    loose.set_defaults(**{k: saved[k] for k in dests if k in saved})
    args = loose.parse_args(argv)
    missing = [option_flag(k) for k, v in vars(args).items() if v is MISSING]
    if missing:
        raise CIRError(f"the following arguments are required: {', '.join(missing)} "
                       f"({Path(args.resume) / 'config.json'} has none)")
    return args
