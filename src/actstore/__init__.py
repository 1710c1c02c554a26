"""actstore: run a transformer once, keep its activations in a queryable store."""

from __future__ import annotations

from actstore._version import __version__

__all__ = ["__version__"]
