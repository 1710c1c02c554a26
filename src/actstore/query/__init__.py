"""Reading a store: SQL through DuckDB, vector gathers, analyses (no model needed)."""

from __future__ import annotations

from actstore.query.store import Store, open_store

__all__ = ["Store", "open_store"]
