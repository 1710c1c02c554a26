"""Saved analysis results on disk: write (atomic for readers), read, list.

A result is a folder ``results/<name>/`` with ``result.parquet`` (one table, shown by
``Store.sql`` as a view named ``<name>``), optional ``arrays/<key>.npy`` (coefficients,
dictionaries, ...) and ``meta.json`` (what was computed, on which run/site/rows, with
which options, and when). A result is written to a temporary folder and renamed into
place, so readers see the old result or the new one, never a half-written one; nothing
else in the store is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from actstore.errors import ConfigError, ResultNotFoundError
from actstore.store.format import ARRAYS_DIR, RESULT_META, RESULT_TABLE, RESULTS_DIR
from actstore.store.manifest import read_manifest

__all__ = [
    "RESULT_NAME",
    "list_results",
    "read_result",
    "result_dir",
    "result_tables",
    "write_result",
]

#: Result names double as SQL view names: an identifier that cannot clash with a table.
RESULT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_RESERVED = {"docs", "tokens", "vocab", "runs", "sites", "results"}


def result_dir(store: str | Path, name: str) -> Path:
    """Folder of result ``name`` in ``store``."""
    return Path(store) / RESULTS_DIR / name


def _check_name(name: str) -> str:
    if not RESULT_NAME.match(name) or name.lower() in _RESERVED:
        raise ConfigError(
            f"result name {name!r} is not allowed; use letters, digits and '_' (a SQL "
            f"identifier, not one of {', '.join(sorted(_RESERVED))})"
        )
    return name


def write_result(
    store: str | Path,
    name: str,
    table: pa.Table | Any,
    *,
    meta: Mapping[str, Any],
    arrays: Mapping[str, npt.NDArray[Any]] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write result ``name`` (replacing an older one unless ``overwrite=False``).

    Parameters
    ----------
    store : path
        An existing store (its manifest is checked first).
    name : str
        Result name; also the SQL view name.
    table : pyarrow.Table or pandas.DataFrame
        The result table.
    meta : mapping
        JSON-able description: ``analysis``, ``run``, ``site``, options, metrics.
    arrays : mapping of str to ndarray, optional
        Saved as ``arrays/<key>.npy``.
    overwrite : bool
        Replace an existing result of that name.

    Returns
    -------
    Path
        The result folder.
    """
    read_manifest(Path(store))
    _check_name(name)
    final = result_dir(store, name)
    if final.exists() and not overwrite:
        raise ConfigError(f"result {name!r} exists in {store}; pick another name or overwrite")
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    tmp = final.parent / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ARRAYS_DIR).mkdir(parents=True)
    pq.write_table(table, tmp / RESULT_TABLE, compression="zstd")
    for key, value in (arrays or {}).items():
        np.save(tmp / ARRAYS_DIR / f"{key}.npy", np.asarray(value))
    full_meta = {
        "name": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **dict(meta),
    }
    (tmp / RESULT_META).write_text(json.dumps(full_meta, indent=2, default=_json_default) + "\n")
    old = final.parent / f".{name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def read_result(store: str | Path, name: str) -> tuple[pa.Table, dict[str, Any], dict[str, Any]]:
    """Return ``(table, meta, arrays)`` of result ``name``; arrays are memory-mapped."""
    folder = result_dir(store, name)
    if not (folder / RESULT_TABLE).is_file():
        have = ", ".join(list_results(store)) or "none"
        raise ResultNotFoundError(f"no result {name!r} in {store} (results: {have})")
    arrays = {
        f.stem: np.load(f, mmap_mode="r") for f in sorted((folder / ARRAYS_DIR).glob("*.npy"))
    }
    meta = json.loads((folder / RESULT_META).read_text())
    return pq.read_table(folder / RESULT_TABLE), meta, arrays


def result_tables(store: str | Path) -> dict[str, Path]:
    """The table file of every saved result, by name (folders being written are skipped)."""
    root = Path(store) / RESULTS_DIR
    if not root.is_dir():
        return {}
    return {
        p.name: p / RESULT_TABLE
        for p in sorted(root.iterdir())
        if not p.name.startswith(".") and (p / RESULT_TABLE).is_file()
    }


def list_results(store: str | Path) -> list[str]:
    """Names of the results saved in ``store``."""
    return list(result_tables(store))
