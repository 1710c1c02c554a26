"""Benchmark: ``extract --engine ray --workers N`` against one local job, end to end.

Each case is the real command line in a fresh process (``python -m actstore.cli
extract``), so the times include what a user waits for: imports, model loads, and for
Ray starting a local instance (no ``--address``) and its worker processes. The bundled
MiniLM over ``--docs`` distinct texts of 1-6 demo sentences (seed 0), into a fresh store
each time; rounds interleaved (medians reported). Also the bundled demo corpus itself
(321 short records), where start-up dominates. Prints a markdown table and writes JSON.

    python benchmarks/engine_ray.py                          # 3,000 docs, 3 workers, 2 rounds
    python benchmarks/engine_ray.py --docs 300 --repeats 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    command_line,
    interleave,
    machine_info,
    markdown_table,
    median,
    now_iso,
    write_json,
)
from _common import summary as timing_summary
from repeats import texts, write_jsonl

OUT = Path(__file__).parent / "out"


def run_cli(model: str, data: Path, store: Path, sites: str, extra: list[str]) -> dict[str, Any]:
    """One CLI extraction into a fresh ``store``: its wall time and ``--json`` summary."""
    shutil.rmtree(store, ignore_errors=True)
    cmd = [sys.executable, "-m", "actstore.cli", "extract", "--model", model, "--data"]
    cmd += [str(data), "--store", str(store), "--run", "r", "--sites", sites, "--quiet"]
    cmd += ["--device", "cpu", "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout)
    timings = json.loads((store / "runs/r/run.json").read_text())["timings"]
    return {"wall_s": wall, "rows": out["rows"], "forward_s": timings["forward_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sites", default="hidden.6")
    args = ap.parse_args()

    from actstore._demo import demo_corpus_path, minilm_path

    model = str(minilm_path())
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    corpora = {
        "demo corpus (321 records)": demo_corpus_path(),
        f"{args.docs:,} docs": write_jsonl(tmp / "c.jsonl", texts(args.docs, seed=0)),
    }
    ray = ["--engine", "ray", "--workers", str(args.workers)]
    results: dict[str, Any] = {}
    rows = []
    for label, data in corpora.items():
        cases = {
            "local": lambda d=data: run_cli(model, d, tmp / "local.acts", args.sites, []),
            "ray": lambda d=data: run_cli(model, d, tmp / "ray.acts", args.sites, ray),
        }
        got = interleave(cases, args.repeats)
        results[label] = got
        local = median([g["wall_s"] for g in got["local"]])
        on_ray = median([g["wall_s"] for g in got["ray"]])
        n_rows = got["local"][0]["rows"]
        assert all(g["rows"] == n_rows for case in got.values() for g in case)
        rows.append(
            [label, f"{n_rows:,}", f"{local:.1f}", f"{on_ray:.1f}", f"{on_ray / local:.2f}"]
        )
        results[label + " wall_s"] = {
            k: timing_summary([g["wall_s"] for g in v]) for k, v in got.items()
        }
    shutil.rmtree(tmp, ignore_errors=True)
    header = ["corpus", "rows", "local s", f"ray x{args.workers} s", "ray ÷ local"]
    print(markdown_table(header, rows))
    path = OUT / "engine_ray.json"
    write_json(
        path,
        {
            "created_at": now_iso(),
            "command": command_line(),
            "machine": machine_info(),
            "args": vars(args),
            "results": results,
        },
    )
    print(f"\nraw numbers: {path}")


if __name__ == "__main__":
    main()
