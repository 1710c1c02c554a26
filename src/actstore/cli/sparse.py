"""``actstore sparse ...``: basis pursuit, dictionary learning, TopK SAEs and atom inspection.

``encode``, ``learn`` and ``sae`` save a result ``--name`` (codes as ``(run, row, atom, value)``,
so ``SELECT row FROM NAME WHERE atom = 17`` works) and print its metrics; ``atoms`` reads one
back. Every subcommand prints JSON with ``--json``.
"""

from __future__ import annotations

import argparse
from typing import Any

from actstore.cli._common import (
    add_dataclass_options,
    add_store_args,
    dataclass_values,
    emit,
    run_name,
)
from actstore.errors import ConfigError

__all__ = ["add_commands"]


def _report(args: argparse.Namespace, res: Any) -> None:
    out = {
        "name": res.name,
        "run": res.meta["run"],
        "source": res.meta["source"],
        "n_rows": len(res.rows),
        "n_atoms": int(res.dictionary.shape[0]),
        "nnz": res.nnz,
        "metrics": res.metrics,
    }
    emit(args, out)


def _cmd_encode(args: argparse.Namespace) -> None:
    from actstore.query.sparse.on_store import encode_store

    run = run_name(args)
    res = encode_store(
        args.store,
        run,
        args.source,
        name=args.name,
        dictionary=args.dictionary,
        method=args.method,
        k=args.k,
        lam=args.lam,
        rows=args.rows,
        exclude_self=args.exclude_self,
        weights="count" if args.weights else None,
        backend=args.backend,
        device=args.device,
        window=args.window,
        overwrite=args.overwrite,
    )
    _report(args, res)


def _cmd_learn(args: argparse.Namespace) -> None:
    from actstore.query.sparse.dictlearn import DictLearnConfig
    from actstore.query.sparse.on_store import learn_store

    _learned(args, learn_store, DictLearnConfig(**dataclass_values(args, DictLearnConfig)))


def _cmd_sae(args: argparse.Namespace) -> None:
    from actstore.query.sparse.on_store import sae_store
    from actstore.query.sparse.sae import SAEConfig

    _learned(args, sae_store, SAEConfig(**dataclass_values(args, SAEConfig)))


def _learned(args: argparse.Namespace, learn: Any, cfg: Any) -> None:
    """Run a learner (dictionary or SAE) with its config and the shared options; print."""
    extra = {"init": args.init} if hasattr(args, "init") else {}
    res = learn(
        args.store,
        run_name(args),
        args.source,
        cfg,
        name=args.name,
        rows=args.rows,
        window=args.window,
        overwrite=args.overwrite,
        **extra,
    )
    _report(args, res)


def _cmd_atoms(args: argparse.Namespace) -> None:
    from actstore.query.results import read_result
    from actstore.query.sparse.atoms import atom_map, atom_nearest_tokens, atom_top_rows
    from actstore.query.store import Store

    _, meta, arrays = read_result(args.store, args.result)
    if "dictionary" not in arrays:
        raise ConfigError(f"result {args.result!r} has no dictionary; pick a sparse result")
    D = arrays["dictionary"]
    out: dict[str, Any] = {"result": args.result, "n_atoms": int(D.shape[0])}
    with Store(args.store) as s:
        atoms = list(range(min(args.first, len(D)))) if args.atom is None else [args.atom]
        if args.top:
            out["top_rows"] = {
                str(a): atom_top_rows(s, args.result, a, args.top).to_dict("records") for a in atoms
            }
        if args.nearest:
            df = atom_nearest_tokens(s, meta["run"], D[atoms], args.nearest, args.n)
            df["atom"] = [atoms[i] for i in df.atom]
            out["nearest"] = df.to_dict("records")
        if args.map:
            out["map"] = str(atom_map(D, args.map, method=args.method, title=args.result))
    emit(args, out)


def _common(p: argparse.ArgumentParser, *, source: bool = True) -> None:
    add_store_args(p, overwrite=source)
    if source:
        p.add_argument(
            "--source",
            default="embed",
            help="embed, unembed, or a site such as hidden.6 (default: embed)",
        )
        p.add_argument(
            "--rows",
            default=None,
            help="SQL selecting rows of a site (default: the non-special tokens) or token ids "
            "of embed/unembed (default: all)",
        )
        p.add_argument("--name", required=True, help="result name (also the SQL view name)")
        p.add_argument(
            "--window", type=int, default=None, help="rows of the dead-atom window (default: all)"
        )


def add_commands(subparsers: Any) -> None:
    """Register ``sparse`` with its subcommands ``encode``, ``learn``, ``sae``, ``atoms``."""
    from actstore.query.sparse.dictlearn import DictLearnConfig
    from actstore.query.sparse.sae import SAEConfig

    top = subparsers.add_parser("sparse", help="sparse coding: encode, learn, sae, atoms")
    sub = top.add_subparsers(dest="sparse_command", required=True)

    p = sub.add_parser("encode", help="basis pursuit against a fixed dictionary (OMP or Lasso)")
    _common(p)
    p.add_argument("--dictionary", default="embed", help="embed, unembed or a sparse result")
    p.add_argument(
        "--method",
        choices=["omp", "lasso"],
        default="omp",
        help="OMP with --k non-zeros, or Lasso with --lam (default: omp)",
    )
    p.add_argument("--k", type=int, default=8, help="non-zeros per row (omp)")
    p.add_argument("--lam", type=float, default=0.1, help="lambda (lasso)")
    p.add_argument("--exclude-self", action="store_true", help="never use the row's own token")
    p.add_argument("--weights", action="store_true", help="weight metrics by token count")
    p.add_argument(
        "--backend",
        choices=["numpy", "torch"],
        default="numpy",
        help="array library of the coding (torch: GPU when present) (default: numpy)",
    )
    p.add_argument("--device", default=None, help="torch device (cuda)")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("learn", help="mini-batch dictionary learning streamed from the store")
    _common(p)
    p.add_argument("--init", default=None, help="warm start from this sparse result")
    add_dataclass_options(p, DictLearnConfig, aliases={"n_atoms": ["--atoms"]})
    p.set_defaults(func=_cmd_learn)

    p = sub.add_parser("sae", help="train a TopK sparse autoencoder streamed from the store")
    _common(p)
    add_dataclass_options(p, SAEConfig, aliases={"n_latents": ["--latents"]})
    p.set_defaults(func=_cmd_sae)

    p = sub.add_parser("atoms", help="inspect a sparse result's atoms")
    _common(p, source=False)
    p.add_argument("result", help="the sparse result's name")
    p.add_argument("--atom", type=int, default=None, help="one atom (default: the first ones)")
    p.add_argument("--first", type=int, default=5, help="how many atoms without --atom")
    p.add_argument("--top", type=int, default=5, help="top-activating rows per atom (0: none)")
    p.add_argument(
        "--nearest",
        choices=["embed", "unembed"],
        default=None,
        help="also list each atom's nearest tokens in this matrix",
    )
    p.add_argument("--n", type=int, default=5, help="nearest tokens per atom")
    p.add_argument("--map", default=None, help="write a 2-D map of all atoms to this PNG")
    p.add_argument(
        "--method",
        choices=["pca", "umap"],
        default="pca",
        help="projection of the --map plot (default: pca)",
    )
    p.set_defaults(func=_cmd_atoms)
