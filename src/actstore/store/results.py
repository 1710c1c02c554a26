"""Saved analysis results on disk: write (atomic for readers), read, list.

A result ``results/<name>`` holds ``result.parquet`` (one table, shown by ``Store.sql`` as
a view named ``<name>``), optional ``arrays/<key>.npy`` (coefficients, dictionaries, ...)
and ``meta.json`` (what was computed, on which run/site/rows, with which options, and
when). ``results/<name>`` is a symbolic link to a version folder under
``results/.versions/``: a save writes a new version, then replaces the link in one atomic
rename, so readers (and plain tools following the link) see the old result or the new
one, never a half-written or missing one. A killed save leaves only a hidden version
folder, which readers never see and the next save of that name removes. Names read from
disk are validated like names typed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from actstore.errors import ConfigError, ResultNotFoundError, StoreCorruptError
from actstore.store._objects import ObjectPath, refuse_write, store_path
from actstore.store._parquet import corrupt_file, parquet_rows, read_table
from actstore.store.format import ARRAYS_DIR, RESULT_META, RESULT_TABLE, RESULTS_DIR
from actstore.store.locks import pid_alive
from actstore.store.manifest import read_manifest, store_lock
from actstore.store.writable import write_errors

__all__ = [
    "RESULT_NAME",
    "check_can_save",
    "list_results",
    "read_result",
    "remove_result",
    "result_dir",
    "result_summaries",
    "result_tables",
    "write_result",
]

#: Folder (under ``results/``) of the result versions; ``results/<name>`` links to one.
VERSIONS_DIR = ".versions"
#: Result names double as SQL view names: an identifier that cannot clash with a table.
RESULT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_RESERVED = {"docs", "tokens", "vocab", "runs", "sites", "results"}


def result_dir(store: str | Path, name: str) -> Path:
    """Folder of result ``name`` in ``store``."""
    return store_path(store) / RESULTS_DIR / name


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
    meta: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    arrays: Mapping[str, npt.NDArray[Any]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write result ``name``; an existing result of that name is replaced only with
    ``overwrite=True`` (results are never replaced by accident).

    Parameters
    ----------
    store : path
        An existing store (its manifest is checked first).
    name : str
        Result name; also the SQL view name.
    table : pyarrow.Table, pandas.DataFrame, or an iterable of pyarrow.Table
        The result table, or its pieces in order (written as they come, so a result larger
        than memory can be saved; at least one piece, which gives the schema).
    meta : mapping, or a function returning one
        JSON-able description: ``analysis``, ``run``, ``site``, options, metrics. A function
        is called after the table is written (metrics computed while the pieces streamed).
    arrays : mapping of str to ndarray, optional
        Saved as ``arrays/<key>.npy``.
    overwrite : bool
        Replace an existing result of that name (else a :class:`ConfigError`).

    Returns
    -------
    Path
        The result folder.
    """
    refuse_write(store)
    root = Path(store) / RESULTS_DIR
    read_manifest(Path(store))
    _check_name(name)
    final = result_dir(store, name)
    _check_free(root, name, overwrite)
    if not isinstance(table, pa.Table) and hasattr(table, "columns"):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with write_errors(store):  # a full disk or a read-only store: one line
        return _publish(Path(store), root, name, final, table, meta, arrays, overwrite)


def _publish(
    store: Path,
    root: Path,
    name: str,
    final: Path,
    table: pa.Table | Iterable[pa.Table],
    meta: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    arrays: Mapping[str, npt.NDArray[Any]] | None,
    overwrite: bool,
) -> Path:
    """Write the version folder, then swap the link; a failed write leaves nothing behind."""
    # Everything goes into a fresh version folder that no reader sees; then one atomic
    # rename of a symbolic link publishes it (readers see the old result or the new one).
    version = root / VERSIONS_DIR / f"{name}-{time.time_ns()}-{os.getpid()}"
    link = root / f".{name}.link-{os.getpid()}"
    try:
        (version / ARRAYS_DIR).mkdir(parents=True)
        _write_table(table, version / RESULT_TABLE)  # a streamed table may take long
        if callable(meta):
            meta = meta()
        for key, value in (arrays or {}).items():
            np.save(version / ARRAYS_DIR / f"{key}.npy", np.asarray(value))
        full_meta = {
            "name": name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **dict(meta),
        }
        (version / RESULT_META).write_text(
            json.dumps(full_meta, indent=2, default=_json_default) + "\n"
        )
        _fsync_tree(version)
        link.unlink(missing_ok=True)
        os.symlink(os.path.relpath(version, root), link)
    except BaseException:  # a full disk, ^C: no half-written version stays behind
        link.unlink(missing_ok=True)
        shutil.rmtree(version, ignore_errors=True)
        raise
    with store_lock(store):
        _check_free(root, name, overwrite)
        if final.is_dir() and not final.is_symlink():  # a result saved by actstore < 0.2
            final.rename(root / VERSIONS_DIR / f"{name}-0-legacy")
        os.replace(link, final)
        _fsync_dir(root)
        _prune(root, name, keep=version.name)
    return final


def _write_table(table: pa.Table | Iterable[pa.Table], path: Path) -> None:
    if isinstance(table, pa.Table):
        pq.write_table(table, path, compression="zstd")
        return
    writer = None
    try:
        for piece in table:
            if writer is None:
                writer = pq.ParquetWriter(path, piece.schema, compression="zstd")
            writer.write_table(piece)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ConfigError("a streamed result table needs at least one piece (its schema)")


def check_can_save(store: str | Path, name: str, *, overwrite: bool = False) -> None:
    """Refuse early (before any work) a result name that is invalid, taken (unless
    ``overwrite``) or equal up to case to a saved one.

    Raises
    ------
    ConfigError
        With what to do instead.
    """
    refuse_write(store)
    _check_name(name)
    _check_free(Path(store) / RESULTS_DIR, name, overwrite)


def _check_free(root: Path, name: str, overwrite: bool) -> None:
    """Refuse a name taken (unless ``overwrite``) or differing from a saved one only in case
    (SQL names are case-insensitive, so both could not be views)."""
    existing = {p.name for p in root.iterdir()} if root.is_dir() else set()
    clash = sorted(n for n in existing if n.lower() == name.lower() and n != name)
    if clash:
        raise ConfigError(
            f"result {name!r} would clash with saved result {clash[0]!r} (SQL names ignore "
            "case); pick another name"
        )
    if name in existing and not overwrite:
        raise ConfigError(
            f"result {name!r} exists in {root.parent}; pick another name or pass --overwrite"
        )


def _prune(root: Path, name: str, keep: str) -> None:
    """Remove old versions of ``name`` (the current one and the one before stay, so a reader
    that resolved the old link just before the swap can still read it) and dead temp links."""
    versions = root / VERSIONS_DIR
    mine = sorted(
        (p for p in versions.glob(f"{name}-*") if _is_version(p, name)),
        key=lambda p: int(p.name.split("-")[-2]),
    )
    others = [p for p in mine if p.name != keep]
    for old in others[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(f".{name}.link-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _is_version(path: Path, name: str) -> bool:
    rest = path.name[len(name) + 1 :].split("-")
    return len(rest) == 2 and rest[0].isdigit() and (rest[1].isdigit() or rest[1] == "legacy")


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in [*(p for p in folder.rglob("*") if p.is_dir()), folder, folder.parent]:
        _fsync_dir(d)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def read_result(store: str | Path, name: str) -> tuple[pa.Table, dict[str, Any], dict[str, Any]]:
    """Return ``(table, meta, arrays)`` of result ``name``; arrays are memory-mapped.

    Raises
    ------
    ConfigError
        ``name`` is not a valid result name (e.g. a path such as ``../x``).
    ResultNotFoundError
        No result ``name`` in the store.
    """
    _check_name(name)
    for attempt in range(5):
        # resolve the link once, so table, meta and arrays come from one version; a
        # version pruned meanwhile (two newer saves) is resolved again
        folder = result_dir(store, name).resolve()
        if not (folder / RESULT_TABLE).is_file():
            if attempt < 4 and result_dir(store, name).is_symlink():
                continue
            have = ", ".join(list_results(store)) or "none"
            raise ResultNotFoundError(f"no result {name!r} in {store} (results: {have})")
        fix = f"the saved result {name!r} is damaged: save it again"
        try:
            arrays = {}
            for f in sorted((folder / ARRAYS_DIR).glob("*.npy")):
                with corrupt_file(f, fix):
                    arrays[f.stem] = _load_npy(f)
            with corrupt_file(folder / RESULT_META, fix):
                meta = json.loads((folder / RESULT_META).read_text())
            return read_table(folder / RESULT_TABLE, fix=fix), meta, arrays
        except StoreCorruptError as e:
            if isinstance(e.__cause__, FileNotFoundError):  # pruned meanwhile
                continue
            raise
    raise ResultNotFoundError(f"result {name!r} in {store} kept changing while being read")


def _load_npy(path: Path) -> npt.NDArray[Any]:
    """A saved array: memory-mapped, or downloaded from object storage."""
    if isinstance(path, ObjectPath):
        import io

        loaded: npt.NDArray[Any] = np.load(io.BytesIO(path.read_bytes()))
        return loaded
    mapped: npt.NDArray[Any] = np.load(path, mmap_mode="r")
    return mapped


def result_tables(store: str | Path) -> dict[str, Path]:
    """The table file of every saved result, by name.

    Hidden folders (versions, saves in progress) are skipped, and so is any folder whose
    name is not a valid result name, or that repeats an earlier name up to case (SQL
    names ignore case; actstore refuses to save such a pair).
    """
    root = store_path(store) / RESULTS_DIR
    if not root.is_dir():
        return {}
    out: dict[str, Path] = {}
    seen: set[str] = set()
    for p in sorted(root.iterdir()):
        if not _valid_name(p.name) or p.name.lower() in seen:
            continue
        if (p / RESULT_TABLE).is_file():
            out[p.name] = p / RESULT_TABLE
            seen.add(p.name.lower())
    return out


def _valid_name(name: str) -> bool:
    return bool(RESULT_NAME.match(name)) and name.lower() not in _RESERVED


def remove_result(store: str | Path, name: str) -> None:
    """Remove result ``name``: its link first (readers stop seeing it at once), then its
    versions.

    Raises
    ------
    ResultNotFoundError
        No result ``name``.
    StoreWriteError
        The store cannot be written.
    """
    refuse_write(store)
    _check_name(name)
    root = Path(store) / RESULTS_DIR
    read_manifest(Path(store))
    with write_errors(store), store_lock(Path(store)):  # a read-only store: one line
        final = root / name
        if not final.is_symlink() and not (final / RESULT_TABLE).is_file():
            have = ", ".join(list_results(store)) or "none"
            raise ResultNotFoundError(f"no result {name!r} in {store} (results: {have})")
        if final.is_symlink():
            final.unlink()
        else:  # a result saved by actstore < 0.2
            shutil.rmtree(final)
        _fsync_dir(root)
        for version in (root / VERSIONS_DIR).glob(f"{name}-*"):
            if _is_version(version, name):
                shutil.rmtree(version, ignore_errors=True)


def result_summaries(store: str | Path) -> list[dict[str, Any]]:
    """One line per saved result: name, analysis, run, site/source, rows, created_at."""
    out = []
    for name, table in result_tables(store).items():
        try:
            meta = json.loads((table.parent / RESULT_META).read_text())
            rows = parquet_rows(table)
        except (OSError, ValueError):
            meta, rows = {}, None
        spec = meta.get("spec") or {}
        out.append(
            {
                "name": name,
                "analysis": meta.get("analysis"),
                "run": meta.get("run") or spec.get("run"),
                "site": meta.get("site") or meta.get("source") or spec.get("x"),
                "rows": rows,
                "created_at": meta.get("created_at"),
            }
        )
    return out


def list_results(store: str | Path) -> list[str]:
    """Names of the results saved in ``store``."""
    return list(result_tables(store))
