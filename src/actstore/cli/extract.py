"""``actstore extract | optimize | info | commit | demo``: the write side of the command
line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from actstore.cli._common import add_dataclass_options, field_help
from actstore.errors import ConfigError

__all__ = ["add_commands"]

#: CLI-only aliases of option names.
_ALIASES = {"text_field": ["--text-column"]}


def _huge_pages() -> None:
    """Ask torch for huge pages before it is imported: this process ends with the job, so
    the setting slows nothing that runs after it (see :mod:`actstore.extract._memory`)."""
    from actstore.extract._memory import prefer_huge_pages

    prefer_huge_pages()


def _cmd_extract(args: argparse.Namespace) -> int:
    _huge_pages()
    from actstore.extract.config import ExtractConfig

    if args.list_modules:
        from actstore.extract.model import load_model
        from actstore.extract.sites import list_modules

        lm = load_model(args.model, revision=args.revision, device="cpu")
        print("\n".join(list_modules(lm)))
        return 0
    if args.data is None or args.store is None:
        raise ConfigError("extract needs --data and --store (or --list-modules)")
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(ExtractConfig) if f.name != "run"
    }
    values["run"] = args.run or _default_run_name(args.model)
    from actstore.extract.runner import extract

    config = ExtractConfig(**values)
    # no progress callback: the job draws its own bar (the engine's one bar with Ray)
    result = extract(config)
    summary = _summary(result)
    if config.engine == "ray":
        from actstore.extract.engine_ray import RayExtractResult

        assert isinstance(result, RayExtractResult)
        summary["engine"] = config.engine
        summary["workers"] = result.workers
        summary["parts"] = [dataclasses.asdict(p) for p in result.parts]
    _print_summary(args, summary, result)
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    _huge_pages()
    from actstore.extract.optimize import OPTIMIZE_ONLY_EXTRACT, OptimizeConfig, optimize

    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(OptimizeConfig)
        if f.name not in OPTIMIZE_ONLY_EXTRACT and f.name != "run"
    }
    values["run"] = args.run or _default_run_name(args.model) + "-optimize"
    config = OptimizeConfig(**values)
    result = optimize(config)  # the job draws its own bar ("optimize RUN")
    summary = {**_summary(result), "steps": config.stored_steps()}
    _print_summary(args, summary, result)
    return 0


def _summary(result: Any) -> dict[str, Any]:
    """The keys every extraction-like command prints (docs/outputs.md)."""
    return {
        "store": str(result.store),
        "run": result.run,
        "shard": result.shard,
        "status": result.status,
        "rows": result.rows,
        "counts": result.counts,
        "seconds": round(result.seconds, 3),
    }


def _print_summary(args: argparse.Namespace, summary: dict[str, Any], result: Any) -> None:
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        c = result.counts
        extra = ", ".join(
            f"{c[k]:,} {what}"
            for k, what in (
                ("empty_docs", "empty (no tokens)"),
                ("duplicate_docs", "repeating an earlier text (its rows)"),
                ("truncated_docs", "truncated"),
            )
            if c.get(k)
        )
        print(
            f"{result.status}: run {result.run!r} in {result.store}: {result.rows:,} token rows "
            f"from {c.get('texts', 0):,} distinct texts of {c.get('docs', 0):,} records"
            + (f" ({extra})" if extra else "")
            + (f" in {result.seconds:.1f} s" if result.seconds else "")
        )


def _default_run_name(model: str) -> str:
    import re

    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", model.rstrip("/").split("/")[-1]).strip("-.")
    return name or "run"


def _cmd_info(args: argparse.Namespace) -> int:
    from actstore.store.info import format_info, store_info

    info = store_info(args.store)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_rm(args: argparse.Namespace) -> None:
    from pathlib import Path

    if (args.run is None) == (args.result is None):
        raise ConfigError("rm needs exactly one of --run RUN or --result NAME")
    if args.result is not None:
        from actstore.store.results import remove_result

        remove_result(args.store, args.result)
        print(f"removed result {args.result!r} from {args.store}", file=sys.stderr)
        return
    from actstore.store.commit import remove_run

    remove_run(Path(args.store), args.run)
    print(f"removed run {args.run!r} from {args.store}", file=sys.stderr)


def _cmd_commit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from actstore.store._objects import ObjectPath, store_path
    from actstore.store.commit import commit_run

    store = store_path(args.store)
    if isinstance(store, ObjectPath):
        from actstore.extract._remote import commit_remote

        result = commit_remote(store, args.run, args.num_shards, args.staging)
    else:
        if args.staging is not None:
            raise ConfigError("--staging: only used with a store on object storage (s3://)")
        result = commit_run(Path(args.store), args.run, args.num_shards)
    if result is None:
        raise ConfigError(
            f"run {args.run!r} is not complete: some of its {args.num_shards} part(s) are "
            "missing or unfinished; run the missing shards (see `actstore info`)"
        )
    print(f"committed run {args.run!r}: {result['counts']['rows']:,} rows")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from actstore._demo import run_demo

    run_demo(args.store, quiet=args.quiet, overwrite=args.overwrite)
    return 0


def add_commands(sub: Any) -> None:
    """Register ``extract``, ``optimize``, ``info``, ``commit`` and ``demo`` on an argparse
    ``subparsers``."""
    from actstore.extract.config import ExtractConfig

    p = sub.add_parser(
        "extract",
        help="run a model over a corpus and store activations",
        description=ExtractConfig.__doc__,
    )
    add_dataclass_options(p, ExtractConfig, skip={"run", "data", "store"}, aliases=_ALIASES)
    helps = field_help(ExtractConfig)
    # not required here, so that --list-modules works without them
    p.add_argument("--data", help=helps["data"])
    p.add_argument("--store", help=helps["store"])
    p.add_argument("--run", help=helps["run"] + " (default: the model folder or id's last part)")
    p.add_argument(
        "--list-modules",
        action="store_true",
        help="print the model's module paths usable as module:<path> sites and exit",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_extract)

    from actstore.extract.optimize import OPTIMIZE_ONLY_EXTRACT, OptimizeConfig

    p = sub.add_parser(
        "optimize",
        help="optimise each prompt's input embeddings against an objective; store the trajectories",
        description=OptimizeConfig.__doc__,
    )
    add_dataclass_options(
        p,
        OptimizeConfig,
        skip={"run", *OPTIMIZE_ONLY_EXTRACT},
        aliases=_ALIASES,
    )
    p.add_argument(
        "--run", help=helps["run"] + " (default: the model folder or id's last part + -optimize)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_optimize)

    p = sub.add_parser("info", help="runs, sites, shapes, dtypes, counts and bytes of a store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "rm", help="remove a committed run (manifest first, then its files) or a saved result"
    )
    p.add_argument("store")
    p.add_argument("--run", help="the run to remove (its docs, tokens, arrays, staging)")
    p.add_argument("--result", help="the saved result to remove")
    p.set_defaults(func=_cmd_rm)

    p = sub.add_parser("commit", help="publish a sharded run whose parts are all complete")
    p.add_argument("store")
    p.add_argument("run", help="the run whose parts to publish")
    p.add_argument(
        "--num-shards", type=int, required=True, help="how many shard parts the run was split in"
    )
    p.add_argument(
        "--staging",
        help="with an s3:// store: the local folder to commit in (default as for extract)",
    )
    p.set_defaults(func=_cmd_commit)

    p = sub.add_parser(
        "demo",
        help="extract the bundled MiniLM over the bundled corpus and show a query and an analysis",
    )
    p.add_argument("--store", default="demo.acts", help="store directory (default: demo.acts)")
    p.add_argument("--overwrite", action="store_true", help="re-extract even if present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)
