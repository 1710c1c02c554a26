"""What every subcommand shares: options generated from config dataclasses, the store and
``--run`` arguments, and the one printer (text or ``--json``) of every result.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from actstore.errors import ConfigError

if TYPE_CHECKING:
    from actstore.query.store import Store

__all__ = [
    "add_dataclass_options",
    "add_store_args",
    "dataclass_values",
    "emit",
    "field_help",
    "open_run",
    "run_name",
    "split_list",
]


@cache
def field_help(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under the field in the dataclass's source (a
    subclass's own docstring of a field it redefines wins over its base class's)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def split_list(text: str) -> list[str]:
    """A comma-separated option value as a list (``"a, b,"`` -> ``["a", "b"]``)."""
    return [s.strip() for s in text.split(",") if s.strip()]


def _float_tuple(flag: str) -> Callable[[str], tuple[float, ...]]:
    def parse(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(v) for v in split_list(text))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes comma-separated numbers, got {text!r}"
            ) from None

    return parse


def _mixed(flag: str, words: tuple[str, ...], allow_none: bool) -> Callable[[str], Any]:
    """A parser for ``Literal[...] | int | None`` options (e.g. ``--cv gcv|loo|5|none``)."""

    def parse(text: str) -> Any:
        if text in words:
            return text
        if allow_none and text == "none":
            return None
        try:
            return int(text)
        except ValueError:
            choices = ", ".join([*words, *(["none"] if allow_none else [])])
            raise argparse.ArgumentTypeError(
                f"{flag} must be one of {choices} or a whole number, got {text!r}"
            ) from None

    return parse


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: set[str] | frozenset[str] = frozenset(),
    aliases: Mapping[str, list[str]] | None = None,
    required: set[str] | frozenset[str] = frozenset(),
) -> None:
    """One ``--option`` per field of dataclass ``cls``, typed, with the field's docstring
    as help text and its default shown.

    Booleans that default to true become ``--no-<name>``; ``Literal`` fields get choices;
    ``tuple[float, ...]`` fields take comma-separated numbers; ``Literal[...] | int | None``
    fields take a word, a whole number or ``none``. Fields without a default are required.
    """
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    aliases = aliases or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag, *aliases.get(f.name, [])]
        hint = hints[f.name]
        must = f.default is dataclasses.MISSING or f.name in required
        default = None if f.default is dataclasses.MISSING else f.default
        text = helps.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if hint is bool:
            if default:
                parser.add_argument(
                    "--no-" + f.name.replace("_", "-"),
                    *aliases.get(f.name, []),
                    dest=f.name,
                    action="store_false",
                    default=True,
                    help=f"do not: {text[0].lower()}{text[1:]}" if text else None,
                )
            else:
                parser.add_argument(*names, dest=f.name, action="store_true", help=text)
            continue
        shown = "" if must or default is None else f" (default: {_shown(default)})"
        kwargs: dict[str, Any] = {"help": text + shown, "dest": f.name}
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = type(None) in typing.get_args(hint)
        is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        base = args[0] if is_union and len(args) == 1 else hint
        literals = [a for a in args if typing.get_origin(a) is typing.Literal] if is_union else []
        if is_union and literals and int in args:
            words = tuple(str(w) for a in literals for w in typing.get_args(a))
            kwargs["type"] = _mixed(flag, words, optional)
            kwargs["metavar"] = "|".join([*words, "N", *(["none"] if optional else [])])
        elif typing.get_origin(base) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(base))
            kwargs["type"] = str
        elif typing.get_origin(base) is tuple:
            kwargs["type"] = _float_tuple(flag)
            kwargs["metavar"] = "X,Y,..."
        else:
            kwargs["type"] = base if base in (int, float, str) else str
            kwargs["metavar"] = f.name.upper()
        parser.add_argument(*names, required=must, default=default, **kwargs)


def dataclass_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The parsed values of ``cls``'s fields that the parser defined."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def add_store_args(
    p: argparse.ArgumentParser,
    *,
    save: bool = False,
    overwrite: bool = False,
    plot: bool = False,
    seed: bool = False,
) -> None:
    """The store positional, ``--run``, ``--json`` and optionally ``--save`` (with
    ``--overwrite``), ``--overwrite`` alone (for commands that name their result),
    ``--plot`` and ``--seed``."""
    p.add_argument("store", help="store directory, or s3://bucket/prefix (read-only)")
    p.add_argument("--run", help="run name (default: the store's only run)")
    p.add_argument("--json", action="store_true", help="print JSON")
    if save:
        p.add_argument(
            "--save", metavar="NAME", help="save the result as results/NAME (a SQL view)"
        )
    if save or overwrite:
        p.add_argument(
            "--overwrite", action="store_true", help="replace a saved result of that name"
        )
    if plot:
        p.add_argument("--plot", metavar="FILE.png", help="write a PNG plot")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed of any random sample (default: 0)")


@contextmanager
def open_run(args: argparse.Namespace) -> Iterator[tuple[Store, str]]:
    """The store of ``args.store`` (read-only) and the run ``args.run`` resolved by
    :meth:`Store.resolve_run` (the only run when not given); closed afterwards."""
    from actstore.query.store import Store

    with Store(args.store) as store:
        yield store, store.resolve_run(getattr(args, "run", None))


def run_name(args: argparse.Namespace) -> str:
    """``args.run`` checked against the store, or the store's only run (see :func:`open_run`)."""
    with open_run(args) as (_, run):
        return run


def _text(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _lines(payload: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in payload.items():
        if isinstance(value, Mapping):
            yield from _lines(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            yield f"{prefix}{key}:"
            for item in value:
                yield "  " + ", ".join(f"{k}={_text(v)}" for k, v in item.items())
        else:
            yield f"{prefix}{key}: {_text(value)}"


def emit(args: argparse.Namespace, payload: Any) -> None:
    """Print a command's result: an :class:`~actstore.query.results.AnalysisResult`
    (its table; with ``--json`` its meta plus ``rows``) or a mapping of summary values
    (``key: value`` lines; with ``--json`` the mapping itself).

    Every command's JSON is one object: summary keys, and ``rows`` for tables.
    """
    from actstore.query.results import AnalysisResult

    if isinstance(payload, AnalysisResult):
        if args.json:
            print(json.dumps(payload.to_json(), indent=2, default=_json_default))
            return
        import pandas as pd

        if payload.table.empty:
            hint = payload.meta.get("hint")
            print("no rows" + (f": {hint}" if hint else ""))
            return
        table = payload.table.drop(
            columns=[c for c in ("edges", "counts") if c in payload.table], errors="ignore"
        )
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(table.to_string(index=False))
        return
    if not isinstance(payload, Mapping):
        raise ConfigError(f"cannot print a {type(payload).__name__}")  # pragma: no cover
    if args.json:
        print(json.dumps(dict(payload), indent=2, default=_json_default))
    else:
        print("\n".join(_lines(payload)))


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
