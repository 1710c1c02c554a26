"""Where the stored input-space gradients (``grad.embed``) point, offline.

For each token row with gradient ``g`` and input embedding ``e0 = E[token_id]``:

* ``norm``: ``||g||`` (which tokens the objective pushes hardest);
* ``nearest``: ``argmax_j cos(g, E_j)``, the vocabulary item the gradient direction is
  closest to;
* ``heading``: ``argmax_{j != token_id} cos(g, E_j - e0)``, the vocabulary item that a step
  along ``g`` from the token's own embedding heads toward;
* ``cos_e0``: ``cos(g, e0)``.

A gradient points where the loss *grows*; a descent step moves along ``-g``, so pass
``sign=-1`` for "where does minimising the objective move the token".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError

__all__ = ["HIST_COLUMNS", "gradient_directions", "gradient_histograms"]

F64 = npt.NDArray[np.float64]
_EPS = 1e-30
_BLOCK = 1024
HIST_COLUMNS = ("norm", "nearest_cos", "heading_cos", "cos_e0")


def gradient_directions(
    G: npt.ArrayLike, token_ids: npt.ArrayLike, E: npt.ArrayLike, *, sign: float = 1.0
) -> dict[str, npt.NDArray[Any]]:
    """Norms and vocabulary directions of gradients ``G`` taken at tokens ``token_ids``.

    Parameters
    ----------
    G : array_like of shape (n, d)
        Gradients with respect to the input embeddings.
    token_ids : array_like of shape (n,)
        The token each gradient row belongs to (its embedding is ``E[token_id]``).
    E : array_like of shape (vocab, d)
        The input embedding matrix.
    sign : float
        Multiplies ``G`` first (``-1``: the descent direction).

    Returns
    -------
    dict of str to ndarray of shape (n,)
        ``norm``, ``nearest_id``, ``nearest_cos``, ``heading_id``, ``heading_cos`` and
        ``cos_e0`` (see the module docstring); cosines of a zero gradient are 0.

    Examples
    --------
    >>> E = np.eye(3)
    >>> out = gradient_directions([[0.0, 2.0, 0.0]], [0], E)
    >>> int(out["nearest_id"][0]), int(out["heading_id"][0]), float(out["norm"][0])
    (1, 1, 2.0)
    """
    G = np.atleast_2d(np.asarray(G, np.float64)) * float(sign)
    ids = np.asarray(token_ids, np.int64).reshape(-1)
    E = np.asarray(E, np.float64)
    if G.shape[0] != len(ids) or G.shape[1] != E.shape[1]:
        raise ConfigError(
            f"gradients of shape {G.shape} do not fit {len(ids)} token ids and embeddings "
            f"of width {E.shape[1]}"
        )
    n = len(ids)
    e_norm = np.linalg.norm(E, axis=1)
    e_sq = e_norm**2
    out: dict[str, npt.NDArray[Any]] = {
        "norm": np.linalg.norm(G, axis=1),
        "nearest_id": np.empty(n, np.int64),
        "nearest_cos": np.empty(n),
        "heading_id": np.empty(n, np.int64),
        "heading_cos": np.empty(n),
        "cos_e0": np.empty(n),
    }
    for a in range(0, n, _BLOCK):
        g, t = G[a : a + _BLOCK], ids[a : a + _BLOCK]
        gn = np.maximum(out["norm"][a : a + _BLOCK], _EPS)
        gE = g @ E.T  # (b, vocab)
        cos = gE / (gn[:, None] * np.maximum(e_norm, _EPS)[None])
        j = cos.argmax(1)
        out["nearest_id"][a : a + len(t)] = j
        out["nearest_cos"][a : a + len(t)] = cos[np.arange(len(t)), j]
        e0 = E[t]
        g_e0 = (g * e0).sum(1)
        # |E_j - e0|^2 = |E_j|^2 - 2 E_j.e0 + |e0|^2
        dist = np.sqrt(np.maximum(e_sq[None] - 2 * (e0 @ E.T) + e_sq[t][:, None], 0.0))
        head = (gE - g_e0[:, None]) / (gn[:, None] * np.maximum(dist, _EPS))
        head[np.arange(len(t)), t] = -np.inf  # never the token itself
        head[dist <= 0] = -np.inf  # nor a duplicate of its embedding
        h = head.argmax(1)
        out["heading_id"][a : a + len(t)] = h
        out["heading_cos"][a : a + len(t)] = head[np.arange(len(t)), h]
        out["cos_e0"][a : a + len(t)] = g_e0 / (gn * np.maximum(e_norm[t], _EPS))
    zero = out["norm"] == 0
    for k in ("nearest_cos", "heading_cos", "cos_e0"):
        out[k][zero] = 0.0
    return out


def gradient_histograms(
    cols: dict[str, npt.NDArray[Any]], bins: int = 50
) -> dict[str, npt.NDArray[Any]]:
    """Histograms of :func:`gradient_directions`' ``norm`` (over ``[0, max]``) and cosines
    (over ``[-1, 1]``): ``hist_<col>`` (counts) and ``edges_<col>`` (``bins + 1`` edges)."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for k in HIST_COLUMNS:
        lo, hi = (0.0, float(cols[k].max(initial=0.0)) or 1.0) if k == "norm" else (-1.0, 1.0)
        counts, edges = np.histogram(np.clip(cols[k], lo, hi), bins=bins, range=(lo, hi))
        arrays[f"hist_{k}"] = counts.astype(np.int64)
        arrays[f"edges_{k}"] = edges
    return arrays
