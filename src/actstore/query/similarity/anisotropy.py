"""Anisotropy of a layer's token vectors (Ethayarajh, 2019): a random-pair baseline from
different contexts, self-similarity of a token type's occurrences, intra-document
similarity, per layer of a run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.query.similarity.pairwise import _check_matrix, unit_rows

if TYPE_CHECKING:
    import pandas as pd

    from actstore.query.store import Store

__all__ = ["anisotropy", "anisotropy_by_layer"]


def anisotropy(
    X: npt.ArrayLike,
    token_ids: npt.ArrayLike,
    doc_ids: npt.ArrayLike,
    *,
    n_pairs: int = 20000,
    max_per_type: int = 32,
    seed: int = 0,
    baseline: Literal["other_docs", "any"] = "other_docs",
) -> dict[str, float]:
    """Anisotropy measures of one layer's token vectors (Ethayarajh, 2019).

    Parameters
    ----------
    X : array_like of shape (n, d)
        Vectors of the sampled rows.
    token_ids, doc_ids : array_like of shape (n,)
        Token type and document of each row.
    n_pairs : int
        Random row pairs for the baseline.
    max_per_type : int
        Occurrences per token type used for self-similarity (the first ones).
    seed : int
    baseline : {"other_docs", "any"}
        ``other_docs`` (the cited definition): the two rows of a pair come from different
        documents ("words from different contexts"); ``any``: any two distinct rows, pairs
        from the same document included (higher wherever a document's rows share a
        direction).

    Returns
    -------
    dict
        ``baseline`` (mean cosine of random row pairs, see ``baseline``),
        ``self_similarity`` (mean over token types with >= 2 occurrences of the mean
        pairwise cosine of its occurrences), ``intra_doc`` (mean over docs of the mean
        cosine of a doc's rows with the doc's mean), and ``self_similarity_adj`` /
        ``intra_doc_adj`` (minus the baseline).

    Examples
    --------
    >>> X = [[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]
    >>> a = anisotropy(X, [7, 7, 8, 8], [0, 0, 1, 1], n_pairs=100)
    >>> round(a["self_similarity"], 3), round(a["intra_doc"], 3)
    (0.995, 0.999)
    """
    U = unit_rows(_check_matrix(X))
    tok = np.asarray(token_ids).ravel()
    doc = np.asarray(doc_ids).ravel()
    if len(tok) != len(U) or len(doc) != len(U):
        raise ConfigError(
            f"token_ids and doc_ids must have one entry per row ({len(U)}), got "
            f"{len(tok)} and {len(doc)}; pass aligned arrays"
        )
    rng = np.random.default_rng(seed)
    a, b = _baseline_pairs(doc, n_pairs, baseline, rng)
    base = float(np.einsum("ij,ij->i", U[a], U[b]).astype(np.float64).mean())
    sims = []
    order = np.argsort(tok, kind="stable")
    _, starts, counts = np.unique(tok[order], return_index=True, return_counts=True)
    for s, c in zip(starts, counts, strict=True):
        if c < 2:
            continue
        V = U[order[s : s + min(c, max_per_type)]]
        m = len(V)
        G = V @ V.T
        sims.append((float(G.sum(dtype=np.float64)) - float(np.trace(G))) / (m * (m - 1)))
    intra = []
    order = np.argsort(doc, kind="stable")
    _, starts, counts = np.unique(doc[order], return_index=True, return_counts=True)
    for s, c in zip(starts, counts, strict=True):
        V = U[order[s : s + c]]
        mu = V.astype(np.float64).mean(0)
        nm = np.linalg.norm(mu)
        if nm > 0:
            intra.append(float((V @ (mu / nm)).mean()))
    self_sim = float(np.mean(sims)) if sims else float("nan")
    intra_doc = float(np.mean(intra)) if intra else float("nan")
    return {
        "baseline": base,
        "self_similarity": self_sim,
        "intra_doc": intra_doc,
        "self_similarity_adj": self_sim - base,
        "intra_doc_adj": intra_doc - base,
    }


def _baseline_pairs(
    doc: npt.NDArray[Any], n_pairs: int, kind: str, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``n_pairs`` random row pairs: distinct rows (``any``) or rows of different docs."""
    n = len(doc)
    if kind not in ("other_docs", "any"):
        raise ConfigError(f"baseline must be 'other_docs' or 'any', got {kind!r}")
    a = rng.integers(0, n, n_pairs)
    b = (a + rng.integers(1, n, n_pairs)) % n  # b != a
    if kind == "any":
        return a, b
    if len(np.unique(doc)) < 2:
        raise ConfigError(
            "the other-document baseline needs rows of at least 2 documents; sample more "
            "documents or use baseline='any'"
        )
    # redraw b where it fell in a's document: uniform over the other documents' rows
    for _ in range(1000):
        same = np.flatnonzero(doc[a] == doc[b])
        if not len(same):
            break
        b[same] = rng.integers(0, n, len(same))
    else:  # pragma: no cover - needs one document holding nearly every row
        keep = doc[a] != doc[b]
        a, b = a[keep], b[keep]
    return a.astype(np.int64), b.astype(np.int64)


def anisotropy_by_layer(
    store: Store,
    run: str,
    sites: list[str] | None = None,
    *,
    max_rows: int = 20000,
    n_pairs: int = 20000,
    seed: int = 0,
    baseline: Literal["other_docs", "any"] = "other_docs",
) -> pd.DataFrame:
    """:func:`anisotropy` of every site of ``run`` on one sample of whole documents.

    Documents are drawn at random until ``max_rows`` non-special rows are reached; the
    same rows are used for every site.

    Returns
    -------
    pandas.DataFrame
        One row per site: ``site`` plus the keys of :func:`anisotropy`.
    """
    import pandas as pd

    sites = sites or [s for s in store.sites(run) if s.startswith("hidden.")]
    for site in sites:
        store.vectors(run, site, [])  # validates run and site, with the store's message
    cols = store.token_columns(run, "doc_id", "token_id", "special")
    keep_rows = np.flatnonzero(~cols["special"])
    tokens = pd.DataFrame(
        {
            "row": keep_rows,
            "doc_id": cols["doc_id"][keep_rows],
            "token_id": cols["token_id"][keep_rows],
        }
    )
    if len(tokens) < 2:
        raise ConfigError(f"run {run!r} has {len(tokens)} non-special rows; need at least 2")
    docs = tokens.doc_id.unique()
    np.random.default_rng(seed).shuffle(docs)
    sizes = tokens.groupby("doc_id").size().loc[docs].to_numpy()
    keep = docs[: int(np.searchsorted(np.cumsum(sizes), max_rows)) + 1]
    sel = tokens[tokens.doc_id.isin(keep)]
    out = []
    for site in sites:
        X = store.vectors(run, site, sel.row.to_numpy(), dtype=np.float32)
        m = anisotropy(
            X,
            sel.token_id.to_numpy(),
            sel.doc_id.to_numpy(),
            n_pairs=n_pairs,
            seed=seed,
            baseline=baseline,
        )
        out.append({"site": site, "n_rows": len(sel), **m})
    return pd.DataFrame(out)
