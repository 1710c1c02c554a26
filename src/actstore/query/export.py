"""Everything that leaves the store as a file or as printed rows: the one "not inside the
store" check, streamed ``.npy`` / ``.parquet`` vector files, and query results as a text
table, CSV, JSON or Parquet.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError

if TYPE_CHECKING:
    from actstore.query.sql import QueryResult

__all__ = [
    "check_outside",
    "format_table",
    "write_npy",
    "write_query_result",
    "write_vectors_parquet",
]


def check_outside(out: str | Path, store: str | Path) -> Path:
    """``out`` as a Path, if it lies outside ``store`` (a store is read-only to readers).

    Raises
    ------
    ConfigError
        ``out`` is inside the store.

    Examples
    --------
    >>> check_outside("/tmp/x.npy", "/data/my.acts").name
    'x.npy'
    """
    path = Path(out)
    if path.resolve().is_relative_to(Path(store).resolve()):
        raise ConfigError(f"{out} is inside the store, which is read-only; pick a path outside")
    return path


@contextlib.contextmanager
def _replacing(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out`` that becomes ``out`` if the block succeeds and is
    deleted if it fails: an export stopped by an error (a damaged store) leaves no file
    that could pass for its output."""
    tmp = out.with_name(f".{out.name}.part-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_npy(
    out: str | Path,
    shape: tuple[int, int],
    dtype: npt.DTypeLike,
    blocks: Iterable[npt.NDArray[Any]],
) -> int:
    """Stream ``blocks`` (row blocks of ``shape[1]`` columns) into a ``.npy`` at ``out``.

    The file is a memory map, so a selection larger than memory is written in bounded
    memory; it appears at ``out`` only when complete. Returns the number of rows written.

    Raises
    ------
    ConfigError
        The blocks hold another number of rows than ``shape[0]``.
    """
    with _replacing(Path(out)) as tmp:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        at = 0
        for x in blocks:
            mm[at : at + len(x)] = x
            at += len(x)
        mm.flush()
        del mm
        if at != shape[0]:
            raise ConfigError(f"wrote {at} rows to {out}, expected {shape[0]}")
    return at


def write_vectors_parquet(
    out: str | Path,
    d: int,
    dtype: npt.DTypeLike,
    blocks: Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[Any]]],
) -> int:
    """Stream ``(rows, vectors)`` blocks into a Parquet file with columns ``row`` (int64)
    and ``vector`` (a fixed-size list of ``d`` floats), complete or not at all. Returns the
    rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = pa.float32() if np.dtype(dtype) == np.float32 else pa.float16()
    schema = pa.schema([("row", pa.int64()), ("vector", pa.list_(value, d))])
    n = 0
    with _replacing(Path(out)) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for block_rows, x in blocks:
            flat = pa.array(np.ascontiguousarray(x).reshape(-1), value)
            vec = pa.FixedSizeListArray.from_arrays(flat, d)
            writer.write_table(pa.table([pa.array(block_rows), vec], schema=schema))
            n += len(block_rows)
    return n


def _cell(value: Any, width: int) -> str:
    text = "NULL" if value is None else str(value).replace("\n", "\\n")
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def format_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, max_width: int = 40
) -> str:
    """Rows as aligned text columns, each cell cut to ``max_width`` characters.

    >>> print(format_table(["row", "token"], [(1, "dog"), (12, "a long token")], max_width=8))
    row  token
    ---  --------
    1    dog
    12   a long …
    """
    cells = [[_cell(v, max_width) for v in r] for r in rows]
    heads = [_cell(c, max_width) for c in columns]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _json_lists(df: Any) -> Any:
    """List / array cells as JSON lists (pandas would write a NumPy repr, with newlines)."""
    import json

    out = df.copy()
    for col in out.columns:
        if (
            out[col].dtype == object
            and out[col]
            .map(lambda v: hasattr(v, "__len__") and not isinstance(v, str | bytes))
            .any()
        ):
            out[col] = out[col].map(
                lambda v: (
                    json.dumps(np.asarray(v).tolist())
                    if hasattr(v, "__len__") and not isinstance(v, str | bytes)
                    else v
                )
            )
    return out


def write_query_result(
    result: QueryResult,
    *,
    fmt: Literal["table", "csv", "json", "parquet"] = "table",
    out: str | Path | None = None,
    store: Path | None = None,
    max_rows: int = 1000,
    max_width: int = 40,
) -> None:
    """Print ``result`` (or write it to ``out``) as a text table, CSV, JSON or Parquet.

    Raises
    ------
    ConfigError
        Parquet without ``out``, or ``out`` inside the store (which is read-only).
    """
    import sys

    if out is not None and store is not None:
        check_outside(out, store)
    if fmt == "parquet":
        if out is None:
            raise ConfigError("--format parquet writes a file: give --out FILE.parquet")
        import pyarrow.parquet as pq

        pq.write_table(result.arrow(), out)
        return
    if fmt == "table":
        rows = result.limit(max_rows + 1)
        more = len(rows) > max_rows
        text = format_table(result.columns, rows[:max_rows], max_width=max_width)
        if more:
            text += f"\n... (more than {max_rows} rows; use --max-rows or --format csv)"
    elif fmt == "csv":
        text = _json_lists(result.df()).to_csv(index=False).rstrip("\n")
    elif fmt == "json":
        text = result.df().to_json(orient="records", date_format="iso", force_ascii=False)
    else:
        raise ConfigError(f"unknown format {fmt!r}; expected table, csv, json or parquet")
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        Path(out).write_text(text + "\n")
