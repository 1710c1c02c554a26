"""Benchmark store queries: a selective SQL filter, a random-row gather, a full site scan.

Builds (or reuses) a synthetic store of ``--rows`` token rows (d=384, float16, one site)
in ``benchmarks/out/``, writes the same site once as an uncompressed ``.npy`` and compares
against NumPy on its memory map. Every timing is the median of ``--repeats`` runs after a
warm-up pass on both sides (both warm in the page cache). Prints a table and writes
``benchmarks/out/query.json`` (and a copy named after the row count).

    python benchmarks/query.py                 # 10,000,000 rows (builds ~8 GB once)
    python benchmarks/query.py --rows 200000   # quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import actstore
from actstore.store.format import StorageDType
from actstore.store.synthetic import write_synthetic_run

OUT = Path(__file__).parent / "out"
RUN, SITE, D, VOCAB, TOKENS_PER_DOC = "bench", "hidden.0", 384, 30522, 100
DTYPE: StorageDType = "float16"


def build(path: Path, rows: int, rebuild: bool) -> None:
    """Write the synthetic store unless one with ``rows`` rows is there."""
    manifest = path / "actstore.json"
    if not rebuild and manifest.is_file():
        runs = json.loads(manifest.read_text())["runs"]
        if runs.get(RUN, {}).get("n_rows") == rows:
            return
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"building {path} ({rows:,} rows, d={D}, {DTYPE}) ...", flush=True)
    write_synthetic_run(
        path,
        RUN,
        n_docs=rows // TOKENS_PER_DOC,
        tokens_per_doc=TOKENS_PER_DOC,
        d=D,
        sites=(SITE,),
        dtype=DTYPE,
        vocab_size=VOCAB,
        docs_per_pool=2000,
    )
    print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)


def write_npy(store: actstore.Store, path: Path, rebuild: bool) -> np.memmap[Any, Any]:
    """The site as an uncompressed ``.npy`` (written once from the store), memory-mapped."""
    n = store.run_info(RUN)["counts"]["rows"]
    if rebuild or not path.is_file():
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, D))
        for rows, x in store.iter_vectors(RUN, SITE, batch_rows=1 << 16):
            mm[rows[0] : rows[-1] + 1] = x
        mm.flush()
        del mm
    out: np.memmap[Any, Any] = np.load(path, mmap_mode="r")
    return out


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def paired(
    ours: Callable[[Any], object],
    base: Callable[[Any], object],
    make: Callable[[], Any],
    repeats: int,
) -> tuple[float, float]:
    """Median ms of ``ours(arg)`` and ``base(arg)`` over fresh ``arg = make()`` each repeat."""
    a: list[float] = []
    b: list[float] = []
    for i in range(repeats):
        arg = make()
        order = [(ours, a), (base, b)] if i % 2 == 0 else [(base, b), (ours, a)]
        for fn, acc in order:
            t0 = time.perf_counter()
            fn(arg)
            acc.append(time.perf_counter() - t0)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="token rows (default 10M)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median)")
    parser.add_argument("--gather", type=int, default=10_000, help="rows per random gather")
    parser.add_argument("--batch-rows", type=int, default=1 << 16, help="rows per scan block")
    parser.add_argument("--rebuild", action="store_true", help="rewrite the store and .npy")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"query-{args.rows}.acts"
    build(path, args.rows, args.rebuild)
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {
        "rows": args.rows,
        "d": D,
        "dtype": DTYPE,
        "repeats": args.repeats,
        "machine": f"{platform.machine()} {platform.processor() or ''} cpus={_cpus()}".strip(),
    }
    with actstore.open(path) as s:
        mm = write_npy(s, OUT / f"query-{args.rows}.npy", args.rebuild)
        n, batch = len(mm), args.batch_rows

        # -- full scan: sum of every block, same block size on both sides
        def scan_store(_: object) -> None:
            for _, x in s.iter_vectors(RUN, SITE, batch_rows=batch):
                x.sum(axis=0, dtype=np.float32)

        def scan_npy(_: object) -> None:
            for start in range(0, n, batch):
                np.asarray(mm[start : start + batch]).sum(axis=0, dtype=np.float32)

        scan_store(None)  # warm-up: both files read once into the page cache
        scan_npy(None)
        reps = max(3, args.repeats // 2) if n > 2_000_000 else args.repeats
        ours, base = paired(scan_store, scan_npy, lambda: None, reps)
        gb = n * D * 2 / 1e9
        results["scan"] = {
            "store_ms": ours,
            "memmap_ms": base,
            "ratio": ours / base,
            "store_GBps": gb / (ours / 1e3),
            "memmap_GBps": gb / (base / 1e3),
            "batch_rows": batch,
        }

        # -- random gather: fresh random rows each repeat (pages not yet mapped either side)
        k = args.gather

        def make() -> np.ndarray[Any, np.dtype[np.int64]]:
            return np.asarray(rng.integers(0, n, k), np.int64)

        probe = make()
        if not np.array_equal(s.vectors(RUN, SITE, probe), mm[probe]):
            raise SystemExit("gather returned different rows than the .npy")
        ours, base = paired(lambda r: s.vectors(RUN, SITE, r), lambda r: mm[r], make, args.repeats)
        results["gather_fresh"] = {
            "rows": k,
            "store_ms": ours,
            "memmap_ms": base,
            "ratio": ours / base,
        }
        # the same rows again and again: both sides hot (mapped pages), pure overhead
        fixed = make()
        s.vectors(RUN, SITE, fixed)
        mm[fixed]
        ours, base = paired(
            lambda r: s.vectors(RUN, SITE, r), lambda r: mm[r], lambda: fixed, args.repeats
        )
        results["gather_hot"] = {
            "rows": k,
            "store_ms": ours,
            "memmap_ms": base,
            "ratio": ours / base,
        }

        # -- selective SQL filter: the rows of one token id (about n / vocab rows)
        q = "SELECT row FROM tokens WHERE run = ? AND token_id = ?"
        s.sql(q, [RUN, 123]).fetchnumpy()
        hits = len(s.sql(q, [RUN, 123]).fetchnumpy()["row"])
        ids = iter(rng.integers(0, VOCAB, 10 * args.repeats).tolist())
        results["sql_filter"] = {
            "ms": median_ms(lambda: s.sql(q, [RUN, next(ids)]).fetchnumpy(), args.repeats),
            "hits": hits,
        }
        results["sql_count_by_token"] = {
            "ms": median_ms(
                lambda: s.sql(
                    "SELECT token_id, count(*) FROM tokens WHERE run = ? GROUP BY token_id", [RUN]
                ).fetchall(),
                args.repeats,
            )
        }
    text = json.dumps(results, indent=2) + "\n"
    (OUT / "query.json").write_text(text)
    (OUT / f"query-{args.rows}.json").write_text(text)
    _print(results)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _print(r: dict[str, Any]) -> None:
    print(f"\nstore: {r['rows']:,} rows x d={r['d']} {r['dtype']}   ({r['machine']})")
    print(f"{'measure':<40} {'actstore':>12} {'np.memmap':>12} {'ratio':>7}")
    sc = r["scan"]
    print(
        f"{'full scan, blocks of ' + str(sc['batch_rows']) + ' (ms)':<40} "
        f"{sc['store_ms']:>12.0f} {sc['memmap_ms']:>12.0f} {sc['ratio']:>7.2f}"
    )
    print(f"{'  throughput (GB/s)':<40} {sc['store_GBps']:>12.2f} {sc['memmap_GBps']:>12.2f}")
    for key, label in (("gather_fresh", "fresh rows"), ("gather_hot", "same rows again")):
        g = r[key]
        name = f"gather {g['rows']:,} random rows, {label} (ms)"
        print(f"{name:<40} {g['store_ms']:>12.2f} {g['memmap_ms']:>12.2f} {g['ratio']:>7.2f}")
    print(f"{'SQL: rows of one token_id (ms)':<40} {r['sql_filter']['ms']:>12.1f}")
    print(f"{'SQL: count(*) GROUP BY token_id (ms)':<40} {r['sql_count_by_token']['ms']:>12.1f}")


if __name__ == "__main__":
    main()
