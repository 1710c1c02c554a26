"""``actstore similarity ...``: the similarity analyses on the command line.

Every subcommand prints a table (or JSON with ``--json``), saves its result into the store
with ``--save NAME`` (then ``SELECT * FROM NAME`` works) and draws a PNG with ``--plot``.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from actstore.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["add_commands"]


def _open(args: argparse.Namespace) -> tuple[Any, str]:
    from actstore.query.store import Store

    store = Store(args.store)
    run = args.run
    if run is None:
        if len(store.runs) != 1:
            store.close()
            raise ConfigError(
                f"store has runs {', '.join(store.runs) or 'none'}; pick one with --run"
            )
        run = store.runs[0]
    return store, run


def _emit(args: argparse.Namespace, df: pd.DataFrame, meta: dict[str, Any]) -> None:
    import pandas as pd

    if args.json:
        print(json.dumps({**meta, "rows": json.loads(df.to_json(orient="records"))}, indent=2))
    else:
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(df.to_string(index=False))


def _save(
    args: argparse.Namespace,
    df: pd.DataFrame,
    meta: dict[str, Any],
    arrays: dict[str, Any] | None = None,
) -> None:
    if args.save:
        from actstore.query.results import write_result

        write_result(args.store, args.save, df, meta=meta, arrays=arrays)


def _tokens_or_rows(store: Any, run: str, args: argparse.Namespace) -> tuple[Any, list[str]]:
    """Query vectors: tokens' matrix rows or centroids, or the vectors of SQL rows."""
    from actstore.query.centroids import vocab_ids

    if args.rows:
        if not args.site:
            raise ConfigError("--rows needs --site (the site whose vectors are the queries)")
        ids = store.sql(args.rows).first_column()
        if not len(ids):
            raise ConfigError(f"--rows selected no rows: {args.rows!r}; check the query")
        return store.vectors(run, args.site, ids, dtype=np.float32), [f"row {i}" for i in ids]
    if not args.token:
        raise ConfigError("give the queries with --token T (repeatable) or --site S --rows SQL")
    if args.site:
        V = [store.centroid(run, args.site, token=t) for t in args.token]
    else:
        M = store.matrix(run, args.matrix)
        V = [M[vocab_ids(store, run, t)].mean(0) for t in args.token]
    return np.stack(V), list(args.token)


def _cmd_pairwise(args: argparse.Namespace) -> int:
    from actstore.query.similarity import mean_vector_stats, pairwise_cosine_stats

    store, run = _open(args)
    with store:
        if (args.matrix is None) == (args.site is None):
            raise ConfigError("pairwise needs exactly one of --matrix NAME or --site SITE")
        if args.matrix:
            X = store.matrix(run, args.matrix)
        else:
            rows = args.rows or "SELECT row FROM tokens WHERE run = ? AND NOT special"
            X = store.vectors(
                run, args.site, rows, dtype=np.float32, params=None if args.rows else [run]
            )
    opts = {"bins": args.bins, "sample": args.sample, "seed": args.seed}
    stats = {
        "raw": pairwise_cosine_stats(X, **opts),
        "centered": pairwise_cosine_stats(X, center=True, **opts),
    }
    import pandas as pd

    cos_mean, summary = mean_vector_stats(X)
    df = pd.DataFrame([{"variant": k, **s.to_json()} for k, s in stats.items()])
    for key, value in summary.items():
        df[key] = value
    what = {"matrix": args.matrix} if args.matrix else {"site": args.site, "rows": args.rows}
    meta = {"analysis": "similarity.pairwise", "run": run, **what, **opts, **summary}
    _save(args, df, meta, {"cos_with_mean": cos_mean})
    if args.plot:
        from actstore.query._sim_plots import plot_histograms

        plot_histograms(stats, args.plot, f"{run} {args.matrix or args.site}")
    _emit(args, df.drop(columns=["edges", "counts"]) if not args.json else df, meta)
    return 0


def _cmd_anisotropy(args: argparse.Namespace) -> int:
    from actstore.query.similarity import anisotropy_by_layer

    store, run = _open(args)
    with store:
        df = anisotropy_by_layer(
            store, run, args.sites, max_rows=args.max_rows, n_pairs=args.pairs, seed=args.seed
        )
    meta = {"analysis": "similarity.anisotropy", "run": run, "max_rows": args.max_rows}
    _save(args, df, meta)
    if args.plot:
        from actstore.query._sim_plots import plot_anisotropy

        plot_anisotropy(df, args.plot, f"anisotropy of {run}")
    _emit(args, df, meta)
    return 0


def _cmd_centroids(args: argparse.Namespace) -> int:
    from actstore.query.centroids import centroid_similarity

    store, run = _open(args)
    with store:
        df, mats = centroid_similarity(store, run, args.site, list(args.token or []))
    meta = {"analysis": "similarity.centroids", "run": run, "site": args.site, "tokens": args.token}
    _save(args, df, meta, mats)
    if args.plot:
        from actstore.query._sim_plots import plot_matrices

        plot_matrices(mats, list(args.token), args.plot, f"{run} {args.site}")
    _emit(args, df, meta)
    return 0


def _cmd_sinks(args: argparse.Namespace) -> int:
    from actstore.query.centroids import sink_scan

    store, run = _open(args)
    opts = {
        "min_count": args.min_count,
        "threshold": args.threshold,
        "max_embed_cos": args.max_embed_cos,
        "top_k": args.top_k,
    }
    with store:
        df = sink_scan(store, run, args.site, **opts)
    meta = {"analysis": "similarity.sinks", "run": run, "site": args.site, **opts}
    _save(args, df, meta)
    _emit(args, df, meta)
    return 0


def _cmd_nearest(args: argparse.Namespace) -> int:
    from actstore.query.nearest import nearest

    store, run = _open(args)
    with store:
        V, names = _tokens_or_rows(store, run, args)
        start = None
        if args.start:
            from actstore.query.centroids import vocab_ids

            M = store.matrix(run, args.matrix)
            start = M[vocab_ids(store, run, args.start)].mean(0)
        df = nearest(
            store,
            run,
            V,
            queries=names,
            matrix=args.matrix,
            k=args.k,
            metric=args.metric,
            start=start,
        )
    meta = {
        "analysis": "similarity.nearest",
        "run": run,
        "matrix": args.matrix,
        "site": args.site,
        "metric": args.metric,
        "start": args.start,
    }
    _save(args, df, meta)
    _emit(args, df, meta)
    return 0


def _cmd_lens(args: argparse.Namespace) -> int:
    from actstore.query.nearest import logit_lens, top_tokens

    store, run = _open(args)
    with store:
        ids = np.asarray(store.sql(args.rows).first_column(), np.int64)
        if not len(ids):
            raise ConfigError(f"--rows selected no rows: {args.rows!r}; check the query")
        sites = args.sites or [s for s in store.sites(run) if s.startswith("hidden.")]
        parts = []
        for site in sites:
            logits = logit_lens(store, run, site, ids)
            if not 1 <= args.k <= logits.shape[1]:
                raise ConfigError(f"k must be in 1..{logits.shape[1]}, got {args.k}")
            z = logits - logits.max(1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            top = np.argsort(-logits, 1, kind="stable")[:, : args.k]
            df = top_tokens(store, run, top, np.take_along_axis(p, top, 1), [str(i) for i in ids])
            df.insert(0, "site", site)
            parts.append(df.rename(columns={"query": "row", "score": "prob"}))
    import pandas as pd

    out = pd.concat(parts, ignore_index=True)
    out["row"] = out["row"].astype(np.int64)
    meta = {"analysis": "similarity.lens", "run": run, "rows": args.rows, "k": args.k}
    _save(args, out, meta)
    _emit(args, out, meta)
    return 0


def _cmd_cka(args: argparse.Namespace) -> int:
    from actstore.query.cka import compare_runs, compare_sites

    store, run = _open(args)
    measures = tuple(args.measures.split(","))
    with store:
        if args.run_b:
            df = compare_runs(
                store,
                run,
                args.run_b,
                args.sites,
                args.sites_b,
                max_rows=args.max_rows,
                measures=measures,
                seed=args.seed,
            )
        else:
            df = compare_sites(
                store,
                run,
                args.sites,
                rows=args.rows,
                max_rows=args.max_rows,
                measures=measures,
                seed=args.seed,
            )
    meta = {"analysis": "similarity.cka", "run": run, "run_b": args.run_b, "rows": args.rows}
    _save(args, df, meta)
    if args.plot:
        from actstore.query._sim_plots import plot_heatmap

        plot_heatmap(df, measures[0], args.plot, f"{measures[0]}: {run} {args.run_b or ''}")
    _emit(args, df, meta)
    return 0


def _sites(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


def _common(p: argparse.ArgumentParser, plot: bool = True) -> None:
    p.add_argument("store", help="store directory")
    p.add_argument("--run", help="run name (default: the store's only run)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--save", metavar="NAME", help="save the result as results/NAME (a SQL view)")
    if plot:
        p.add_argument("--plot", metavar="FILE.png", help="write a PNG plot")
    p.add_argument("--seed", type=int, default=0, help="seed of any random sample")


def add_commands(subparsers: Any) -> None:
    """Register ``similarity`` and its sub-subcommands on an argparse ``subparsers``."""
    top = subparsers.add_parser("similarity", help="cosine geometry, centroids, CKA, logit lens")
    sub = top.add_subparsers(dest="similarity_command", required=True)

    p = sub.add_parser("pairwise", help="pairwise cosine stats of a matrix or site, raw+centered")
    _common(p)
    p.add_argument("--matrix", help="a per-vocabulary matrix, e.g. embed")
    p.add_argument("--site", help="a site, e.g. hidden.6 (non-special rows, or --rows)")
    p.add_argument("--rows", help="SQL selecting the rows of --site")
    p.add_argument("--bins", type=int, default=128, help="histogram bins over [-1, 1]")
    p.add_argument("--sample", type=int, help="use a random subsample of this many rows")
    p.set_defaults(func=_cmd_pairwise)

    p = sub.add_parser("anisotropy", help="baseline, self- and intra-doc similarity per layer")
    _common(p)
    p.add_argument("--sites", type=_sites, help="comma-separated sites (default hidden.*)")
    p.add_argument("--max-rows", type=int, default=20000, help="rows sampled (whole docs)")
    p.add_argument("--pairs", type=int, default=20000, help="random pairs for the baseline")
    p.set_defaults(func=_cmd_anisotropy)

    p = sub.add_parser("centroids", help="centroid cosines of tokens vs their embeddings'")
    _common(p)
    p.add_argument("--site", required=True, help="site of the centroids")
    p.add_argument("--token", action="append", help="a token (repeat, at least 2)")
    p.set_defaults(func=_cmd_centroids)

    p = sub.add_parser("sinks", help="token pairs with equal centroids but distant embeddings")
    _common(p, plot=False)
    p.add_argument("--site", required=True, help="site of the centroids")
    p.add_argument("--min-count", type=int, default=5, help="only tokens occurring this often")
    p.add_argument("--threshold", type=float, default=0.95, help="min centroid cosine")
    p.add_argument("--max-embed-cos", type=float, default=0.5, help="max embedding cosine")
    p.add_argument("--top-k", type=int, default=100, help="keep the best k pairs")
    p.set_defaults(func=_cmd_sinks)

    p = sub.add_parser("nearest", help="nearest vocabulary tokens of tokens, centroids or rows")
    _common(p, plot=False)
    p.add_argument("--token", action="append", help="query token (repeatable)")
    p.add_argument("--site", help="use the token's centroid (or --rows' vectors) at this site")
    p.add_argument("--rows", help="SQL selecting rows whose --site vectors are the queries")
    p.add_argument("--matrix", default="embed", help="embed or unembed")
    p.add_argument("--start", help="start token v0: rank matrix - v0 by cosine")
    p.add_argument("-k", type=int, default=10, help="tokens per query")
    p.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    p.set_defaults(func=_cmd_nearest)

    p = sub.add_parser("lens", help="logit lens: top tokens of stored hidden states via the head")
    _common(p, plot=False)
    p.add_argument("--rows", required=True, help="SQL selecting the rows")
    p.add_argument("--sites", type=_sites, help="comma-separated sites (default hidden.*)")
    p.add_argument("-k", type=int, default=5, help="tokens per row and site")
    p.set_defaults(func=_cmd_lens)

    p = sub.add_parser("cka", help="CKA / RSA / Procrustes between sites, or between two runs")
    _common(p)
    p.add_argument("--sites", type=_sites, help="comma-separated sites (default hidden.*)")
    p.add_argument("--run-b", help="second run: compare across runs aligned by span")
    p.add_argument("--sites-b", type=_sites, help="sites of --run-b (default hidden.*)")
    p.add_argument("--rows", help="SQL selecting the rows (one run only)")
    p.add_argument("--max-rows", type=int, default=5000, help="rows sampled")
    p.add_argument(
        "--measures", default="cka,cka_unbiased,rsa,procrustes", help="comma-separated measures"
    )
    p.set_defaults(func=_cmd_cka)
