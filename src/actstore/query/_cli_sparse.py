"""``actstore sparse ...``: basis pursuit, dictionary learning, TopK SAEs and atom inspection.

``encode``, ``learn`` and ``sae`` save a result ``--name`` (codes as ``(run, row, atom, value)``,
so ``SELECT row FROM NAME WHERE atom = 17`` works) and print its metrics; ``atoms`` reads one
back. Every subcommand prints JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from actstore.errors import ConfigError

__all__ = ["add_commands"]


def _run(args: argparse.Namespace) -> str:
    from actstore.query.store import Store

    if args.run:
        return str(args.run)
    with Store(args.store) as s:
        if len(s.runs) != 1:
            raise ConfigError(f"store has runs {', '.join(s.runs) or 'none'}; pick one with --run")
        return s.runs[0]


def _print(args: argparse.Namespace, out: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return
    for key, value in out.items():
        if isinstance(value, dict):
            for k2, v2 in value.items():
                print(f"{key}.{k2}: {v2:.6g}" if isinstance(v2, float) else f"{key}.{k2}: {v2}")
        else:
            print(f"{key}: {value}")


def _report(args: argparse.Namespace, res: Any) -> int:
    out = {
        "name": res.name,
        "run": res.meta["run"],
        "source": res.meta["source"],
        "n_rows": len(res.rows),
        "n_atoms": int(res.dictionary.shape[0]),
        "nnz": int(res.codes.nnz),
        "metrics": res.metrics,
    }
    _print(args, out)
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from actstore.query.sparse_store import encode_store

    res = encode_store(
        args.store,
        _run(args),
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
    )
    return _report(args, res)


def _cmd_learn(args: argparse.Namespace) -> int:
    from actstore.query.dictlearn import DictLearnConfig
    from actstore.query.sparse_store import learn_store

    cfg = DictLearnConfig(
        n_atoms=args.atoms,
        k=args.k,
        lam=args.lam,
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_batches=args.max_batches,
        seed=args.seed,
        backend=args.backend,
        device=args.device,
    )
    res = learn_store(
        args.store,
        _run(args),
        args.source,
        cfg,
        name=args.name,
        rows=args.rows,
        init=args.init,
        window=args.window,
    )
    return _report(args, res)


def _cmd_sae(args: argparse.Namespace) -> int:
    from actstore.query.sae import SAEConfig
    from actstore.query.sparse_store import sae_store

    cfg = SAEConfig(
        n_latents=args.latents,
        k=args.k,
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        aux_k=args.aux_k,
        device=args.device,
        checkpoint_dir=args.checkpoint_dir,
        progress=args.progress,
    )
    res = sae_store(
        args.store,
        _run(args),
        args.source,
        cfg,
        name=args.name,
        rows=args.rows,
        window=args.window,
    )
    return _report(args, res)


def _cmd_atoms(args: argparse.Namespace) -> int:
    from actstore.query.results import read_result
    from actstore.query.sparse_atoms import atom_map, atom_nearest_tokens, atom_top_rows
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
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    for key, value in out.items():
        if isinstance(value, list):
            print(f"{key}:")
            for line in value:
                print("  " + ", ".join(f"{k}={v}" for k, v in line.items()))
        elif isinstance(value, dict):
            for atom, lines in value.items():
                print(f"{key} atom {atom}:")
                for line in lines:
                    print("  " + ", ".join(f"{k}={v}" for k, v in line.items()))
        else:
            print(f"{key}: {value}")
    return 0


def _common(p: argparse.ArgumentParser, *, source: bool = True) -> None:
    p.add_argument("store", help="the store directory")
    p.add_argument("--run", default=None, help="run name (default: the only run)")
    if source:
        p.add_argument("--source", default="embed", help="embed, unembed, or a site (hidden.6)")
        p.add_argument("--rows", default=None, help="SQL selecting rows (or token ids)")
        p.add_argument("--name", required=True, help="result name (also the SQL view name)")
        p.add_argument("--window", type=int, default=None, help="dead-atom window (rows)")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_commands(subparsers: Any) -> None:
    """Register ``sparse`` with its subcommands ``encode``, ``learn``, ``sae``, ``atoms``."""
    top = subparsers.add_parser("sparse", help="sparse coding: encode, learn, sae, atoms")
    sub = top.add_subparsers(dest="sparse_command", required=True)

    p = sub.add_parser("encode", help="basis pursuit against a fixed dictionary (OMP or Lasso)")
    _common(p)
    p.add_argument("--dictionary", default="embed", help="embed, unembed or a sparse result")
    p.add_argument("--method", choices=["omp", "lasso"], default="omp")
    p.add_argument("--k", type=int, default=8, help="non-zeros per row (omp)")
    p.add_argument("--lam", type=float, default=0.1, help="lambda (lasso)")
    p.add_argument("--exclude-self", action="store_true", help="never use the row's own token")
    p.add_argument("--weights", action="store_true", help="weight metrics by token count")
    p.add_argument("--backend", choices=["numpy", "torch"], default="numpy")
    p.add_argument("--device", default=None, help="torch device (cuda)")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("learn", help="mini-batch dictionary learning streamed from the store")
    _common(p)
    p.add_argument("--atoms", type=int, required=True, help="number of atoms")
    p.add_argument("--k", type=int, default=None, help="non-zeros per row (OMP coding)")
    p.add_argument("--lam", type=float, default=None, help="lambda (Lasso coding)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="warm start from this sparse result")
    p.add_argument("--backend", choices=["numpy", "torch"], default="numpy")
    p.add_argument("--device", default=None, help="torch device (cuda)")
    p.set_defaults(func=_cmd_learn)

    p = sub.add_parser("sae", help="train a TopK sparse autoencoder streamed from the store")
    _common(p)
    p.add_argument("--latents", type=int, required=True, help="number of latents")
    p.add_argument("--k", type=int, default=32, help="active latents per row")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aux-k", type=int, default=256, help="dead latents in the aux loss")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=_cmd_sae)

    p = sub.add_parser("atoms", help="inspect a sparse result's atoms")
    _common(p, source=False)
    p.add_argument("result", help="the sparse result's name")
    p.add_argument("--atom", type=int, default=None, help="one atom (default: the first ones)")
    p.add_argument("--first", type=int, default=5, help="how many atoms without --atom")
    p.add_argument("--top", type=int, default=5, help="top-activating rows per atom (0: none)")
    p.add_argument("--nearest", choices=["embed", "unembed"], default=None)
    p.add_argument("--n", type=int, default=5, help="nearest tokens per atom")
    p.add_argument("--map", default=None, help="write a 2-D map of all atoms to this PNG")
    p.add_argument("--method", choices=["pca", "umap"], default="pca")
    p.set_defaults(func=_cmd_atoms)
