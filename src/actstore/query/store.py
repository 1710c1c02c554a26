"""The :class:`Store`: one opened store, queried by SQL, with its vectors one call away.

Longer than most modules (~520 lines) because it is the documented front door: each method
is a thin, fully documented call into ``select``, ``export``, ``sql`` or the store reader,
and splitting the class would scatter its API reference.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError, TokenNotFoundError
from actstore.query import select
from actstore.query.select import Match
from actstore.store._gather import Buffers, prefetched
from actstore.store._objects import ObjectPath
from actstore.store.reader import RunReader, StoreReader, as_row_array

if TYPE_CHECKING:
    import pandas as pd

    from actstore.query.sql import Params, QueryResult, SQLEngine

__all__ = ["Store", "open_store"]


class Store:
    """A store opened read-only: SQL over its tables, vectors by row, matrices, centroids.

    Parameters
    ----------
    path : str or Path
        The store directory.

    Raises
    ------
    StoreNotFoundError
        No store at ``path``.
    StoreError
        ``path`` is a file or not an actstore store.
    FormatVersionError
        The store was written by a newer format version.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from actstore.store.synthetic import write_synthetic_run
    >>> path = tempfile.mkdtemp() + "/demo.acts"
    >>> _ = write_synthetic_run(path, "syn", n_docs=3, tokens_per_doc=4, d=8)
    >>> with Store(path) as s:
    ...     rows = s.sql("SELECT row FROM tokens WHERE run = ? AND pos = 0", ["syn"]).df().row
    ...     X = s.vectors("syn", "hidden.1", rows)
    ...     print(s.runs, X.shape, X.dtype)
    ['syn'] (3, 8) float32
    """

    def __init__(self, path: str | Path) -> None:
        self._reader = StoreReader(path)
        self._engine: SQLEngine | None = None
        self._engine_sig: tuple[tuple[str, int], ...] = ()

    # -- store and runs --------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The store directory."""
        return self._reader.path

    @property
    def runs(self) -> list[str]:
        """Committed runs, in commit order."""
        return self._reader.runs

    def resolve_run(self, run: str | None = None) -> str:
        """``run`` itself, or the store's only run when ``run`` is None.

        Raises
        ------
        RunNotFoundError
            ``run`` is not a committed run of the store.
        ConfigError
            ``run`` is None and the store has no run or several.
        """
        if run is not None:
            self._run(run)
            return run
        runs = self.runs
        if len(runs) != 1:
            raise ConfigError(f"store has runs {', '.join(runs) or 'none'}; pick one with --run")
        return runs[0]

    def _run(self, run: str) -> RunReader:
        return self._reader.run(run)

    def run_info(self, run: str) -> dict[str, Any]:
        """The run's ``run.json`` (model, tokenizer, sites, parts, counts, config, ...)."""
        return dict(self._run(run).meta)

    def sites(self, run: str) -> list[str]:
        """Site names of ``run`` (``hidden.0`` ..., ``module:<path>``)."""
        return self._run(run).sites

    # -- SQL -------------------------------------------------------------------------------

    @property
    def engine(self) -> SQLEngine:
        """The store's DuckDB connection (created on first use, and anew when the saved
        results change, so a result saved after opening is a view like the others)."""
        if self._engine is not None and isinstance(self.path, ObjectPath):
            # a store on object storage is listed once: a listing per query costs round
            # trips, and nothing saves results there through this process
            return self._engine
        sig = self._results_signature()
        if self._engine is None or sig != self._engine_sig:
            from actstore.query.sql import SQLEngine

            # the old connection is left to the garbage collector: results fetched from it
            # may still be read
            self._engine = SQLEngine(self._reader)
            self._engine_sig = sig
        return self._engine

    def _results_signature(self) -> tuple[tuple[str, int], ...]:
        from actstore.store.results import result_tables

        out = []
        for name, path in result_tables(self.path).items():
            try:
                out.append((name, path.stat().st_mtime_ns))
            except FileNotFoundError:  # removed while listing
                continue
        return tuple(out)

    @property
    def tables(self) -> list[str]:
        """Names of the SQL views: docs, tokens, vocab, runs, sites and saved results."""
        return list(self.engine.views)

    def sql(self, query: str, params: Params = None) -> QueryResult:
        """Run one ``SELECT`` over the store's views, with ``params`` bound to ``?``/``$name``.

        Returns
        -------
        QueryResult
            Fetch with ``.df()``, ``.arrow()``, ``.fetchall()``, ``.fetchnumpy()``, ``.pl()``.

        Raises
        ------
        QueryError
            Syntax error, unknown table or column (the message lists them), parameters
            that do not match, or a statement that would write (the store is read-only).
        """
        return self.engine.sql(query, params)

    def _rows(self, run: RunReader, rows: Any, params: Params) -> npt.NDArray[np.int64]:
        if isinstance(rows, str):
            rows = self.select_ids(run.name, rows, params)
        elif params is not None:
            raise ConfigError("params are only used when rows is a SQL query string")
        return as_row_array(rows, run.n_rows, f"run {run.name!r}")

    def select_ids(self, run: str, query: str, params: Params = None) -> npt.NDArray[Any]:
        """The first column of ``query`` run within ``run``: the ``tokens``, ``vocab`` and
        ``sites`` views hold that run's rows only, so ``SELECT row FROM tokens WHERE NOT
        special`` means this run's rows even when the store has several runs.

        Raises
        ------
        RunNotFoundError
            No committed run ``run``.
        QueryError
            The query does not run.
        """
        self._run(run)
        return self.engine.sql(query, params, run=run).first_column()

    def rows(self, run: str, rows: Any, params: Params = None) -> npt.NDArray[np.int64]:
        """Row ids of ``run`` from ``rows``: ids, or a SQL query scoped to ``run`` (see
        :meth:`select_ids`), checked to lie in ``[0, n_rows)``.

        Raises
        ------
        RowIndexError
            An id outside the run (row ids are only meaningful within a run).
        """
        return self._rows(self._run(run), rows, params)

    def token_columns(self, run: str, *columns: str) -> dict[str, npt.NDArray[Any]]:
        """Whole columns of ``run``'s token table, in row order (index = row id).

        The one place analyses read per-row token metadata (``token_id``, ``doc_id``,
        ``special``, ``pos``, ``start``, ``end``).

        Raises
        ------
        ConfigError
            A column that the tokens table does not have.
        RunNotFoundError
            No committed run ``run``.
        """
        from actstore.store.format import TOKENS_COLUMNS

        bad = [c for c in columns if c not in TOKENS_COLUMNS]
        if bad or not columns:
            raise ConfigError(
                f"tokens columns must be among {', '.join(TOKENS_COLUMNS)}, got {list(columns)}"
            )
        return self._run(run).token_columns(columns)

    def token_names(self, run: str) -> dict[int, str | None]:
        """``token_id`` -> decoded token string of ``run``'s vocabulary (the ``vocab``
        table's ``token``), read from its Parquet file: how analyses name ids."""
        return select.token_names(self._run(run))

    # -- vectors ---------------------------------------------------------------------------

    def vectors(
        self,
        run: str,
        site: str,
        rows: Any,
        *,
        dtype: npt.DTypeLike | None = None,
        params: Params = None,
    ) -> npt.NDArray[Any]:
        """The vectors of ``site`` at global rows ``rows``, in the caller's order.

        Parameters
        ----------
        run, site : str
            Where to read.
        rows : sequence of int, ndarray, pandas Series, or str
            Global row ids (duplicates and any order allowed), or a SQL query whose first
            column holds them.
        dtype : dtype or None
            None keeps the stored dtype (bfloat16 as ``ml_dtypes.bfloat16``);
            e.g. ``np.float32`` converts.
        params : sequence or mapping or None
            Parameters of the SQL query ``rows``.

        Returns
        -------
        ndarray of shape (len(rows), d)

        Raises
        ------
        RunNotFoundError, SiteNotFoundError, RowIndexError, QueryError
        """
        r = self._run(run)
        r.site_info(site)
        ids = self._rows(r, rows, params)
        x = r.gather(site, ids)
        return x if dtype is None else x.astype(dtype, copy=False)

    def frame(
        self,
        run: str,
        site: str,
        rows: Any = None,
        params: Params = None,
        *,
        dtype: npt.DTypeLike = np.float32,
        kind: Literal["pandas", "arrow"] = "pandas",
    ) -> Any:
        """The vectors of ``site`` at ``rows`` joined to their token metadata (``row,
        doc_id, pos, token_id, token, start, end, special, vector``) as a pandas DataFrame
        or an Arrow table; see :func:`actstore.query.frames.frame`."""
        from actstore.query.frames import frame

        return frame(self, run, site, rows, params, dtype=dtype, kind=kind)

    def to_xarray(self, run: str, site: str) -> Any:
        """``site`` as an ``xarray.Dataset`` with token metadata as ``row`` coordinates,
        lazy (dask) where dask is installed; see :func:`actstore.query.frames.to_xarray`."""
        from actstore.query.frames import to_xarray

        return to_xarray(self, run, site)

    def iter_vectors(
        self,
        run: str,
        site: str,
        rows: Any = None,
        *,
        batch_rows: int = 65536,
        dtype: npt.DTypeLike | None = None,
        params: Params = None,
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[Any]]]:
        """Stream ``site`` in blocks of at most ``batch_rows`` rows, never loading it whole.

        Parameters
        ----------
        rows : row ids, SQL string or None
            None streams every row in order; a selection is streamed in its own order.
        batch_rows : int
            Rows per block.

        Yields
        ------
        block_rows : ndarray of shape (n,), int64
            The global row ids of the block.
        X : ndarray of shape (n, d)
            Their vectors.
        """
        if batch_rows < 1:
            raise ConfigError(f"batch_rows must be >= 1, got {batch_rows}")
        r = self._run(run)
        r.site_info(site)
        # each block is read (and its chunks checked) in a background thread while the
        # caller works on the one before: a scan then costs about what its own work does
        if rows is None:
            arr = r.site_array(site)
            bufs = Buffers(arr.d, arr.dtype)

            def read(start: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
                stop = min(start + batch_rows, arr.n_rows)
                x = r.to_logical(site, arr.read(start, stop, bufs.get(stop - start)))
                ids = np.arange(start, start + len(x), dtype=np.int64)
                return ids, x if dtype is None else x.astype(dtype, copy=False)

            starts = range(0, arr.n_rows, batch_rows)
            yield from prefetched(functools.partial(read, s) for s in starts)
            return
        ids = self._rows(r, rows, params)

        def gather(part: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
            x = r.gather(site, part)
            return part, x if dtype is None else x.astype(dtype, copy=False)

        parts = (ids[s : s + batch_rows] for s in range(0, len(ids), batch_rows))
        yield from prefetched(functools.partial(gather, p) for p in parts)

    def matrix(self, run: str, name: str) -> npt.NDArray[np.float32]:
        """A per-vocabulary matrix of ``run``: ``embed`` / ``unembed`` ``[V, d]``,
        ``final_norm.weight`` ``[d]``, ...

        Raises
        ------
        MatrixNotFoundError
            The run has no such matrix (the message lists those it has).
        """
        return np.asarray(self._run(run).matrix(name), np.float32)

    def centroid(
        self,
        run: str,
        site: str,
        *,
        token: str | None = None,
        token_id: int | None = None,
        rows: Any = None,
        params: Params = None,
    ) -> npt.NDArray[np.float32]:
        """Mean vector of ``site`` over all rows of a token, or over a row selection.

        ``token`` is matched against the vocabulary's decoded strings exactly first and,
        if nothing matches exactly, ignoring surrounding whitespace (all entries that
        match then count together). From stored centroid sums when the run has them,
        else by gathering the rows.

        Parameters
        ----------
        token : str, optional
            Decoded token string (``"dog"``).
        token_id : int, optional
            Vocabulary id.
        rows : row ids or SQL string, optional
            An explicit selection (always gathered).

        Returns
        -------
        ndarray of shape (d,), float32

        Raises
        ------
        ConfigError
            Not exactly one of ``token``, ``token_id``, ``rows`` given.
        TokenNotFoundError
            The token is not in the vocabulary, or never occurs in the run.
        """
        given = sum(x is not None for x in (token, token_id, rows))
        if given != 1:
            raise ConfigError("centroid needs exactly one of token=, token_id=, rows=")
        r = self._run(run)
        d = r.site_info(site)["d"]
        if rows is not None:
            ids = self._rows(r, rows, params)
            if not len(ids):
                raise ConfigError("centroid of an empty row selection is undefined")
            return self._mean(r, site, ids, d)
        if token is not None:
            tids = select.require_token_ids(r, token)
            what = f"token {token!r}"
        else:
            tids = np.asarray([int(token_id)], np.int32)  # type: ignore[arg-type]
            what = f"token_id {token_id}"
        if site in r.centroid_sites:
            sums, counts = r.centroid_sums(site)
            if int(tids.max()) < len(counts):
                n = int(counts[tids].sum())
                if n:
                    return np.asarray(sums[tids].sum(0) / n, np.float32)
        ids = self._rows(
            r,
            "SELECT row FROM tokens WHERE run = ? AND list_contains(?::INTEGER[], token_id) "
            "ORDER BY row",
            [run, tids.tolist()],
        )
        if not len(ids):
            raise TokenNotFoundError(f"{what} never occurs in run {run!r}; no centroid")
        return self._mean(r, site, ids, d)

    def _mean(
        self, r: RunReader, site: str, ids: npt.NDArray[np.int64], d: int
    ) -> npt.NDArray[np.float32]:
        total = np.zeros(d, np.float64)
        for start in range(0, len(ids), 65536):
            total += r.gather(site, ids[start : start + 65536]).astype(np.float64).sum(0)
        return np.asarray(total / len(ids), np.float32)

    def export(
        self,
        run: str,
        site: str,
        out: str | Path,
        rows: Any = None,
        *,
        params: Params = None,
        dtype: str | None = None,
        batch_rows: int = 65536,
    ) -> int:
        """Write the vectors of ``site`` (all rows, or ``rows``) to ``.npy`` or ``.parquet``.

        Streams in blocks of ``batch_rows``; the store is never loaded whole. The ``.npy``
        holds an ``[n, d]`` array in the order of ``rows``; the ``.parquet`` has columns
        ``row`` (int64) and ``vector`` (fixed-size list of d floats).

        Parameters
        ----------
        dtype : {"float32", "float16"} or None
            None keeps the stored dtype, except bfloat16 which is written as float32
            (neither format has a bfloat16 type).

        Returns
        -------
        int
            Rows written.

        Raises
        ------
        ConfigError
            Unknown file suffix, or ``out`` inside the store (which is read-only).
        """
        from actstore.query.export import check_outside, write_npy, write_vectors_parquet

        out = check_outside(out, self.path)
        suffix = out.suffix.lower()
        if suffix not in (".npy", ".parquet"):
            raise ConfigError(f"export writes .npy or .parquet, got {out.name!r}")
        r = self._run(run)
        info = r.site_info(site)
        stored = info["dtype"]
        np_dtype = np.dtype(dtype or ("float32" if stored == "bfloat16" else stored))
        if np_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ConfigError(f"export dtype must be float32 or float16, got {dtype!r}")
        ids = None if rows is None else self._rows(r, rows, params)
        n = r.n_rows if ids is None else len(ids)
        blocks = self.iter_vectors(run, site, ids, batch_rows=batch_rows, dtype=np_dtype)
        if suffix == ".npy":
            return write_npy(out, (n, info["d"]), np_dtype, (x for _, x in blocks))
        return write_vectors_parquet(out, info["d"], np_dtype, blocks)

    # -- selections ------------------------------------------------------------------------

    def token_ids(self, run: str, token: str, match: Match = "auto") -> npt.NDArray[np.int32]:
        """Vocabulary ids of ``run`` whose decoded string matches ``token`` (see
        :func:`actstore.query.select.token_ids` for ``match``; default: exact, else
        ignoring surrounding whitespace).

        Raises
        ------
        TokenNotFoundError
            Nothing in the vocabulary matches.
        """
        return select.require_token_ids(self._run(run), token, match)

    def rows_of_token(self, run: str, token: str, match: Match = "exact") -> npt.NDArray[np.int64]:
        """Sorted rows of ``run`` whose token matches ``token`` (see
        :func:`actstore.query.select.token_ids` for ``match``)."""
        return select.rows_of_token(self.engine, self._run(run), token, match)

    def rows_in_span(self, run: str, doc_id: int, start: int, end: int) -> npt.NDArray[np.int64]:
        """Sorted rows of ``run`` in doc ``doc_id`` whose span overlaps ``[start, end)``."""
        return select.rows_in_span(self.engine, self._run(run), doc_id, start, end)

    def rows_of_word(self, run: str, word: str, *, case: bool = True) -> pd.DataFrame:
        """Tokens overlapping each whole-word occurrence of ``word`` (a DataFrame with a
        ``row`` column; see :func:`actstore.query.select.rows_of_word`)."""
        return select.rows_of_word(self.engine, self._run(run), word, case)

    def last_token_rows(self, run: str, *, skip_special: bool = True) -> npt.NDArray[np.int64]:
        """Sorted rows of the last (non-special) token of each doc of ``run``."""
        return select.last_token_rows(self.engine, self._run(run), skip_special)

    def align(self, run_a: str, run_b: str, rows_a: Any = None) -> pd.DataFrame:
        """Each A token with every B token of the same doc whose span overlaps it (see
        :func:`actstore.query.select.align`)."""
        return select.align(self.engine, self._run(run_a), self._run(run_b), rows_a)

    def align_last(self, run_a: str, run_b: str, rows_a: Any = None) -> pd.DataFrame:
        """One B row per A row: the last B token overlapping it (columns row_a, row_b)."""
        return select.align_last(self.engine, self._run(run_a), self._run(run_b), rows_a)

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the SQL connection and drop memory maps; the store cannot be used after."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._reader.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, runs={self.runs})"


def open_store(path: str | Path) -> Store:
    """Open the store at ``path`` read-only (same as ``Store(path)``)."""
    return Store(path)
