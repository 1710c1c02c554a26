"""Reading a saved sparse result atom by atom: top-activating rows with their context text,
nearest vocabulary tokens of each atom, and a 2-D map of the atoms as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.query.results import read_result

if TYPE_CHECKING:
    import pandas as pd

    from actstore.query.store import Store

__all__ = ["atom_map", "atom_nearest_tokens", "atom_top_rows", "map_coords"]


def _atom_range(atom: int, n_atoms: int) -> None:
    if not 0 <= atom < n_atoms:
        raise ConfigError(f"atom must be in 0..{n_atoms - 1}, got {atom}; pick an existing atom")


def atom_top_rows(
    store: Store, result: str, atom: int, n: int = 10, *, context: int = 40
) -> pd.DataFrame:
    """The ``n`` rows with the largest ``|value|`` of ``atom`` in a saved sparse result.

    Site results get ``doc_id``, ``token`` and ``context`` (``context`` characters each side of
    the token, the token in ``[[ ]]``); vocabulary results get ``token``.

    Returns
    -------
    DataFrame with columns row, value, token (and doc_id, context for site results)
    """
    _, meta, arrays = read_result(store.path, result)
    _atom_range(atom, int(arrays["dictionary"].shape[0]))
    run = meta["run"]
    q_codes = f'SELECT row, value FROM "{result}" WHERE atom = ? ORDER BY abs(value) DESC LIMIT ?'
    if meta.get("row_kind") == "token_id":
        q = (
            f"SELECT c.row, c.value, v.token FROM ({q_codes}) c "
            "LEFT JOIN vocab v ON v.run = ? AND v.token_id = c.row ORDER BY abs(c.value) DESC"
        )
        return store.sql(q, [atom, n, run]).df()
    q = (
        f'SELECT c.row, c.value, t.doc_id, substr(d.text, t.start + 1, t."end" - t.start) AS '
        "token, substr(d.text, greatest(t.start - ?, 0) + 1, least(t.start, ?)) || '[[' || "
        "substr(d.text, t.start + 1, t.\"end\" - t.start) || ']]' || "
        'substr(d.text, t."end" + 1, ?) AS context '
        f"FROM ({q_codes}) c JOIN tokens t ON t.run = ? AND t.row = c.row "
        # one row per text: records that repeat a text share its token rows
        "JOIN (SELECT DISTINCT doc_id, text FROM docs) d ON d.doc_id = t.doc_id "
        "ORDER BY abs(c.value) DESC"
    )
    return store.sql(q, [context, context, context, atom, n, run]).df()


def atom_nearest_tokens(
    store: Store, run: str, atoms: npt.ArrayLike, matrix: str = "embed", n: int = 5
) -> pd.DataFrame:
    """Each atom's ``n`` nearest tokens of ``matrix`` (``embed``/``unembed``) by cosine.

    Parameters
    ----------
    atoms : ndarray of shape (n_atoms, d)

    Returns
    -------
    DataFrame with columns atom, rank, token_id, token, cosine
    """
    import pandas as pd

    A = np.asarray(atoms, np.float32)
    M = store.matrix(run, matrix)
    if A.ndim != 2 or A.shape[1] != M.shape[1] or not 1 <= n <= len(M):
        raise ConfigError(
            f"atoms of shape {A.shape} and n={n} do not fit {matrix!r} of shape {M.shape}"
        )
    Mn = M / np.maximum(np.linalg.norm(M, axis=1, keepdims=True), 1e-12)
    An = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
    ids = np.empty((len(A), n), np.int64)
    cos = np.empty((len(A), n), np.float32)
    for a in range(0, len(A), 256):
        sim = An[a : a + 256] @ Mn.T
        top = np.argpartition(-sim, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(sim, top, 1), axis=1)
        ids[a : a + 256] = np.take_along_axis(top, order, 1)
        cos[a : a + 256] = np.take_along_axis(sim, ids[a : a + 256], 1)
    names = store.token_names(run)
    return pd.DataFrame(
        {
            "atom": np.repeat(np.arange(len(A)), n),
            "rank": np.tile(np.arange(n), len(A)),
            "token_id": ids.reshape(-1),
            "token": [names.get(int(i)) for i in ids.reshape(-1)],
            "cosine": cos.reshape(-1),
        }
    )


def map_coords(
    atoms: npt.ArrayLike, method: Literal["pca", "umap"] = "pca", seed: int = 0
) -> npt.NDArray[np.float32]:
    """2-D coordinates (n_atoms, 2) of unit-normalised atoms by PCA or UMAP.

    Examples
    --------
    >>> map_coords(np.eye(4)).shape
    (4, 2)
    """
    A = np.asarray(atoms, np.float64)
    A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
    if method == "umap":
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError as e:
            raise ConfigError("UMAP is not installed; pip install umap-learn or use pca") from e
        return np.asarray(umap.UMAP(random_state=seed).fit_transform(A), np.float32)
    if method != "pca":
        raise ConfigError(f"method must be 'pca' or 'umap', got {method!r}")
    C = A - A.mean(0)
    _, _, Vt = np.linalg.svd(C, full_matrices=False)
    out = np.zeros((len(A), 2))
    k = min(2, Vt.shape[0])
    out[:, :k] = C @ Vt[:k].T
    return out.astype(np.float32)


def atom_map(
    atoms: npt.ArrayLike,
    path: str | Path,
    *,
    method: Literal["pca", "umap"] = "pca",
    labels: list[str] | None = None,
    title: str = "",
) -> Path:
    """Save a scatter plot of :func:`map_coords` as PNG (``labels`` annotate the first 40)."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    xy = map_coords(atoms, method)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6)
    for i, label in enumerate((labels or [])[:40]):
        ax.annotate(label, (float(xy[i, 0]), float(xy[i, 1])), fontsize=6)
    ax.set_title(title or f"atoms ({method})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
