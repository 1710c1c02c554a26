"""The ``actstore`` command line: one entry point with a subcommand per job.

Every :class:`~actstore.errors.ActstoreError` is printed as one line on stderr with a
non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from actstore._version import __version__
from actstore.errors import ActstoreError

__all__ = ["build_parser", "main"]


class _UsageError(Exception):
    """A command line that does not parse (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr, not a usage block."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``actstore`` (exposed for docs and tests)."""
    from actstore.cli import extract, mapping, similarity, sparse, sql

    parser = _Parser(
        prog="actstore",
        description="Run a transformer once; keep its activations in a queryable store.",
    )
    parser.add_argument("--version", action="version", version=f"actstore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for commands in (extract, sql, similarity, mapping, sparse):
        commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (1 for actstore errors, 2 for a command
    line that does not parse); either is one line on stderr."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        print(f"actstore: error: {e}", file=sys.stderr)
        return 2
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        return func(args) or 0
    except ActstoreError as e:
        print("actstore: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "actstore: interrupted (a resumable job continues from its last checkpoint "
            "when re-run with the same arguments)",
            file=sys.stderr,
        )
        return 130
