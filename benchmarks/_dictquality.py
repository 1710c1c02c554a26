"""Pieces of the dictionary-learning benchmarks in ``sparse.py``: planted data, atom recovery,
held-out scoring and scikit-learn fed mini-batches under a wall-time budget.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from actstore.query.sparse.dictlearn import DictionaryLearner
from actstore.query.sparse.metrics import fvu, l0
from actstore.query.sparse.pursuit import lasso, omp, reconstruct


def unit(D: np.ndarray) -> np.ndarray:
    """Rows of ``D`` scaled to unit norm (zero rows stay zero)."""
    return np.asarray(D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12))


def sparse_rows(D: np.ndarray, n: int, k: int, noise: float, seed: int = 0) -> np.ndarray:
    """``n`` rows ``c @ D + noise``, float32: ``k`` random atoms per row with ±U(1, 2) weights,
    Gaussian noise of standard deviation ``noise`` per coordinate."""
    rng = np.random.default_rng(seed)
    cols = np.argsort(rng.random((n, len(D))), axis=1)[:, :k]
    C = np.zeros((n, len(D)))
    np.put_along_axis(C, cols, rng.uniform(1, 2, (n, k)) * rng.choice([-1, 1], (n, k)), 1)
    return (C @ D + noise * rng.standard_normal((n, D.shape[1]))).astype(np.float32)


def planted(
    n: int, d: int, m: int, k: int, noise: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Rows planted on a random unit dictionary D_true (m, d): ``(sparse_rows(...), D_true)``."""
    D = unit(np.random.default_rng([seed, 1]).standard_normal((m, d)))
    return sparse_rows(D, n, k, noise, seed), D


def coherent_atoms(m: int, d: int, mu: float, seed: int = 0) -> np.ndarray:
    """``m`` unit atoms ``√mu e + √(1-mu) v_j`` (v_j ⟂ e): pairwise cosines near ``mu``."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(d)
    e /= np.linalg.norm(e)
    V = rng.standard_normal((m, d))
    V -= np.outer(V @ e, e)
    return unit(np.sqrt(mu) * e + np.sqrt(1 - mu) * unit(V))


def recovery(D: np.ndarray, D_true: np.ndarray) -> dict[str, float]:
    """Share of true atoms whose best learned match has ``|cos|`` above 0.95 / 0.99."""
    best = np.abs(unit(np.asarray(D, np.float64)) @ D_true.T).max(0)
    return {
        "recovered_095": float((best > 0.95).mean()),
        "recovered_099": float((best > 0.99).mean()),
        "median_best_cos": float(np.median(best)),
    }


def score(
    X: np.ndarray, D: np.ndarray, *, k: int | None = None, lam: float | None = None
) -> dict[str, float]:
    """Held-out FVU and L0 of ``X`` coded by OMP (``k``, unit atoms) or Lasso (``lam``, atoms
    as learned, tol 1e-4 as the learner codes)."""
    if k is not None:
        Du = unit(D)
        codes = omp(X, Du, k)
        return {"fvu": fvu(X, reconstruct(codes, Du)), "l0": l0(codes)}
    if lam is None:
        raise ValueError("give k (OMP) or lam (Lasso)")
    codes = lasso(X, D, lam, tol=1e-4)
    return {"fvu": fvu(X, reconstruct(codes, D)), "l0": l0(codes)}


def race(
    learners: dict[str, DictionaryLearner],
    batches: Sequence[np.ndarray],
    D0: np.ndarray,
    lam: float,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Step every learner through ``batches``, interleaved with scikit-learn's
    ``MiniBatchDictionaryLearning(fit_algorithm="cd", alpha=lam)`` from ``D0``, which after
    each round is fed batches (in the same order, cycling) until its time has caught up with
    the slowest learner's. Interleaving spreads a loaded machine's slow phases over all sides.

    ``learners`` must be initialised (``fit`` with ``dict_init=D0`` and ``max_batches=0``).
    Returns, per learner, its ``components``, ``wall_s`` (time in ``partial_fit``) and
    ``batches``; and, per learner in the same order, scikit-learn's dictionary after the
    batch whose end (in its own time) is nearest to that learner's total time.
    """
    from sklearn.decomposition import MiniBatchDictionaryLearning

    skl = MiniBatchDictionaryLearning(
        n_components=len(D0),
        alpha=lam,
        fit_algorithm="cd",
        batch_size=len(batches[0]),
        dict_init=D0,
        random_state=0,
        shuffle=False,
    )
    spent = dict.fromkeys(learners, 0.0)
    snaps: list[tuple[float, int, np.ndarray]] = [(0.0, 0, D0.copy())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cd's ConvergenceWarning on hard batches
        for batch in batches:
            for name, dl in learners.items():
                t0 = time.perf_counter()
                dl.partial_fit(batch)
                spent[name] += time.perf_counter() - t0
            while True:  # stop at the batch end nearest to the target
                done = len(snaps) - 1
                mean = snaps[-1][0] / done if done else 0.0
                if snaps[-1][0] + mean / 2 >= max(spent.values()):
                    break
                t0 = time.perf_counter()
                skl.partial_fit(batches[done % len(batches)])
                snaps.append(
                    (snaps[-1][0] + time.perf_counter() - t0, done + 1, skl.components_.copy())
                )
    ours = {
        name: {"components": dl.components_, "wall_s": spent[name], "batches": dl.n_steps_}
        for name, dl in learners.items()
    }
    theirs = []
    for name in learners:
        wall, n, comp = min(snaps, key=lambda s: abs(s[0] - spent[name]))
        theirs.append({"components": comp, "wall_s": wall, "batches": n})
    return ours, theirs
