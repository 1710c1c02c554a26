"""SQL over a store: one read-only DuckDB connection with a view per table of the store.

Views: ``docs``, ``tokens``, ``vocab``, ``runs``, ``sites`` and one per saved result
(``results/<name>/result.parquet`` as ``<name>``). Only committed runs' files are
visible. After the views exist the connection is locked down: DuckDB may read exactly
the store files the views name and nothing else, may write nowhere, loads no
extension and refuses any change of configuration; only ``SELECT`` (and ``EXPLAIN``
of one) statements are accepted.

A query that reaches a damaged store file (see ``_views``) fails with one
:class:`~actstore.errors.StoreCorruptError` line naming the file, never with numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actstore.errors import ActstoreError, QueryError, StoreCorruptError
from actstore.query._views import BUILTIN_VIEWS, _ident, _lit, _one_line, create_views
from actstore.store.reader import StoreReader

if TYPE_CHECKING:
    import duckdb
    import pandas as pd
    import pyarrow as pa

__all__ = ["BUILTIN_VIEWS", "QueryResult", "SQLEngine"]


Params = Sequence[Any] | Mapping[str, Any] | None

_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(ANALYZE\s+)?", re.IGNORECASE)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SQLEngine:
    """The DuckDB connection of one open store, with its views, locked to reading.

    Parameters
    ----------
    reader : StoreReader
        The opened store.
    """

    def __init__(self, reader: StoreReader) -> None:
        import duckdb

        self._duckdb = duckdb
        self.con: duckdb.DuckDBPyConnection = duckdb.connect(":memory:")
        self._columns: dict[str, list[str]] = {}
        # set before the views are made: checking the files reads their footers once
        self.con.execute("SET parquet_metadata_cache = true")
        views = create_views(self.con, reader)
        self.views: list[str] = views.names
        self._tables = views.tables
        self._damaged = views.damaged  # messages of the damaged files behind the views
        self._absent = views.absent  # views left out because their files are damaged
        self._files = views.allowed
        self._lock_down(views.allowed)

    def _lock_down(self, allowed: list[str]) -> None:
        import shutil
        import tempfile
        import weakref

        con = self.con
        # DuckDB allows reading its temp directory (default: ./.tmp) even with external
        # access off; a private, empty one keeps spilling possible without exposing files
        self._tmp = tempfile.mkdtemp(prefix="actstore-duckdb-")
        weakref.finalize(self, shutil.rmtree, self._tmp, True)
        con.execute("SET temp_directory = ?", [self._tmp])
        if allowed:
            con.execute("SET allowed_paths = ?", [allowed])
        con.execute("SET enable_external_access = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET lock_configuration = true")

    # -- queries -------------------------------------------------------------------------

    def _tables_hint(self) -> str:
        return "tables: " + ", ".join(self.views)

    def columns(self, view: str) -> list[str]:
        """Column names of ``view``."""
        if view not in self._columns:
            rows = self.con.execute(f"DESCRIBE {_ident(view)}").fetchall()
            self._columns[view] = [str(r[0]) for r in rows]
        return self._columns[view]

    def _damage_named(self, e: Exception, msg: str) -> str | None:
        """The message of the damaged store file behind DuckDB error ``e``, if any."""
        duckdb = self._duckdb
        for text in self._damaged:
            if text in msg:
                return text
        if isinstance(e, duckdb.CatalogException | duckdb.BinderException):
            # a view left out, or (for a scoped query) its shadowing CTE then circular
            for view, text in self._absent.items():
                if re.search(rf'\b(name|CTE) "?{re.escape(view)}"?\b', msg, re.IGNORECASE):
                    return text
        if isinstance(e, duckdb.InvalidInputException | duckdb.IOException):
            for f in self._files:
                if f in msg:
                    return (
                        f"{f} is damaged ({msg}); the store is damaged: restore the file from "
                        "a backup, or re-extract the run that wrote it with --overwrite"
                    )
        return None

    def error(self, e: Exception, query: str) -> ActstoreError:
        """A one-line :class:`QueryError` for DuckDB error ``e`` raised by ``query`` (a
        :class:`StoreCorruptError` when a damaged store file caused it)."""
        duckdb = self._duckdb
        msg = _one_line(str(e))
        damaged = self._damage_named(e, msg)
        if damaged is not None:
            return StoreCorruptError(damaged)
        if isinstance(e, duckdb.PermissionException):
            return QueryError(
                f"the store is read-only and queries may read only its own tables ({msg}); "
                f"{self._tables_hint()}"
            )
        if isinstance(e, duckdb.ParserException):
            return QueryError(f"SQL syntax error: {msg}; {self._tables_hint()}")
        if isinstance(e, duckdb.BinderException) and "column" in msg.lower():
            mentioned = [
                v
                for v in self.views
                if v.lower() not in self._absent
                and re.search(rf"\b{re.escape(v)}\b", query, re.IGNORECASE)
            ]
            cols = "; ".join(f"{v}({', '.join(self.columns(v))})" for v in mentioned)
            return QueryError(
                f"{msg}; " + (f"columns: {cols}; " if cols else "") + self._tables_hint()
            )
        if isinstance(e, duckdb.CatalogException):
            return QueryError(f"{msg}; {self._tables_hint()}")
        return QueryError(f"query failed: {msg}")

    def check(self, query: str) -> None:
        """Refuse anything but one ``SELECT`` (or ``EXPLAIN`` of one).

        Raises
        ------
        QueryError
            Syntax error, several statements, or a statement that would write.
        """
        duckdb = self._duckdb
        if not isinstance(query, str):
            raise QueryError(f"a query must be a SQL string, got {type(query).__name__}")
        try:
            statements = self.con.extract_statements(query)
        except duckdb.Error as e:
            raise self.error(e, query) from None
        if len(statements) != 1:
            raise QueryError(
                f"expected one SQL statement, got {len(statements)}; run them one at a time"
            )
        st = statements[0]
        if st.type == duckdb.StatementType.EXPLAIN:
            inner = _EXPLAIN.sub("", st.query, count=1)
            if inner != st.query:
                self.check(inner)
                return
        if st.type != duckdb.StatementType.SELECT:
            kind = str(st.type).rsplit(".", 1)[-1]
            raise QueryError(
                f"the store is read-only: a {kind} statement cannot run; only SELECT queries "
                f"(and EXPLAIN of one) are allowed; {self._tables_hint()}"
            )

    def sql(self, query: str, params: Params = None, *, run: str | None = None) -> QueryResult:
        """Run ``query`` with ``params`` bound (``?`` or ``$name`` placeholders).

        With ``run``, the query sees only that run: ``tokens``, ``vocab`` and ``sites`` are
        shadowed by common table expressions holding that run's rows alone (row ids are
        only meaningful within a run).

        Raises
        ------
        QueryError
            The query is not one SELECT, does not parse, names an unknown table or column,
            or its parameters do not match.
        """
        self.check(query)
        shown = query
        if run is not None:
            query = scoped(query, run)
        try:
            bound = (
                list(params)
                if isinstance(params, Sequence) and not isinstance(params, str)
                else params
            )
            rel = self.con.sql(query, params=bound)
        except self._duckdb.Error as e:
            raise self.error(e, shown) from None
        if rel is None:  # pragma: no cover - a SELECT always yields a relation
            raise QueryError(f"query returned nothing: {shown!r}")
        return QueryResult(rel, shown, self)

    def close(self) -> None:
        """Close the connection."""
        self.con.close()


#: The views that hold rows of several runs (each has a ``run`` column).
RUN_SCOPED_VIEWS = ("tokens", "vocab", "sites")
_WITH = re.compile(r"^\s*WITH\s+(RECURSIVE\s+)?", re.IGNORECASE)


def scoped(query: str, run: str) -> str:
    """``query`` rewritten so that the per-run views hold ``run``'s rows only.

    >>> print(scoped("SELECT row FROM tokens", "a")[:63])
    WITH tokens AS (SELECT * FROM tokens WHERE run = 'a'), vocab AS
    >>> scoped("WITH x AS (SELECT 1) SELECT * FROM x", "a")[-31:]
    'x AS (SELECT 1) SELECT * FROM x'
    """
    ctes = ", ".join(
        f"{v} AS (SELECT * FROM {v} WHERE run = {_lit(run)})" for v in RUN_SCOPED_VIEWS
    )
    m = _WITH.match(query)
    if m is None:
        return f"WITH {ctes} {query}"
    if m.group(1):  # WITH RECURSIVE: the shadowing CTEs would recurse; nest the query
        return f"WITH {ctes} SELECT * FROM ({query})"
    return f"WITH {ctes}, {query[m.end() :]}"


class QueryResult:
    """The rows of one query, fetched on demand (each fetch runs the query again).

    A read-only stand-in for a DuckDB relation: ``df()``, ``arrow()``, ``fetchall()``,
    ``fetchone()``, ``fetchnumpy()``, ``pl()``, plus ``columns`` and ``types``.
    """

    def __init__(self, rel: duckdb.DuckDBPyRelation, query: str, engine: SQLEngine) -> None:
        self._rel = rel
        self._query = query
        self._engine = engine

    def _run(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._rel, method)(*args)
        except self._engine._duckdb.Error as e:
            raise self._engine.error(e, self._query) from None

    @property
    def columns(self) -> list[str]:
        """Column names."""
        return list(self._rel.columns)

    @property
    def types(self) -> list[str]:
        """DuckDB type names of the columns."""
        return [str(t) for t in self._rel.types]

    def df(self) -> pd.DataFrame:
        """The rows as a pandas DataFrame."""
        return self._run("df")

    def arrow(self) -> pa.Table:
        """The rows as a pyarrow Table."""
        out = self._run("arrow")
        return out.read_all() if hasattr(out, "read_all") else out

    def fetchall(self) -> list[tuple[Any, ...]]:
        """The rows as tuples."""
        rows: list[tuple[Any, ...]] = self._run("fetchall")
        return rows

    def limit(self, n: int) -> list[tuple[Any, ...]]:
        """At most the first ``n`` rows as tuples."""
        try:
            rows: list[tuple[Any, ...]] = self._rel.limit(n).fetchall()
        except self._engine._duckdb.Error as e:
            raise self._engine.error(e, self._query) from None
        return rows

    def fetchone(self) -> tuple[Any, ...] | None:
        """The first row, or None."""
        rows = self.limit(1)
        return rows[0] if rows else None

    def fetchnumpy(self) -> dict[str, npt.NDArray[Any]]:
        """The columns as NumPy arrays by name."""
        cols: dict[str, npt.NDArray[Any]] = self._run("fetchnumpy")
        return cols

    def pl(self) -> Any:
        """The rows as a polars DataFrame (needs polars installed)."""
        return self._run("pl")

    def first_column(self) -> npt.NDArray[Any]:
        """The first column as a NumPy array."""
        cols = self.fetchnumpy()
        if not cols:
            raise QueryError(f"query returns no column: {self._query!r}")
        return np.asarray(next(iter(cols.values())))

    def __len__(self) -> int:
        return int(self._run("__len__"))

    def __repr__(self) -> str:
        return str(self._run("__repr__"))
