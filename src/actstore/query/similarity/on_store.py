"""The similarity analyses over a store, each returning an :class:`AnalysisResult` that it
saves itself (``save=NAME``) and optionally plots (``plot=FILE.png``).

These are what ``actstore similarity ...`` runs: the command line parses its options,
calls one of these and prints the result, so Python users get exactly the saved result
the CLI writes. Over 400 lines because it holds one thin wrapper per similarity analysis
(the family's only store-facing module).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.query.results import AnalysisResult, check_can_save

if TYPE_CHECKING:
    import pandas as pd

    from actstore.query.store import Store

__all__ = [
    "anisotropy_result",
    "centroids_result",
    "cka_result",
    "grad_result",
    "pairwise_result",
    "sinks_result",
]

F32 = npt.NDArray[np.float32]
#: The rows an analysis of a site uses when no ``rows`` query is given.
NON_SPECIAL = "SELECT row FROM tokens WHERE run = ? AND NOT special"


def _rows_or_fail(store: Store, run: str, rows: str) -> npt.NDArray[np.int64]:
    ids = store.rows(run, rows)
    if not len(ids):
        raise ConfigError(f"--rows selected no rows: {rows!r}; check the query")
    return ids


def _check_save(store: Store, save: str | None, overwrite: bool) -> None:
    if save is not None:
        check_can_save(store.path, save, overwrite=overwrite)


def _finish(
    result: AnalysisResult, store: Store, save: str | None, overwrite: bool
) -> AnalysisResult:
    result.save(store.path, save, overwrite=overwrite)
    return result


def expand_sites(store: Store, run: str, sites: str | Sequence[str] | None) -> list[str]:
    """Site names from ``"all"`` (every ``hidden.*``), a comma-separated string or a list.

    Raises
    ------
    SiteNotFoundError
        A site the run does not have.
    """
    if sites is None:
        return []
    names = [s.strip() for s in sites.split(",")] if isinstance(sites, str) else list(sites)
    names = [n for n in names if n]
    if names == ["all"]:
        return [s for s in store.sites(run) if s.startswith("hidden.")]
    for name in names:
        store.vectors(run, name, [])  # validates run and site, with the store's message
    return names


def pairwise_result(
    store: Store,
    run: str,
    *,
    matrix: str | None = None,
    site: str | Sequence[str] | None = None,
    rows: str | None = None,
    bins: int = 128,
    sample: int | None = None,
    seed: int = 0,
    save: str | None = None,
    overwrite: bool = False,
    plot: str | Path | None = None,
) -> AnalysisResult:
    """Pairwise cosine statistics of a matrix or of a site's rows, raw and mean-centered.

    Parameters
    ----------
    matrix : str, optional
        A per-vocabulary matrix (``embed``).
    site : str or list of str, optional
        A site (``hidden.6``), several (``"hidden.1,hidden.6"`` or a list) or ``"all"``
        (a layer sweep: one table across sites). Give exactly one of ``matrix`` and
        ``site``.
    rows : str, optional
        SQL selecting the site's rows (default: the run's non-special rows).
    bins, sample, seed
        See :func:`~actstore.query.similarity.pairwise.pairwise_cosine_stats`.
    save : str, optional
        Save as result ``save`` (arrays: ``cos_with_mean``, per site when several).
    plot : path, optional
        The raw / centered histograms (one matrix or site), or the mean cosines against
        the site (several sites), as a PNG.

    Returns
    -------
    AnalysisResult
        One row per ``variant`` (raw, centered) and site, with the statistics, the
        histogram and the mean-vector summary (``cos_with_mean_mean`` ...).
    """
    _check_save(store, save, overwrite)
    import pandas as pd

    from actstore.query.similarity.pairwise import mean_vector_stats, pairwise_cosine_stats

    if (matrix is None) == (site is None):
        raise ConfigError("pairwise needs exactly one of --matrix NAME or --site SITE")
    opts = {"bins": bins, "sample": sample, "seed": seed}
    sources = [matrix] if matrix is not None else expand_sites(store, run, site)
    frames, arrays, all_stats = [], {}, {}
    for src in sources:
        if matrix is not None:
            X = store.matrix(run, matrix)
        else:
            X = store.vectors(
                run, str(src), rows or NON_SPECIAL, dtype=np.float32, params=None if rows else [run]
            )
        stats = {
            "raw": pairwise_cosine_stats(X, **opts),  # type: ignore[arg-type]
            "centered": pairwise_cosine_stats(X, center=True, **opts),  # type: ignore[arg-type]
        }
        cos_mean, summary = mean_vector_stats(X)
        df = pd.DataFrame([{"variant": k, **s.to_json()} for k, s in stats.items()])
        for key, value in summary.items():
            df[key] = value
        if matrix is None:
            df.insert(0, "site", src)
        frames.append(df)
        key = "cos_with_mean" if len(sources) == 1 else f"cos_with_mean.{src}"
        arrays[key] = cos_mean
        all_stats[str(src)] = stats
    out = pd.concat(frames, ignore_index=True)
    what = {"matrix": matrix} if matrix else {"sites": sources, "rows": rows}
    meta: dict[str, Any] = {"analysis": "similarity.pairwise", "run": run, **what, **opts}
    if len(sources) == 1:
        meta.update({k: out[k].iloc[0] for k in summary})
        if matrix is None:
            meta["site"] = sources[0]
    if plot:
        from actstore.query.similarity.plots import plot_histograms, plot_sweep

        n = int(out["n_rows"].iloc[0])
        if len(sources) == 1:
            name = str(sources[0])
            plot_histograms(all_stats[name], plot, f"{run} {name}: {n:,} rows")
        else:
            wide = out.pivot(index="site", columns="variant", values="mean").loc[sources]
            wide = wide.reset_index()
            cols = {"raw": "mean cosine, raw", "centered": "mean cosine, centered"}
            plot_sweep(wide, cols, plot, f"pairwise cosine per layer, {run} ({n:,} rows)")
    return _finish(AnalysisResult(out, meta, arrays), store, save, overwrite)


def anisotropy_result(
    store: Store,
    run: str,
    sites: list[str] | None = None,
    *,
    max_rows: int = 20000,
    n_pairs: int = 20000,
    seed: int = 0,
    baseline: Literal["other_docs", "any"] = "other_docs",
    save: str | None = None,
    overwrite: bool = False,
    plot: str | Path | None = None,
) -> AnalysisResult:
    """:func:`~actstore.query.similarity.anisotropy.anisotropy_by_layer`, saved and plotted."""
    _check_save(store, save, overwrite)
    from actstore.query.similarity.anisotropy import anisotropy_by_layer

    df = anisotropy_by_layer(
        store, run, sites, max_rows=max_rows, n_pairs=n_pairs, seed=seed, baseline=baseline
    )
    meta = {
        "analysis": "similarity.anisotropy",
        "run": run,
        "max_rows": max_rows,
        "baseline": baseline,
    }
    if plot:
        from actstore.query.similarity.plots import plot_anisotropy

        plot_anisotropy(df, plot, f"anisotropy of {run}")
    return _finish(AnalysisResult(df, meta), store, save, overwrite)


def centroids_result(
    store: Store,
    run: str,
    site: str | Sequence[str],
    tokens: Sequence[str],
    *,
    save: str | None = None,
    overwrite: bool = False,
    plot: str | Path | None = None,
) -> AnalysisResult:
    """:func:`~actstore.query.similarity.centroids.centroid_similarity` at one site,
    several (``"hidden.1,hidden.6"``) or ``"all"`` (one table across sites), with the
    number of occurrences each centroid rests on (``count_a``, ``count_b``); saved (arrays:
    the ``centroid`` cosine matrix, per site when several, and the ``embed`` / ``unembed``
    ones) and plotted (the matrices for one site, the cosines against the site for
    several)."""
    _check_save(store, save, overwrite)
    import pandas as pd

    from actstore.query.similarity.centroids import centroid_similarity

    sites = expand_sites(store, run, site)
    toks = list(tokens)
    counts = _token_counts(store, run, toks)
    frames, arrays = [], {}
    for s in sites:
        df, mats = centroid_similarity(store, run, s, toks)
        df.insert(0, "site", s)
        df["count_a"] = [counts[t] for t in df["token_a"]]
        df["count_b"] = [counts[t] for t in df["token_b"]]
        frames.append(df)
        arrays["centroid" if len(sites) == 1 else f"centroid.{s}"] = mats["centroid"]
        arrays.update({k: v for k, v in mats.items() if k != "centroid"})
    out = pd.concat(frames, ignore_index=True)
    meta = {
        "analysis": "similarity.centroids",
        "run": run,
        "site": sites[0] if len(sites) == 1 else None,
        "sites": sites,
        "tokens": toks,
        "counts": counts,
    }
    if plot:
        from actstore.query.similarity.plots import plot_matrices, plot_sweep

        if len(sites) == 1:
            mats = {k: arrays[k] for k in ("centroid", "embed", "unembed")}
            shown = [f"{t} (n={counts[t]:,})" for t in toks]
            plot_matrices(mats, shown, plot, f"{run} {sites[0]}: centroid vs embedding cosines")
        else:
            out["pair"] = out["token_a"] + "/" + out["token_b"]
            plot_sweep(
                out, {"centroid_cos": "centroid cos"}, plot, f"centroid cosine per layer, {run}"
            )
            out = out.drop(columns="pair")
    return _finish(AnalysisResult(out, meta, arrays), store, save, overwrite)


def _token_counts(store: Store, run: str, tokens: list[str]) -> dict[str, int]:
    """Occurrences of each token string in the run (all vocabulary ids it matches)."""
    vocab = store.sql("SELECT token_id, count FROM vocab WHERE run = ?", [run]).fetchnumpy()
    count = dict(zip(vocab["token_id"].tolist(), vocab["count"].tolist(), strict=True))
    return {t: int(sum(count.get(int(i), 0) for i in store.token_ids(run, t))) for t in tokens}


def sinks_result(
    store: Store,
    run: str,
    site: str,
    *,
    min_count: int = 5,
    threshold: float = 0.95,
    max_embed_cos: float = 0.5,
    top_k: int = 100,
    save: str | None = None,
    overwrite: bool = False,
) -> AnalysisResult:
    """:func:`~actstore.query.similarity.centroids.sink_scan`, saved."""
    _check_save(store, save, overwrite)
    from actstore.query.similarity.centroids import sink_scan

    opts = {
        "min_count": min_count,
        "threshold": threshold,
        "max_embed_cos": max_embed_cos,
        "top_k": top_k,
    }
    df = sink_scan(store, run, site, **opts)  # type: ignore[arg-type]
    meta: dict[str, Any] = {"analysis": "similarity.sinks", "run": run, "site": site, **opts}
    if df.empty:
        meta["hint"] = (
            f"no token pair has centroid cosine >= {threshold} and embedding cosine <= "
            f"{max_embed_cos} among tokens seen >= {min_count} times; lower --threshold, "
            "raise --max-embed-cos or lower --min-count"
        )
    return _finish(AnalysisResult(df, meta), store, save, overwrite)


def cka_result(
    store: Store,
    run: str,
    *,
    sites: list[str] | None = None,
    run_b: str | None = None,
    sites_b: list[str] | None = None,
    rows: str | None = None,
    max_rows: int = 5000,
    measures: Sequence[str] = ("cka", "cka_unbiased", "rsa", "procrustes"),
    rsa_rows: int | None = None,
    seed: int = 0,
    save: str | None = None,
    overwrite: bool = False,
    plot: str | Path | None = None,
) -> AnalysisResult:
    """CKA / RSA / Procrustes between sites of ``run``, or between ``run`` and ``run_b``
    (rows aligned by character span), saved and plotted as a heatmap of the first measure.

    ``max_rows`` samples the compared rows when the selection has more; ``rsa_rows``
    samples RSA's rows from those (None: RSA on all of them, refused over
    :data:`~actstore.query.similarity.rsa.MAX_ROWS`). The table and the meta say how
    many rows were used and whether they were sampled (``n_rows``, ``rows_sampled``,
    ``rsa_rows``, ``rsa_sampled``).
    """
    _check_save(store, save, overwrite)
    from actstore.query.similarity.cka import compare_runs, compare_sites

    ms = tuple(measures)
    opts: dict[str, Any] = {"max_rows": max_rows, "measures": ms, "n_sample": rsa_rows}
    if run_b:
        df = compare_runs(store, run, run_b, sites, sites_b, seed=seed, **opts)
    else:
        df = compare_sites(store, run, sites, rows=rows, seed=seed, **opts)
    meta: dict[str, Any] = {
        "analysis": "similarity.cka",
        "run": run,
        "run_b": run_b,
        "rows": rows,
        "measures": list(ms),
        "max_rows": max_rows,
        "seed": seed,
        "n_rows": int(df["n_rows"].iloc[0]),
        "rows_sampled": bool(df["rows_sampled"].iloc[0]),
    }
    if "rsa" in ms:
        meta["rsa_rows"] = int(df["rsa_rows"].iloc[0])
        meta["rsa_sampled"] = bool(df["rsa_sampled"].iloc[0])
    if plot:
        from actstore.query.similarity.plots import plot_heatmap

        plot_heatmap(df, ms[0], plot, f"{ms[0]}: {run} {run_b or ''}")
    return _finish(AnalysisResult(df, meta), store, save, overwrite)


def grad_result(
    store: Store,
    run: str,
    *,
    site: str = "grad.embed",
    rows: str | None = None,
    top_k: int | None = 5,
    sign: float = 1.0,
    bins: int = 50,
    save: str | None = None,
    overwrite: bool = False,
) -> AnalysisResult:
    """Norms and vocabulary directions of a run's stored input-space gradients
    (:func:`~actstore.query.similarity.gradients.gradient_directions`), with histograms.

    Parameters
    ----------
    store : Store
    run : str
    site : str
        A ``grad.embed`` site (gradients with respect to the input embeddings).
    rows : str, optional
        SQL selecting the rows (default: every non-special row of the run; special tokens'
        gradients are stored but never moved).
    top_k : int or None
        Keep the ``top_k`` rows of largest norm per doc in the table (None: every row);
        the histograms and summary cover every selected row.
    sign : float
        ``-1`` analyses the descent direction.
    bins : int
        Histogram bins (saved arrays ``hist_<col>`` and ``edges_<col>``).
    save, overwrite
        Save as result ``save`` (a SQL view).

    Returns
    -------
    AnalysisResult
        Table columns ``row``, ``doc_id``, ``pos``, ``token_id``, ``token``, ``rank``
        (1 = largest norm in its doc), ``norm``, ``nearest_id``, ``nearest_token``,
        ``nearest_cos``, ``heading_id``, ``heading_token``, ``heading_cos``, ``cos_e0``.

    Raises
    ------
    ConfigError
        ``site`` is not a gradient with respect to the input embeddings, or the selection
        is empty.
    """
    import pandas as pd

    from actstore.query.similarity.gradients import gradient_directions, gradient_histograms

    _check_save(store, save, overwrite)
    if site not in store.sites(run) or not site.startswith("grad.embed"):
        have = [s for s in store.sites(run) if s.startswith("grad.")]
        raise ConfigError(
            f"site {site!r} is not a stored gradient w.r.t. the input embeddings of run "
            f"{run!r} (gradient sites: {', '.join(have) or 'none'}); extract with "
            "--sites grad.embed --objective ..."
        )
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1 or None, got {top_k}")
    query = rows or "SELECT row FROM tokens WHERE NOT special"
    ids = np.sort(store.rows(run, query))
    if not len(ids):
        raise ConfigError(f"rows selected no rows: {query!r}; check the query")
    tok = store.token_columns(run, "doc_id", "pos", "token_id")
    E = store.matrix(run, "embed")
    parts: list[dict[str, npt.NDArray[Any]]] = []
    for a in range(0, len(ids), 16384):  # bounded memory: one block of rows at a time
        block = ids[a : a + 16384]
        G = store.vectors(run, site, block, dtype=np.float32)
        parts.append(gradient_directions(G, tok["token_id"][block], E, sign=sign))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    table = pd.DataFrame(
        {
            "row": ids,
            "doc_id": tok["doc_id"][ids],
            "pos": tok["pos"][ids],
            "token_id": tok["token_id"][ids],
            **cols,
        }
    )
    table["rank"] = (
        table.groupby("doc_id")["norm"].rank(method="first", ascending=False).astype(np.int64)
    )
    summary = {
        "n_rows": len(table),
        "mean_norm": float(cols["norm"].mean()),
        "mean_nearest_cos": float(cols["nearest_cos"].mean()),
        "mean_heading_cos": float(cols["heading_cos"].mean()),
        "mean_cos_e0": float(cols["cos_e0"].mean()),
        "frac_nearest_self": float((cols["nearest_id"] == table["token_id"]).mean()),
    }
    arrays = gradient_histograms(cols, bins)
    if top_k is not None:
        table = table[table["rank"] <= top_k]
    table = _with_tokens(store, run, table.sort_values(["doc_id", "rank"]).reset_index(drop=True))
    meta = {
        "analysis": "similarity.grad",
        "run": run,
        "site": site,
        "rows": query,
        "top_k": top_k,
        "sign": sign,
        "bins": bins,
        "objective": (store.run_info(run).get("objective") or {}).get("name"),
        **summary,
    }
    return _finish(AnalysisResult(table, meta, arrays), store, save, overwrite)


def _with_tokens(store: Store, run: str, table: pd.DataFrame) -> pd.DataFrame:
    names = store.token_names(run)
    order = [
        "row",
        "doc_id",
        "pos",
        "token_id",
        "token",
        "rank",
        "norm",
        "nearest_id",
        "nearest_token",
        "nearest_cos",
        "heading_id",
        "heading_token",
        "heading_cos",
        "cos_e0",
    ]
    table["token"] = table["token_id"].map(names)
    table["nearest_token"] = table["nearest_id"].map(names)
    table["heading_token"] = table["heading_id"].map(names)
    return table[order]
