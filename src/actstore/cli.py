"""The ``actstore`` command line: one entry point with a subcommand per job.

Every :class:`~actstore.errors.ActstoreError` is printed as one line on stderr with a
non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from actstore._version import __version__
from actstore.errors import ActstoreError, ConfigError

__all__ = ["main"]

#: CLI-only aliases of option names.
_ALIASES = {"text_field": ["--text-column"]}
_POSITIONAL: tuple[str, ...] = ()


def _add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: set[str]) -> None:
    """One ``--option`` per dataclass field, typed and documented from the field itself."""
    helps = cls.help_texts()  # type: ignore[attr-defined]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag, *_ALIASES.get(f.name, [])]
        hint = hints[f.name]
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        text = helps.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if hint is bool:
            if default:
                names = ["--no-" + f.name.replace("_", "-")]
                parser.add_argument(
                    *names,
                    dest=f.name,
                    action="store_false",
                    default=True,
                    help=f"do not: {text[0].lower()}{text[1:]}",
                )
            else:
                parser.add_argument(*names, dest=f.name, action="store_true", help=text)
            continue
        args = typing.get_args(hint)
        shown = "" if required or default is None else f" (default: {default})"
        kwargs: dict[str, Any] = {"help": text + shown}
        base = hint
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            base = next(a for a in args if a is not type(None))
        if typing.get_origin(base) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(base))
            kwargs["type"] = str
        else:
            kwargs["type"] = base if base in (int, float, str) else str
        kwargs["required"] = required
        kwargs["default"] = default
        kwargs["metavar"] = f.name.upper() if "choices" not in kwargs else None
        if kwargs["metavar"] is None:
            del kwargs["metavar"]
        parser.add_argument(*names, **kwargs)


def _cmd_extract(args: argparse.Namespace) -> int:
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

    result = extract(ExtractConfig(**values))
    summary = {
        "store": str(result.store),
        "run": result.run,
        "shard": result.shard,
        "status": result.status,
        "rows": result.rows,
        "counts": result.counts,
        "seconds": round(result.seconds, 3),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        c = result.counts
        extra = ", ".join(
            f"{c[k]:,} {k.replace('_', ' ')}"
            for k in ("empty_docs", "duplicate_docs", "truncated_docs")
            if c.get(k)
        )
        print(
            f"{result.status}: run {result.run!r} in {result.store}: {result.rows:,} token rows "
            f"from {c.get('docs', 0):,} docs"
            + (f" (skipped/changed: {extra})" if extra else "")
            + (f" in {result.seconds:.1f} s" if result.seconds else "")
        )
    return 0


def _default_run_name(model: str) -> str:
    import re

    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", model.rstrip("/").split("/")[-1]).strip("-.")
    return name or "run"


def _cmd_info(args: argparse.Namespace) -> int:
    from actstore.store.info import format_info, store_info

    info = store_info(args.store)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_commit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from actstore.store.commit import commit_run

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


def _param(value: str) -> int | float | str:
    """A ``--param`` value: an int or float when it reads as one, else the string."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _cmd_sql(args: argparse.Namespace) -> int:
    import actstore
    from actstore.query.sql import write_result

    with actstore.open(args.store) as store:
        result = store.sql(args.query, [_param(v) for v in args.param or []])
        write_result(
            result,
            fmt=args.format,
            out=args.out,
            store=store.path,
            max_rows=args.max_rows,
            max_width=args.max_width,
        )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import actstore

    with actstore.open(args.store) as store:
        n = store.export(
            args.run,
            args.site,
            args.out,
            rows=args.rows,
            params=[_param(v) for v in args.param] if args.param else None,
            dtype=args.dtype,
        )
    print(f"wrote {n:,} rows of {args.run}/{args.site} to {args.out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``actstore`` (exposed for docs and tests)."""
    from actstore.extract.config import ExtractConfig

    parser = argparse.ArgumentParser(
        prog="actstore",
        description="Run a transformer once; keep its activations in a queryable store.",
    )
    parser.add_argument("--version", action="version", version=f"actstore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "extract",
        help="run a model over a corpus and store activations",
        description=ExtractConfig.__doc__,
    )
    _add_dataclass_options(p, ExtractConfig, skip={"run", "data", "store"})
    p.add_argument("--data", help=ExtractConfig.help_texts()["data"])
    p.add_argument("--store", help=ExtractConfig.help_texts()["store"])
    p.add_argument("--run", help="run name (default: the model folder or id's last part)")
    p.add_argument(
        "--list-modules",
        action="store_true",
        help="print the model's module paths usable as module:<path> sites and exit",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("info", help="runs, sites, shapes, dtypes, counts and bytes of a store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("commit", help="publish a sharded run whose parts are all complete")
    p.add_argument("store")
    p.add_argument("run")
    p.add_argument("--num-shards", type=int, required=True)
    p.set_defaults(func=_cmd_commit)

    p = sub.add_parser(
        "demo",
        help="extract the bundled MiniLM over the bundled corpus and show a query and an analysis",
    )
    p.add_argument("--store", default="demo.acts", help="store directory (default: demo.acts)")
    p.add_argument("--overwrite", action="store_true", help="re-extract even if present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "sql",
        help="run one SELECT over a store's tables (docs, tokens, vocab, runs, sites, results)",
    )
    p.add_argument("store")
    p.add_argument("query", help='one SELECT, e.g. "SELECT * FROM runs"; ? marks a --param')
    p.add_argument(
        "--format",
        choices=["table", "csv", "json", "parquet"],
        default="table",
        help="output format (default: table; parquet needs --out)",
    )
    p.add_argument("--out", help="write to this file instead of stdout")
    p.add_argument(
        "--param",
        action="append",
        metavar="VALUE",
        help="a value for the next ? of the query (repeat; numbers are passed as numbers)",
    )
    p.add_argument(
        "--max-rows", type=int, default=1000, help="rows shown by --format table (default: 1000)"
    )
    p.add_argument(
        "--max-width", type=int, default=40, help="column width of --format table (default: 40)"
    )
    p.set_defaults(func=_cmd_sql)

    p = sub.add_parser("export", help="write the vectors of a site (or of selected rows) to a file")
    p.add_argument("store")
    p.add_argument("--run", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--rows", help="a SELECT whose first column is the row ids (default: all rows)")
    p.add_argument("--param", action="append", metavar="VALUE", help="a value for a ? in --rows")
    p.add_argument(
        "--out",
        required=True,
        help=".npy ([n, d] array) or .parquet (columns row and vector, a fixed-size list)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        help="value type (default: the stored one; bfloat16 is written as float32)",
    )
    p.set_defaults(func=_cmd_export)
    from actstore.query import _cli_mapping, _cli_similarity, _cli_sparse

    for analysis in (_cli_similarity, _cli_mapping, _cli_sparse):
        analysis.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (1 for actstore errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        return func(args) or 0
    except ActstoreError as e:
        print("actstore: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "actstore: interrupted (a resumable job continues from its last checkpoint "
            "when re-run with the same arguments)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
