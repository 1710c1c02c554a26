"""Sparse coding over a store: encode, learn a dictionary, train a TopK SAE, save the result.

A *source* is either a per-vocabulary matrix (``embed`` / ``unembed``: rows are token ids) or a
site (``hidden.6``: rows are token rows, optionally selected by SQL). Every function writes a
result ``results/<name>/``: the codes as the table ``(run, row, atom, value)`` (so
``SELECT row FROM <name> WHERE atom = 17`` works in :meth:`Store.sql`), the dictionary as the
array ``dictionary`` (n_atoms, d), the coded ``rows``, and the metrics in ``meta.json``.

Memory does not grow with the number of rows: training streams shuffled mini-batches, and the
coding pass reads ``block_rows`` rows at a time, writes their codes to the result's Parquet
file and adds them to a :class:`~actstore.query.sparse.metrics.MetricsAccumulator`.
:attr:`SparseResult.codes` reads the codes back from the saved result when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.query._backend import Backend
from actstore.query.results import check_can_save, read_result, write_result
from actstore.query.rowstream import ArraySource, RowSource, StoreSource
from actstore.query.sparse.dictlearn import DictionaryLearner, DictLearnConfig
from actstore.query.sparse.metrics import MetricsAccumulator
from actstore.query.sparse.pursuit import codes_table, lasso, omp, reconstruct
from actstore.query.sparse.sae import SAEConfig, TopKSAE
from actstore.query.store import Store

__all__ = [
    "MATRICES",
    "SparseResult",
    "encode_store",
    "learn_store",
    "load_dictionary",
    "sae_store",
]

#: Rows coded at a time by the coding pass (read, code, write, score; then the next block).
CODE_BLOCK_ROWS = 16384

#: Sources that are per-vocabulary matrices (their rows are token ids).
MATRICES = ("embed", "unembed")


@dataclass
class SparseResult:
    """What a sparse-coding run produced (also saved as result ``name``)."""

    name: str
    store: Path
    rows: npt.NDArray[np.int64]
    """Token ids (matrix source) or global rows (site source), shape (n_rows,)."""
    dictionary: npt.NDArray[np.float32]
    """Atoms, shape (n_atoms, d)."""
    metrics: dict[str, float]
    nnz: int
    """Number of non-zero codes."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def codes(self) -> Any:
        """scipy sparse array of shape (n_rows, n_atoms), read from the saved result (the
        rows of the table are in the order of :attr:`rows`)."""
        import scipy.sparse as sp

        table, _, _ = read_result(self.store, self.name)
        position = np.searchsorted(self.rows, table["row"].to_numpy(), sorter=self._order)
        return sp.csr_array(
            (
                table["value"].to_numpy().astype(np.float32),
                (self._order[position], table["atom"].to_numpy()),
            ),
            shape=(len(self.rows), len(self.dictionary)),
        )

    @property
    def _order(self) -> npt.NDArray[np.int64]:
        return np.argsort(self.rows, kind="stable").astype(np.int64)


def _source(
    s: Store, run: str, source: str, rows: Any
) -> tuple[RowSource, npt.NDArray[np.int64], str]:
    if source in MATRICES:
        M = s.matrix(run, source)
        ids = np.arange(len(M), dtype=np.int64)
        if rows is not None:
            ids = np.asarray(s.select_ids(run, rows) if isinstance(rows, str) else rows)
            ids = ids.astype(np.int64)
            if len(ids) and (ids.min() < 0 or ids.max() >= len(M)):
                raise ConfigError(f"token ids must be in [0, {len(M)}) for {source!r}")
        if len(ids) == 0:
            raise ConfigError(f"the selection of {source!r} holds no rows; select at least one")
        return ArraySource(M[ids]), ids, "token_id"
    if rows is None:  # as every analysis of a site: the non-special tokens
        rows = np.flatnonzero(~s.token_columns(run, "special")["special"]).astype(np.int64)
    src = StoreSource(s, run, source, rows)
    return src, src.rows, "row"


def _weights(s: Store, run: str, source: str, ids: npt.NDArray[np.int64]) -> Any:
    if source not in MATRICES:
        raise ConfigError(
            f"frequency weights apply to embed/unembed rows, got source {source!r}; site rows "
            "already occur once per token, so drop --weights"
        )
    df = s.sql("SELECT token_id, count FROM vocab WHERE run = ?", [run]).df()
    w = np.zeros(int(max(ids.max() + 1, df.token_id.max() + 1 if len(df) else 0)))
    w[df.token_id.to_numpy()] = df["count"].fillna(0).to_numpy()
    out = w[ids]
    if out.sum() <= 0:
        raise ConfigError(f"no selected token of run {run!r} occurs in the corpus; drop weights")
    return out


def load_dictionary(s: Store, run: str, dictionary: str) -> npt.NDArray[np.float32]:
    """Atoms (n_atoms, d): ``embed``/``unembed`` of ``run`` or a saved result's dictionary."""
    if dictionary in MATRICES:
        return s.matrix(run, dictionary)
    _, _, arrays = read_result(s.path, dictionary)
    if "dictionary" not in arrays:
        raise ConfigError(f"result {dictionary!r} has no dictionary array; pick a sparse result")
    return np.asarray(arrays["dictionary"], np.float32)


def _own_atoms(
    s: Store, run: str, source: str, ids: npt.NDArray[np.int64], dictionary: str
) -> npt.NDArray[np.int64]:
    if dictionary not in MATRICES:
        raise ConfigError(
            f"exclude_self needs a vocabulary dictionary (embed/unembed), got {dictionary!r}"
        )
    if source in MATRICES:
        return ids
    lookup = s.token_columns(run, "token_id")["token_id"].astype(np.int64)
    return lookup[ids]


Coder = Callable[[npt.NDArray[np.float32], slice], Any]
"""Codes of a block of rows (the slice says which rows of the selection they are)."""


def _code_and_save(
    s: Store,
    name: str,
    run: str,
    src: RowSource,
    ids: npt.NDArray[np.int64],
    D: npt.NDArray[np.float32],
    encode: Coder,
    decode: Callable[[Any], npt.NDArray[Any]],
    *,
    meta: dict[str, Any],
    block_rows: int,
    weights: npt.NDArray[np.float64] | None = None,
    window: int | None = None,
    arrays: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> SparseResult:
    """Code every row in blocks, streaming the codes into result ``name``; save it."""
    acc = MetricsAccumulator(src.d, len(D), window=window, weighted=weights is not None)

    def tables() -> Iterator[Any]:
        for a in range(0, src.n_rows, block_rows):
            block = slice(a, min(a + block_rows, src.n_rows))
            x = src.read(np.arange(block.start, block.stop, dtype=np.int64))
            c = encode(x, block)
            acc.add(x, decode(c), c, None if weights is None else weights[block])
            yield codes_table(c, ids[block], run)

    write_result(
        s.path,
        name,
        tables(),
        meta=lambda: {**meta, "run": run, "metrics": acc.result(), "n_rows": len(ids)},
        arrays={"dictionary": D.astype(np.float32), "rows": ids, **(arrays or {})},
        overwrite=overwrite,
    )
    full = {**meta, "run": run, "metrics": acc.result(), "n_rows": len(ids)}
    return SparseResult(name, s.path, ids, D.astype(np.float32), acc.result(), acc.nnz, full)


def encode_store(
    store: str | Path,
    run: str,
    source: str = "embed",
    *,
    name: str,
    dictionary: str = "embed",
    method: Literal["omp", "lasso"] = "omp",
    k: int = 8,
    lam: float = 0.1,
    rows: Any = None,
    exclude_self: bool = False,
    weights: Literal["count"] | None = None,
    normalize: bool = True,
    backend: Backend = "numpy",
    device: str | None = None,
    batch_rows: int = 1024,
    block_rows: int = CODE_BLOCK_ROWS,
    window: int | None = None,
    overwrite: bool = False,
) -> SparseResult:
    """Basis pursuit of ``source`` rows against a fixed dictionary; saves result ``name``.

    Parameters
    ----------
    store : path
    run : str
    source : str
        ``embed``/``unembed`` (rows are token ids) or a site name.
    name : str
        Result name (a SQL identifier).
    dictionary : str
        ``embed``/``unembed`` of ``run`` or the name of a saved sparse result.
    method, k, lam
        OMP with ``k`` non-zeros or Lasso with λ = ``lam``.
    rows : SQL string, row/token ids, or None (every vocabulary row of embed/unembed; the
        non-special tokens of a site, as in the other analyses)
    exclude_self : bool
        Never use the row's own token as an atom (vocabulary dictionaries only).
    weights : "count" or None
        Weight metrics by the token's corpus count (matrix sources only).
    normalize : bool
        Scale atoms to unit norm first (codes are then relative to unit atoms).
    batch_rows : int
        Rows per pursuit batch (the unit of work on the backend).
    block_rows : int
        Rows read from the store at a time (memory is bounded by this, not by the number of
        rows).
    window : int or None
        Dead-atom fraction over the last ``window`` rows.

    Returns
    -------
    SparseResult
    """
    check_can_save(store, name, overwrite=overwrite)
    with Store(store) as s:
        src, ids, kind = _source(s, run, source, rows)
        D = load_dictionary(s, run, dictionary)
        if normalize:
            D = D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
        ex = _own_atoms(s, run, source, ids, dictionary) if exclude_self else None
        w = _weights(s, run, source, ids) if weights else None
        if method not in ("omp", "lasso"):
            raise ConfigError(f"method must be 'omp' or 'lasso', got {method!r}")

        def encode(x: npt.NDArray[np.float32], block: slice) -> Any:
            own = None if ex is None else ex[block]
            if method == "omp":
                return omp(
                    x, D, k, exclude=own, backend=backend, device=device, batch_rows=batch_rows
                )
            return lasso(
                x, D, lam, exclude=own, backend=backend, device=device, batch_rows=batch_rows
            )

        meta = {
            "analysis": "sparse.encode",
            "source": source,
            "row_kind": kind,
            "dictionary": dictionary,
            "method": method,
            "k": k if method == "omp" else None,
            "lam": lam if method == "lasso" else None,
            "exclude_self": exclude_self,
            "weights": weights,
            "normalize": normalize,
        }
        return _code_and_save(
            s,
            name,
            run,
            src,
            ids,
            D,
            encode,
            lambda c: reconstruct(c, D),
            meta=meta,
            block_rows=block_rows,
            weights=w,
            window=window,
            overwrite=overwrite,
        )


def learn_store(
    store: str | Path,
    run: str,
    source: str,
    config: DictLearnConfig,
    *,
    name: str,
    rows: Any = None,
    init: str | None = None,
    window: int | None = None,
    overwrite: bool = False,
) -> SparseResult:
    """Learn a dictionary from ``source`` rows streamed from the store; saves result ``name``.

    ``init`` names a saved sparse result whose dictionary warm-starts the atoms.
    """
    check_can_save(store, name, overwrite=overwrite)
    with Store(store) as s:
        src, ids, kind = _source(s, run, source, rows)
        D0 = load_dictionary(s, run, init) if init else None
        dl = DictionaryLearner(config).fit(src, dict_init=D0)
        D = dl.components_
        meta = {
            "analysis": "sparse.learn",
            "source": source,
            "row_kind": kind,
            "config": asdict(config),
            "init": init,
            "n_steps": dl.n_steps_,
        }
        return _code_and_save(
            s,
            name,
            run,
            src,
            ids,
            D,
            lambda x, _: dl.encode(x),
            lambda c: reconstruct(c, D),
            meta=meta,
            block_rows=CODE_BLOCK_ROWS,
            window=window,
            overwrite=overwrite,
        )


def sae_store(
    store: str | Path,
    run: str,
    source: str,
    config: SAEConfig,
    *,
    name: str,
    rows: Any = None,
    window: int | None = None,
    overwrite: bool = False,
) -> SparseResult:
    """Train a TopK SAE on ``source`` rows streamed from the store; saves result ``name``.

    The arrays ``dictionary`` (decoder rows), ``W_enc``, ``b_enc``, ``b_dec`` are saved; the
    input scale is in the meta. Codes are in scaled units.
    """
    check_can_save(store, name, overwrite=overwrite)
    with Store(store) as s:
        src, ids, kind = _source(s, run, source, rows)
        sae = TopKSAE(config).fit(src)
        meta = {
            "analysis": "sparse.sae",
            "source": source,
            "row_kind": kind,
            "config": asdict(config),
            "scale": sae.scale_,
            "n_steps": sae.n_steps_,
        }
        arrays = {"W_enc": sae.W_enc_, "b_enc": sae.b_enc_, "b_dec": sae.b_dec_}
        return _code_and_save(
            s,
            name,
            run,
            src,
            ids,
            sae.components_,
            lambda x, _: sae.encode(x),
            sae.decode,
            meta=meta,
            block_rows=CODE_BLOCK_ROWS,
            window=window,
            arrays=arrays,
            overwrite=overwrite,
        )
