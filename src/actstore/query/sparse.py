"""Basis pursuit: each vector as a sparse combination of the rows of a fixed dictionary.

Two solvers, batched over rows, on NumPy or torch (``backend="torch"``, CUDA when asked):

* :func:`omp` — orthogonal matching pursuit with exactly ``k`` non-zeros (the atom with the
  largest ``|r·d_j|`` joins, then least squares on the chosen atoms), as scikit-learn's
  ``orthogonal_mp``.
* :func:`lasso` — ``min_c ½‖x - c D‖² + λ‖c‖₁`` per row by coordinate descent, as scikit-learn's
  ``sparse_encode(..., algorithm="lasso_cd", alpha=λ)``.

Both accept ``exclude``: one atom per row that must stay zero (e.g. the vector's own row when a
vocabulary is encoded against itself). Codes come back as a ``scipy.sparse.csr_array``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import scipy.sparse as sp

from actstore.errors import ConfigError

__all__ = ["Backend", "codes_table", "lasso", "omp", "reconstruct", "xp_for"]

Backend = Literal["numpy", "torch"]


def xp_for(backend: Backend, device: str | None = None) -> tuple[Any, Any]:
    """The array module (``numpy`` or ``torch``) and a function moving NumPy arrays onto it."""
    if backend == "numpy":
        return np, np.asarray
    if backend != "torch":
        raise ConfigError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    import torch

    dev = torch.device(device or "cpu")
    return torch, lambda a: torch.as_tensor(np.ascontiguousarray(a), device=dev)


def _to_numpy(a: Any) -> npt.NDArray[Any]:
    return a if isinstance(a, np.ndarray) else a.detach().cpu().numpy()


def _check(
    x: npt.ArrayLike, dictionary: npt.ArrayLike, exclude: npt.ArrayLike | None
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.floating[Any]], npt.NDArray[np.int64]]:
    X = np.asarray(x)
    D = np.asarray(dictionary)
    if X.dtype.kind != "f":
        X = X.astype(np.float64)
    D = D.astype(X.dtype, copy=False)
    if X.ndim != 2 or D.ndim != 2 or X.shape[1] != D.shape[1] or len(D) == 0:
        raise ConfigError(
            f"expected X of shape (n_rows, d) and a dictionary of shape (n_atoms, d), got "
            f"{X.shape} and {D.shape}; encode vectors of the dictionary's width"
        )
    if len(X) == 0:
        raise ConfigError("the selection holds no rows; select at least one row to encode")
    ex = np.full(len(X), -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    if ex.shape != (len(X),) or np.any(ex >= len(D)):
        raise ConfigError(
            f"exclude must give one atom index (< {len(D)}, or -1 for none) per row, got shape "
            f"{ex.shape}; pass e.g. each row's own token id"
        )
    return X, D, ex


def _csr(n_atoms: int, idx: npt.NDArray[np.int64], val: npt.NDArray[Any]) -> sp.csr_array:
    n, k = idx.shape
    out = sp.csr_array(
        (val.reshape(-1), idx.reshape(-1), np.arange(0, n * k + 1, k)), shape=(n, n_atoms)
    )
    out.eliminate_zeros()
    out.sort_indices()
    return out


def _omp_block(xp: Any, X: Any, D: Any, k: int, ex: Any) -> tuple[Any, Any]:
    n = X.shape[0]
    rows = xp.arange(n) if xp is np else xp.arange(n, device=X.device)
    has_ex = ex >= 0
    chosen: list[Any] = []
    R, coef = X, None
    for t in range(k):
        corr = abs(R @ D.T)
        corr[rows[has_ex], ex[has_ex]] = -1.0
        for s in chosen:
            corr[rows, s] = -1.0
        chosen.append(corr.argmax(1))
        S = xp.stack(chosen, 1)
        A = D[S]
        G = A @ A.swapaxes(1, 2)
        b = xp.einsum("ntd,nd->nt", A, X)
        try:
            coef = xp.linalg.solve(G, b[..., None])[..., 0]
        except (np.linalg.LinAlgError, RuntimeError):  # linearly dependent atoms
            coef = (xp.linalg.pinv(G) @ b[..., None])[..., 0]
        if t < k - 1:
            R = X - xp.einsum("nt,ntd->nd", coef, A)
    return xp.stack(chosen, 1), coef


def omp(
    x: npt.ArrayLike,
    dictionary: npt.ArrayLike,
    k: int,
    *,
    exclude: npt.ArrayLike | None = None,
    backend: Backend = "numpy",
    device: str | None = None,
    batch_rows: int = 1024,
) -> sp.csr_array:
    """Orthogonal matching pursuit with ``k`` non-zeros per row.

    Parameters
    ----------
    x : ndarray of shape (n_rows, d)
        Vectors to encode.
    dictionary : ndarray of shape (n_atoms, d)
        Atoms as rows; use unit-norm atoms for the usual OMP selection rule.
    k : int
        Non-zeros per row, ``1 <= k <= n_atoms``.
    exclude : ndarray of shape (n_rows,), optional
        An atom per row that may not be used (-1: none).
    backend, device : str
        ``"numpy"`` or ``"torch"`` (with ``device`` such as ``"cuda"``).
    batch_rows : int
        Rows solved together (memory ~ ``batch_rows * n_atoms``).

    Returns
    -------
    scipy.sparse.csr_array of shape (n_rows, n_atoms)

    Raises
    ------
    ConfigError
        ``k`` out of range, shapes that do not match, no rows.

    Examples
    --------
    >>> D = np.eye(3)
    >>> omp([[0.0, 2.0, 0.5]], D, k=1).toarray()
    array([[0., 2., 0.]])
    """
    X, D, ex = _check(x, dictionary, exclude)
    n_free = len(D) - (1 if np.any(ex >= 0) else 0)
    if not 1 <= k <= n_free:
        raise ConfigError(
            f"k must be between 1 and the {n_free} usable atoms, got k={k}; lower k or use "
            "a larger dictionary"
        )
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be >= 1, got {batch_rows}")
    xp, put = xp_for(backend, device)
    Dt = put(D)
    idx = np.empty((len(X), k), np.int64)
    val = np.empty((len(X), k), X.dtype)
    for a in range(0, len(X), batch_rows):
        s, c = _omp_block(xp, put(X[a : a + batch_rows]), Dt, k, put(ex[a : a + batch_rows]))
        idx[a : a + batch_rows], val[a : a + batch_rows] = _to_numpy(s), _to_numpy(c)
    return _csr(len(D), idx, val)


def _nonzero(xp: Any, v: Any) -> Any:
    return xp.nonzero(v)[0] if xp is np else v.nonzero()[:, 0]


def _cd_sweep(
    xp: Any, cT: Any, RgT: Any, G: Any, diag: list[float], lam: float, keepT: Any, coords: Any
) -> float:
    moved = 0.0
    for j in coords:
        g = diag[j]
        if g <= 0.0:
            continue
        cj = cT[j]
        z = cj + RgT[j] / g
        new = xp.sign(z) * (abs(z) - lam / g).clip(0)
        if keepT is not None:
            new = new * keepT[j]
        delta = new - cj
        hit = _nonzero(xp, delta)
        if len(hit):
            d_hit = delta[hit]
            cT[j] = new
            RgT[:, hit] -= G[j][:, None] * d_hit[None, :]
            moved = max(moved, float(abs(d_hit).max()))
    return moved


def _lasso_block(
    xp: Any, X: Any, D: Any, G: Any, lam: float, ex: Any, max_iter: int, tol: float
) -> Any:
    # Cyclic coordinate descent on all rows at once (codes stored atom-major), keeping
    # Rg = D Xᵀ - G c up to date with a rank-1 update on the rows whose code moved; atoms that
    # are zero in every row and cannot leave zero are skipped in a sweep.
    n = X.shape[0]
    RgT = D @ X.T
    cT = RgT * 0.0
    keepT = None
    if bool((ex >= 0).any()):
        keepT = cT + 1.0
        rows = xp.arange(n) if xp is np else xp.arange(n, device=X.device)
        keepT[ex[ex >= 0], rows[ex >= 0]] = 0.0
    diag = [float(g) for g in _to_numpy(G.diagonal())]

    def limit() -> float:
        return tol * max(1.0, float(abs(cT).max()))

    for _ in range(max_iter):
        live = _to_numpy(_nonzero(xp, (cT != 0).any(1) | (abs(RgT) > lam).any(1))).tolist()
        if _cd_sweep(xp, cT, RgT, G, diag, lam, keepT, live) <= limit():
            break
    return cT.T


def lasso(
    x: npt.ArrayLike,
    dictionary: npt.ArrayLike,
    lam: float,
    *,
    exclude: npt.ArrayLike | None = None,
    backend: Backend = "numpy",
    device: str | None = None,
    batch_rows: int = 1024,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> sp.csr_array:
    """Lasso codes, ``argmin_c ½‖x - c D‖² + λ‖c‖₁`` for each row, by coordinate descent.

    Parameters
    ----------
    x : ndarray of shape (n_rows, d)
    dictionary : ndarray of shape (n_atoms, d)
    lam : float
        λ > 0 (scikit-learn's ``alpha`` of ``sparse_encode``).
    exclude : ndarray of shape (n_rows,), optional
        An atom per row held at zero (-1: none).
    backend, device, batch_rows
        As in :func:`omp`.
    max_iter : int
        Sweeps over the atoms at most.
    tol : float
        Stop after a sweep in which no code moved more than ``tol * max(1, max|c|)``.

    Returns
    -------
    scipy.sparse.csr_array of shape (n_rows, n_atoms)

    Examples
    --------
    >>> lasso([[0.0, 2.0, 0.5]], np.eye(3), lam=1.0).toarray()
    array([[0., 1., 0.]])
    """
    X, D, ex = _check(x, dictionary, exclude)
    if not (np.isfinite(lam) and lam > 0):
        raise ConfigError(f"lambda must be a positive number, got {lam}; try e.g. 0.1")
    xp, put = xp_for(backend, device)
    Dt = put(D)
    G = Dt @ Dt.T
    out = []
    for a in range(0, len(X), batch_rows):
        c = _lasso_block(
            xp,
            put(X[a : a + batch_rows]),
            Dt,
            G,
            lam,
            put(ex[a : a + batch_rows]),
            max_iter,
            tol,
        )
        out.append(sp.csr_array(_to_numpy(c)))
    codes = sp.csr_array(sp.vstack(out))
    codes.eliminate_zeros()
    return codes


def reconstruct(codes: Any, dictionary: npt.ArrayLike) -> npt.NDArray[Any]:
    """``codes @ dictionary``: ndarray of shape (n_rows, d).

    Examples
    --------
    >>> reconstruct(omp([[3.0, 4.0]], np.eye(2), k=1), np.eye(2))
    array([[0., 4.]])
    """
    D = np.asarray(dictionary)
    return np.asarray(codes @ D) if sp.issparse(codes) else np.asarray(codes) @ D


def codes_table(codes: Any, rows: npt.ArrayLike, run: str) -> pa.Table:
    """Codes as a long table ``(run, row, atom, value)``, one line per non-zero.

    Parameters
    ----------
    codes : scipy sparse array of shape (n_rows, n_atoms)
    rows : ndarray of shape (n_rows,)
        The global row id (or token id) of each coded row.
    run : str

    Examples
    --------
    >>> codes_table(sp.csr_array(np.array([[0, 1.5], [2.0, 0]])), [7, 9], "r").to_pylist()[0]
    {'run': 'r', 'row': 7, 'atom': 1, 'value': 1.5}
    """
    c = sp.coo_array(codes)
    r = np.asarray(rows, np.int64)
    order = np.lexsort((c.col, c.row))
    return pa.table(
        {
            "run": pa.array([run] * len(order), pa.string()),
            "row": pa.array(r[c.row[order]], pa.int64()),
            "atom": pa.array(c.col[order].astype(np.int32), pa.int32()),
            "value": pa.array(c.data[order].astype(np.float32), pa.float32()),
        }
    )
