"""Reading a store: SQL through DuckDB, vector gathers, analyses (no model needed)."""

from __future__ import annotations
