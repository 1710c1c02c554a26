"""The ``actstore`` command line: parse, call one library function, print.

No analysis or store logic lives here; each subcommand module builds its options from the
library's config dataclasses (:mod:`actstore.cli._common`).
"""

from __future__ import annotations

from actstore.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
