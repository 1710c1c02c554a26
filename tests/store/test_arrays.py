"""Row arrays: the direct shard writer writes exactly the bytes zarr-python writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec
from zarr.storage import LocalStore

from actstore.errors import StoreError
from actstore.store._gather import MapCache, PartArray
from actstore.store._shard import (
    EMPTY,
    chunk_crc,
    decode_index,
    dense_index,
    encode_index,
    index_nbytes,
)
from actstore.store.arrays import Layout, RowArrayWriter
from actstore.store.dtypes import LOGICAL_DTYPE_ATTR, physical_numpy_dtype, to_physical
from actstore.store.format import StorageDType

DTYPES: list[StorageDType] = ["float32", "float16", "bfloat16"]
# (d, chunk_rows, shard_rows)
SHAPES = [(6, 4, 12), (33, 8, 32)]
# whole shards, partial last shards, a partial last chunk, fewer rows than one chunk
ROW_COUNTS = [1, 3, 12, 29, 64, 70]


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (the array's zarr.json and shards)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def write_direct(root: Path, x: Any, dtype: StorageDType, layout: Layout, seed: int) -> None:
    """Append ``x`` in uneven pieces with checkpoints between, as an extraction does."""
    writer = RowArrayWriter(root, "a", x.shape[1], dtype, layout)
    rng = np.random.default_rng(seed)
    start = 0
    while start < len(x):
        stop = min(len(x), start + int(rng.integers(1, 2 * layout.chunk_rows + 2)))
        writer.append(x[start:stop])
        if rng.random() < 0.5:
            writer.checkpoint()  # rewrites the partial last shard
        start = stop
    writer.checkpoint()


def write_with_zarr(root: Path, x: Any, dtype: StorageDType, layout: Layout) -> None:
    """zarr-python's own sharded layout with a CRC32C after every inner chunk."""
    arr = zarr.create_array(
        store=LocalStore(root),
        name="a",
        shape=x.shape,
        chunks=(layout.chunk_rows, x.shape[1]),
        shards=(layout.shard_rows, x.shape[1]),
        dtype=physical_numpy_dtype(dtype),
        compressors=[Crc32cCodec()],
        fill_value=0,
        attributes={LOGICAL_DTYPE_ATTR: dtype},
    )
    arr[...] = x


@pytest.mark.parametrize("n_rows", ROW_COUNTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "d{}-c{}-s{}".format(*s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_shards_are_byte_identical_to_zarr_python(
    tmp_path: Path, dtype: StorageDType, shape: tuple[int, int, int], n_rows: int
) -> None:
    d, chunk_rows, shard_rows = shape
    layout = Layout(chunk_rows=chunk_rows, shard_rows=shard_rows)
    rng = np.random.default_rng([n_rows, d, len(dtype)])
    x = to_physical(rng.standard_normal((n_rows, d), dtype=np.float32), dtype)
    write_direct(tmp_path / "ours", x, dtype, layout, seed=n_rows)
    write_with_zarr(tmp_path / "zarr", x, dtype, layout)

    ours = files(tmp_path / "ours" / "a")
    theirs = files(tmp_path / "zarr" / "a")
    assert sorted(ours) == sorted(theirs)
    n_shards = -(-n_rows // shard_rows)
    assert sorted(k for k in ours if k != "zarr.json") == [f"c/{i}/0" for i in range(n_shards)]
    for name in ours:
        if name == "zarr.json":
            assert json.loads(ours[name]) == json.loads(theirs[name])
        else:
            assert len(ours[name]) == len(theirs[name]), name
            assert ours[name] == theirs[name], name
    # and the bytes are the rows: whole chunks, each then its CRC32C, zero-padded, then the
    # index
    last = ours[f"c/{n_shards - 1}/0"]
    rows_in_last = n_rows - (n_shards - 1) * shard_rows
    n_chunks = -(-rows_in_last // chunk_rows)
    row_bytes = d * x.dtype.itemsize
    stored = chunk_rows * row_bytes + 4
    raw = np.frombuffer(last[: n_chunks * stored], np.uint8).reshape(n_chunks, stored)
    body = raw[:, :-4].copy().view(x.dtype).reshape(n_chunks * chunk_rows, d)
    np.testing.assert_array_equal(body[:rows_in_last], x[(n_shards - 1) * shard_rows :])
    assert not body[rows_in_last:].any()
    for chunk in raw:
        assert chunk[-4:].tobytes() == chunk_crc(chunk[:-4].copy())
    assert len(last) == n_chunks * stored + index_nbytes(shard_rows // chunk_rows)


def test_empty_array_writes_no_shard(tmp_path: Path) -> None:
    layout = Layout(chunk_rows=4, shard_rows=12)
    x = np.zeros((0, 6), np.float32)
    write_direct(tmp_path / "ours", x, "float32", layout, seed=0)
    write_with_zarr(tmp_path / "zarr", x, "float32", layout)
    assert files(tmp_path / "ours" / "a").keys() == {"zarr.json"}
    assert files(tmp_path / "zarr" / "a").keys() == {"zarr.json"}


def test_shard_index_round_trip_and_layout() -> None:
    index = dense_index(4, 3, 96)
    raw = encode_index(index)
    assert len(raw) == index_nbytes(4) == 4 * 16 + 4
    assert raw[:16] == (0).to_bytes(8, "little") + (96).to_bytes(8, "little")
    assert raw[48:64] == b"\xff" * 16  # the chunk past the data: EMPTY twice
    back = decode_index(raw, 4)
    np.testing.assert_array_equal(back, index)
    assert back[3, 0] == EMPTY
    no_crc = decode_index(raw[:-4], 4, crc=False)
    np.testing.assert_array_equal(no_crc, index)


def test_shard_index_damage_is_detected() -> None:
    raw = bytearray(encode_index(dense_index(4, 2, 96)))
    raw[3] ^= 1
    with pytest.raises(StoreError, match="checksum mismatch"):
        decode_index(bytes(raw), 4, where="shard x")
    with pytest.raises(StoreError, match="expected 68"):
        decode_index(bytes(raw[:-1]), 4)


def test_damaged_shard_index_is_not_read_as_numbers(tmp_path: Path) -> None:
    layout = Layout(chunk_rows=4, shard_rows=12)
    x = np.arange(30 * 6, dtype=np.float32).reshape(30, 6)
    write_direct(tmp_path, x, "float32", layout, seed=1)
    PartArray(tmp_path / "a", MapCache()).take(np.arange(30), out := np.empty_like(x))
    np.testing.assert_array_equal(out, x)
    shard = tmp_path / "a" / "c" / "1" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # an offset in the index
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum mismatch"):
        PartArray(tmp_path / "a", MapCache()).take(np.arange(30), np.empty_like(x))
