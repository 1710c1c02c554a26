"""Store reading: committed runs only, and row gathers equal to zarr-python's reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import Crc32cCodec
from zarr.storage import LocalStore

from actstore.errors import (
    FormatVersionError,
    MatrixNotFoundError,
    RowIndexError,
    RunNotFoundError,
    SiteNotFoundError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
)
from actstore.store._gather import MapCache, PartArray
from actstore.store.arrays import Layout
from actstore.store.dtypes import to_logical
from actstore.store.part import PartWriter
from actstore.store.reader import StoreReader, as_row_array
from actstore.store.synthetic import write_synthetic_run

# (run name, dtype, parts, chunk_rows, shard_rows, codec): 13 docs x 7 tokens = 91 rows
RUNS = [
    ("f32", "float32", 3, 4, 12, "none"),
    ("f16", "float16", 1, 5, 10, "none"),
    ("bf16", "bfloat16", 2, 4, 8, "none"),
    ("big_shard", "float16", 2, 64, None, "none"),
    ("zstd", "float16", 2, 4, 12, "zstd"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reader") / "s.acts"
    for name, dtype, parts, chunk, shard, codec in RUNS:
        write_synthetic_run(
            path,
            name,
            n_docs=13,
            tokens_per_doc=7,
            d=6,
            dtype=dtype,  # type: ignore[arg-type]
            num_parts=parts,
            layout=Layout(chunk_rows=chunk, shard_rows=shard, codec=codec),  # type: ignore[arg-type]
            docs_per_pool=2,
        )
    return path


def zarr_rows(store: Path, run: str, site: str) -> Any:
    """The whole site read with zarr-python, parts concatenated, logical dtype."""
    reader = StoreReader(store)
    r = reader.run(run)
    parts = [
        np.asarray(
            zarr.open_array(
                store=LocalStore(r.arrays_root, read_only=True),
                path=f"part-{p['index']:04d}/{site}",
                mode="r",
            )[...]
        )
        for p in r.meta["parts"]
    ]
    return to_logical(np.concatenate(parts), r.meta["dtype"])


def same(a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("run", [r[0] for r in RUNS])
def test_gather_equals_zarr(store: Path, run: str) -> None:
    reader = StoreReader(store)
    r = reader.run(run)
    assert r.site_array("hidden.0").parts[0].fast == (run != "zstd")
    n = r.n_rows
    offsets = [p["row_offset"] for p in r.meta["parts"]]
    rng = np.random.default_rng(0)
    selections = [
        np.arange(n),  # all rows, sorted
        np.arange(n)[::-1],  # reversed
        rng.integers(0, n, 200),  # random with duplicates
        np.array([], np.int64),  # empty
        np.array([n - 1, 0, n - 1, 0]),  # ends, duplicated
        np.array(sorted({max(0, o - 1) for o in offsets} | set(offsets))),  # part boundaries
        np.array([3, 4, 5, 7, 8, 9, 11, 12]),  # chunk/shard boundaries of small layouts
    ]
    for site in r.sites:
        ref = zarr_rows(store, run, site)
        for rows in selections:
            assert same(r.gather(site, rows), ref[rows])
        arr = r.site_array(site)
        for a, b in [(0, n), (3, 40), (11, 13), (n - 1, n), (5, 5)]:
            assert same(r.to_logical(site, arr.read(a, b)), ref[a:b])
        got = np.concatenate([r.to_logical(site, x) for _, x in arr.blocks(17)])
        assert same(got, ref)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_gather_property(store: Path, data: st.DataObject) -> None:
    run = data.draw(st.sampled_from([r[0] for r in RUNS]))
    reader = StoreReader(store)
    r = reader.run(run)
    rows = np.asarray(
        data.draw(st.lists(st.integers(0, r.n_rows - 1), max_size=120)), dtype=np.int64
    )
    ref = zarr_rows(store, run, "hidden.1")
    assert same(r.gather("hidden.1", rows), ref[rows])


@pytest.mark.parametrize("crc", [False, True], ids=["plain", "crc32c"])
@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "uint16", "int8"])
def test_part_array_layouts(tmp_path: Path, index_location: str, dtype: str, crc: bool) -> None:
    """Empty (fill) chunks, index at the start, chunks not dividing the rows, with and
    without chunk checksums; a shard zarr-python left out is missing, not zeros."""
    n, d = 53, 5
    data = (np.arange(n * d).reshape(n, d) % 97 + 1).astype(dtype)
    data[8:12] = 0  # a whole chunk of zeros: zarr does not write it (fill value)
    data[24:36] = 0  # a whole shard of zeros: no file at all
    arr = zarr.create_array(
        store=LocalStore(tmp_path),
        name="x",
        shape=(n, d),
        chunks=(4, d),
        shards={"shape": (12, d), "index_location": index_location},
        dtype=dtype,
        compressors=[Crc32cCodec()] if crc else None,
        fill_value=0,
    )
    arr[...] = data
    part = PartArray(tmp_path / "x", MapCache(max_open=2))
    assert part.fast
    rows = np.array([r for r in range(n) if not 24 <= r < 36])
    out = np.empty((len(rows), d), dtype)
    part.take(rows, out)
    assert np.array_equal(out, data[rows])
    sel = np.array([0, 9, 10, 40, 52])
    out = np.empty((len(sel), d), dtype)
    part.take(sel, out)
    assert np.array_equal(out, data[sel])
    out = np.empty((17, d), dtype)
    part.read(7, 24, out)
    assert np.array_equal(out, data[7:24])
    with pytest.raises(StoreCorruptError, match=r"shard file .*x/c/2/0 is missing"):
        part.take(np.array([25]), np.empty((1, d), dtype))
    with pytest.raises(StoreCorruptError, match=r"shard file .*x/c/2/0 is missing"):
        part.read(7, 37, np.empty((30, d), dtype))


def test_only_committed_runs_are_visible(tmp_path: Path) -> None:
    path = tmp_path / "s.acts"
    write_synthetic_run(path, "done", n_docs=2, tokens_per_doc=3)
    writer = PartWriter(
        path, "pending", 0, sites={"hidden.0": 16}, dtype="float32", layout=Layout(), resume=None
    )
    del writer
    reader = StoreReader(path)
    assert reader.runs == ["done"]
    with pytest.raises(RunNotFoundError, match="still being written"):
        reader.run("pending")
    with pytest.raises(RunNotFoundError, match="runs: done"):
        reader.run("nope")


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="no actstore store"):
        StoreReader(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        StoreReader(tmp_path / "file")
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "actstore.json").write_text(
        json.dumps({"format": "actstore", "version": 99, "runs": {}})
    )
    with pytest.raises(FormatVersionError, match="upgrade actstore"):
        StoreReader(newer)


def test_bad_rows_sites_matrices(store: Path) -> None:
    r = StoreReader(store).run("f32")
    with pytest.raises(RowIndexError, match="out of range"):
        as_row_array([0, 91], r.n_rows, "run 'f32'")
    with pytest.raises(RowIndexError, match="out of range"):
        as_row_array([-1], r.n_rows, "run 'f32'")
    with pytest.raises(RowIndexError, match="integer"):
        as_row_array([0.5], r.n_rows, "run 'f32'")
    with pytest.raises(RowIndexError, match="1-D"):
        as_row_array(np.zeros((2, 2), int), r.n_rows, "run 'f32'")
    assert as_row_array(np.array([1.0, 2.0]), 5, "x").tolist() == [1, 2]
    with pytest.raises(SiteNotFoundError, match=r"has hidden.0, hidden.1"):
        r.gather("hidden.9", np.array([0]))
    with pytest.raises(MatrixNotFoundError, match="has embed"):
        r.matrix("unembed")
    embed = r.matrix("embed")
    assert embed.shape == (1000, 6)
    assert embed.dtype == np.float32


def test_map_cache_bounds_open_files(store: Path) -> None:
    reader = StoreReader(store)
    reader.maps.max_open = 1
    r = reader.run("f32")
    ref = zarr_rows(store, "f32", "hidden.0")
    rows = np.arange(r.n_rows)[::-1]
    assert same(r.gather("hidden.0", rows), ref[rows])
    assert len(reader.maps._views) <= 1


def test_docs_files_of_a_run_are_matched_exactly(tmp_path: Path) -> None:
    """Run ``a`` does not pick up the docs files of runs ``a.part-0000`` or ``ab``, nor a
    stray file named like them (reader and ``info`` alike)."""
    import pyarrow.parquet as pq

    from actstore.store.format import docs_file_name
    from actstore.store.info import store_info

    store = tmp_path / "s.acts"
    runs = {"a": (2, 2), "a.part-0000": (3, 1), "ab": (4, 1)}  # name: (docs, parts)
    for name, (n, parts) in runs.items():
        write_synthetic_run(
            store, name, n_docs=n, tokens_per_doc=3, d=4, vocab_size=10, num_parts=parts
        )
    reader = StoreReader(store)
    for name, (n, parts) in runs.items():
        files = reader.run(name).doc_files()
        assert [f.name for f in files] == [docs_file_name(name, k) for k in range(parts)]
        assert sum(pq.read_metadata(f).num_rows for f in files) == n
    # only run "a" left: a stray docs file named like a part of it is not its docs
    alone = tmp_path / "alone.acts"
    write_synthetic_run(alone, "a", n_docs=2, tokens_per_doc=3, d=4, vocab_size=10)
    stray = store / "docs" / docs_file_name("ab", 0)  # 4 records
    for name in ("a.part-0000.part-0000.parquet", "ab.part-0000.parquet"):
        shutil.copy(stray, alone / "docs" / name)
    assert len(list((alone / "docs").glob("*.parquet"))) == 3
    assert [f.name for f in StoreReader(alone).run("a").doc_files()] == [docs_file_name("a", 0)]
    assert store_info(alone)["docs"] == 2


def test_prefetched_keeps_order_errors_and_at_most_two_results() -> None:
    """The read-ahead of ``iter_vectors``: results in order, one load ahead at most, a
    load's error raised when its result is due, and nothing more read after a stop."""
    import threading
    import time

    from actstore.store._gather import prefetched

    started: list[int] = []
    live = [0]
    peak = [0]
    lock = threading.Lock()

    def load(i: int) -> int:
        with lock:
            started.append(i)
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.01)
        if i == 5:
            raise StoreCorruptError(f"block {i}")
        return i

    def loads(n: int) -> Any:
        return (lambda i=i: load(i) for i in range(n))

    got = []
    for x in prefetched(loads(5)):
        got.append(x)
        with lock:
            live[0] -= 1
    assert got == [0, 1, 2, 3, 4]
    assert peak[0] <= 2
    assert list(prefetched(loads(0))) == []

    got, started[:] = [], []

    def consume() -> None:
        for x in prefetched(loads(9)):
            got.append(x)

    with pytest.raises(StoreCorruptError, match="block 5"):
        consume()
    assert got == [0, 1, 2, 3, 4]  # the error comes where block 5 is due, not earlier

    started[:] = []
    gen = prefetched(loads(100))
    assert next(gen) == 0
    gen.close()
    time.sleep(0.1)
    assert len(started) <= 3  # at most the next load ran after the stop


@pytest.mark.parametrize("run", [r[0] for r in RUNS])
def test_a_scan_reuses_only_blocks_nobody_holds(store: Path, run: str) -> None:
    """``iter_vectors`` recycles a block's memory only once the caller has let go of it:
    blocks kept (or views of them) keep their values; blocks dropped are reused."""
    import actstore

    with actstore.open(store) as s:
        site = s.sites(run)[0]
        whole = s.vectors(run, site, np.arange(91))
        kept = [(ids, x) for ids, x in s.iter_vectors(run, site, batch_rows=5)]
        assert len({x.__array_interface__["data"][0] for _, x in kept}) == len(kept)
        np.testing.assert_array_equal(np.concatenate([x for _, x in kept]), whole)

        views, seen = [], set()
        for ids, x in s.iter_vectors(run, site, batch_rows=5):
            seen.add(x.__array_interface__["data"][0])
            if ids[0] % 15 == 0:
                views.append((ids, x[1:3]))  # a view holds its block
            np.testing.assert_array_equal(x, whole[ids])
        for ids, v in views:
            np.testing.assert_array_equal(v, whole[ids[1:3]])
        assert len(seen) < 19 - len(views)  # the others were reused


def _rss_file() -> int:
    """Bytes of file pages mapped into this process (``RssFile``; Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssFile in /proc/self/status")


def test_reads_do_not_keep_the_store_mapped(tmp_path: Path) -> None:
    """A scan or a large gather leaves few store pages mapped: memory (RSS) stays flat
    however many rows the reader streams (the sparse analyses' bounded-memory claim)."""
    import actstore

    path = tmp_path / "s.acts"
    write_synthetic_run(path, "r", n_docs=1000, tokens_per_doc=100, d=128, sites=("h",))
    data_mb = 100_000 * 128 * 4 / 2**20  # ~49 MiB of rows
    with actstore.open(path) as s:
        base = _rss_file()
        total = 0.0
        for _, x in s.iter_vectors("r", "h", batch_rows=8192):
            total += float(x[:, 0].sum())
        scan_mb = (_rss_file() - base) / 2**20
        rows = np.arange(0, 100_000, 2, dtype=np.int64)
        for a in range(0, len(rows), 16384):  # as the sparse coding pass reads
            s.vectors("r", "h", rows[a : a + 16384])
        gather_mb = (_rss_file() - base) / 2**20
        ref = float(s.vectors("r", "h", np.arange(100_000))[:, 0].sum())
    with actstore.open(path) as s:  # mini-batches of scattered rows, as dictionary learning
        from actstore.query.rowstream import StoreSource

        src = StoreSource(s, "r", "h")
        base = _rss_file()
        rng = np.random.default_rng(0)
        for _ in range(40):
            src.read(rng.integers(0, src.n_rows, 256))
        batches_mb = (_rss_file() - base) / 2**20
    assert np.isclose(total, ref)
    assert scan_mb < data_mb / 4, (scan_mb, data_mb)
    assert gather_mb < data_mb / 4, (gather_mb, data_mb)
    assert batches_mb < data_mb / 4, (batches_mb, data_mb)
