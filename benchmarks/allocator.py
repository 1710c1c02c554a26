"""Benchmark how an extraction hands freed memory back: speed and peak RSS, A/B.

Each round runs the same extraction (the bundled MiniLM, every hidden state, float16,
over ``--docs`` seeded demo docs, see ``extract.py``) in a fresh process per mode,
interleaved, and reports the median wall time, forward time (run.json ``forward_s``) and
the largest peak RSS (``ru_maxrss``) per mode:

* ``flat``: what ``extract()`` does (glibc's ``M_MMAP_THRESHOLD`` at 1 MiB while the pools
  run, so freed batch buffers go back to the OS; 32 MiB afterwards; and torch's
  ``THP_MEM_ALLOC_ENABLE=1``, so those fresh mappings are faulted in as 2 MiB huge pages);
* ``flat4k``: the threshold with 4 KiB pages (``THP_MEM_ALLOC_ENABLE=0``: before 2026-12-02);
* ``trim``: no threshold, ``malloc_trim(0)`` every 0.25 s from a thread instead;
* ``none``: neither (glibc's adaptive defaults).

``trim`` and ``none`` run with 4 KiB pages; ``+thp`` after a mode name (``none+thp``) runs
it with huge pages.

    python benchmarks/allocator.py --docs 2000 --repeats 3
    python benchmarks/allocator.py --docs 8000 --repeats 1 --modes flat,flat4k
    python benchmarks/allocator.py --gpt2 --docs 4000 --repeats 3   # one_site.py's model
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import command_line, machine_info, median, now_iso, write_json

from extract import write_corpus

OUT = Path(__file__).parent / "out"


def child(mode: str, data: str, store: str, model: str | None) -> None:
    """One extraction in this process with allocator ``mode``; prints its figures. ``model``:
    a saved tiny GPT-2 (its ``hidden.2`` as float32, as ``one_site.py`` caches it), or None
    for MiniLM (every hidden state as float16)."""
    import contextlib
    import ctypes
    import threading

    from actstore.extract import runner

    libc = ctypes.CDLL("libc.so.6")
    if mode.startswith(("trim", "none")):
        runner.flat_memory = contextlib.nullcontext  # type: ignore[assignment]
    if mode.startswith("trim"):

        def trim() -> None:
            while True:
                time.sleep(0.25)
                libc.malloc_trim(0)

        threading.Thread(target=trim, daemon=True).start()
    from actstore._demo import minilm_path
    from actstore.extract.config import ExtractConfig
    from actstore.extract.runner import extract

    config = ExtractConfig(
        model=model or str(minilm_path()),
        data=data,
        store=store,
        run="b",
        sites="hidden.2" if model else "all",
        dtype="float32" if model else "float16",
        device="cpu",
        quiet=True,
    )
    t0 = time.perf_counter()
    result = extract(config)
    out = {
        "wall_s": time.perf_counter() - t0,
        "forward_s": (result.run_json or {}).get("timings", {}).get("forward_s"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=2000, help="docs (default 2000)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--modes", default="flat,flat4k,trim,none", help="comma-separated modes")
    p.add_argument(
        "--gpt2", action="store_true", help="the tiny GPT-2 of one_site.py instead of MiniLM"
    )
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--child-model", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, args.child_model)
        return
    modes = args.modes.split(",")
    tmp = Path(tempfile.mkdtemp(dir=OUT if OUT.is_dir() else None))
    try:
        data = write_corpus(tmp / "corpus.jsonl", args.docs, 0)
        model = None
        if args.gpt2:
            from one_site import build_gpt2

            model = build_gpt2(
                tmp / "gpt2", n_layer=4, n_embd=256, n_positions=1024, vocab=4096, seed=0
            )
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for k in range(args.repeats):
            for mode in modes if k % 2 == 0 else modes[::-1]:
                store = tmp / f"{mode}.acts"
                shutil.rmtree(store, ignore_errors=True)
                cmd = [sys.executable, __file__, "--child", mode, str(data), str(store)]
                cmd += ["--child-model", str(model)] if model else []
                env = {**os.environ, "HF_HUB_OFFLINE": "1"}
                huge = mode == "flat" or mode.endswith("+thp")
                env["THP_MEM_ALLOC_ENABLE"] = "1" if huge else "0"
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"  {mode}: {runs[mode][-1]}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = {
        m: {
            "wall_s": median([r["wall_s"] for r in v]),
            "forward_s": median([r["forward_s"] for r in v]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in v),
        }
        for m, v in runs.items()
    }
    what = "tiny GPT-2, hidden.2 float32" if args.gpt2 else "MiniLM, all hidden states float16"
    print(f"\n{what}, {args.docs:,} docs, {args.repeats} interleaved rounds, medians (RSS: max)")
    print(f"{'mode':<10} {'wall s':>8} {'forward s':>10} {'peak RSS MB':>12}")
    for m, r in rows.items():
        print(f"{m:<10} {r['wall_s']:>8.2f} {r['forward_s']:>10.2f} {r['peak_rss_mb']:>12.0f}")
    OUT.mkdir(exist_ok=True)
    write_json(
        OUT / f"allocator{'-gpt2' if args.gpt2 else ''}-{args.docs}.json",
        {
            "model": "tiny-gpt2" if args.gpt2 else "minilm",
            "docs": args.docs,
            "modes": rows,
            "runs": runs,
            "machine": machine_info(),
            "command": command_line(),
            "when": now_iso(),
        },
    )


if __name__ == "__main__":
    main()
