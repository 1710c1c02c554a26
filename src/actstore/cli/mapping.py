"""``actstore map fit|eval|apply``: options from :class:`~actstore.query.mapping.MapConfig`,
calls into :mod:`actstore.query.mapping.on_store`, one printer."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from actstore.cli._common import (
    add_dataclass_options,
    add_store_args,
    dataclass_values,
    emit,
    open_run,
)

__all__ = ["add_commands"]


def _pair_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--x", required=required, help="X site, or 'embed' (input embeddings)")
    p.add_argument("--y", required=required, help="Y site")
    p.add_argument("--y-run", help="another run for Y, rows aligned by character span")
    p.add_argument("--rows", help="SQL selecting X rows (default: all non-special tokens)")
    p.add_argument("--y-rows", help="SQL selecting Y rows (same length as --rows)")


def add_commands(subparsers: Any) -> None:
    """Register ``map`` with ``fit``, ``eval`` and ``apply`` on an argparse subparsers object."""
    from actstore.query.mapping.on_store import MapConfig

    top = subparsers.add_parser("map", help="fit, evaluate and apply linear maps between sites")
    sub = top.add_subparsers(dest="map_command", required=True)

    fit = sub.add_parser("fit", help="fit a map and save it as a result")
    add_store_args(fit, overwrite=True)
    _pair_args(fit, required=True)
    fit.add_argument("--name", required=True, help="result name of the saved map")
    add_dataclass_options(
        fit, MapConfig, skip={"batch_rows"}, aliases={"fit_intercept": ["--no-intercept"]}
    )
    fit.set_defaults(func=_fit)

    ev = sub.add_parser("eval", help="score a saved map (on its rows or on other rows)")
    add_store_args(ev)
    ev.add_argument("name", help="the saved map's result name")
    _pair_args(ev, required=False)
    ev.add_argument("--head", action="store_true", help="top-1 agreement and KL via the head")
    ev.add_argument("--head-norm", action="store_true", help="apply the final norm first")
    ev.set_defaults(func=_eval)

    ap = sub.add_parser("apply", help="apply a saved map to rows or to a .npy of vectors")
    add_store_args(ap)
    ap.add_argument("name", help="the saved map's result name")
    ap.add_argument("--out", required=True, help="output .npy (outside the store)")
    ap.add_argument("--vectors", help="input .npy of shape (n, d) instead of store rows")
    ap.add_argument("--rows", help="SQL selecting X rows (default: the map's rows)")
    ap.set_defaults(func=_apply)


def _spec(args: argparse.Namespace, run: str, base: Any = None) -> Any:
    from actstore.query.mapping.on_store import PairSpec

    if base is None:
        return PairSpec(run, args.x, args.y, args.y_run, args.rows, args.y_rows)
    given = {
        k: getattr(args, k) for k in ("run", "x", "y", "y_run") if getattr(args, k) is not None
    }
    if args.rows is not None or args.y_rows is not None:
        given |= {"rows": args.rows, "y_rows": args.y_rows}
    return replace(base, **given)


def _fit(args: argparse.Namespace) -> None:
    from actstore.query.mapping.on_store import MapConfig, fit_map
    from actstore.query.results import result_dir

    cfg = MapConfig(**dataclass_values(args, MapConfig))
    with open_run(args) as (store, run):
        fitted = fit_map(store, _spec(args, run), cfg, save=args.name, overwrite=args.overwrite)
        path = result_dir(store.path, args.name)
    emit(args, {"name": args.name, "method": cfg.method, "path": str(path), **fitted.metrics})


def _eval(args: argparse.Namespace) -> None:
    from actstore.query.mapping.on_store import evaluate_map
    from actstore.query.mapping.saved import load_map
    from actstore.query.store import Store

    with Store(args.store) as store:
        fitted = load_map(store.path, args.name)
        m = evaluate_map(
            store,
            fitted,
            spec=_spec(args, fitted.spec.run, fitted.spec),
            head=args.head,
            head_norm=args.head_norm,
        )
    emit(args, {"name": args.name, **m})


def _apply(args: argparse.Namespace) -> None:
    from actstore.query.mapping.saved import apply_map
    from actstore.query.store import Store

    with Store(args.store) as store:
        n, m = apply_map(store, args.name, args.out, rows=args.rows, vectors=args.vectors)
    emit(args, {"name": args.name, "out": str(args.out), "shape": [n, m]})
