"""``actstore similarity ...``: parse, call one of :mod:`actstore.query.similarity.on_store`,
print.

Every subcommand prints a table (or JSON with ``--json``); the library function saves the
result with ``--save NAME`` (then ``SELECT * FROM NAME`` works) and draws ``--plot``.
"""

from __future__ import annotations

import argparse
from typing import Any

from actstore.cli._common import add_store_args, emit, open_run, split_list

__all__ = ["add_commands"]


def _saving(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"save": args.save, "overwrite": args.overwrite}
    if hasattr(args, "plot"):
        out["plot"] = args.plot
    return out


def _cmd_pairwise(args: argparse.Namespace) -> None:
    from actstore.query.similarity.on_store import pairwise_result

    with open_run(args) as (store, run):
        res = pairwise_result(
            store,
            run,
            matrix=args.matrix,
            site=args.site,
            rows=args.rows,
            bins=args.bins,
            sample=args.sample,
            seed=args.seed,
            **_saving(args),
        )
    emit(args, res)


def _cmd_anisotropy(args: argparse.Namespace) -> None:
    from actstore.query.similarity.on_store import anisotropy_result

    with open_run(args) as (store, run):
        res = anisotropy_result(
            store,
            run,
            args.sites,
            max_rows=args.max_rows,
            n_pairs=args.pairs,
            seed=args.seed,
            baseline=args.baseline,
            **_saving(args),
        )
    emit(args, res)


def _cmd_centroids(args: argparse.Namespace) -> None:
    from actstore.query.similarity.on_store import centroids_result

    with open_run(args) as (store, run):
        res = centroids_result(store, run, args.site, list(args.token or []), **_saving(args))
    emit(args, res)


def _cmd_sinks(args: argparse.Namespace) -> None:
    from actstore.query.similarity.on_store import sinks_result

    with open_run(args) as (store, run):
        res = sinks_result(
            store,
            run,
            args.site,
            min_count=args.min_count,
            threshold=args.threshold,
            max_embed_cos=args.max_embed_cos,
            top_k=args.top_k,
            **_saving(args),
        )
    emit(args, res)


def _cmd_nearest(args: argparse.Namespace) -> None:
    from actstore.query.similarity.nearest import nearest_result

    with open_run(args) as (store, run):
        res = nearest_result(
            store,
            run,
            tokens=list(args.token or []),
            site=args.site,
            rows=args.rows,
            matrix=args.matrix,
            start=args.start,
            k=args.k,
            metric=args.metric,
            **_saving(args),
        )
    emit(args, res)


def _cmd_lens(args: argparse.Namespace) -> None:
    from actstore.query.similarity.nearest import lens_result

    with open_run(args) as (store, run):
        res = lens_result(store, run, args.rows, sites=args.sites, k=args.k, **_saving(args))
    emit(args, res)


def _cmd_cka(args: argparse.Namespace) -> None:
    from actstore.query.similarity.on_store import cka_result

    with open_run(args) as (store, run):
        res = cka_result(
            store,
            run,
            sites=args.sites,
            run_b=args.run_b,
            sites_b=args.sites_b,
            rows=args.rows,
            max_rows=args.max_rows,
            measures=split_list(args.measures),
            rsa_rows=args.rsa_rows,
            seed=args.seed,
            **_saving(args),
        )
    emit(args, res)


def _cmd_grad(args: argparse.Namespace) -> None:
    from actstore.query.similarity.on_store import grad_result

    with open_run(args) as (store, run):
        res = grad_result(
            store,
            run,
            site=args.site,
            rows=args.rows,
            top_k=None if args.top_k == 0 else args.top_k,
            sign=-1.0 if args.descent else 1.0,
            bins=args.bins,
            **_saving(args),
        )
    emit(args, res)


def _cmd_trajectory(args: argparse.Namespace) -> None:
    from actstore.query.similarity.trajectory import trajectory_result

    with open_run(args) as (store, run):
        res = trajectory_result(
            store,
            run,
            rows=args.rows,
            metric=args.metric,
            pairs=args.pairs,
            seed=args.seed,
            bins=args.bins,
            **_saving(args),
        )
    emit(args, res)


def add_commands(subparsers: Any) -> None:
    """Register ``similarity`` and its sub-subcommands on an argparse ``subparsers``."""
    top = subparsers.add_parser("similarity", help="cosine geometry, centroids, CKA, logit lens")
    sub = top.add_subparsers(dest="similarity_command", required=True)

    p = sub.add_parser("pairwise", help="pairwise cosine stats of a matrix or site, raw+centered")
    add_store_args(p, save=True, plot=True, seed=True)
    p.add_argument("--matrix", help="a per-vocabulary matrix, e.g. embed")
    p.add_argument(
        "--site",
        help="a site (hidden.6), several (hidden.1,hidden.6) or all: one table across "
        "layers (non-special rows, or --rows)",
    )
    p.add_argument("--rows", help="SQL selecting the rows of --site")
    p.add_argument(
        "--bins", type=int, default=128, help="histogram bins over [-1, 1] (default: 128)"
    )
    p.add_argument("--sample", type=int, help="use a random subsample of this many rows")
    p.set_defaults(func=_cmd_pairwise)

    p = sub.add_parser("anisotropy", help="baseline, self- and intra-doc similarity per layer")
    add_store_args(p, save=True, plot=True, seed=True)
    p.add_argument("--sites", type=split_list, help="comma-separated sites (default hidden.*)")
    p.add_argument(
        "--max-rows", type=int, default=20000, help="rows sampled, whole docs (default: 20000)"
    )
    p.add_argument(
        "--pairs", type=int, default=20000, help="random pairs for the baseline (default: 20000)"
    )
    p.add_argument(
        "--baseline",
        choices=["other_docs", "any"],
        default="other_docs",
        help="baseline pairs: rows of different documents, as Ethayarajh (2019), or any two "
        "rows (default: other_docs)",
    )
    p.set_defaults(func=_cmd_anisotropy)

    p = sub.add_parser("centroids", help="centroid cosines of tokens vs their embeddings'")
    add_store_args(p, save=True, plot=True)
    p.add_argument(
        "--site",
        required=True,
        help="site of the centroids: one (hidden.6), several (hidden.1,hidden.6) or all",
    )
    p.add_argument("--token", action="append", help="a token (repeat, at least 2)")
    p.set_defaults(func=_cmd_centroids)

    p = sub.add_parser("sinks", help="token pairs with equal centroids but distant embeddings")
    add_store_args(p, save=True)
    p.add_argument("--site", required=True, help="site of the centroids")
    p.add_argument(
        "--min-count", type=int, default=5, help="only tokens occurring this often (default: 5)"
    )
    p.add_argument(
        "--threshold", type=float, default=0.95, help="min centroid cosine (default: 0.95)"
    )
    p.add_argument(
        "--max-embed-cos", type=float, default=0.5, help="max embedding cosine (default: 0.5)"
    )
    p.add_argument("--top-k", type=int, default=100, help="keep the best k pairs (default: 100)")
    p.set_defaults(func=_cmd_sinks)

    p = sub.add_parser(
        "grad", help="input-space gradients: norms, nearest vocabulary items, headings"
    )
    add_store_args(p, save=True)
    p.add_argument("--site", default="grad.embed", help="a grad.embed site (default: grad.embed)")
    p.add_argument("--rows", help="SQL selecting the rows (default: every non-special row)")
    p.add_argument(
        "--top-k",
        type=int,
        default=5,
        help="rows of largest gradient norm kept per doc (0: all; default: 5)",
    )
    p.add_argument(
        "--descent", action="store_true", help="analyse -g, the direction a descent step moves"
    )
    p.add_argument("--bins", type=int, default=50, help="histogram bins (default: 50)")
    p.set_defaults(func=_cmd_grad)

    p = sub.add_parser(
        "trajectory",
        help="an optimize run's trajectories: distance travelled, back-projection, heading",
    )
    add_store_args(p, save=True, seed=True)
    p.add_argument("--rows", help="SQL selecting the rows (default: every non-special row)")
    p.add_argument(
        "--metric",
        choices=["euclidean", "cosine"],
        default="euclidean",
        help="of the nearest vocabulary row (default: euclidean)",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=10000,
        help="random vocabulary pairs whose distances distance_pct compares with (default: 10000)",
    )
    p.add_argument("--bins", type=int, default=50, help="displacement histogram bins (default: 50)")
    p.set_defaults(func=_cmd_trajectory)

    p = sub.add_parser("nearest", help="nearest vocabulary tokens of tokens, centroids or rows")
    add_store_args(p, save=True)
    p.add_argument("--token", action="append", help="query token (repeatable)")
    p.add_argument("--site", help="use the token's centroid (or --rows' vectors) at this site")
    p.add_argument("--rows", help="SQL selecting rows whose --site vectors are the queries")
    p.add_argument("--matrix", default="embed", help="embed or unembed (default: embed)")
    p.add_argument("--start", help="start token v0: rank matrix - v0 by cosine")
    p.add_argument("-k", type=int, default=10, help="tokens per query (default: 10)")
    p.add_argument(
        "--metric", choices=["cosine", "euclidean"], default="cosine", help="(default: cosine)"
    )
    p.set_defaults(func=_cmd_nearest)

    p = sub.add_parser("lens", help="logit lens: top tokens of stored hidden states via the head")
    add_store_args(p, save=True)
    p.add_argument("--rows", required=True, help="SQL selecting the rows")
    p.add_argument("--sites", type=split_list, help="comma-separated sites (default hidden.*)")
    p.add_argument("-k", type=int, default=5, help="tokens per row and site (default: 5)")
    p.set_defaults(func=_cmd_lens)

    p = sub.add_parser("cka", help="CKA / RSA / Procrustes between sites, or between two runs")
    add_store_args(p, save=True, plot=True, seed=True)
    p.add_argument("--sites", type=split_list, help="comma-separated sites (default hidden.*)")
    p.add_argument("--run-b", help="second run: compare across runs aligned by span")
    p.add_argument("--sites-b", type=split_list, help="sites of --run-b (default hidden.*)")
    p.add_argument("--rows", help="SQL selecting the rows (one run only)")
    p.add_argument(
        "--max-rows",
        type=int,
        default=5000,
        help="compare a random sample of this many rows when the selection has more; "
        "the output says so (rows_sampled) (default: 5000)",
    )
    p.add_argument(
        "--measures",
        default="cka,cka_unbiased,rsa,procrustes",
        help="comma-separated measures (default: cka,cka_unbiased,rsa,procrustes)",
    )
    p.add_argument(
        "--rsa-rows",
        type=int,
        help="run RSA on a random sample of this many of the compared rows (default: all "
        "of them; more than 10,000 is refused)",
    )
    p.set_defaults(func=_cmd_cka)
