"""What every entry point does around its work: logging, one-line errors and exit codes, and the
process-wide CPU setting the programs run with."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from clip_cir.errors import CIRError
from clip_cir.params import ParserBuilder, parse_with_resume


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
