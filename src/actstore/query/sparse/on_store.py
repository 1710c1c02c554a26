"""Sparse coding over a store: encode, learn a dictionary, train a TopK SAE, save the result.

A *source* is either a per-vocabulary matrix (``embed`` / ``unembed``: rows are token ids) or a
site (``hidden.6``: rows are token rows, optionally selected by SQL). Every function writes a
result ``results/<name>/``: the codes as the table ``(run, row, atom, value)`` (so
``SELECT row FROM <name> WHERE atom = 17`` works in :meth:`Store.sql`), the dictionary as the
array ``dictionary`` (n_atoms, d), the coded ``rows``, and the metrics in ``meta.json``.
"""

from __future__ import annotations

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
from actstore.query.sparse.metrics import sparse_metrics
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

#: Sources that are per-vocabulary matrices (their rows are token ids).
MATRICES = ("embed", "unembed")


@dataclass
class SparseResult:
    """What a sparse-coding run produced (also saved as result ``name``)."""

    name: str
    codes: Any
    """scipy sparse array of shape (n_rows, n_atoms)."""
    rows: npt.NDArray[np.int64]
    """Token ids (matrix source) or global rows (site source), shape (n_rows,)."""
    dictionary: npt.NDArray[np.float32]
    """Atoms, shape (n_atoms, d)."""
    metrics: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)


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


def _save(
    s: Store,
    name: str,
    run: str,
    res: SparseResult,
    arrays: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> SparseResult:
    meta = {**res.meta, "run": run, "metrics": res.metrics, "n_rows": len(res.rows)}
    write_result(
        s.path,
        name,
        codes_table(res.codes, res.rows, run),
        meta=meta,
        arrays={"dictionary": res.dictionary, "rows": res.rows, **(arrays or {})},
        overwrite=overwrite,
    )
    res.meta = meta
    return res


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
        X = src.read(np.arange(src.n_rows, dtype=np.int64))
        if method == "omp":
            codes = omp(X, D, k, exclude=ex, backend=backend, device=device, batch_rows=batch_rows)
        elif method == "lasso":
            codes = lasso(
                X, D, lam, exclude=ex, backend=backend, device=device, batch_rows=batch_rows
            )
        else:
            raise ConfigError(f"method must be 'omp' or 'lasso', got {method!r}")
        metrics = sparse_metrics(X, reconstruct(codes, D), codes, weights=w, window=window)
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
        res = SparseResult(name, codes, ids, D.astype(np.float32), metrics, meta)
        return _save(s, name, run, res, overwrite=overwrite)


def _codes_blocks(
    src: RowSource, enc: Any, dec: Any, block: int
) -> tuple[Any, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    import scipy.sparse as sp

    codes, xs, xh = [], [], []
    for a in range(0, src.n_rows, block):
        x = src.read(np.arange(a, min(a + block, src.n_rows), dtype=np.int64))
        c = enc(x)
        codes.append(c)
        xs.append(x)
        xh.append(dec(c))
    return sp.csr_array(sp.vstack(codes)), np.concatenate(xs), np.concatenate(xh)


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
        codes, X, X_hat = _codes_blocks(
            src, dl.encode, lambda c: reconstruct(c, D), config.block_rows
        )
        metrics = sparse_metrics(X, X_hat, codes, window=window)
        meta = {
            "analysis": "sparse.learn",
            "source": source,
            "row_kind": kind,
            "config": asdict(config),
            "init": init,
            "n_steps": dl.n_steps_,
        }
        res = SparseResult(name, codes, ids, D, metrics, meta)
        return _save(s, name, run, res, overwrite=overwrite)


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
        codes, X, X_hat = _codes_blocks(src, sae.encode, sae.decode, config.block_rows)
        metrics = sparse_metrics(X, X_hat, codes, window=window)
        meta = {
            "analysis": "sparse.sae",
            "source": source,
            "row_kind": kind,
            "config": asdict(config),
            "scale": sae.scale_,
            "n_steps": sae.n_steps_,
        }
        res = SparseResult(name, codes, ids, sae.components_, metrics, meta)
        arrays = {"W_enc": sae.W_enc_, "b_enc": sae.b_enc_, "b_dec": sae.b_dec_}
        return _save(s, name, run, res, arrays, overwrite=overwrite)
