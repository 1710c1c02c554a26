"""Mini-batch dictionary learning (Mairal et al. 2009, as scikit-learn's
``MiniBatchDictionaryLearning``) over a stream of row batches from an array or a store.

Each batch is coded against the current dictionary (OMP with ``k`` non-zeros or Lasso with
``λ``, see :mod:`actstore.query.sparse.pursuit`), the running statistics ``A = Σ βcᵀc``,
``B = Σ βxᵀc`` are updated with scikit-learn's forgetting factor, and each atom takes one
block-coordinate step and is projected into the unit ball. Atoms that no batch uses are
re-seeded from a batch row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from actstore.errors import ConfigError
from actstore.query._backend import Backend
from actstore.query.rowstream import RowSource, as_source, shuffled_batches
from actstore.query.sparse.pursuit import lasso, omp

__all__ = ["DictLearnConfig", "DictionaryLearner", "learn_dictionary"]


@dataclass(frozen=True)
class DictLearnConfig:
    """Options of mini-batch dictionary learning."""

    n_atoms: int
    """Number of atoms (dictionary rows)."""
    k: int | None = None
    """Non-zeros per row (OMP coding); give ``k`` or ``lam``."""
    lam: float | None = None
    """λ of Lasso coding; give ``k`` or ``lam``."""
    batch_size: int = 256
    """Rows per mini-batch."""
    epochs: int = 1
    """Passes over the rows."""
    max_batches: int | None = None
    """Stop after this many batches (None: all epochs)."""
    block_rows: int = 65536
    """Rows read from the source at a time (shuffled within)."""
    seed: int = 0
    """Seed of the initial atoms, the batch order and atom re-seeding."""
    backend: Backend = "numpy"
    """``numpy`` or ``torch`` for the coding step."""
    device: str | None = None
    """torch device (e.g. ``cuda``); None: cuda when available, else cpu."""
    tol: float = 1e-4
    """Tolerance of Lasso coding (see :func:`~actstore.query.sparse.pursuit.lasso`)."""
    max_overlap: float | None = 0.8
    """Re-seed an atom whose ``|cos|`` with an earlier atom exceeds this, from the batch row
    with the largest residual (None: never; scikit-learn re-seeds unused atoms only)."""

    def __post_init__(self) -> None:
        if self.n_atoms < 1:
            raise ConfigError(f"n_atoms must be >= 1, got {self.n_atoms}")
        if (self.k is None) == (self.lam is None):
            raise ConfigError(
                "give exactly one of k (--k: OMP coding with k non-zeros) and lam (--lam: "
                f"Lasso coding), got k={self.k}, lam={self.lam}"
            )
        if self.k is not None and not 1 <= self.k <= self.n_atoms:
            raise ConfigError(
                f"k must be between 1 and n_atoms={self.n_atoms}, got k={self.k}; lower k (--k)"
            )
        if self.lam is not None and not (np.isfinite(self.lam) and self.lam > 0):
            raise ConfigError(f"lambda must be a positive number, got {self.lam}; try e.g. 0.1")
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError(
                f"batch_size and epochs must be >= 1, got {self.batch_size}, {self.epochs}"
            )


class DictionaryLearner:
    """Learn a dictionary from rows streamed in mini-batches.

    Parameters
    ----------
    config : DictLearnConfig

    Attributes
    ----------
    components_ : ndarray of shape (n_atoms, d)
        The atoms (norm <= 1).
    A_ : ndarray of shape (n_atoms, n_atoms)
    B_ : ndarray of shape (d, n_atoms)
        Running code statistics (kept for warm starts with :meth:`partial_fit`).
    n_steps_ : int
        Batches seen.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 6))
    >>> dl = DictionaryLearner(DictLearnConfig(n_atoms=4, k=2, batch_size=50)).fit(X)
    >>> dl.components_.shape, dl.n_steps_, dl.transform(X[:3]).shape
    ((4, 6), 4, (3, 4))
    """

    def __init__(self, config: DictLearnConfig) -> None:
        self.config = config

    def _init(self, source: RowSource, dict_init: npt.ArrayLike | None) -> None:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 1])
        if dict_init is not None:
            D = np.array(dict_init, np.float32)
            if D.shape != (cfg.n_atoms, source.d):
                raise ConfigError(
                    f"dict_init must have shape ({cfg.n_atoms}, {source.d}), got {D.shape}"
                )
        else:
            take = min(cfg.n_atoms, source.n_rows)
            pos = np.sort(rng.choice(source.n_rows, take, replace=False)).astype(np.int64)
            D = np.concatenate(
                [source.read(pos), rng.standard_normal((cfg.n_atoms - take, source.d))]
            ).astype(np.float32)
            D = D[rng.permutation(len(D))]
        norms = np.linalg.norm(D, axis=1, keepdims=True)
        self.components_ = D / np.maximum(norms, 1e-12)
        self.A_ = np.zeros((cfg.n_atoms, cfg.n_atoms), np.float64)
        self.B_ = np.zeros((source.d, cfg.n_atoms), np.float64)
        self.n_steps_ = 0
        self._rng = np.random.default_rng([self.config.seed, 2])

    def encode(self, X: npt.ArrayLike) -> Any:
        """Codes of ``X`` (n_rows, d) against the current atoms: sparse (n_rows, n_atoms)."""
        cfg = self.config
        if cfg.k is not None:
            return omp(X, self.components_, cfg.k, backend=cfg.backend, device=cfg.device)
        lam = float(cfg.lam or 0.0)  # set: the config requires k or lam
        return lasso(X, self.components_, lam, backend=cfg.backend, device=cfg.device, tol=cfg.tol)

    transform = encode

    def partial_fit(self, X: npt.ArrayLike) -> DictionaryLearner:
        """One mini-batch step on rows ``X`` of shape (batch, d); initialises on first use."""
        Xb = np.asarray(X, np.float32)
        if not hasattr(self, "components_"):
            self._init(as_source(Xb), None)
        sparse = self.encode(Xb).astype(np.float64)
        code = sparse.toarray()
        n = len(Xb)
        step = self.n_steps_
        theta = (step + 1) * n if step < n - 1 else n * n + step + 1 - n
        beta = (theta + 1 - n) / (theta + 1)
        self.A_ *= beta
        self.A_ += (sparse.T @ sparse).toarray() / n  # the codes are sparse: ~4% non-zero
        self.B_ *= beta
        self.B_ += (sparse.T @ Xb.astype(np.float64)).T / n
        D = self.components_.astype(np.float64)
        self._update_atoms(D, Xb)
        if self.config.max_overlap is not None:
            self._reseed_duplicates(D, Xb, code)
        self.components_ = D.astype(np.float32)
        self.n_steps_ += 1
        return self

    def _update_atoms(self, D: npt.NDArray[np.float64], X: npt.NDArray[np.float32]) -> None:
        # One Gauss-Seidel sweep of block coordinate descent over the atoms (as scikit-learn's
        # _update_dict), done in blocks: A[blk] @ D is one matrix product per block and the
        # atoms already moved inside the block are corrected for exactly. The products are
        # small, and multi-threaded BLAS on a busy machine spends far longer waking threads than
        # computing them (~40x here), so the sweep runs on one BLAS thread.
        A, B = self.A_, self.B_
        with threadpool_limits(limits=1, user_api="blas"):
            for a in range(0, len(D), 64):
                blk = np.arange(a, min(a + 64, len(D)))
                M = A[blk] @ D
                delta = np.zeros((len(blk), D.shape[1]))
                for i, j in enumerate(blk):
                    old = D[j].copy()
                    if A[j, j] > 1e-6:
                        D[j] += (B[:, j] - M[i] - A[j, blk[:i]] @ delta[:i]) / A[j, j]
                    else:  # an unused atom: re-seed it from a row of this batch
                        row = X[self._rng.integers(len(X))].astype(np.float64)
                        D[j] = row + self._rng.normal(0, 0.01 * (row.std() or 1.0), len(row))
                    D[j] /= max(float(np.linalg.norm(D[j])), 1.0)
                    delta[i] = D[j] - old

    def _reseed_duplicates(
        self, D: npt.NDArray[np.float64], X: npt.NDArray[np.float32], code: Any
    ) -> None:
        limit = float(self.config.max_overlap or 1.0)
        norms = np.maximum(np.linalg.norm(D, axis=1), 1e-12)
        cos = np.abs(D @ D.T) / np.outer(norms, norms)
        dup = np.flatnonzero(np.triu(cos > limit, 1).any(0))
        if not len(dup):
            return
        resid = np.linalg.norm(X - code @ self.components_, axis=1)
        for j, i in zip(dup, np.argsort(-resid), strict=False):
            D[j] = X[i] / max(float(np.linalg.norm(X[i])), 1e-12)
            self.A_[j, :] = self.A_[:, j] = 0.0
            self.B_[:, j] = 0.0

    def fit(self, x: Any, dict_init: npt.ArrayLike | None = None) -> DictionaryLearner:
        """Learn from an array (n_rows, d) or a :class:`~actstore.query.rowstream.RowSource`.

        ``dict_init`` (n_atoms, d) warm-starts the atoms; calling :meth:`fit` again with
        ``dict_init=self.components_`` continues from the learned ones.
        """
        cfg = self.config
        source = as_source(x)
        self._init(source, dict_init)
        batches = shuffled_batches(
            source, cfg.batch_size, block_rows=cfg.block_rows, seed=cfg.seed, epochs=cfg.epochs
        )
        for i, batch in enumerate(batches):
            if cfg.max_batches is not None and i >= cfg.max_batches:
                break
            self.partial_fit(batch)
        return self

    def get_params(self) -> dict[str, Any]:
        """The config as a dict."""
        return asdict(self.config)


def learn_dictionary(
    x: Any, config: DictLearnConfig, dict_init: npt.ArrayLike | None = None
) -> npt.NDArray[np.float32]:
    """Atoms (n_atoms, d) learned from an array or row source (see :class:`DictionaryLearner`).

    Examples
    --------
    >>> X = np.random.default_rng(0).standard_normal((64, 5))
    >>> learn_dictionary(X, DictLearnConfig(n_atoms=3, lam=0.1, batch_size=32)).shape
    (3, 5)
    """
    learner = DictionaryLearner(config).fit(x, dict_init)
    return np.asarray(learner.components_, np.float32)
