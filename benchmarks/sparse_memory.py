"""Peak memory of the sparse analyses over a store: does it grow with the number of rows?

Two synthetic stores (one site of width ``--d``, random rows) hold N and 2N rows. Each case
runs in a fresh child process, which reports its peak RSS after the imports and the store's
opening (the baseline) and after the analysis:

* ``sparse encode``: OMP (k = ``--k``) of every row against the run's ``embed`` matrix
  (``--vocab`` atoms), codes streamed into the saved result;
* ``sparse learn``: a dictionary of ``--vocab`` atoms from ``--batches`` mini-batches, then
  the coding pass over every row;
* for comparison, what the analysis would hold if it read every row at once: the gather of
  all N rows (``Store.vectors``) — that memory grows with N.

The figure is peak memory above the baseline at 2N ÷ at N (1.0 = no growth; the issue's bar
is ≤ 1.1), for two measures:

* anonymous memory (``RssAnon`` of ``/proc/self/status``, sampled every 2 ms by a thread:
  Linux keeps no peak of it) — what the analysis allocates;
* peak RSS (``VmHWM``), which also counts the store's shard files: gathers memory-map them,
  so every page read stays mapped until the store closes. Those pages are the kernel's page
  cache, shared and dropped under memory pressure, but they do count in RSS and grow with
  the rows read. Prints a markdown table and writes ``benchmarks/out/sparse_memory.json``.

    python benchmarks/sparse_memory.py                 # N = 131,072 rows, d = 256: ~2 min
    python benchmarks/sparse_memory.py --rows 32768    # quick check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    command_line,
    fmt_bytes,
    machine_info,
    markdown_table,
    now_iso,
    peak_rss_self,
    timed,
    write_json,
)

OUT = Path(__file__).parent / "out"


def child(store: str, case: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from actstore.query.sparse.dictlearn import DictLearnConfig
    from actstore.query.sparse.on_store import encode_store, learn_store
    from actstore.query.store import Store

    with Store(store) as s:
        n = int(s.sql("SELECT count(*) FROM tokens").fetchall()[0][0])
        s.vectors("r", "hidden.0", np.arange(4, dtype=np.int64))
    base = peak_rss_self()
    anon = AnonPeak()
    if case == "encode":
        res, sec = timed(lambda: encode_store(store, "r", "hidden.0", name="enc", k=args.k))
        extra = {"fvu": res.metrics["fvu"]}
    elif case == "learn":
        cfg = DictLearnConfig(
            n_atoms=args.vocab, k=args.k, batch_size=256, max_batches=args.batches
        )
        res, sec = timed(lambda: learn_store(store, "r", "hidden.0", cfg, name="dl"))
        extra = {"fvu": res.metrics["fvu"]}
    else:  # the all-rows-at-once reference
        with Store(store) as s:
            X, sec = timed(lambda: s.vectors("r", "hidden.0", np.arange(n, dtype=np.int64)))
        extra = {"bytes": int(X.nbytes)}
    anon_base, anon_peak = anon.stop()
    return {
        "rows": n,
        "baseline": base,
        "peak": peak_rss_self(),
        "anon_baseline": anon_base,
        "anon_peak": anon_peak,
        "seconds": sec,
        **extra,
    }


def _anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("needs Linux (/proc/self/status RssAnon)")


class AnonPeak:
    """The largest ``RssAnon`` seen by a thread that samples it every 2 ms."""

    def __init__(self) -> None:
        import threading

        self.base = self.peak = _anon()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, _anon())

    def stop(self) -> tuple[int, int]:
        self._done.set()
        self._thread.join()
        return self.base, max(self.peak, _anon())


def make_store(path: Path, rows: int, args: argparse.Namespace) -> None:
    from actstore.store.synthetic import write_synthetic_run

    write_synthetic_run(
        path,
        "r",
        n_docs=rows // 64,
        tokens_per_doc=64,
        d=args.d,
        sites=("hidden.0",),
        vocab_size=args.vocab,
        docs_per_pool=256,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=131072, help="N (a multiple of 64)")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--vocab", type=int, default=256, help="atoms (embed rows)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batches", type=int, default=40, help="learn: mini-batches of 256")
    p.add_argument("--child", nargs=2, metavar=("STORE", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for label, rows in (("n", args.rows), ("2n", 2 * args.rows)):
            stores[label] = Path(tmp) / f"{label}.acts"
            print(f"writing a store of {rows:,} rows ...", flush=True)
            make_store(stores[label], rows, args)
        for case in ("encode", "learn", "gather-all"):
            for label in ("n", "2n"):
                cmd = [sys.executable, __file__, *sys.argv[1:], "--child", str(stores[label]), case]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                results[f"{case}/{label}"] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"  {case} {label}: {results[f'{case}/{label}']}", flush=True)
    rows = []
    for case in ("encode", "learn", "gather-all"):
        n, n2 = results[f"{case}/n"], results[f"{case}/2n"]
        entry: dict[str, Any] = {}
        for what, peak, base in (
            ("anon", "anon_peak", "anon_baseline"),
            ("rss", "peak", "baseline"),
        ):
            grow_n, grow_2n = n[peak] - n[base], n2[peak] - n2[base]
            ratio = grow_2n / grow_n if grow_n > 0 else float("nan")
            entry[what] = {"growth_n": grow_n, "growth_2n": grow_2n, "ratio": ratio}
        results[case] = entry
        rows.append(
            [
                case,
                fmt_bytes(entry["anon"]["growth_n"]),
                fmt_bytes(entry["anon"]["growth_2n"]),
                f"{entry['anon']['ratio']:.2f}",
                f"{entry['rss']['ratio']:.2f}",
                f"{n['seconds']:.1f} / {n2['seconds']:.1f}",
            ]
        )
    header = [
        "case",
        f"anon. peak above baseline, N={args.rows:,}",
        "at 2N",
        "anon. 2N ÷ N",
        "RSS (incl. mapped store) 2N ÷ N",
        "seconds N / 2N",
    ]
    print()
    print(markdown_table(header, rows))
    data = {
        "command": command_line(),
        "when": now_iso(),
        "machine": machine_info(),
        "args": {k: v for k, v in vars(args).items() if k != "child"},
        "results": results,
    }
    print(f"\nwrote {write_json(OUT / 'sparse_memory.json', data)}")


if __name__ == "__main__":
    main()
