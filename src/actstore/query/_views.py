"""The views of a store's SQL connection: ``docs``, ``tokens``, ``vocab``, ``runs``,
``sites`` and one per saved result, each naming exactly the store files it reads.

A damaged Parquet file never disables the other views: a run whose tokens or vocab file
is damaged answers every query that reaches its rows with a
:class:`~actstore.errors.StoreCorruptError` naming the file, and a damaged docs or result
file does the same for its view (which is left out; the engine maps the missing name back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actstore.errors import StoreCorruptError
from actstore.store._objects import ObjectPath
from actstore.store._parquet import read_schema
from actstore.store.docs import LEGACY_RECORD_COLUMN, split_legacy
from actstore.store.format import TOKENS_COLUMNS
from actstore.store.reader import StoreReader, parquet_problem

if TYPE_CHECKING:
    import duckdb

__all__ = ["BUILTIN_VIEWS", "Views", "create_views"]

#: The views every store has, whatever it holds.
BUILTIN_VIEWS = ("docs", "tokens", "vocab", "runs", "sites", "losses")

_EMPTY_TOKENS = (
    "SELECT NULL::VARCHAR AS run, NULL::BIGINT AS row, NULL::BIGINT AS doc_id, "
    "NULL::INTEGER AS pos, NULL::INTEGER AS token_id, NULL::INTEGER AS start, "
    'NULL::INTEGER AS "end", NULL::BOOLEAN AS special WHERE false'
)
_EMPTY_VOCAB = (
    "SELECT NULL::VARCHAR AS run, NULL::INTEGER AS token_id, NULL::VARCHAR AS token, "
    "NULL::VARCHAR AS piece, NULL::BOOLEAN AS special, NULL::BIGINT AS count WHERE false"
)
_EMPTY_LOSSES = (
    "SELECT NULL::VARCHAR AS run, NULL::BIGINT AS doc_id, NULL::DOUBLE AS loss, "
    "NULL::INTEGER AS step WHERE false"
)
_EMPTY_DOCS = (
    "SELECT NULL::BIGINT AS record, NULL::BIGINT AS doc_id, NULL::VARCHAR AS text, "
    "NULL::BOOLEAN AS empty, NULL::BIGINT AS repeat_of WHERE false"
)
#: DuckDB types of the tokens and vocab columns, in file order (tokens views union by
#: position), for the stand-in part of a damaged run.
_DUCKDB_TYPES = {"int64": "BIGINT", "int32": "INTEGER", "bool": "BOOLEAN"}
_TOKENS_TYPES = {c: _DUCKDB_TYPES[t] for c, t in TOKENS_COLUMNS.items()}
_LOSSES_TYPES = {"doc_id": "BIGINT", "loss": "DOUBLE"}
_VOCAB_TYPES = {
    "token_id": "INTEGER",
    "token": "VARCHAR",
    "piece": "VARCHAR",
    "special": "BOOLEAN",
    "count": "BIGINT",
}
_FIX_DOCS = (
    "the store is damaged: restore the file from a backup, or re-extract the run that wrote "
    "it with --overwrite"
)


def _lit(value: str) -> str:
    """A SQL string literal of a store path or run name (never of user input)."""
    return "'" + value.replace("'", "''") + "'"


def _glob_escaped(path: Path) -> str:
    """``path`` with DuckDB's glob characters bracketed, so ``a[1]`` names that folder only
    (not a neighbour ``a1``) and ``*`` / ``?`` in a store path match themselves.

    >>> _glob_escaped(Path("/data/a[1]/x*.parquet"))
    '/data/a[[]1]/x[*].parquet'
    """
    return "".join(f"[{c}]" if c in "[*?" else c for c in str(path))


def _file(path: Path) -> str:
    """A SQL literal naming exactly the file ``path`` for ``read_parquet``."""
    return _lit(_glob_escaped(path))


def _files(paths: Sequence[Path]) -> str:
    return "[" + ", ".join(_file(p) for p in paths) + "]"


class _Scans:
    """``FROM`` expressions over Parquet files: DuckDB's ``read_parquet`` for local files;
    for a store on object storage (no DuckDB extension needed), pyarrow datasets on its
    filesystem registered on the connection, scanned with projection and filter pushdown.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.datasets: dict[str, Any] = {}

    def __call__(self, files: Sequence[Path], by_name: bool = False) -> str:
        """A relation over ``files`` (columns matched by name across files if ``by_name``)."""
        if not isinstance(files[0], ObjectPath):
            opt = ", union_by_name = true" if by_name else ""
            return f"read_parquet({_files(files)}{opt})"
        if by_name and len(files) > 1:  # each file its own dataset, unioned by name
            parts = [f"SELECT * FROM {self([f])}" for f in files]
            return "(" + " UNION ALL BY NAME ".join(parts) + ")"
        import pyarrow.dataset as ds

        name = f"_actstore_ds_{len(self.datasets)}"
        keys = [f.key for f in files if isinstance(f, ObjectPath)]
        self.datasets[name] = ds.dataset(keys, filesystem=files[0].fs, format="parquet")
        self.con.register(name, self.datasets[name])
        return name


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _docs_view(doc_files: list[list[Path]], scan: _Scans) -> str:
    """``docs`` over each run's files: one row per input record, even if several runs read it."""
    new, old = split_legacy(f for run_files in doc_files for f in run_files)
    reads = [f"SELECT * FROM {scan(new, by_name=True)}"] if new else []
    if old:
        reads.append(
            f"SELECT * RENAME ({LEGACY_RECORD_COLUMN} AS record), text = '' AS empty, "
            f"NULL::BIGINT AS repeat_of FROM {scan(old, by_name=True)}"
        )
    if not reads:
        return _EMPTY_DOCS
    distinct = "DISTINCT " if sum(map(bool, doc_files)) > 1 else ""
    return f"SELECT {distinct}* FROM ({' UNION ALL BY NAME '.join(reads)}) ORDER BY record, doc_id"


def _one_line(message: str) -> str:
    """DuckDB's message without the echoed query and caret lines, on one line."""
    kept = []
    for line in message.splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            kept.append(line.strip())
    return " ".join(kept)


@dataclass
class Views:
    """What :func:`create_views` made."""

    names: list[str]
    """The view names, built-in first."""
    tables: dict[str, Any]
    """In-memory tables and datasets the connection refers to (keep them alive)."""
    allowed: list[str]
    """The paths (and their glob-escaped forms) DuckDB may read."""
    damaged: list[str] = field(default_factory=list)
    """Messages raised by the stand-in view parts of damaged files."""
    absent: dict[str, str] = field(default_factory=dict)
    """Views left out because their files are damaged (lower-case name → message)."""


def _damage(con: duckdb.DuckDBPyConnection, files: Sequence[Path], fix: str) -> str | None:
    """One line naming the first damaged file of ``files`` (None if all read): ends that are
    not Parquet's, or a footer DuckDB cannot read."""
    import duckdb

    for f in files:
        problem = parquet_problem(f)
        if problem is not None:
            return f"{f}: {problem}; {fix}"
        if isinstance(f, ObjectPath):
            try:
                read_schema(f, fix=fix)  # the footer decodes
            except StoreCorruptError as e:
                return str(e)
    if isinstance(files[0], ObjectPath):
        return None
    try:
        con.execute(f"DESCRIBE SELECT * FROM read_parquet({_files(files)}, union_by_name = true)")
    except duckdb.Error as e:
        msg = _one_line(str(e))
        named = next((f for f in files if str(f) in msg), files[0])
        return f"{named} is damaged ({msg}); {fix}"
    return None


def _damaged_part(run: str, columns: dict[str, str], message: str) -> str:
    """A view part standing for ``run``'s rows of a damaged table: every query that reaches
    them fails with ``message`` (a filter on ``run`` alone skips them)."""
    err = f"error({_lit(message)})"
    cols = ", ".join(f"{err}::{t} AS {_ident(c)}" for c, t in columns.items())
    return f"SELECT {_lit(run)} AS run, {cols} WHERE {err} IS NULL"


def create_views(con: duckdb.DuckDBPyConnection, reader: StoreReader) -> Views:
    """Create the store's views on ``con`` (a file that does not read stands in as an
    error, see the module docstring)."""
    import pyarrow as pa

    scan = _Scans(con)
    allowed: list[Path] = []
    damaged: list[str] = []
    absent: dict[str, str] = {}
    token_parts, vocab_parts, doc_files, loss_parts = [], [], [], []
    runs_rows: list[dict[str, Any]] = []
    sites_rows: list[dict[str, Any]] = []
    for name in reader.runs:
        run = reader.run(name)
        fix = (
            "the store is damaged: restore the file from a backup, or re-extract run "
            f"{name!r} with --overwrite"
        )
        if run.token_files:
            bad = _damage(con, run.token_files, fix)
            if bad is not None:
                damaged.append(bad)
                token_parts.append(_damaged_part(name, _TOKENS_TYPES, bad))
            else:
                allowed += run.token_files
                token_parts.append(f"SELECT {_lit(name)} AS run, * FROM {scan(run.token_files)}")
        if run.vocab_file is not None:
            bad = _damage(con, [run.vocab_file], fix)
            if bad is not None:
                damaged.append(bad)
                vocab_parts.append(_damaged_part(name, _VOCAB_TYPES, bad))
            else:
                allowed.append(run.vocab_file)
                vocab_parts.append(f"SELECT {_lit(name)} AS run, * FROM {scan([run.vocab_file])}")
        doc_files.append(run.doc_files())
        if (losses := run.losses_file()) is not None:
            bad = _damage(con, [losses], fix)
            if bad is not None:
                damaged.append(bad)
                loss_parts.append(_damaged_part(name, _LOSSES_TYPES, bad))
            else:
                allowed.append(losses)
                loss_parts.append(f"SELECT {_lit(name)} AS run, * FROM {scan([losses])}")
        meta = run.meta
        entry = reader.manifest["runs"][name]
        runs_rows.append(
            {
                "run": name,
                "model": str(meta["model"].get("id", "")),
                "model_type": str(meta["model"].get("model_type", "")),
                "dtype": meta["dtype"],
                "n_rows": run.n_rows,
                "n_docs": int(entry["n_docs"]),
                "num_parts": int(entry["num_parts"]),
                "sites": run.sites,
                "committed_at": entry["committed_at"],
            }
        )
        for s in meta["sites"]:
            sites_rows.append(
                {
                    "run": name,
                    "site": s["name"],
                    "d": s["d"],
                    "dtype": s["dtype"],
                    "n_rows": run.n_rows,
                    "describes": s.get("describes", ""),
                }
            )
    all_docs = [f for files in doc_files for f in files]
    bad_docs = _damage(con, all_docs, _FIX_DOCS) if all_docs else None
    if bad_docs is None:
        allowed += all_docs
    con.execute(
        "CREATE VIEW tokens AS "
        + (" UNION ALL ".join(token_parts) if token_parts else _EMPTY_TOKENS)
    )
    con.execute(
        "CREATE VIEW vocab AS "
        + (" UNION ALL BY NAME ".join(vocab_parts) if vocab_parts else _EMPTY_VOCAB)
    )
    if bad_docs is None:
        con.execute("CREATE VIEW docs AS " + _docs_view(doc_files, scan))
    else:
        absent["docs"] = bad_docs
    con.execute(
        "CREATE VIEW losses AS "
        # the empty part first: every run's losses get a step column (NULL but in an
        # optimisation run) and keep the view's column order
        + " UNION ALL BY NAME ".join([_EMPTY_LOSSES, *loss_parts])
    )
    runs_schema = pa.schema(
        [
            ("run", pa.string()),
            ("model", pa.string()),
            ("model_type", pa.string()),
            ("dtype", pa.string()),
            ("n_rows", pa.int64()),
            ("n_docs", pa.int64()),
            ("num_parts", pa.int64()),
            ("sites", pa.list_(pa.string())),
            ("committed_at", pa.string()),
        ]
    )
    sites_schema = pa.schema(
        [
            ("run", pa.string()),
            ("site", pa.string()),
            ("d", pa.int64()),
            ("dtype", pa.string()),
            ("n_rows", pa.int64()),
            ("describes", pa.string()),
        ]
    )
    tables = {
        "runs": pa.Table.from_pylist(runs_rows, schema=runs_schema),
        "sites": pa.Table.from_pylist(sites_rows, schema=sites_schema),
    }
    for name, table in tables.items():
        con.register(f"_actstore_{name}", table)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _actstore_{name}")
    views = list(BUILTIN_VIEWS)
    for name, path in reader.result_files().items():
        view = name if name not in BUILTIN_VIEWS else f"result_{name}"
        views.append(view)
        bad = _damage(con, [path], f"the saved result {name!r} is damaged: save it again")
        if bad is not None:
            absent[view.lower()] = bad
            continue
        allowed.append(path)
        con.execute(f"CREATE VIEW {_ident(view)} AS SELECT * FROM {scan([path])}")
    # DuckDB checks the pattern it is given as well as the files it matches (an object
    # store's files are read by pyarrow, never by DuckDB: nothing to allow)
    local = [p for p in allowed if not isinstance(p, ObjectPath)]
    paths = sorted({str(p) for p in local} | {_glob_escaped(p) for p in local})
    return Views(views, {**tables, **scan.datasets}, paths, damaged, absent)
