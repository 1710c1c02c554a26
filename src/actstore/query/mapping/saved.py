"""Saved maps: write a fitted map as a result, read it back, apply it to rows or vectors."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from actstore.errors import ConfigError, MappingError
from actstore.query.mapping.linmaps import LinearMap
from actstore.query.mapping.on_store import (
    FittedMap,
    MapConfig,
    PairSpec,
    iter_pairs,
    pair_rows,
)
from actstore.query.store import Store

__all__ = ["apply_map", "load_map", "save_map"]


def save_map(
    store_path: str | Path, name: str, fitted: FittedMap, *, overwrite: bool = False
) -> Path:
    """Save ``fitted`` as result ``name``: arrays ``coef`` (d, m), ``intercept`` (m,) and
    extras; the metrics table has one row per split; meta holds spec, config and map info."""
    import pyarrow as pa

    table_rows = [
        {"split": k, **{c: v for c, v in m.items() if np.isscalar(v)}}
        for k, m in fitted.metrics.items()
        if k != "map"
    ]
    from actstore.query.results import write_result

    meta = {
        "analysis": "map",
        "method": fitted.config.method,
        "spec": asdict(fitted.spec),
        "config": asdict(fitted.config),
        "map": fitted.metrics.get("map", {}),
    }
    arrays = {"coef": fitted.map.coef, "intercept": fitted.map.intercept, **fitted.arrays}
    return write_result(
        store_path,
        name,
        pa.Table.from_pylist(table_rows),
        meta=meta,
        arrays=arrays,
        overwrite=overwrite,
    )


def load_map(store_path: str | Path, name: str) -> FittedMap:
    """Load a map saved by :func:`save_map`.

    Raises
    ------
    ResultNotFoundError
        No result ``name``.
    MappingError
        The result is not a map.
    """
    from actstore.query.results import read_result

    table, meta, arrays = read_result(store_path, name)
    if meta.get("analysis") != "map" or "coef" not in arrays:
        raise MappingError(f"result {name!r} is not a saved map; pick one written by map fit")
    cfg = dict(meta["config"])
    cfg["alphas"] = tuple(cfg["alphas"])
    lm = LinearMap(np.array(arrays["coef"]), np.array(arrays["intercept"]), dict(meta["map"]))
    metrics = {str(r.pop("split")): r for r in table.to_pylist()}
    extras = {k: np.array(v) for k, v in arrays.items() if k not in ("coef", "intercept")}
    return FittedMap(lm, PairSpec(**meta["spec"]), MapConfig(**cfg), metrics, extras)


def apply_map(
    store: Store,
    name: str,
    out: str | Path,
    *,
    rows: str | None = None,
    vectors: str | Path | None = None,
) -> tuple[int, int]:
    """Apply saved map ``name`` and write the predictions as a float32 ``.npy`` at ``out``.

    Parameters
    ----------
    store : Store
    name : str
        A map saved by :func:`save_map`.
    out : path
        A ``.npy`` outside the store.
    rows : str, optional
        SQL selecting the X rows (default: the map's own rows).
    vectors : path, optional
        A ``.npy`` of shape (n, d) to map instead of store rows.

    Returns
    -------
    tuple of int
        The shape ``(n, m)`` written.

    Raises
    ------
    ConfigError
        ``out`` is not a ``.npy`` or lies inside the store.
    """
    from actstore.query.export import check_outside, write_npy

    path = check_outside(out, store.path)
    if path.suffix != ".npy":
        raise ConfigError(f"--out must be a .npy file, got {path.name!r}")
    fitted = load_map(store.path, name)
    m = fitted.map.coef.shape[1]
    if vectors is not None:
        y = fitted.predict(np.load(vectors)).astype(np.float32)
        np.save(path, y)
        return len(y), m
    spec = replace(fitted.spec, y=fitted.spec.x, y_run=None, y_rows=None)
    if rows is not None:
        spec = replace(spec, rows=rows)
    pairs = pair_rows(store, spec)
    blocks = (
        fitted.predict(x) for x, _ in iter_pairs(store, spec, pairs, fitted.config.batch_rows)
    )
    return write_npy(path, (len(pairs.x), m), np.float32, blocks), m
