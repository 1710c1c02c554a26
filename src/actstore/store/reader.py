"""Read a store: its committed runs, their metadata, files, matrices and row arrays.

Only runs listed in ``actstore.json`` are visible; a run still being written, or a sharded
run whose parts are not all done, does not exist for a reader. Nothing here writes.

Over 420 lines because every file a run owns is read (and checked) here, one reader
method per kind of file — row arrays, matrices, centroids, and the tokens, vocab, docs
and losses tables — so that damage is reported the same way whatever is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actstore.errors import (
    MatrixNotFoundError,
    RowIndexError,
    RunNotFoundError,
    SiteNotFoundError,
    StoreCorruptError,
    StoreError,
)
from actstore.store._gather import MapCache, PartArray, SiteArray
from actstore.store._objects import store_path
from actstore.store._parquet import parquet_problem, read_batches, read_table
from actstore.store.dtypes import logical_numpy_dtype, to_logical
from actstore.store.format import (
    ARRAYS_DIR,
    CENTROIDS_DIR,
    DOCS_DIR,
    LOSSES_NAME,
    RUN_JSON_NAME,
    SITE_NAME,
    TOKENS_DIR,
    VOCAB_NAME,
    ManifestJSON,
    RunJSON,
    SiteJSON,
    docs_file_part,
    part_array_path,
    run_dir,
    staging_dir,
)
from actstore.store.manifest import read_manifest, read_run_json

if TYPE_CHECKING:
    from typing import TypeAlias

    import pandas as pd
    import pyarrow as pa

    #: Global row ids: a sequence, an integer ndarray or a pandas Series.
    RowsLike: TypeAlias = Sequence[int] | npt.NDArray[np.integer[Any]] | pd.Series[Any]

__all__ = ["RunReader", "StoreReader", "as_row_array", "parquet_problem"]

#: Keys of ``run.json`` (and of its items) that reading a run relies on.
_RUN_KEYS: dict[str, tuple[str, ...]] = {
    "sites": ("name", "d", "dtype"),
    "parts": ("index", "n_rows", "row_offset"),
}
_RUN_OBJECTS: dict[str, tuple[str, ...]] = {"counts": ("rows",), "model": ()}


def _check_run_json(meta: Any, path: Path) -> None:
    """Raise :class:`StoreCorruptError` if ``meta`` lacks what reading the run needs."""
    problems = [f"lacks {k!r}" for k in ("dtype", *_RUN_KEYS, *_RUN_OBJECTS) if k not in meta]
    for key, item_keys in _RUN_KEYS.items():
        items = meta.get(key, [])
        if not isinstance(items, list) or not all(
            isinstance(x, dict) and all(k in x for k in item_keys) for x in items
        ):
            problems.append(f"{key!r} is not a list of objects with {', '.join(item_keys)}")
    for key, item_keys in _RUN_OBJECTS.items():
        obj = meta.get(key, {})
        if not isinstance(obj, dict) or not all(k in obj for k in item_keys):
            problems.append(f"{key!r} is not an object with {', '.join(item_keys) or 'fields'}")
    if not meta.get("parts"):
        problems.append("lists no parts")
    if problems:
        raise StoreCorruptError(
            f"{path}: {problems[0]}; the run's record is damaged: restore run.json from a "
            "backup, or re-extract the run with --overwrite"
        )


def as_row_array(rows: RowsLike, n_rows: int, what: str) -> npt.NDArray[np.int64]:
    """``rows`` as a 1-D int64 array, checked to lie in ``[0, n_rows)``.

    >>> as_row_array([3, 1], 5, "run 'a'")
    array([3, 1])

    Raises
    ------
    RowIndexError
        A row id is out of range, or the rows are not integers.
    """
    arr = np.asarray(rows)
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != 1:
        raise RowIndexError(f"rows must be 1-D row ids, got an array of shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(arr.dtype, np.integer) and (
        not np.issubdtype(arr.dtype, np.floating)
        or not np.all(np.isfinite(arr))
        or np.any(arr != np.round(arr))
    ):
        raise RowIndexError(
            f"rows must be integer row ids, got dtype {arr.dtype}; select the `row` column"
        )
    out = arr.astype(np.int64, copy=False)
    lo, hi = int(out.min()), int(out.max())
    if lo < 0 or hi >= n_rows:
        bad = lo if lo < 0 else hi
        raise RowIndexError(
            f"row {bad} out of range for {what} with {n_rows:,} rows (valid: 0..{n_rows - 1}); "
            "take row ids from the tokens table of the same run"
        )
    return out


class RunReader:
    """One committed run: its ``run.json``, files, matrices and row arrays.

    Parameters
    ----------
    store : Path
        The store directory.
    name : str
        The run (must be committed).
    maps : MapCache
        Memory maps shared by the store's arrays.
    """

    def __init__(self, store: Path, name: str, maps: MapCache) -> None:
        self.store = store
        self.name = name
        self.dir = run_dir(store, name)
        self._maps = maps
        self.meta: RunJSON = read_run_json(store, name)
        _check_run_json(self.meta, self.dir / RUN_JSON_NAME)
        self._sites: dict[str, SiteArray] = {}

    @property
    def arrays_root(self) -> Path:
        """The run's Zarr group directory."""
        return self.dir / ARRAYS_DIR

    @property
    def n_rows(self) -> int:
        """Token rows of the run."""
        return int(self.meta["counts"]["rows"])

    @property
    def sites(self) -> list[str]:
        """Site names in stored order (each checked like a typed name: it names a folder)."""
        names = [s["name"] for s in self.meta["sites"]]
        for name in names:
            if not isinstance(name, str) or not SITE_NAME.match(name):
                raise StoreError(
                    f"run {self.name!r} lists a site named {name!r} in its run.json, which is "
                    "not a valid site name; the run is damaged or was not written by actstore"
                )
        return names

    def site_info(self, site: str) -> SiteJSON:
        """The ``run.json`` entry of ``site``.

        Raises
        ------
        SiteNotFoundError
            The run has no such site.
        """
        names = self.sites  # validated like typed names
        for s in self.meta["sites"]:
            if s["name"] == site:
                return s
        raise SiteNotFoundError(
            f"site {site!r} not in run {self.name!r}{_did_you_mean(site, names)} (has "
            f"{_site_list(names)}); {self._site_advice(site)}"
        )

    def _site_advice(self, site: str) -> str:
        """Re-extraction is suggested only for a site this model has (``hidden.9`` of a
        6-layer model is no site at all)."""
        n_layers = (self.meta.get("model") or {}).get("n_layers")
        if site.startswith("hidden.") and site[7:].isdigit() and isinstance(n_layers, int):
            if int(site[7:]) > n_layers:
                return f"the model has hidden.0..hidden.{n_layers}; pick one of the run's sites"
            return f"pick one of them or re-extract with --sites {site}"
        if site.startswith("module:"):
            return f"pick one of them or re-extract with --sites {site}"
        return "pick one of them"

    @cached_property
    def token_files(self) -> list[Path]:
        """The run's tokens Parquet files in row order."""
        folder = self.dir / TOKENS_DIR
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    @property
    def vocab_file(self) -> Path | None:
        """``vocab.parquet`` of the run, if present."""
        path = self.dir / VOCAB_NAME
        return path if path.is_file() else None

    def vocab_table(self, columns: Sequence[str]) -> pa.Table | None:
        """``columns`` of the run's ``vocab.parquet`` (None if it has none).

        Raises
        ------
        StoreCorruptError
            The file is truncated or does not decode.
        """
        path = self.vocab_file
        return None if path is None else read_table(path, columns, fix=self._fix)

    def token_columns(self, columns: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """``columns`` of the run's tokens files, in row order (index = row id), read
        straight from Parquet (no SQL engine: the files are the table).

        Raises
        ------
        StoreCorruptError
            A tokens file is truncated, does not decode, or its rows do not number
            ``0 .. n_rows - 1``.
        """
        import pyarrow as pa

        want = list(dict.fromkeys([*columns, "row"]))
        tables = [read_table(f, want, fix=self._fix) for f in self.token_files]
        table = pa.concat_tables(tables) if tables else None
        if table is None or table.num_rows == 0:
            return {c: np.zeros(0, np.int64) for c in columns}
        rows = table["row"].to_numpy()
        if not np.array_equal(rows, np.arange(len(rows))):
            order = np.argsort(rows, kind="stable")
            if not np.array_equal(rows[order], np.arange(len(rows))):
                raise StoreCorruptError(
                    f"the tokens files of run {self.name!r} in {self.dir} do not number their "
                    f"rows 0..{len(rows) - 1}; {self._fix}"
                )
            table = table.take(pa.array(order))
        return {c: table[c].to_numpy() for c in columns}

    def losses_file(self) -> Path | None:
        """A gradient run's per-doc objective values (``losses.parquet``), or None."""
        path = self.dir / LOSSES_NAME
        return path if path.is_file() else None

    def doc_files(self) -> list[Path]:
        """The docs Parquet files written by this run, by part: exactly its own names
        (``docs/<run>.part-KKKK.parquet``), not those of a run ``<run>.part-0000`` or
        ``<run>x``."""
        folder = self.store / DOCS_DIR
        if not folder.is_dir():
            return []
        found = {docs_file_part(self.name, f.name): f for f in folder.glob("*.parquet")}
        return [found[k] for k in sorted(k for k in found if k is not None)]

    def doc_batches(
        self, columns: Sequence[str], batch_size: int = 8192
    ) -> Iterator[pa.RecordBatch]:
        """``columns`` of the run's docs files, streamed in record batches.

        Raises
        ------
        StoreCorruptError
            A docs file is truncated or does not decode.
        """
        for path in self.doc_files():
            yield from read_batches(path, columns, batch_size, fix=self._fix)

    @property
    def _fix(self) -> str:
        return (
            "the store is damaged: restore the file from a backup, or re-extract run "
            f"{self.name!r} with --overwrite"
        )

    def site_array(self, site: str) -> SiteArray:
        """The row array of ``site`` over all parts (global rows)."""
        if site not in self._sites:
            self.site_info(site)
            parts = self.meta["parts"]
            arrays = [
                PartArray(self.arrays_root / part_array_path(p["index"], site), self._maps)
                for p in parts
            ]
            for p, arr in zip(parts, arrays, strict=True):
                if arr.n_rows != p["n_rows"]:
                    raise StoreCorruptError(
                        f"array {arr.path} has {arr.n_rows} rows, run.json says {p['n_rows']}; "
                        "the store is damaged: re-extract the run with --overwrite"
                    )
            self._sites[site] = SiteArray(arrays, [p["row_offset"] for p in parts])
        return self._sites[site]

    def logical_dtype(self, site: str) -> np.dtype[Any]:
        """The dtype readers get for ``site`` (``ml_dtypes.bfloat16`` for bfloat16)."""
        return logical_numpy_dtype(self.site_info(site)["dtype"])

    def to_logical(self, site: str, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """View raw rows of ``site`` as its logical dtype."""
        return to_logical(x, self.site_info(site)["dtype"])

    def gather(self, site: str, rows: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """Rows ``rows`` (checked, any order, duplicates allowed) of ``site``, logical dtype.

        Row ids are sorted so each shard file is visited once and read in order; the
        result is in the order of ``rows``: shape ``(len(rows), d)``.
        """
        return self.to_logical(site, self.site_array(site).take(rows))

    def matrix(self, name: str) -> npt.NDArray[Any]:
        """A per-vocabulary matrix (``embed``, ``unembed``, ``final_norm.weight``, ...).

        Raises
        ------
        MatrixNotFoundError
            The run stored no matrix of that name.
        """
        known = self.meta.get("matrices", {})
        path = self.arrays_root / name
        if name not in known or not (path / "zarr.json").is_file():
            if self.meta.get("config", {}).get("matrices") is False:
                raise MatrixNotFoundError(
                    f"matrix {name!r} not in run {self.name!r}: it was extracted with "
                    "--no-matrices; extract it again without that option to use it"
                )
            raise MatrixNotFoundError(
                f"matrix {name!r} not in run {self.name!r} "
                f"(has {', '.join(known) or 'none'}); pick one of them"
            )
        return _read_zarr(path)

    @property
    def centroid_sites(self) -> list[str]:
        """Sites with stored per-token centroid sums."""
        return list(self.meta.get("centroids", []))

    def centroid_sums(self, site: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Stored ``(sums [V, d] float64, counts [V] int64)`` of ``site``."""
        root = self.arrays_root / CENTROIDS_DIR
        return _read_zarr(root / site), _read_zarr(root / "count")


def _did_you_mean(name: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or nothing."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _site_list(names: list[str]) -> str:
    """Site names, with a run of ``hidden.0 .. hidden.N`` shortened."""
    hidden = [n for n in names if n.startswith("hidden.") and n[7:].isdigit()]
    ks = sorted(int(n[7:]) for n in hidden)
    if len(ks) > 2 and ks == list(range(ks[0], ks[-1] + 1)):
        rest = [n for n in names if n not in hidden]
        return ", ".join([f"hidden.{ks[0]}..hidden.{ks[-1]}", *rest])
    return ", ".join(names) or "none"


def _read_zarr(path: Path) -> npt.NDArray[Any]:
    from actstore.store.arrays import read_array

    return read_array(path)


class StoreReader:
    """A store opened for reading: the manifest and its committed runs.

    Parameters
    ----------
    path : str or Path
        The store directory.

    Raises
    ------
    StoreNotFoundError, StoreError, FormatVersionError
        From :func:`actstore.store.manifest.read_manifest`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = store_path(path)
        self.manifest: ManifestJSON = read_manifest(self.path)
        self.maps = MapCache(max_open=512)
        self._runs: dict[str, RunReader] = {}

    @property
    def runs(self) -> list[str]:
        """Committed runs, in commit order."""
        return list(self.manifest["runs"])

    def run(self, name: str) -> RunReader:
        """The committed run ``name``.

        Raises
        ------
        RunNotFoundError
            No committed run of that name.
        """
        if name not in self.manifest["runs"]:
            pending = staging_dir(self.path, name).is_dir()
            hint = (
                " (it is still being written or not all its shards are done; see `actstore info`)"
                if pending
                else ""
            )
            raise RunNotFoundError(
                f"no committed run {name!r} in {self.path}{hint}{_did_you_mean(name, self.runs)}; "
                f"runs: {', '.join(self.runs) or 'none'}"
            )
        if name not in self._runs:
            self._runs[name] = RunReader(self.path, name, self.maps)
        return self._runs[name]

    def result_files(self) -> dict[str, Path]:
        """Saved results: ``results/<name>/result.parquet`` by name."""
        from actstore.store.results import result_tables

        return result_tables(self.path)

    def release_pages(self) -> None:
        """Unmap the store pages read so far from this process (they stay in the page
        cache): a streaming reader calls it so its RSS does not grow with rows read."""
        self.maps.release_all()

    def close(self) -> None:
        """Drop the memory maps and cached runs."""
        self.maps.clear()
        self._runs.clear()
