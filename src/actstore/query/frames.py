"""Vectors with their metadata: a table of selected rows (token, position, span, doc) with a
vector column, and an xarray view of a whole site.

>>> # with actstore.open("demo.acts") as s:
>>> #     df = s.frame("minilm", "hidden.6", "SELECT row FROM tokens WHERE token_id = 2000")
>>> #     ds = s.to_xarray("minilm", "hidden.6")   # lazy (dask) where dask is installed
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from actstore.query.sql import Params
    from actstore.query.store import Store

__all__ = ["META_COLUMNS", "frame", "to_xarray"]

#: The metadata columns of a frame, in order (``token`` is the decoded vocabulary string).
META_COLUMNS = ("row", "doc_id", "pos", "token_id", "token", "start", "end", "special")


def frame(
    store: Store,
    run: str,
    site: str,
    rows: Any = None,
    params: Params = None,
    *,
    dtype: npt.DTypeLike = np.float32,
    kind: Literal["pandas", "arrow"] = "pandas",
) -> pd.DataFrame | pa.Table:
    """The vectors of ``site`` at ``rows`` joined to their token metadata.

    Parameters
    ----------
    store : Store
    run, site : str
    rows : row ids, SQL string or None
        As in :meth:`Store.vectors` (a SQL query is scoped to ``run``); None: every row.
    params : sequence or mapping, optional
        Parameters of a SQL ``rows``.
    dtype : dtype
        Of the vectors.
    kind : {"pandas", "arrow"}
        A pandas DataFrame (``vector``: one ndarray of shape (d,) per row) or an Arrow
        table (``vector``: a fixed-size list of d floats).

    Returns
    -------
    pandas.DataFrame or pyarrow.Table
        One row per selected row, in the selection's order: ``row, doc_id, pos, token_id,
        token, start, end, special, vector``.

    Raises
    ------
    ConfigError
        An unknown ``kind``.
    RunNotFoundError, SiteNotFoundError, RowIndexError, QueryError
    """
    import pyarrow as pa

    if kind not in ("pandas", "arrow"):
        raise ConfigError(f"kind must be 'pandas' or 'arrow', got {kind!r}")
    n = int(store.run_info(run)["counts"]["rows"])
    ids = np.arange(n, dtype=np.int64) if rows is None else store.rows(run, rows, params)
    X = np.ascontiguousarray(store.vectors(run, site, ids, dtype=dtype))
    meta = store.sql(
        'SELECT t.row, t.doc_id, t.pos, t.token_id, v.token, t.start, t."end", t.special '
        "FROM tokens t LEFT JOIN vocab v ON v.run = t.run AND v.token_id = t.token_id "
        "WHERE t.run = ? AND t.row IN (SELECT unnest(?::BIGINT[]))",
        [run, np.unique(ids).tolist()],
    ).arrow()
    order = np.argsort(meta.column("row").to_numpy())
    where = np.searchsorted(meta.column("row").to_numpy()[order], ids)
    meta = meta.take(pa.array(order[where]))
    value = pa.from_numpy_dtype(X.dtype)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), value), X.shape[1])
    table = meta.append_column("vector", vec)
    if kind == "arrow":
        return table
    df = meta.to_pandas()
    df["vector"] = list(X)
    return df


def to_xarray(store: Store, run: str, site: str) -> Any:
    """An ``xarray.Dataset`` of ``site``: the data variable ``site`` of dims ``(row, dim)``
    with the token metadata (``doc_id``, ``pos``, ``token_id``, ``start``, ``end``,
    ``special``) as ``row`` coordinates.

    Lazy and chunked by the store's shards when dask is installed (each part's Zarr array
    read with ``dask.array.from_zarr``); otherwise the values are read into memory.

    Raises
    ------
    ConfigError
        xarray is not installed (``pip install 'actstore[xarray]'``).
    """
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is in the dev extra
        raise ConfigError(
            "to_xarray needs xarray: pip install 'actstore[xarray]' (xarray and dask)"
        ) from None
    info = store._run(run).site_info(site)
    data = _dask_site(store, run, site)
    if data is None:
        data = store.vectors(run, site, np.arange(int(store.run_info(run)["counts"]["rows"])))
    cols = store.token_columns(run, "doc_id", "pos", "token_id", "start", "end", "special")
    coords = {"row": np.arange(data.shape[0]), **{k: ("row", v) for k, v in cols.items()}}
    return xr.Dataset(
        {site: (("row", "dim"), data)},
        coords=coords,
        attrs={"run": run, "site": site, "dtype": info["dtype"], "store": str(store.path)},
    )


def _dask_site(store: Store, run: str, site: str) -> Any:
    """The site as one dask array over its parts' Zarr arrays, or None without dask."""
    try:
        import dask.array
    except ImportError:
        return None
    da: Any = dask.array  # untyped library
    import zarr

    from actstore.store.dtypes import logical_numpy_dtype

    reader = store._run(run)
    dtype = logical_numpy_dtype(reader.site_info(site)["dtype"])
    parts = []
    for part in reader.site_array(site).parts:  # row counts checked against run.json
        z = zarr.open_array(str(part.path), mode="r")
        lazy = da.from_zarr(z, chunks=z.shards or z.chunks)  # one task per shard file
        parts.append(lazy.view(dtype) if lazy.dtype != dtype else lazy)
    return da.concatenate(parts, axis=0) if parts else None
