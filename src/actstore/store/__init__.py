"""The on-disk store: format, manifest, writers and readers (never imports torch)."""

from __future__ import annotations
