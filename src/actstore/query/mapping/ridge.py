"""Multi-output ridge regression from streamed sufficient statistics, all alphas at once.

The data enter only through ``XᵀX``, ``XᵀY``, column sums and per-target sums of squares,
accumulated in float64 block by block, so the number of rows can exceed memory. One
eigendecomposition of the centered ``XᵀX`` then gives the coefficients and the GCV error of
every alpha (leave-one-out and k-fold: :mod:`actstore.query.mapping.ridgecv`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError, MappingError
from actstore.query._backend import Backend, check_backend, torch_device

__all__ = ["RidgeEigen", "RidgeStats", "as_pair", "check_alphas"]

F64 = npt.NDArray[np.float64]


def check_alphas(alphas: float | Sequence[float] | npt.ArrayLike) -> F64:
    """``alphas`` as a 1-d float64 array, each finite and >= 0."""
    a = np.atleast_1d(np.asarray(alphas, np.float64))
    if a.ndim != 1 or not len(a) or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ConfigError(
            f"alphas must be finite numbers >= 0, got {np.asarray(alphas).tolist()}; "
            "pass e.g. --alphas 0.1,1,10"
        )
    return a


def as_pair(X: npt.ArrayLike, Y: npt.ArrayLike) -> tuple[F64, F64]:
    """``X`` (n, d) and ``Y`` (n, m) as arrays (a 1-d ``Y`` becomes (n, 1)), checked."""
    x, y = np.asarray(X), np.asarray(Y)
    if y.ndim == 1:
        y = y[:, None]
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise MappingError(
            f"X and Y must be 2-d with the same number of rows, got {x.shape} and {y.shape}; "
            "select row sets of equal length"
        )
    return x, y


def _grams(x: F64, y: F64, backend: Backend) -> tuple[F64, F64]:
    if backend == "torch":
        import torch

        dev = torch_device()
        tx = torch.as_tensor(np.ascontiguousarray(x)).to(dev, torch.float64)
        ty = torch.as_tensor(np.ascontiguousarray(y)).to(dev, torch.float64)
        return (tx.T @ tx).cpu().numpy(), (tx.T @ ty).cpu().numpy()
    check_backend(backend)
    x64, y64 = x.astype(np.float64, copy=False), y.astype(np.float64, copy=False)
    return x64.T @ x64, x64.T @ y64


@dataclass
class RidgeStats:
    """Sufficient statistics of ``(X, Y)`` rows, float64: add blocks with :meth:`update`.

    Attributes
    ----------
    n : int
        Rows seen.
    sum_x : ndarray of shape (d,)
    sum_y : ndarray of shape (m,)
    xtx : ndarray of shape (d, d)
        ``XᵀX`` (uncentered).
    xty : ndarray of shape (d, m)
    yty : ndarray of shape (m,)
        Per-target sum of squares ``Σ y_j²``.

    Examples
    --------
    >>> import numpy as np
    >>> X, Y = np.ones((5, 2)), np.arange(10.0).reshape(5, 2)
    >>> st = RidgeStats.zeros(2, 2).update(X[:3], Y[:3]).update(X[3:], Y[3:])
    >>> st.n, st.sum_y.tolist()
    (5, [20.0, 25.0])
    """

    n: int
    sum_x: F64
    sum_y: F64
    xtx: F64
    xty: F64
    yty: F64

    @classmethod
    def zeros(cls, d: int, m: int) -> RidgeStats:
        """Empty statistics for ``d`` inputs and ``m`` targets."""
        z = np.zeros
        return cls(0, z(d), z(m), z((d, d)), z((d, m)), z(m))

    @classmethod
    def from_arrays(
        cls,
        X: npt.ArrayLike,
        Y: npt.ArrayLike,
        *,
        batch_rows: int = 65536,
        backend: Backend = "numpy",
    ) -> RidgeStats:
        """Statistics of in-memory ``X`` (n, d) and ``Y`` (n, m), in blocks of rows."""
        x, y = as_pair(X, Y)
        st = cls.zeros(x.shape[1], y.shape[1])
        for a in range(0, len(x), batch_rows):
            st.update(x[a : a + batch_rows], y[a : a + batch_rows], backend=backend)
        return st

    @classmethod
    def from_blocks(
        cls,
        blocks: Iterable[tuple[npt.ArrayLike, npt.ArrayLike]],
        *,
        backend: Backend = "numpy",
    ) -> RidgeStats:
        """Statistics of a stream of ``(X_block, Y_block)`` pairs."""
        st: RidgeStats | None = None
        for xb, yb in blocks:
            x, y = as_pair(xb, yb)
            st = st or cls.zeros(x.shape[1], y.shape[1])
            st.update(x, y, backend=backend)
        if st is None or st.n == 0:
            raise MappingError("no rows to fit: the selection is empty; check the rows SQL")
        return st

    def update(
        self, X: npt.ArrayLike, Y: npt.ArrayLike, *, backend: Backend = "numpy"
    ) -> RidgeStats:
        """Add a block of rows (in place); returns ``self``."""
        x, y = as_pair(X, Y)
        if x.shape[1] != len(self.sum_x) or y.shape[1] != len(self.sum_y):
            raise MappingError(
                f"block widths {x.shape[1]}, {y.shape[1]} differ from the statistics' "
                f"{len(self.sum_x)}, {len(self.sum_y)}; stream one pair of sites"
            )
        if not len(x):
            return self
        xtx, xty = _grams(x, y, backend)
        y64 = y.astype(np.float64, copy=False)
        self.n += len(x)
        self.sum_x += x.sum(0, dtype=np.float64)
        self.sum_y += y64.sum(0)
        self.xtx += xtx
        self.xty += xty
        self.yty += np.einsum("ij,ij->j", y64, y64)
        return self

    def __add__(self, other: RidgeStats) -> RidgeStats:
        return RidgeStats(
            self.n + other.n,
            self.sum_x + other.sum_x,
            self.sum_y + other.sum_y,
            self.xtx + other.xtx,
            self.xty + other.xty,
            self.yty + other.yty,
        )

    def __sub__(self, other: RidgeStats) -> RidgeStats:
        return RidgeStats(
            self.n - other.n,
            self.sum_x - other.sum_x,
            self.sum_y - other.sum_y,
            self.xtx - other.xtx,
            self.xty - other.xty,
            self.yty - other.yty,
        )

    def residual(self) -> RidgeStats:
        """Statistics of ``(X, Y - X)`` (needs ``d == m``), for maps of the form Y = X + f(X)."""
        if self.xtx.shape[0] != self.xty.shape[1]:
            raise MappingError(
                f"a residual map needs equal widths, got {self.xtx.shape[0]} -> "
                f"{self.xty.shape[1]}; use a plain map"
            )
        dg = np.diag(self.xty)
        return RidgeStats(
            self.n,
            self.sum_x.copy(),
            self.sum_y - self.sum_x,
            self.xtx.copy(),
            self.xty - self.xtx,
            self.yty - 2 * dg + np.diag(self.xtx),
        )

    def centered(self, fit_intercept: bool = True) -> tuple[F64, F64, F64, F64, F64]:
        """``(Cxx, Cxy, cyy, mean_x, mean_y)``: centered when ``fit_intercept`` (else raw)."""
        if self.n == 0:
            raise MappingError("no rows to fit: the selection is empty; check the rows SQL")
        d, m = len(self.sum_x), len(self.sum_y)
        if not fit_intercept:
            return self.xtx, self.xty, self.yty, np.zeros(d), np.zeros(m)
        mx, my = self.sum_x / self.n, self.sum_y / self.n
        cxx = self.xtx - self.n * np.outer(mx, mx)
        cxy = self.xty - self.n * np.outer(mx, my)
        cyy = self.yty - self.n * my**2
        return cxx, cxy, cyy, mx, my


@dataclass(frozen=True)
class RidgeEigen:
    """The eigendecomposition ``Cxx = V diag(s) Vᵀ`` of one fit, solving any alpha cheaply.

    Attributes
    ----------
    s : ndarray of shape (d,)
        Eigenvalues of the (centered) ``XᵀX``, clipped at 0.
    V : ndarray of shape (d, d)
    Q : ndarray of shape (d, m)
        ``Vᵀ Cxy``.
    cyy : ndarray of shape (m,)
    mean_x, mean_y : ndarrays of shape (d,), (m,)
    n : int
    fit_intercept : bool
    """

    s: F64
    V: F64
    Q: F64
    cyy: F64
    mean_x: F64
    mean_y: F64
    n: int
    fit_intercept: bool

    @classmethod
    def from_stats(
        cls, stats: RidgeStats, fit_intercept: bool = True, backend: Backend = "numpy"
    ) -> RidgeEigen:
        """Decompose the statistics once."""
        cxx, cxy, cyy, mx, my = stats.centered(fit_intercept)
        if backend == "torch":
            import torch

            ts, tv = torch.linalg.eigh(torch.as_tensor(cxx))
            s, v = ts.numpy(), tv.numpy()
        else:
            s, v = np.linalg.eigh(cxx)
        s = np.clip(s, 0.0, None)
        return cls(s, v, v.T @ cxy, cyy, mx, my, stats.n, fit_intercept)

    def coef(self, alpha: float | F64) -> F64:
        """Coefficients ``W`` of shape (d, m) for one alpha, or one alpha per target (m,)."""
        a = np.asarray(alpha, np.float64)
        den = self.s[:, None] + (a[None, :] if a.ndim else a)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.where(den > 0, self.Q / np.where(den > 0, den, 1.0), 0.0)
        return self.V @ scaled

    def intercept(self, coef: F64) -> F64:
        """Intercept of shape (m,) that goes with ``coef``."""
        return self.mean_y - self.mean_x @ coef

    def gcv(self, alphas: F64) -> F64:
        """Generalised cross-validation MSE, shape (len(alphas), m), from statistics alone."""
        den = self.s[None, :] + alphas[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(den > 0, (self.s + 2 * alphas[:, None]) / den**2, 0.0)
            dof = np.where(den > 0, self.s / den, 0.0).sum(1) + self.fit_intercept
        rss = self.cyy[None, :] - w @ self.Q**2
        out: F64 = np.maximum(rss, 0.0) / self.n / ((1 - dof / self.n) ** 2)[:, None]
        return out
