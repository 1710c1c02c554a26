"""A summary of a store: runs, sites, shapes, dtypes, counts and bytes on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from actstore.store.format import FORMAT_VERSION, run_dir
from actstore.store.manifest import read_manifest
from actstore.store.part import load_json, load_progress

__all__ = ["format_info", "store_info"]


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def store_info(store: str | Path) -> dict[str, Any]:
    """Describe ``store`` as a JSON-able dict (what ``actstore info --json`` prints).

    Committed runs are listed under ``runs``; runs still being written (or whose
    shards are not all done) under ``pending``, with the rows written so far.
    """
    store = Path(store)
    manifest = read_manifest(store)
    runs = []
    for name in sorted(manifest["runs"]):
        rj = load_json(run_dir(store, name) / "run.json")
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
    pending = []
    runs_root = store / "runs"
    if runs_root.is_dir():
        for rdir in sorted(runs_root.iterdir()):
            if rdir.name in manifest["runs"] or not (rdir / "parts").is_dir():
                continue
            parts = []
            for pdir in sorted((rdir / "parts").glob("part-*")):
                prog = load_progress(store, rdir.name, int(pdir.name.removeprefix("part-")))
                parts.append(
                    {
                        "part": pdir.name,
                        "rows": prog["rows"] if prog else 0,
                        "complete": bool(prog and prog["complete"]),
                    }
                )
            metas = [load_json(q / "meta.json") for q in sorted((rdir / "parts").glob("part-*"))]
            declared = [int(m["identity"].get("num_shards", 1)) for m in metas if m]
            pending.append(
                {
                    "run": rdir.name,
                    "parts": parts,
                    "num_parts": max([*declared, len(parts)]),
                    "bytes": _bytes(rdir),
                }
            )
    docs_dir = store / "docs"
    doc_ids: set[int] = set()
    for f in sorted(docs_dir.glob("*.parquet")) if docs_dir.is_dir() else []:
        run = f.name.split(".part-")[0]
        if run in manifest["runs"]:
            doc_ids.update(pq.read_table(f, columns=["doc_id"]).column(0).to_pylist())
    return {
        "store": str(store),
        "format_version": manifest["version"],
        "reader_version": FORMAT_VERSION,
        "docs": len(doc_ids),
        "bytes": _bytes(store),
        "runs": runs,
        "pending": pending,
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
    return "\n".join(lines)
