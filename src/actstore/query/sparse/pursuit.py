"""Basis pursuit: each vector as a sparse combination of the rows of a fixed dictionary.

Two solvers, batched over rows, on NumPy or torch (``backend="torch"``, CUDA when asked):

* :func:`omp` — orthogonal matching pursuit with exactly ``k`` non-zeros (the atom with the
  largest ``|r·d_j|`` joins, then least squares on the chosen atoms), as scikit-learn's
  ``orthogonal_mp``.
* :func:`lasso` — ``min_c ½‖x - c D‖² + λ‖c‖₁`` per row by coordinate descent, as scikit-learn's
  ``sparse_encode(..., algorithm="lasso_cd", alpha=λ)``; each row sweeps only a working set (its
  non-zeros and worst optimality violators), grown until no other atom violates, and a row whose
  signs have settled jumps to the optimum on its support by one solve (coherent atoms).

Both accept ``exclude``: one atom per row that must stay zero (e.g. the vector's own row when a
vocabulary is encoded against itself). Codes come back as a ``scipy.sparse.csr_array``.

About 470 lines: both solvers share the batching, the one-excluded-atom rule and the
NumPy/torch plumbing, which a split would scatter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import scipy.sparse as sp

from actstore.errors import ConfigError
from actstore.query._backend import Backend, xp_for

__all__ = ["codes_table", "lasso", "omp", "reconstruct"]


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


def _take(xp: Any, a: Any, idx: Any) -> Any:
    return np.take_along_axis(a, idx, 1) if xp is np else a.gather(1, idx)


def _rows_last(xp: Any, a: Any) -> Any:
    """``a`` with its first (row) axis moved last, contiguous: per-position slices are rows."""
    if xp is np:
        return np.ascontiguousarray(np.moveaxis(a, 0, -1))
    return a.movedim(0, -1).contiguous()


def _top(xp: Any, score: Any, k: int) -> Any:
    """Indices of the ``k`` largest scores of each row (in no particular order)."""
    if xp is np:
        if k == score.shape[1]:
            return np.broadcast_to(np.arange(k), score.shape).copy()
        return np.argpartition(-score, k - 1, axis=1)[:, :k]
    return score.topk(k, dim=1, sorted=False).indices


_NEWTON_FROM = 5
"""Sweeps of plain coordinate descent before Newton steps: on incoherent atoms it has
converged by then, and a solve per row would cost more than it saves."""


def _cd_local(
    xp: Any, cT: Any, rT: Any, GT: Any, dT: Any, lam: float, tol: float, max_iter: int
) -> None:
    # Cyclic coordinate descent on each row's own working set, all rows at once: position t of
    # row r is atom idx[r, t]; cT, rT (K, n) are the codes and ``b - G c`` on the working set and
    # GT[t] (K, n) the Gram column of each row's t-th atom. Rows that have converged are dropped
    # from the sweeps (compacted) so the last sweeps only pay for the slow rows. After
    # _NEWTON_FROM sweeps, a row whose signs did not change in a sweep also takes a Newton step
    # (see _support_newton): on coherent atoms coordinate descent finds the support in a few
    # sweeps but then needs hundreds or thousands to converge on it (1,000-sweep caps were
    # hit: 40x slower than scikit-learn), while a solve lands on the optimum of that support.
    live = None
    c, r, g, d = cT, rT, GT, dT
    thr = lam / d
    prev = xp.sign(c)
    for sweep in range(max_iter):
        moved = c[0] * 0.0
        for t in range(c.shape[0]):
            ct = c[t]
            z = ct + r[t] / d[t]
            new = z - (xp.minimum(xp.maximum(z, -thr[t]), thr[t]))
            delta = new - ct
            c[t] = new
            r -= g[t] * delta
            moved = xp.maximum(moved, abs(delta))
        limit = tol * xp.maximum(xp.amax(abs(c), 0), c[0] * 0.0 + 1.0)
        going = moved > limit
        n_going = int(going.sum())
        if n_going == 0:
            break
        sign = xp.sign(c)
        if sweep >= _NEWTON_FROM:
            stable = _nonzero(xp, going & (sign == prev).all(0) & (sign != 0).any(0))
            if len(stable):
                _support_newton(xp, c, r, g, lam, stable)
                sign = xp.sign(c)
        prev = sign
        if n_going <= c.shape[1] // 2:  # compact: keep the rows still moving
            if live is not None:
                cT[:, live] = c
            keep = _nonzero(xp, going)
            live = keep if live is None else live[keep]
            c, r, g, d, thr = c[:, keep], r[:, keep], g[:, :, keep], d[:, keep], thr[:, keep]
            prev = prev[:, keep]
    if live is not None:
        cT[:, live] = c


def _support_newton(xp: Any, c: Any, r: Any, g: Any, lam: float, cols: Any) -> None:
    """Move rows ``cols`` of ``c`` (K, n) to the Lasso optimum on (part of) their current
    supports; ``r`` (K, n) and the Gram ``g`` (K, K, n) as in _cd_local, updated in place.

    On the face where the non-zeros S keep their signs s the objective is a quadratic with
    minimiser ``G_SS⁻¹ (b_S - λ s)``. A row goes there, or, if a code would change sign on the
    way, only as far as the first code that reaches zero, which leaves S; then it steps again
    on the smaller face, until a step keeps all signs (the inner loop of Lee et al.'s
    feature-sign search). The objective never rises, and the sweeps that follow check the
    result (and bring dropped atoms back) as any other iterate.
    """
    cs, gs = c[:, cols], g[:, :, cols]
    b = r[:, cols] + xp.einsum("tur,ur->tr", gs, cs)  # D x on the working set
    live = xp.arange(len(cols)) if xp is np else xp.arange(len(cols), device=c.device)
    for _ in range(len(c)):
        cl = cs[:, live]
        s = xp.sign(cl)
        on = s != 0
        onf = on * 1.0 if xp is np else on.to(cl.dtype)
        # solve on the positions of each row's support only (K can be ~2x its size)
        n_on = max(1, int(on.sum(0).max()))
        pos = _top(xp, onf.T, n_on)  # (rows, n_on): the support first, then padding
        sub = _take(xp, onf.T, pos)
        M = _rows_first(xp, gs[pos.T[:, None, :], pos.T[None, :, :], live[None, None, :]])
        eye = xp.eye(n_on, dtype=cl.dtype) if xp is np else xp.eye(n_on, device=c.device)
        M = M * sub[:, :, None] * sub[:, None, :] + eye * (1.0 - sub)[:, :, None]
        rhs = _take(xp, ((b[:, live] - lam * s) * onf).T, pos)
        try:
            opt = xp.linalg.solve(M, rhs[..., None])[..., 0]
        except (np.linalg.LinAlgError, RuntimeError):  # linearly dependent atoms: stop here
            break
        step = cl * 0.0
        at = xp.arange(len(live)) if xp is np else xp.arange(len(live), device=c.device)
        step[pos.T, at[None, :]] = opt.T
        step -= cl
        # the fraction of the step at which each code reaches zero (2: it does not)
        flips = on & ((cl + step) * s < 0)
        frac = xp.where(flips, abs(cl) / xp.where(flips, abs(step), 1.0), 2.0)
        amount = frac.min(0) if xp is np else frac.amin(0)
        first = frac.argmin(0)
        fine = xp.isfinite(step).all(0)
        cut = _nonzero(xp, fine & (amount < 1.0))
        new = cl + step * amount.clip(max=1.0)[None, :]
        new[first[cut], cut] = 0.0  # exactly zero, not a rounding error off
        done = _nonzero(xp, fine)
        cs[:, live[done]] = new[:, done]
        live = live[cut]
        if len(live) == 0:
            break
    c[:, cols] = cs
    r[:, cols] = b - xp.einsum("tur,ur->tr", gs, cs)


def _rows_first(xp: Any, a: Any) -> Any:
    """``a`` with its last (row) axis moved first."""
    return np.moveaxis(a, -1, 0) if xp is np else a.movedim(-1, 0)


def _nonzero(xp: Any, v: Any) -> Any:
    return xp.nonzero(v)[0] if xp is np else v.nonzero()[:, 0]


_WS_ELEMENTS = 1 << 25
"""Most entries of the per-row gathered Gram of one working-set solve (bounds its memory)."""


def _solve_working_sets(
    xp: Any, C: Any, grad: Any, G: Any, ws: tuple[Any, Any], lam: float, tol: float, max_iter: int
) -> Any:
    """Codes of shape (rows, k) on working sets ``ws = (idx, valid)`` (rows, k), from ``C``."""
    idx, valid = ws
    vf = valid.astype(C.dtype) if xp is np else valid.to(C.dtype)
    # GT[t, u, r] = G[a_rt, a_ru], zero off the valid slots; rows last, so that each
    # position's slice is contiguous in the sweeps.
    idxT, vfT = idx.T, vf.T
    GT = G[idxT[:, None, :], idxT[None, :, :]]
    GT *= vfT[:, None, :]
    GT *= vfT[None, :, :]
    dT = _rows_last(xp, xp.where(valid, G.diagonal()[idx], vf * 0.0 + 1.0))
    cT = _rows_last(xp, _take(xp, C, idx) * vf)
    rT = _rows_last(xp, _take(xp, grad, idx) * vf)
    _cd_local(xp, cT, rT, GT, dT, lam, tol, max_iter)
    return cT.T


def _lasso_block(
    xp: Any, X: Any, D: Any, G: Any, lam: float, ex: Any, max_iter: int, tol: float
) -> Any:
    # Working-set coordinate descent (as in celer / blitz): each row's working set holds its
    # non-zero codes and its worst KKT violators (zero codes whose coordinate step
    # ``(|g_j| - λ) / G_jj`` would exceed the tolerance, g = D x - G c); the sub-problem on the
    # working sets is solved by coordinate descent on a per-row gathered Gram, then the full
    # gradient is recomputed by one matrix product and the sets are grown until no zero code
    # violates the optimality conditions. Most codes are zero, so the sweeps touch ~2·nnz atoms
    # per row instead of all of them.
    n, m = X.shape[0], D.shape[0]
    B = X @ D.T
    C = B * 0.0
    diag = G.diagonal()
    blocked = (B * 0.0 + (diag <= 0)[None, :]) > 0
    if bool((ex >= 0).any()):
        rows = xp.arange(n) if xp is np else xp.arange(n, device=X.device)
        blocked[rows[ex >= 0], ex[ex >= 0]] = True
    safe_diag = xp.where(diag > 0, diag, diag * 0.0 + 1.0)
    inf = float("inf")
    k_min = min(m, 32)
    grad = B
    for rnd in range(max_iter):
        if rnd:
            grad = B - (sp.csr_array(C) @ G if xp is np else C @ G)
        limit = tol * xp.maximum(xp.amax(abs(C), 1), C[:, 0] * 0.0 + 1.0)
        step = (abs(grad) - lam) / safe_diag[None, :]
        viol = (step > limit[:, None]) & (C == 0) & ~blocked
        act = _nonzero(xp, viol.any(1))  # only rows that still violate are worked on
        if len(act) == 0:
            break
        nz, viol, step = C[act] != 0, viol[act], step[act]
        n_nz = int(nz.sum(1).max())
        n_viol = int(viol.sum(1).max())
        k = min(m, max(k_min, 2 * n_nz, n_nz + min(n_viol, max(n_nz, k_min))))
        score = xp.where(nz, step * 0.0 + inf, xp.where(viol, step, step * 0.0 - inf))
        idx = _top(xp, score, k)
        valid = _take(xp, nz | viol, idx)
        # The sub-problems are solved 10x tighter than the stopping rule, else a zero code just
        # outside a working set can keep violating it by a hair; later rounds tighten further.
        inner = tol / 10 / 2 ** max(0, rnd - 4)
        chunk = max(1, _WS_ELEMENTS // (k * k))  # bounds the (k, k, rows) gathered Gram
        for s in range(0, len(act), chunk):
            part = act[s : s + chunk]
            ws = (idx[s : s + chunk], valid[s : s + chunk])
            cl = _solve_working_sets(xp, C[part], grad[part], G, ws, lam, inner, max_iter)
            if xp is np:
                Cp = C[part]
                np.put_along_axis(Cp, ws[0], cl, 1)
                C[part] = Cp
            else:
                C[part] = C[part].scatter(1, ws[0], cl)
    return C


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
        Sweeps per working-set solve, and working-set rounds, at most.
    tol : float
        Stop when no code would move more than ``tol * max(1, max|c|)`` (of its row) in a
        coordinate step: the working sets are solved to a tenth of that, and no atom outside
        them may violate it.

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
