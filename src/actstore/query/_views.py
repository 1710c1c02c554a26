"""The views of a store's SQL connection: ``docs``, ``tokens``, ``vocab``, ``runs``,
``sites`` and one per saved result, each naming exactly the store files it reads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actstore.store.docs import LEGACY_RECORD_COLUMN, split_legacy
from actstore.store.reader import StoreReader

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = ["BUILTIN_VIEWS", "create_views"]

#: The views every store has, whatever it holds.
BUILTIN_VIEWS = ("docs", "tokens", "vocab", "runs", "sites")

_EMPTY_TOKENS = (
    "SELECT NULL::VARCHAR AS run, NULL::BIGINT AS row, NULL::BIGINT AS doc_id, "
    "NULL::INTEGER AS pos, NULL::INTEGER AS token_id, NULL::INTEGER AS start, "
    'NULL::INTEGER AS "end", NULL::BOOLEAN AS special WHERE false'
)
_EMPTY_VOCAB = (
    "SELECT NULL::VARCHAR AS run, NULL::INTEGER AS token_id, NULL::VARCHAR AS token, "
    "NULL::VARCHAR AS piece, NULL::BOOLEAN AS special, NULL::BIGINT AS count WHERE false"
)
_EMPTY_DOCS = (
    "SELECT NULL::BIGINT AS record, NULL::BIGINT AS doc_id, NULL::VARCHAR AS text, "
    "NULL::BOOLEAN AS empty, NULL::BIGINT AS repeat_of WHERE false"
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


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _docs_view(doc_files: list[list[Path]]) -> str:
    """``docs`` over each run's files: one row per input record, even if several runs read it."""
    new, old = split_legacy(f for run_files in doc_files for f in run_files)
    reads = [f"SELECT * FROM read_parquet({_files(new)}, union_by_name = true)"] if new else []
    if old:
        reads.append(
            f"SELECT * RENAME ({LEGACY_RECORD_COLUMN} AS record), text = '' AS empty, "
            f"NULL::BIGINT AS repeat_of FROM read_parquet({_files(old)}, union_by_name = true)"
        )
    if not reads:
        return _EMPTY_DOCS
    distinct = "DISTINCT " if sum(map(bool, doc_files)) > 1 else ""
    return f"SELECT {distinct}* FROM ({' UNION ALL BY NAME '.join(reads)}) ORDER BY record, doc_id"


def create_views(
    con: duckdb.DuckDBPyConnection, reader: StoreReader
) -> tuple[list[str], dict[str, pa.Table], list[str]]:
    """Create the store's views on ``con``: returns the view names, the in-memory tables
    the connection refers to (keep them alive) and the paths DuckDB may read."""
    import pyarrow as pa

    allowed: list[Path] = []
    token_parts, vocab_parts, doc_files = [], [], []
    runs_rows: list[dict[str, Any]] = []
    sites_rows: list[dict[str, Any]] = []
    for name in reader.runs:
        run = reader.run(name)
        if run.token_files:
            allowed += run.token_files
            token_parts.append(
                f"SELECT {_lit(name)} AS run, * FROM read_parquet({_files(run.token_files)})"
            )
        if run.vocab_file is not None:
            allowed.append(run.vocab_file)
            vocab_parts.append(
                f"SELECT {_lit(name)} AS run, * FROM read_parquet({_file(run.vocab_file)})"
            )
        doc_files.append(run.doc_files())
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
    allowed += [f for files in doc_files for f in files]
    con.execute(
        "CREATE VIEW tokens AS "
        + (" UNION ALL ".join(token_parts) if token_parts else _EMPTY_TOKENS)
    )
    con.execute(
        "CREATE VIEW vocab AS "
        + (" UNION ALL BY NAME ".join(vocab_parts) if vocab_parts else _EMPTY_VOCAB)
    )
    con.execute("CREATE VIEW docs AS " + _docs_view(doc_files))
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
        allowed.append(path)
        con.execute(f"CREATE VIEW {_ident(view)} AS SELECT * FROM read_parquet({_file(path)})")
        views.append(view)
    # DuckDB checks the pattern it is given as well as the files it matches
    return views, tables, sorted({str(p) for p in allowed} | {_glob_escaped(p) for p in allowed})
