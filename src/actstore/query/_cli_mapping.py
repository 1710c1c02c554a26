"""The ``actstore map fit|eval|apply`` subcommands (registered by :func:`add_commands`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from actstore.errors import ConfigError
from actstore.query.mapping import (
    METHODS,
    MapConfig,
    PairSpec,
    evaluate_map,
    fit_map,
    iter_pairs,
    load_map,
    pair_rows,
    save_map,
)
from actstore.query.store import Store

__all__ = ["add_commands"]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--alphas takes comma-separated numbers, got {text!r}") from None


def _cv(text: str) -> str | int | None:
    if text in ("gcv", "loo"):
        return text
    if text == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--cv must be gcv, loo, none or a fold count, got {text!r}") from None


def _pair_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--run", required=required, help="run of X (and of Y unless --y-run)")
    p.add_argument("--x", required=required, help="X site, or 'embed' (input embeddings)")
    p.add_argument("--y", required=required, help="Y site")
    p.add_argument("--y-run", help="another run for Y, rows aligned by character span")
    p.add_argument("--rows", help="SQL selecting X rows (default: all non-special tokens)")
    p.add_argument("--y-rows", help="SQL selecting Y rows (same length as --rows)")


def add_commands(subparsers: Any) -> None:
    """Register ``map`` with ``fit``, ``eval`` and ``apply`` on an argparse subparsers object."""
    top = subparsers.add_parser("map", help="fit, evaluate and apply linear maps between sites")
    sub = top.add_subparsers(dest="map_command", required=True)
    d = MapConfig()

    fit = sub.add_parser("fit", help="fit a map and save it as a result")
    fit.add_argument("store")
    _pair_args(fit, required=True)
    fit.add_argument("--name", required=True, help="result name of the saved map")
    fit.add_argument("--method", default=d.method, choices=METHODS)
    fit.add_argument("--alphas", type=str, default=",".join(map(str, d.alphas)))
    fit.add_argument("--cv", default="gcv", help="gcv, loo, none or a number of folds")
    fit.add_argument("--per-target", action="store_true")
    fit.add_argument("--rank", type=int, default=d.rank)
    fit.add_argument("--lam-off", type=float, default=d.lam_off)
    fit.add_argument("--lam-diag", type=float, default=d.lam_diag)
    fit.add_argument("--no-center", action="store_true", help="procrustes: do not center")
    fit.add_argument("--scale", action="store_true", help="procrustes: fit a scalar scale")
    fit.add_argument("--no-intercept", action="store_true")
    fit.add_argument("--split", default=d.split, choices=("token", "doc", "none"))
    fit.add_argument("--k", type=int, default=None, help="max train examples per token id")
    fit.add_argument("--val-fraction", type=float, default=d.val_fraction)
    fit.add_argument("--seed", type=int, default=d.seed)
    fit.add_argument("--backend", default=d.backend, choices=("numpy", "torch"))
    fit.add_argument("--head-norm", action="store_true", help="kl: apply the final norm to Y")
    fit.add_argument("--kl-epochs", type=int, default=d.kl_epochs)
    fit.add_argument("--kl-lr", type=float, default=d.kl_lr)
    fit.add_argument("--json", action="store_true")
    fit.set_defaults(func=_fit)

    ev = sub.add_parser("eval", help="score a saved map (on its rows or on other rows)")
    ev.add_argument("store")
    ev.add_argument("name")
    _pair_args(ev, required=False)
    ev.add_argument("--head", action="store_true", help="top-1 agreement and KL via the head")
    ev.add_argument("--head-norm", action="store_true", help="apply the final norm first")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_eval)

    ap = sub.add_parser("apply", help="apply a saved map to rows or to a .npy of vectors")
    ap.add_argument("store")
    ap.add_argument("name")
    ap.add_argument("--out", required=True, help="output .npy (outside the store)")
    ap.add_argument("--vectors", help="input .npy of shape (n, d) instead of store rows")
    ap.add_argument("--rows", help="SQL selecting X rows (default: the map's rows)")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(func=_apply)


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload, default=float) if args.json else text)


def _spec(args: argparse.Namespace, base: PairSpec | None = None) -> PairSpec:
    if base is None:
        return PairSpec(args.run, args.x, args.y, args.y_run, args.rows, args.y_rows)
    given = {
        k: getattr(args, a)
        for k, a in (("run", "run"), ("x", "x"), ("y", "y"), ("y_run", "y_run"))
        if getattr(args, a) is not None
    }
    if args.rows is not None or args.y_rows is not None:
        given |= {"rows": args.rows, "y_rows": args.y_rows}
    return replace(base, **given)


def _fit(args: argparse.Namespace) -> None:
    cfg = MapConfig(
        method=args.method,
        alphas=_floats(args.alphas),
        cv=_cv(args.cv),  # type: ignore[arg-type]
        per_target=args.per_target,
        rank=args.rank,
        lam_off=args.lam_off,
        lam_diag=args.lam_diag,
        center=not args.no_center,
        scale=args.scale,
        fit_intercept=not args.no_intercept,
        split=args.split,
        k=args.k,
        val_fraction=args.val_fraction,
        seed=args.seed,
        backend=args.backend,
        head_norm=args.head_norm,
        kl_epochs=args.kl_epochs,
        kl_lr=args.kl_lr,
    )
    with Store(args.store) as s:
        fitted = fit_map(s, _spec(args), cfg)
    path = save_map(args.store, args.name, fitted)
    lines = [f"saved map {args.name!r} ({cfg.method}) to {path}"]
    lines += [
        f"{k}: " + ", ".join(f"{c}={v:.6g}" for c, v in m.items() if isinstance(v, int | float))
        for k, m in fitted.metrics.items()
    ]
    _emit(args, {"name": args.name, "path": str(path), **fitted.metrics}, "\n".join(lines))


def _eval(args: argparse.Namespace) -> None:
    fitted = load_map(args.store, args.name)
    with Store(args.store) as s:
        m = evaluate_map(
            s, fitted, spec=_spec(args, fitted.spec), head=args.head, head_norm=args.head_norm
        )
    text = ", ".join(f"{c}={v:.6g}" for c, v in m.items() if isinstance(v, int | float))
    _emit(args, {"name": args.name, **m}, text)


def _apply(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.suffix != ".npy":
        raise ConfigError(f"--out must be a .npy file, got {out.name!r}")
    if out.resolve().is_relative_to(Path(args.store).resolve()):
        raise ConfigError(f"{out} is inside the store, which is read-only; pick a path outside")
    fitted = load_map(args.store, args.name)
    m = fitted.map.coef.shape[1]
    if args.vectors:
        y = fitted.predict(np.load(args.vectors)).astype(np.float32)
        np.save(out, y)
        n = len(y)
    else:
        spec = replace(fitted.spec, y=fitted.spec.x, y_run=None, y_rows=None)
        if args.rows is not None:
            spec = replace(spec, rows=args.rows)
        with Store(args.store) as s:
            rows = pair_rows(s, spec)
            n = len(rows.x)
            # streamed into a memory-mapped .npy: the selection may not fit in memory
            mm = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, m))
            at = 0
            for x, _ in iter_pairs(s, spec, rows, fitted.config.batch_rows):
                mm[at : at + len(x)] = fitted.predict(x)
                at += len(x)
            mm.flush()
            del mm
    _emit(
        args,
        {"name": args.name, "out": str(out), "shape": [n, m]},
        f"wrote {n} x {m} to {out}",
    )
