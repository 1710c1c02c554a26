"""The index and chunk checksums of a Zarr v3 sharding-codec shard file.

A shard file holds its inner chunks' bytes (each followed by its CRC32C when the inner
codecs are ``[bytes, crc32c]``, actstore's layout) and an index: one ``(offset, nbytes)`` pair of
little-endian uint64 per inner chunk in C order (``2**64-1`` twice for a chunk that is
not stored), followed by the CRC32C of those bytes as 4 little-endian bytes (the
``index_codecs`` ``[bytes, crc32c]`` that zarr-python writes by default). The index sits
at the end of the file unless the array says ``"index_location": "start"``.

:mod:`actstore.store.arrays` writes uncompressed shards with :func:`dense_index`,
:func:`encode_index` and :func:`chunk_crc`; :mod:`actstore.store._gather` reads them back
with :func:`decode_index` and checks chunks with :func:`bad_chunks`. Both follow
zarr-python's ``ShardingCodec`` and ``Crc32cCodec`` byte for byte.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable
from typing import Any

import google_crc32c
import numpy as np
import numpy.typing as npt

from actstore.errors import StoreCorruptError

#: The CRC32C of a buffer (bytes, mmap slice, C-contiguous array) as an int: the
#: ``crc32c`` package when installed (twice as fast here, and it lets other threads run
#: meanwhile), else ``google_crc32c`` (the same values; it comes with zarr).
crc32c: Callable[[Any], int]
try:
    from crc32c import crc32c
except ImportError:  # pragma: no cover - a dependency of actstore
    crc32c = google_crc32c.value

__all__ = [
    "CRC_BYTES",
    "EMPTY",
    "ENTRY_BYTES",
    "REPAIR",
    "bad_chunks",
    "chunk_crc",
    "crc32c",
    "decode_index",
    "dense_index",
    "encode_index",
    "index_nbytes",
]

#: Offset and length of an inner chunk that is not stored (all fill value).
EMPTY = np.uint64(2**64 - 1)
#: Bytes of one index entry: offset and nbytes, two little-endian uint64.
ENTRY_BYTES = 16
#: Bytes of a CRC32C checksum (after the index entries, and after each checksummed chunk).
CRC_BYTES = 4
_INDEX_DTYPE = np.dtype("<u8")
#: What a damaged site array file calls for (the end of every such message).
REPAIR = "the store is damaged: restore the file from a backup, or re-extract the run"
REPAIR += " with --overwrite"


def index_nbytes(n_chunks: int, *, crc: bool = True) -> int:
    """Size of the index of a shard of ``n_chunks`` inner chunks, checksum included.

    >>> index_nbytes(4)
    68
    """
    return n_chunks * ENTRY_BYTES + (CRC_BYTES if crc else 0)


def dense_index(n_chunks: int, n_stored: int, chunk_nbytes: int) -> npt.NDArray[np.uint64]:
    """Index of a shard whose first ``n_stored`` chunks lie back to back from byte 0.

    Returns an array of shape ``(n_chunks, 2)``: ``(k * chunk_nbytes, chunk_nbytes)`` for
    chunk ``k < n_stored``, :data:`EMPTY` twice for the rest (what zarr-python writes for
    chunks wholly past the array's end).

    >>> dense_index(3, 2, 10).tolist()
    [[0, 10], [10, 10], [18446744073709551615, 18446744073709551615]]
    """
    index = np.full((n_chunks, 2), EMPTY, dtype=_INDEX_DTYPE)
    index[:n_stored, 0] = np.arange(n_stored, dtype=np.uint64) * np.uint64(chunk_nbytes)
    index[:n_stored, 1] = chunk_nbytes
    return index


def encode_index(index: npt.NDArray[np.uint64]) -> bytes:
    """The bytes of ``index`` (shape ``(n_chunks, 2)``) as stored: entries, then CRC32C."""
    raw = np.ascontiguousarray(index, dtype=_INDEX_DTYPE).tobytes()
    crc: int = crc32c(raw)
    return raw + crc.to_bytes(CRC_BYTES, "little")


def decode_index(
    raw: bytes, n_chunks: int, *, crc: bool = True, where: str = "shard"
) -> npt.NDArray[np.uint64]:
    """Parse index bytes (entries, then the CRC32C when ``crc``) into shape ``(n_chunks, 2)``.

    Raises
    ------
    StoreCorruptError
        ``raw`` has the wrong length, or its checksum does not match (``where`` names the
        file in the message).
    """
    entries = n_chunks * ENTRY_BYTES
    if len(raw) != index_nbytes(n_chunks, crc=crc):
        raise StoreCorruptError(
            f"{where}: shard index of {len(raw)} bytes, expected "
            f"{index_nbytes(n_chunks, crc=crc)}; {REPAIR}"
        )
    if crc:
        stored = int.from_bytes(raw[entries:], "little")
        if crc32c(raw[:entries]) != stored:
            raise StoreCorruptError(f"{where}: shard index checksum mismatch; {REPAIR}")
    return np.frombuffer(raw, _INDEX_DTYPE, count=2 * n_chunks).reshape(n_chunks, 2)


def chunk_crc(chunk: npt.NDArray[np.uint8]) -> bytes:
    """The 4 bytes the ``crc32c`` codec appends to an encoded chunk (little-endian CRC32C).

    ``chunk`` is a C-contiguous uint8 array (a buffer the C extension accepts as is).

    >>> chunk_crc(np.frombuffer(b"123456789", np.uint8)).hex()  # the CRC32C check value
    '839206e3'
    """
    crc: int = crc32c(chunk)
    return crc.to_bytes(CRC_BYTES, "little")


def bad_chunks(data: bytes | mmap.mmap, offsets: Iterable[int], nbytes: int) -> list[int]:
    """Positions ``i`` whose chunk ``data[offsets[i] : offsets[i] + nbytes]`` (its bytes,
    then their CRC32C) fails its checksum; empty when all are intact.

    Each chunk is checksummed where it lies (a memory map is read once, no copy).

    >>> good = b"123456789" + chunk_crc(np.frombuffer(b"123456789", np.uint8))
    >>> bad_chunks(good + good, [0, 13], 13)
    []
    >>> bad_chunks(good + good[::-1], [0, 13], 13)
    [1]
    """
    size = nbytes - CRC_BYTES
    value = crc32c
    with memoryview(data) as mv:
        return [
            i
            for i, o in enumerate(offsets)
            if value(mv[o : o + size]) != int.from_bytes(mv[o + size : o + nbytes], "little")
        ]
