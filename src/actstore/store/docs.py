"""The docs table: one row per input record, written per pool and combined at commit.

A record keeps its number in the corpus (``record``), the content hash of its text
(``doc_id``, shared by identical texts), the text, an ``empty`` flag, ``repeat_of`` (the
first record with the same text, whose token rows it shares) and the corpus's other fields
as given. Columns are typed from their values; where pools or parts disagree (an int in one
pool, a string in another) the column becomes a string column at commit, so no value is
dropped and no commit fails on a type.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actstore.store._faults import crash_point
from actstore.store._parquet import read_schema, read_table
from actstore.store.format import (
    DOCS_DIR,
    DOCS_SCHEMA_BASE,
    ProgressJSON,
    docs_file_name,
    docs_file_part,
    part_dir,
)
from actstore.store.manifest import temp_path

__all__ = [
    "LEGACY_RECORD_COLUMN",
    "docs_table",
    "field_column",
    "first_records",
    "has_records",
    "split_legacy",
    "unify_schemas",
    "write_docs",
]

#: What ``record`` was called in docs files written before records were kept
#: (``doc_index``; those files hold no empty and no repeated records).
LEGACY_RECORD_COLUMN = "doc_index"

_BASE = tuple(DOCS_SCHEMA_BASE)
_CLASHES = re.compile(rf"^(?:{'|'.join(map(re.escape, _BASE))})_*$")
_INT64 = (-(2**63), 2**63 - 1)


def field_column(name: str) -> str:
    """The docs column of a corpus field: its name, with ``_`` added where it would clash.

    A field named like a base column (``text`` next to ``--text-field body``, or
    ``record``) and any name of that form with trailing underscores gets one more ``_``,
    so every field keeps a column of its own, under the same name in every pool.

    >>> field_column("label"), field_column("text"), field_column("record_")
    ('label', 'text_', 'record__')
    """
    return name + "_" if _CLASHES.match(name) else name


def _column(values: Sequence[Any]) -> pa.Array:
    """An Arrow column for JSON scalars: bool, int64, float64, or else string (JSON text)."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.nulls(len(values))
    if kinds == {bool}:
        return pa.array(values, pa.bool_())
    if kinds == {int} and all(_INT64[0] <= v <= _INT64[1] for v in values if v is not None):
        return pa.array(values, pa.int64())
    if kinds <= {int, float} and float in kinds:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([_as_text(v) for v in values], pa.string())


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def docs_table(
    records: Sequence[int],
    doc_ids: Sequence[int],
    texts: Sequence[str],
    repeat_of: Sequence[int | None],
    fields: Sequence[Mapping[str, Any]],
) -> pa.Table:
    """The docs rows of some records: the base columns, then every field seen, in order.

    Parameters
    ----------
    records, doc_ids, texts, repeat_of : sequences of length n
        The record numbers, content hashes, texts and first records of the same text
        (None for a first occurrence or an empty text).
    fields : sequence of n mappings
        Each record's other fields (JSON scalars); a field a record lacks is null.

    Returns
    -------
    pyarrow.Table
        ``record, doc_id, text, empty, repeat_of``, then one column per field name
        (:func:`field_column`).

    Examples
    --------
    >>> t = docs_table([0, 1], [7, 7], ["a", "a"], [None, 0], [{"y": 1}, {"y": "b"}])
    >>> t.column_names, t.column("y").to_pylist()
    (['record', 'doc_id', 'text', 'empty', 'repeat_of', 'y'], ['1', 'b'])
    """
    names: dict[str, None] = {}
    for f in fields:
        names.update(dict.fromkeys(f))
    cols: dict[str, pa.Array] = {
        "record": pa.array(records, pa.int64()),
        "doc_id": pa.array(doc_ids, pa.int64()),
        "text": pa.array(texts, pa.string()),
        "empty": pa.array([t == "" for t in texts], pa.bool_()),
        "repeat_of": pa.array(repeat_of, pa.int64()),
    }
    for name in names:
        cols[field_column(name)] = _column([f.get(name) for f in fields])
    return pa.table(cols)


def unify_schemas(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """One schema for docs tables: every column in order of appearance, types reconciled.

    Null columns take the other tables' type; int64 and float64 make float64; any other
    disagreement makes a string column.
    """
    types: dict[str, set[pa.DataType]] = {}
    for schema in schemas:
        for field in schema:
            types.setdefault(field.name, set()).add(field.type)
    fields = []
    for name, found in types.items():
        known = {t for t in found if t != pa.null()}
        if not known:
            kind = pa.null()
        elif len(known) == 1:
            kind = known.pop()
        elif known <= {pa.int64(), pa.float64()}:
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = []
    for field in schema:
        if field.name not in table.column_names:
            cols.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if col.type == field.type:
            cols.append(col)
        elif field.type == pa.string():
            cols.append(pa.array([_as_text(v) for v in col.to_pylist()], pa.string()))
        else:
            cols.append(col.cast(field.type))
    return pa.Table.from_arrays(cols, schema=schema)


def write_docs(store: Path, run: str, progresses: Sequence[ProgressJSON]) -> int:
    """Write ``docs/<run>.part-KKKK.parquet`` of every part from its staged pool files.

    All parts' files get one schema (:func:`unify_schemas`). Returns the number of rows
    written (records of the run). Redoing it rewrites the same files.
    """
    out = store / DOCS_DIR
    out.mkdir(exist_ok=True)
    files = [
        [part_dir(store, run, k) / f for f in p["doc_files"]] for k, p in enumerate(progresses)
    ]
    schema = unify_schemas(read_schema(f) for part in files for f in part)
    # docs files of this run that this commit does not write (an earlier run of the name
    # with more parts) and temp files of a killed commit go first
    keep = {docs_file_name(run, k) for k, part in enumerate(files) if part}
    for f in out.iterdir():
        target = f.name[1:].rsplit(".tmp-", 1)[0] if f.name.startswith(".") else f.name
        if docs_file_part(run, target) is not None and f.name not in keep:
            f.unlink()
    n_docs = 0
    for k, part in enumerate(files):
        if not part:
            continue
        table = pa.concat_tables([_conform(read_table(f), schema) for f in part])
        n_docs += table.num_rows
        path = out / docs_file_name(run, k)
        tmp = temp_path(path)
        pq.write_table(table, tmp, row_group_size=64 * 1024, compression="zstd")
        crash_point("atomic_write")
        os.replace(tmp, path)
    return n_docs


def first_records(files: Iterable[Path]) -> dict[int, int]:
    """``doc_id`` -> first record of every non-empty text in the docs ``files``.

    What a resumed part has stored already: a later record with one of these texts is a
    repeat of that record.
    """
    first: dict[int, int] = {}
    for path in files:
        table = read_table(path, ["doc_id", "record", "empty", "repeat_of"])
        cols = [table.column(c).to_pylist() for c in table.column_names]
        for doc_id, record, empty, repeat_of in zip(*cols, strict=True):
            if not empty and repeat_of is None:
                first.setdefault(doc_id, record)
    return first


def has_records(path: Path) -> bool:
    """Whether the docs file ``path`` has the ``record`` column (else it is a legacy file)."""
    return "record" in read_schema(path).names


def split_legacy(files: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """``(current, legacy)``: docs ``files`` with records, and those written before them.

    A legacy file calls the record number :data:`LEGACY_RECORD_COLUMN` and has no
    ``empty`` or ``repeat_of`` column (it holds no empty and no repeated record).
    """
    current: list[Path] = []
    legacy: list[Path] = []
    for f in files:
        (current if has_records(f) else legacy).append(f)
    return current, legacy
