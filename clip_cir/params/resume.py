"""Parsing a program's command line, with --resume: a resumed run takes its settings from the
run's config.json, and the command line may change only how long and how it runs. Plus what
every entry point does around its work: logging and one-line errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clip_cir.errors import CIRError
from clip_cir.params.groups import MISSING

ParserBuilder = Callable[..., argparse.ArgumentParser]
"""A program's parser: `build(required=True)`, or with `required=False` a parser whose required
options default to `MISSING` (a resumed run's config supplies them)."""

RESUME_OVERRIDABLE = ("epochs", "num_workers", "no_progress", "cpu", "cache_dir", "no_cache", "pixel_cache",
                      "pixel_cache_dir", "accum_steps", "log_every", "channels_last", "compile")
"""What a resumed run may change: how long and how it runs, not what it trains."""

_NOT_GIVEN = object()


def portable_config(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The arguments as JSON, with local paths made absolute so the config means the same from
    any working directory (a later stage or report reads it)."""
    def value(v: Any) -> Any:
        if isinstance(v, Path) or (isinstance(v, str) and os.path.sep in v and os.path.exists(v)):
            return str(Path(v).resolve())
        return v
    items = vars(args) if isinstance(args, argparse.Namespace) else args
    return {k: value(v) for k, v in items.items()}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CIRError(f"{path}: not found; --resume takes a run directory")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CIRError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(saved, dict):
        raise CIRError(f"{path}: a run config is a JSON object, got {type(saved).__name__}")
    return saved


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
    saved = _read_config(args.resume)
    dests = [k for k in vars(args) if k != "resume"]
    for key, value in given_options(build, argv, dests).items():
        changed = key in saved and portable_config({key: value})[key] != saved[key]
        if changed and key not in RESUME_OVERRIDABLE and key != "resume":
            may_change = ", ".join(_flag(k) for k in RESUME_OVERRIDABLE if k in vars(args))
            raise CIRError(f"{_flag(key)} {value} differs from the resumed run's {saved[key]!r} (a resumed run keeps "
                           f"its settings; only {may_change} may change)")
    loose.set_defaults(**{k: saved[k] for k in dests if k in saved})
    args = loose.parse_args(argv)
    missing = [_flag(k) for k, v in vars(args).items() if v is MISSING]
    if missing:
        raise CIRError(f"the following arguments are required: {', '.join(missing)} "
                       f"({Path(args.resume) / 'config.json'} has none)")
    return args


def setup_logging(verbose: bool = False) -> None:
    """Our messages at INFO; other libraries (open_clip logs through the root logger) only warn."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("clip_cir").setLevel(logging.DEBUG if verbose else logging.INFO)


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Bad input becomes one line on stderr and exit code 2; Ctrl-C exit code 130."""
    try:
        yield
    except CIRError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def run_main(main: Callable[[], object], prog: str) -> None:
    """Run a command; bad input becomes one line on stderr and exit code 2.

    Returns normally on success, so other commands (the quickstart) can call entry points in-process.
    """
    with one_line_errors(prog):
        import torch

        # Denormal floats make CPU training several times slower as weights shrink. The flag is
        # per thread and inherited by threads created later, so it is set before torch starts its
        # worker threads (setting it later leaves them slow).
        torch.set_flush_denormal(True)
        main()


def program_main(build: ParserBuilder, run: Callable[[argparse.Namespace], object], argv: list[str] | None,
                 prog: str) -> None:
    """Entry point of a program: logging, its arguments (--resume config), one-line errors. The
    command line is parsed before torch loads, so --help and usage errors are quick."""
    setup_logging()
    with one_line_errors(prog):
        args = parse_with_resume(build, argv)
    run_main(lambda: run(args), prog)
