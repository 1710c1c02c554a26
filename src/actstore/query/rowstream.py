"""Row sources (an in-memory array or a store site) and the shuffled mini-batch stream that
dictionary learning and sparse autoencoders train on.

Both sources give the same batches for the same seed: the stream shuffles the order of
fixed-size row blocks, reads one block at a time and shuffles rows inside it, so a store site is
never loaded whole and a test can compare streaming with in-memory training exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError

if TYPE_CHECKING:
    from actstore.query.store import Store

__all__ = ["ArraySource", "RowSource", "StoreSource", "as_source", "shuffled_batches"]


class RowSource(Protocol):
    """Anything with ``n_rows``, ``d`` and ``read(positions) -> (len(positions), d) float32``."""

    @property
    def n_rows(self) -> int: ...  # pragma: no cover

    @property
    def d(self) -> int: ...  # pragma: no cover

    def read(self, positions: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class ArraySource:
    """Rows of an in-memory array ``X`` of shape (n_rows, d)."""

    X: npt.NDArray[Any]

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    def read(self, positions: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Rows at ``positions`` as float32."""
        return np.asarray(self.X[positions], np.float32)


class StoreSource:
    """Rows of ``site`` in ``run`` of an open store (``rows``: ids, SQL string, or None = all).

    Examples
    --------
    >>> import tempfile
    >>> from actstore.query.store import Store
    >>> from actstore.store.synthetic import write_synthetic_run
    >>> path = tempfile.mkdtemp() + "/s.acts"
    >>> _ = write_synthetic_run(path, "syn", n_docs=2, tokens_per_doc=3, d=4)
    >>> src = StoreSource(Store(path), "syn", "hidden.0")
    >>> src.n_rows, src.d, src.read(np.array([5, 0])).shape
    (6, 4, (2, 4))
    """

    def __init__(self, store: Store, run: str, site: str, rows: Any = None) -> None:
        self.store, self.run, self.site = store, run, site
        if rows is None:
            n = int(store.sql("SELECT count(*) FROM tokens WHERE run = ?", [run]).fetchall()[0][0])
            self.rows = np.arange(n, dtype=np.int64)
        elif isinstance(rows, str):
            self.rows = store.rows(run, rows)
        else:
            self.rows = np.asarray(rows, np.int64)
        self._d = int(store.vectors(run, site, self.rows[:1]).shape[1]) if len(self.rows) else 0
        if len(self.rows) == 0:
            raise ConfigError(
                f"the selection of run {run!r} holds no rows; select at least one row"
            )

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def d(self) -> int:
        return self._d

    def read(self, positions: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Vectors of the selection's rows at ``positions``.

        Nothing of the store stays mapped after a read: mini-batches of scattered rows
        would otherwise leave ~64 KiB of the store mapped per row read (the kernel maps
        pages around each one), so a streaming analysis's RSS would grow with the store.
        """
        x = self.store.vectors(self.run, self.site, self.rows[positions], dtype=np.float32)
        self.store._reader.release_pages()
        return x


def as_source(x: Any) -> RowSource:
    """``x`` itself if it is a source, else :class:`ArraySource` of an array."""
    if hasattr(x, "read") and hasattr(x, "n_rows"):
        return x  # type: ignore[no-any-return]
    X = np.asarray(x)
    if X.ndim != 2 or len(X) == 0:
        raise ConfigError(f"expected rows of shape (n_rows >= 1, d), got {X.shape}")
    return ArraySource(X)


def shuffled_batches(
    source: RowSource,
    batch_size: int,
    *,
    block_rows: int = 65536,
    seed: int = 0,
    epochs: int = 1,
) -> Iterator[npt.NDArray[np.float32]]:
    """Mini-batches of shape (batch_size, d): blocks in random order, rows shuffled per block.

    A short remainder is carried into the next block; only the last batch of an epoch may be
    shorter.

    Examples
    --------
    >>> X = np.arange(10, dtype=np.float32)[:, None]
    >>> [len(b) for b in shuffled_batches(ArraySource(X), 4, block_rows=3)]
    [4, 4, 2]
    """
    if batch_size < 1 or block_rows < 1 or epochs < 1:
        raise ConfigError(
            f"batch_size, block_rows and epochs must be >= 1, got {batch_size}, {block_rows}, "
            f"{epochs}"
        )
    rng = np.random.default_rng(seed)
    n = source.n_rows
    starts = np.arange(0, n, block_rows)
    for _ in range(epochs):
        carry = np.empty((0, source.d), np.float32)
        for b in rng.permutation(len(starts)):
            pos = np.arange(starts[b], min(starts[b] + block_rows, n), dtype=np.int64)
            block = source.read(pos)[rng.permutation(len(pos))]
            buf = np.concatenate([carry, block]) if len(carry) else block
            m = len(buf) - len(buf) % batch_size
            for a in range(0, m, batch_size):
                yield buf[a : a + batch_size]
            carry = buf[m:]
        if len(carry):
            yield carry
