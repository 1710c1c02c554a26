"""Structured linear maps from the same streamed statistics as ridge: orthogonal (Procrustes),
reduced-rank (plain and residual ``Y = X + X U Vᵀ + b``) and identity-regularised full maps.

Every map predicts ``Y ≈ X W + b`` with ``W`` of shape (d, m).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError, MappingError
from actstore.query.mapping.ridge import RidgeEigen, RidgeStats

__all__ = ["LinearMap", "identity_map", "procrustes_map", "reduced_rank_map"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LinearMap:
    """A fitted map ``Y ≈ X W + b`` (``coef`` W of shape (d, m), ``intercept`` b of shape (m,)).

    ``info`` holds method-specific numbers (scale, rank, alpha, ...).

    Examples
    --------
    >>> import numpy as np
    >>> LinearMap(np.eye(2), np.ones(2)).predict(np.array([[1.0, 2.0]])).tolist()
    [[2.0, 3.0]]
    """

    coef: F64
    intercept: F64
    info: dict[str, float | int | str] = field(default_factory=dict)

    def predict(self, X: npt.ArrayLike) -> F64:
        """``X W + b``, shape (n, m)."""
        return np.asarray(X, np.float64) @ self.coef + self.intercept


def _square(stats: RidgeStats, what: str) -> int:
    d, m = stats.xty.shape
    if d != m:
        raise MappingError(
            f"{what} needs input and output of equal width, got {d} -> {m}; use method 'ridge'"
        )
    return int(d)


def procrustes_map(stats: RidgeStats, *, center: bool = True, scale: bool = False) -> LinearMap:
    """Orthogonal map ``W = U Vᵀ`` from the SVD of ``X̃ᵀỸ`` (optionally times a scalar).

    Parameters
    ----------
    stats : RidgeStats
        Statistics of ``(X, Y)`` with ``d == m``.
    center : bool
        Center X and Y first (the intercept then carries the mean shift).
    scale : bool
        Also fit one scalar ``s = trace(Σ) / ||X̃||²_F`` (``W = s U Vᵀ``).

    Returns
    -------
    LinearMap
        ``info["scale"]`` holds ``s`` (1.0 without ``scale``).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(50, 3)); R = np.linalg.qr(X[:3])[0]
    >>> m = procrustes_map(RidgeStats.from_arrays(X, X @ R), center=False)
    >>> bool(np.allclose(m.coef, R))
    True
    """
    _square(stats, "an orthogonal map")
    cxx, cxy, _, mx, my = stats.centered(center)
    u, sv, vt = np.linalg.svd(cxy)
    w = u @ vt
    s = float(sv.sum() / np.trace(cxx)) if scale else 1.0
    w = s * w
    return LinearMap(w, my - mx @ w, {"scale": s})


def reduced_rank_map(
    stats: RidgeStats,
    rank: int,
    *,
    alpha: float = 0.0,
    residual: bool = False,
    fit_intercept: bool = True,
) -> LinearMap:
    """Reduced-rank ridge: the ridge map projected on the top ``rank`` directions of its fit.

    ``W_r = W P_r P_rᵀ`` where ``P_r`` holds the top eigenvectors of ``Ŷᵀ Ŷ = Wᵀ Cxx W``
    (the optimal rank-r map under squared error for ``alpha=0``). With ``residual`` the
    map is ``Y = X + X U Vᵀ + b``: the low-rank part is fitted to ``Y - X`` and the
    returned ``coef`` is ``I + U Vᵀ``.

    Parameters
    ----------
    rank : int
        1 <= rank <= min(d, m).
    alpha : float
        Ridge penalty of the full-rank fit.

    Returns
    -------
    LinearMap
        ``info`` holds rank, alpha, residual.
    """
    st = stats.residual() if residual else stats
    d, m = st.xty.shape
    if not 1 <= rank <= min(d, m):
        raise ConfigError(f"rank must be in 1..{min(d, m)}, got {rank}")
    if alpha < 0:
        raise ConfigError(f"alpha must be >= 0, got {alpha}")
    cxx, *_ = st.centered(fit_intercept)
    eig = RidgeEigen.from_stats(st, fit_intercept)
    w = eig.coef(alpha)
    _, p = np.linalg.eigh(w.T @ cxx @ w)
    pr = p[:, ::-1][:, :rank]
    wr = w @ pr @ pr.T
    b = eig.intercept(wr)
    if residual:
        wr = wr + np.eye(d)
    return LinearMap(wr, b, {"rank": rank, "alpha": alpha, "residual": int(residual)})


def identity_map(
    stats: RidgeStats, lam_off: float, lam_diag: float, *, fit_intercept: bool = True
) -> LinearMap:
    """Full map pulled towards the identity, in closed form.

    Minimises ``(1/n) ||Y - X W - b||² + λ_off Σ_{i≠j} W_ij² + λ_diag Σ_i (W_ii - 1)²``.
    The loss splits over output columns j: column ``w_j`` is a ridge with the diagonal
    penalty ``Λ_j = λ_off I + (λ_diag - λ_off) e_j e_jᵀ`` and target ``e_j``, so
    ``(C/n + Λ_j) w_j = c_j/n + λ_diag e_j`` with ``C = X̃ᵀX̃``, ``c_j = X̃ᵀỹ_j``. With
    ``M = (C/n + λ_off I)⁻¹``, ``U = M (Cxy/n + λ_diag I)`` and ``δ = λ_diag - λ_off``,
    Sherman-Morrison gives every column at once:
    ``w_j = U_{:,j} - δ M_{:,j} U_jj / (1 + δ M_jj)`` — one d x d inverse, no Sylvester solve.

    Parameters
    ----------
    lam_off, lam_diag : float
        Penalties (>= 0); ``C/n + λ_off I`` must be invertible.

    Returns
    -------
    LinearMap

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(100, 3))
    >>> m = identity_map(RidgeStats.from_arrays(X, 2 * X), 0.0, 1e6)
    >>> np.round(np.diag(m.coef), 3).tolist()
    [1.0, 1.0, 1.0]
    """
    d = _square(stats, "an identity-regularised map")
    if lam_off < 0 or lam_diag < 0 or not np.isfinite(lam_off + lam_diag):
        raise ConfigError(
            f"lam_off and lam_diag must be finite and >= 0, got {lam_off}, {lam_diag}"
        )
    cxx, cxy, _, mx, my = stats.centered(fit_intercept)
    n = stats.n
    a = cxx / n + lam_off * np.eye(d)
    try:
        minv = np.linalg.inv(a)
    except np.linalg.LinAlgError:
        raise MappingError(
            "X̃ᵀX̃/n + lam_off·I is singular; set lam_off > 0 or use more rows"
        ) from None
    u = minv @ (cxy / n + lam_diag * np.eye(d))
    delta = lam_diag - lam_off
    w = u - minv * (delta * np.diag(u) / (1 + delta * np.diag(minv)))[None, :]
    return LinearMap(w, my - mx @ w, {"lam_off": lam_off, "lam_diag": lam_diag})
