"""The index of a Zarr v3 sharding-codec shard file, for the direct writer and reader.

A shard file holds its inner chunks' bytes and an index: one ``(offset, nbytes)`` pair of
little-endian uint64 per inner chunk in C order (``2**64-1`` twice for a chunk that is
not stored), followed by the CRC32C of those bytes as 4 little-endian bytes (the
``index_codecs`` ``[bytes, crc32c]`` that zarr-python writes by default). The index sits
at the end of the file unless the array says ``"index_location": "start"``.

:mod:`actstore.store.arrays` writes uncompressed shards with :func:`dense_index` and
:func:`encode_index`; :mod:`actstore.store._gather` reads them back with
:func:`decode_index`. Both follow zarr-python's ``ShardingCodec`` byte for byte.
"""

from __future__ import annotations

import google_crc32c
import numpy as np
import numpy.typing as npt

from actstore.errors import StoreError

__all__ = [
    "CRC_BYTES",
    "EMPTY",
    "ENTRY_BYTES",
    "decode_index",
    "dense_index",
    "encode_index",
    "index_nbytes",
]

#: Offset and length of an inner chunk that is not stored (all fill value).
EMPTY = np.uint64(2**64 - 1)
#: Bytes of one index entry: offset and nbytes, two little-endian uint64.
ENTRY_BYTES = 16
#: Bytes of the CRC32C checksum that follows the entries.
CRC_BYTES = 4
_INDEX_DTYPE = np.dtype("<u8")


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
    crc: int = google_crc32c.value(raw)
    return raw + crc.to_bytes(CRC_BYTES, "little")


def decode_index(
    raw: bytes, n_chunks: int, *, crc: bool = True, where: str = "shard"
) -> npt.NDArray[np.uint64]:
    """Parse index bytes (entries, then the CRC32C when ``crc``) into shape ``(n_chunks, 2)``.

    Raises
    ------
    StoreError
        ``raw`` has the wrong length, or its checksum does not match (``where`` names the
        file in the message).
    """
    entries = n_chunks * ENTRY_BYTES
    if len(raw) != index_nbytes(n_chunks, crc=crc):
        raise StoreError(
            f"{where}: shard index of {len(raw)} bytes, expected "
            f"{index_nbytes(n_chunks, crc=crc)}; the store is damaged"
        )
    if crc:
        stored = int.from_bytes(raw[entries:], "little")
        if google_crc32c.value(raw[:entries]) != stored:
            raise StoreError(f"{where}: shard index checksum mismatch; the store is damaged")
    return np.frombuffer(raw, _INDEX_DTYPE, count=2 * n_chunks).reshape(n_chunks, 2)
