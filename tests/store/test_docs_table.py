"""The docs table: every field keeps a column, types follow the values, parts share a schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq

from actstore.store.docs import docs_table, first_records, split_legacy, write_docs
from actstore.store.format import ProgressJSON, part_dir


def table(fields: list[dict[str, Any]], start: int = 0) -> pa.Table:
    n = len(fields)
    records = list(range(start, start + n))
    return docs_table(records, records, [f"t{i}" for i in records], [None] * n, fields)


def test_fields_named_like_base_columns_keep_their_own_column() -> None:
    t = table([{"text": "other", "record": 9, "record_": 8, "label": 1}])
    assert t.column_names == [
        "record", "doc_id", "text", "empty", "repeat_of", "text_", "record_", "record__", "label",
    ]  # fmt: skip
    assert t.to_pylist()[0] == {
        "record": 0, "doc_id": 0, "text": "t0", "empty": False, "repeat_of": None,
        "text_": "other", "record_": 9, "record__": 8, "label": 1,
    }  # fmt: skip


def test_column_types_follow_the_values() -> None:
    values: dict[str, list[Any]] = {
        "flag": [True, None, False],
        "n": [1, None, 3],
        "x": [1, 2.5, None],
        "mixed": [1, "a", True],  # never True -> 1
        "big": [1, 2**70, None],
        "none": [None, None, None],
    }
    t = table([{k: v[i] for k, v in values.items()} for i in range(3)])
    types = {f.name: f.type for f in t.schema}
    assert types["flag"] == pa.bool_()
    assert types["n"] == pa.int64()
    assert types["x"] == pa.float64()
    assert t["mixed"].to_pylist() == ["1", "a", "true"]
    assert t["big"].to_pylist() == ["1", str(2**70), None]
    assert types["none"] == pa.null()


def stage(store: Path, part: int, tables: list[pa.Table]) -> ProgressJSON:
    folder = part_dir(store, "r", part) / "docs"
    folder.mkdir(parents=True)
    names = []
    for i, t in enumerate(tables):
        pq.write_table(t, folder / f"{i:06d}.parquet")
        names.append(f"docs/{i:06d}.parquet")
    return cast("ProgressJSON", {"doc_files": names})


def test_write_docs_gives_all_pools_and_parts_one_schema(tmp_path: Path) -> None:
    progresses = [
        stage(tmp_path, 0, [table([{"tag": 1}, {"tag": 2}]), table([{"tag": None}], 2)]),
        stage(tmp_path, 1, [table([{"tag": "x", "y": 1.5}], 3), table([{"tag": 4, "y": 2}], 4)]),
    ]
    assert write_docs(tmp_path, "r", progresses) == 5
    files = sorted((tmp_path / "docs").glob("r.part-*.parquet"))
    assert [f.name for f in files] == ["r.part-0000.parquet", "r.part-0001.parquet"]
    parts = [pq.read_table(f) for f in files]
    assert parts[0].schema == parts[1].schema
    both = pa.concat_tables(parts)
    assert both["record"].to_pylist() == [0, 1, 2, 3, 4]
    assert both["tag"].to_pylist() == ["1", "2", None, "x", "4"]
    assert both["y"].to_pylist() == [None, None, None, 1.5, 2.0]
    assert split_legacy(files) == (files, [])


def test_first_records_of_a_resumed_part(tmp_path: Path) -> None:
    pool = docs_table(
        [0, 1, 2, 3], [5, 6, 5, 7], ["a", "", "a", "b"], [None, None, 0, None], [{}] * 4
    )
    path = tmp_path / "pool.parquet"
    pq.write_table(pool, path)
    assert first_records([path]) == {5: 0, 7: 3}
