"""A summary of a store: runs, sites, shapes, dtypes, counts and bytes on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from actstore.store._objects import ObjectPath, store_path
from actstore.store._parquet import read_table
from actstore.store.docs import LEGACY_RECORD_COLUMN, has_records
from actstore.store.format import (
    DOCS_DIR,
    FORMAT_VERSION,
    RUNS_DIR,
    docs_file_part,
    part_name,
    run_dir,
    staging_dir,
)
from actstore.store.manifest import read_manifest, read_run_json
from actstore.store.part import iter_part_metas, load_progress, part_indices
from actstore.store.results import result_summaries

__all__ = ["format_info", "store_info"]


def _bytes(path: Path) -> int:
    if isinstance(path, ObjectPath):
        return path.total_bytes()
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def store_info(store: str | Path) -> dict[str, Any]:
    """Describe ``store`` as a JSON-able dict (what ``actstore info --json`` prints).

    Committed runs are listed under ``runs``; runs still being written (or whose
    shards are not all done) under ``pending``, with the rows written so far.
    """
    store = store_path(store)
    manifest = read_manifest(store)
    runs = []
    for name in sorted(manifest["runs"]):
        rj = read_run_json(store, name)
        n_rows = rj["counts"]["rows"]
        runs.append(
            {
                "run": name,
                "model": rj["model"].get("id"),
                "model_type": rj["model"].get("model_type"),
                "dtype": rj["dtype"],
                "rows": n_rows,
                "docs": rj["counts"].get("docs", 0),
                "parts": len(rj["parts"]),
                "sites": [
                    {"name": s["name"], "shape": [n_rows, s["d"]], "dtype": s["dtype"]}
                    for s in rj["sites"]
                ],
                "matrices": rj["matrices"],
                "centroids": rj.get("centroids", []),
                "counts": rj["counts"],
                "bytes": _bytes(run_dir(store, name)),
                "committed_at": rj["committed_at"],
            }
        )
    runs_root = store / RUNS_DIR
    pending = [
        _pending(store, rdir.name)
        for rdir in (sorted(runs_root.iterdir()) if runs_root.is_dir() else [])
        if rdir.name not in manifest["runs"] and staging_dir(store, rdir.name).is_dir()
    ]
    docs_dir = store / DOCS_DIR
    records: set[tuple[int, int]] = set()  # a record read by several runs counts once
    for f in sorted(docs_dir.glob("*.parquet")) if docs_dir.is_dir() else []:
        if any(docs_file_part(run, f.name) is not None for run in manifest["runs"]):
            number = "record" if has_records(f) else LEGACY_RECORD_COLUMN
            table = read_table(f, [number, "doc_id"])
            cols = [c.to_pylist() for c in table.columns]
            records.update(zip(*cols, strict=True))
    return {
        "store": str(store),
        "format_version": manifest["version"],
        "reader_version": FORMAT_VERSION,
        "docs": len(records),
        "bytes": _bytes(store),
        "runs": runs,
        "pending": pending,
        "results": result_summaries(store),
    }


def _pending(store: Path, run: str) -> dict[str, Any]:
    """A run not yet committed: its staged parts and the rows each has checkpointed."""
    parts = []
    for index in part_indices(store, run):
        prog = load_progress(store, run, index)
        parts.append(
            {
                "part": part_name(index),
                "rows": prog["rows"] if prog else 0,
                "complete": bool(prog and prog["complete"]),
            }
        )
    declared = [
        int(cast("int", meta["identity"].get("num_shards", 1)))
        for _, meta in iter_part_metas(store, run)
    ]
    return {
        "run": run,
        "parts": parts,
        "num_parts": max([*declared, len(parts)]),
        "bytes": _bytes(run_dir(store, run)),
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_info(info: dict[str, Any]) -> str:
    """Render :func:`store_info` output as text for people."""
    lines = [
        f"store {info['store']}  (format v{info['format_version']}, {info['docs']:,} docs, "
        f"{_size(info['bytes'])})"
    ]
    if not info["runs"]:
        lines.append("  no committed runs")
    for r in info["runs"]:
        lines.append(
            f"  run {r['run']}: {r['model']} ({r['model_type']}), {r['rows']:,} token rows, "
            f"{r['docs']:,} docs, {r['parts']} part(s), {_size(r['bytes'])}"
        )
        names = [s["name"] for s in r["sites"]] + [f"[{m}]" for m in r["matrices"]]
        width = max(28, *(len(n) for n in names))
        for s in r["sites"]:
            lines.append(f"    {s['name']:<{width}} {tuple(s['shape'])!s:<18} {s['dtype']}")
        for m, shape in r["matrices"].items():
            lines.append(f"    {'[' + m + ']':<{width}} {tuple(shape)!s:<18} float32")
        if r["centroids"]:
            lines.append(f"    centroids for {len(r['centroids'])} site(s)")
    for p in info["pending"]:
        done = sum(x["complete"] for x in p["parts"])
        rows = sum(x["rows"] for x in p["parts"])
        lines.append(
            f"  pending run {p['run']}: {done}/{p['num_parts']} part(s) complete, "
            f"{rows:,} rows so far (not visible to readers until committed)"
        )
    results = info.get("results") or []
    if results:
        lines.append(f"  {len(results)} saved result(s) (SQL views):")
        width = max(len(r["name"]) for r in results)
        for r in results:
            where = "/".join(str(x) for x in (r["run"], r["site"]) if x)
            rows = "?" if r["rows"] is None else f"{r['rows']:,}"
            lines.append(
                f"    {r['name']:<{width}}  {r['analysis'] or '?'} on {where or '?'}, "
                f"{rows} rows, {r['created_at'] or '?'}"
            )
    return "\n".join(lines)
