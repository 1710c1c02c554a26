"""Stores read from object storage (``s3://``) give what the local copy gives: the same
SQL results, bitwise the same vectors by coalesced ranged reads, the same analyses; damage
and missing buckets are one clear line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import zarr
from zarr.codecs import Crc32cCodec
from zarr.storage import LocalStore

import actstore
from actstore.errors import StoreCorruptError, StoreWriteError
from actstore.store._gather import MapCache, PartArray
from actstore.store._objects import REQUESTS, store_path
from actstore.store.arrays import Layout
from actstore.store.results import write_result
from actstore.store.synthetic import write_synthetic_run

from ..query.conftest import CLI
from .conftest import S3


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CLI:
    return CLI(capsys)


def test_sql_over_every_view(local_store: Path, s3_store: str) -> None:
    with actstore.open(s3_store) as remote, actstore.open(local_store) as local:
        assert remote.tables == local.tables
        assert {"m", "sp"} <= set(remote.tables)  # saved results are views too
        for view in local.tables:
            want = local.sql(f"SELECT * FROM {view}").df()
            got = remote.sql(f"SELECT * FROM {view}").df()
            order = list(want.columns[: min(3, len(want.columns))])
            want = want.sort_values(order, ignore_index=True) if len(want) else want
            got = got.sort_values(order, ignore_index=True) if len(got) else got
            assert got.equals(want), view
        q = "SELECT count(*), sum(pos) FROM tokens WHERE run = ? AND row BETWEEN ? AND ?"
        params = ["a", 100, 9000]
        assert remote.sql(q, params).fetchall() == local.sql(q, params).fetchall()


def test_vectors_bitwise_and_coalesced(local_store: Path, s3_store: str) -> None:
    rng = np.random.default_rng(0)
    with actstore.open(s3_store) as remote, actstore.open(local_store) as local:
        n = remote.sql("SELECT n_rows FROM runs").fetchall()[0][0]
        rows = rng.integers(0, n, 700)  # unsorted, repeats, both parts
        for site in ("hidden.0", "hidden.1"):
            want = local.vectors("a", site, rows)
            got = remote.vectors("a", site, rows)
            assert got.dtype == want.dtype == np.float16
            assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
        remote.vectors("a", "hidden.0", [5000])  # the shard index is read and cached
        REQUESTS.reset()
        nearby = np.arange(5000, 5200)  # 200 sorted rows: 7 chunks of one 2 MiB shard
        got = remote.vectors("a", "hidden.0", nearby)
        assert np.array_equal(got, local.vectors("a", "hidden.0", nearby))
        assert REQUESTS.gets == 1
        assert REQUESTS.nbytes <= 8 * (32 * 128 * 2 + 4)  # ~56 KiB of a 2 MiB shard
        REQUESTS.reset()
        remote.vectors("a", "hidden.0", [5000, 5001])
        assert (REQUESTS.gets, REQUESTS.nbytes) == (1, 32 * 128 * 2 + 4)  # one chunk
        # a scan reads whole shards, and gives the local blocks
        got_blocks = list(remote.iter_vectors("a", "hidden.1", batch_rows=6000))
        want_blocks = list(local.iter_vectors("a", "hidden.1", batch_rows=6000))
        for (r1, x1), (r2, x2) in zip(got_blocks, want_blocks, strict=True):
            assert np.array_equal(r1, r2)
            assert np.array_equal(x1.view(np.uint16), x2.view(np.uint16))
        assert np.array_equal(
            remote.centroid("a", "hidden.1", token_id=3),
            local.centroid("a", "hidden.1", token_id=3),
        )


def test_damage_is_one_line(s3: S3, tmp_path: Path) -> None:
    path = tmp_path / "bad.acts"
    write_synthetic_run(path, "r", n_docs=6, tokens_per_doc=8, d=8, layout=Layout(chunk_rows=8))
    shard = path / "runs/r/arrays/part-0000/hidden.1/c/0/0"
    data = bytearray(shard.read_bytes())
    data[8 * 8 * 4 * 2 + 4 + 10] ^= 0xFF  # a byte of chunk 2's rows
    shard.write_bytes(bytes(data))
    vocab = path / "runs/r/vocab.parquet"
    vocab.write_bytes(vocab.read_bytes()[:-100])
    url = s3.upload(path, "stores/bad.acts")
    with actstore.open(url) as s:
        assert s.vectors("r", "hidden.1", [0, 1]).shape == (2, 8)  # chunk 0 is whole
        with pytest.raises(StoreCorruptError, match=r"chunk 2 .*fails its CRC32C") as e:
            s.vectors("r", "hidden.1", [17])
        assert "\n" not in str(e.value)
        with pytest.raises(StoreCorruptError, match=r"vocab\.parquet") as e:
            s.sql("SELECT * FROM vocab").fetchall()
        assert str(e.value).startswith(f"{url}/runs/r/vocab.parquet")
        assert s.sql("SELECT count(*) FROM tokens").fetchall() == [(48,)]  # the rest works
    s3.fs.delete_file(f"{url[5:]}/runs/r/arrays/part-0000/hidden.0/c/0/0")
    with actstore.open(url) as s, pytest.raises(StoreCorruptError, match="is missing"):
        s.vectors("r", "hidden.0", [3])


def _same(out: str, local: Path, url: str) -> str:
    return out.replace(url, "STORE").replace(str(local), "STORE")


def test_cli_on_s3_matches_local(cli: CLI, local_store: Path, s3_store: str) -> None:
    sql = "SELECT token_id, count(*) AS n FROM tokens GROUP BY token_id ORDER BY n DESC, 1"
    for argv in (
        ["sql", "{}", sql, "--format", "json", "--max-rows", "20"],
        ["similarity", "anisotropy", "{}", "--max-rows", "400", "--pairs", "500", "--json"],
        ["map", "eval", "{}", "m", "--json"],
        ["sparse", "atoms", "{}", "sp", "--top", "3", "--json"],
        ["info", "{}", "--json"],
    ):
        got = json.loads(_same(cli(*(a.format(s3_store) for a in argv)), local_store, s3_store))
        want = json.loads(_same(cli(*(a.format(local_store) for a in argv)), local_store, s3_store))
        if argv[0] == "info":  # the upload copied results/<name>, locally a link: not counted
            got.pop("bytes")
            want.pop("bytes")
        assert got == want, argv[:2]


def test_export_from_s3(cli: CLI, local_store: Path, s3_store: str, tmp_path: Path) -> None:
    rows = "SELECT row FROM tokens WHERE run = 'a' AND pos = 3"
    for name, store in (("s3", s3_store), ("local", str(local_store))):
        args = ["--run", "a", "--site", "hidden.1", "--rows", rows]
        cli("export", store, *args, "--out", str(tmp_path / f"{name}.npy"))
    got, want = np.load(tmp_path / "s3.npy"), np.load(tmp_path / "local.npy")
    assert got.shape == want.shape == (250, 128)
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_missing_and_read_only(cli: CLI, s3_store: str) -> None:
    with pytest.raises(CLI.Failed, match="no actstore store at s3://acts/nothing"):
        cli("sql", "s3://acts/nothing", "SELECT 1")
    with pytest.raises(CLI.Failed, match="no actstore store at s3://no-such-bucket/x"):
        cli("sql", "s3://no-such-bucket/x", "SELECT 1")
    with pytest.raises(CLI.Failed, match="scheme gs:// is not supported"):
        cli("sql", "gs://b/x", "SELECT 1")
    fit = ["map", "fit", s3_store, "--x", "hidden.0", "--y", "hidden.1", "--name", "m2"]
    with pytest.raises(CLI.Failed, match="writing to object storage is not supported yet"):
        cli(*fit)
    with pytest.raises(StoreWriteError, match=re.escape(s3_store)):
        write_result(s3_store, "x", pa.table({"a": [1]}), meta={})


@pytest.mark.parametrize("crc", [False, True], ids=["plain", "crc32c"])
@pytest.mark.parametrize("index_location", ["end", "start"])
def test_part_array_layouts(s3: S3, tmp_path: Path, index_location: str, crc: bool) -> None:
    """As tests/store/test_reader.py, read by ranged requests: empty (fill) chunks, the
    index at the start, chunks not dividing the rows; a shard left out is missing."""
    n, d, dtype = 53, 5, "float16"
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
    url = s3.upload(tmp_path, f"layouts/{index_location}-{crc}")
    part = PartArray(store_path(url) / "x", MapCache())
    assert part.fast
    rows = np.array([r for r in range(n) if not 24 <= r < 36])
    out = np.empty((len(rows), d), dtype)
    part.take(rows, out)
    assert np.array_equal(out, data[rows])
    sel = np.array([52, 0, 9, 10, 40, 9])
    out = np.empty((len(sel), d), dtype)
    part.take(sel, out)
    assert np.array_equal(out, data[sel])
    out = np.empty((17, d), dtype)
    part.read(7, 24, out)
    assert np.array_equal(out, data[7:24])
    with pytest.raises(StoreCorruptError, match=r"shard file s3://.*x/c/2/0 is missing"):
        part.take(np.array([25]), np.empty((1, d), dtype))


def test_every_layout_of_a_run(s3: S3, tmp_path: Path) -> None:
    """Several parts, shards not dividing the rows, bfloat16, and a compressed run (read
    whole through zarr-python): the same rows as the local copy."""
    path = tmp_path / "layouts.acts"
    runs = [
        ("f32", "float32", 3, 4, 12, "none"),
        ("bf16", "bfloat16", 2, 4, 8, "none"),
        ("zstd", "float16", 2, 4, 12, "zstd"),
    ]
    for name, dtype, parts, chunk, shard, codec in runs:
        layout = Layout(chunk_rows=chunk, shard_rows=shard, codec=codec)  # type: ignore[arg-type]
        write_synthetic_run(
            path,
            name,
            n_docs=13,
            tokens_per_doc=7,
            d=6,
            dtype=dtype,  # type: ignore[arg-type]
            num_parts=parts,
            layout=layout,
            docs_per_pool=2,
        )
    url = s3.upload(path, "stores/layouts.acts")
    rows = np.random.default_rng(1).integers(0, 91, 60)
    with actstore.open(url) as remote, actstore.open(path) as local:
        for name, *_ in runs:
            got, want = (
                remote.vectors(name, "hidden.1", rows),
                local.vectors(name, "hidden.1", rows),
            )
            assert got.dtype == want.dtype
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), name
            ((_, x1),) = remote.iter_vectors(name, "hidden.0")
            ((_, x2),) = local.iter_vectors(name, "hidden.0")
            assert np.array_equal(x1.view(np.uint8), x2.view(np.uint8)), name
