"""``actstore sql | export``: SQL over a store, and vectors out of it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_commands"]


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
    from actstore.query.export import write_query_result

    with actstore.open(args.store) as store:
        result = store.sql(args.query, [_param(v) for v in args.param or []])
        write_query_result(
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


def add_commands(sub: Any) -> None:
    """Register ``sql`` and ``export`` on an argparse ``subparsers``."""
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
    p.add_argument("--run", required=True, help="the run whose vectors to write")
    p.add_argument("--site", required=True, help="the site, e.g. hidden.6")
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
