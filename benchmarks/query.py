"""Benchmark store queries: a selective SQL filter, a random-row gather, a full site scan.

Builds (or reuses) a synthetic store of ``--rows`` token rows (d=384, float16, one site)
in ``benchmarks/out/``, writes the same site once as an uncompressed ``.npy`` and compares
against NumPy on its memory map. Every timing is the median of ``--repeats`` runs after a
warm-up pass on both sides (both warm in the page cache). Prints a table and writes
``benchmarks/out/query.json`` (and a copy named after the row count).

Every chunk carries a CRC32C that a store checks the first time it reads the chunk
(once per opened shard map). So the scan is timed on a freshly opened store each repeat
(every chunk checked: the cost of checksums), and again on one that has checked them;
the gather is timed on a store that has (the scan before it read every chunk), and on a
freshly opened store, whose first gather checks every chunk it touches.

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
    meta = path / "runs" / RUN / "arrays" / "part-0000" / SITE / "zarr.json"
    if not rebuild and manifest.is_file() and meta.is_file():
        runs = json.loads(manifest.read_text())["runs"]
        if runs.get(RUN, {}).get("n_rows") == rows and "crc32c" in meta.read_text():
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
) -> dict[str, float]:
    """Median ms of ``ours(arg)`` and ``base(arg)`` over fresh ``arg = make()`` each repeat,
    wall-clock and process CPU time (all threads; steadier on a shared, loaded machine)."""
    a: list[tuple[float, float]] = []
    b: list[tuple[float, float]] = []
    for i in range(repeats):
        arg = make()
        order = [(ours, a), (base, b)] if i % 2 == 0 else [(base, b), (ours, a)]
        for fn, acc in order:
            t0, c0 = time.perf_counter(), time.process_time()
            fn(arg)
            acc.append((time.perf_counter() - t0, time.process_time() - c0))
    wall_a, wall_b = (statistics.median(w for w, _ in x) * 1e3 for x in (a, b))
    cpu_a, cpu_b = (statistics.median(c for _, c in x) * 1e3 for x in (a, b))
    return {
        "store_ms": wall_a,
        "memmap_ms": wall_b,
        "ratio": wall_a / wall_b,
        "store_cpu_ms": cpu_a,
        "memmap_cpu_ms": cpu_b,
        "cpu_ratio": cpu_a / cpu_b,
    }


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
        def scan(store: actstore.Store) -> None:
            for _, x in store.iter_vectors(RUN, SITE, batch_rows=batch):
                x.sum(axis=0, dtype=np.float32)

        def scan_fresh(_: object) -> None:
            with actstore.open(path) as fresh:  # checks every chunk's CRC32C on the way
                scan(fresh)

        def scan_npy(_: object) -> None:
            for start in range(0, n, batch):
                np.asarray(mm[start : start + batch]).sum(axis=0, dtype=np.float32)

        scan(s)  # warm-up: both files read once into the page cache (and s checks all)
        scan_npy(None)
        reps = max(3, args.repeats // 2) if n > 2_000_000 else args.repeats
        gb = n * D * 2 / 1e9
        for key, fn in (("scan", scan_fresh), ("scan_checked", lambda _: scan(s))):
            t = paired(fn, scan_npy, lambda: None, reps)
            results[key] = {
                **t,
                "store_GBps": gb / (t["store_ms"] / 1e3),
                "memmap_GBps": gb / (t["memmap_ms"] / 1e3),
                "batch_rows": batch,
            }

        # -- random gather: fresh random rows each repeat (pages not yet mapped either side)
        k = args.gather

        def make() -> np.ndarray[Any, np.dtype[np.int64]]:
            return np.asarray(rng.integers(0, n, k), np.int64)

        probe = make()
        if not np.array_equal(s.vectors(RUN, SITE, probe), mm[probe]):
            raise SystemExit("gather returned different rows than the .npy")
        results["gather_fresh"] = {
            "rows": k,
            **paired(lambda r: s.vectors(RUN, SITE, r), lambda r: mm[r], make, args.repeats),
        }

        # a freshly opened store each time: its first gather checks every chunk it touches
        def first_gather(r: np.ndarray[Any, np.dtype[np.int64]]) -> None:
            with actstore.open(path) as fresh:
                fresh.vectors(RUN, SITE, r)

        results["gather_first"] = {
            "rows": k,
            **paired(first_gather, lambda r: mm[r], make, args.repeats),
        }
        # the same rows again and again: both sides hot (mapped pages), pure overhead
        fixed = make()
        s.vectors(RUN, SITE, fixed)
        mm[fixed]
        results["gather_hot"] = {
            "rows": k,
            **paired(
                lambda r: s.vectors(RUN, SITE, r), lambda r: mm[r], lambda: fixed, args.repeats
            ),
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
    head = f"{'measure':<48} {'actstore':>10} {'np.memmap':>10} {'ratio':>7} {'CPU ratio':>10}"
    print(head)
    for key, label, digits in (
        ("scan", "full scan, checking CRCs (ms)", 0),
        ("scan_checked", "full scan, CRCs checked (ms)", 0),
        ("gather_fresh", "gather {:,} random rows, fresh rows (ms)", 2),
        ("gather_first", "gather {:,} random rows, newly opened store (ms)", 2),
        ("gather_hot", "gather {:,} random rows, same rows again (ms)", 2),
    ):
        m = r[key]
        name = label.format(m.get("rows", 0))
        print(
            f"{name:<48} {m['store_ms']:>10.{digits}f} {m['memmap_ms']:>10.{digits}f} "
            f"{m['ratio']:>7.2f} {m['cpu_ratio']:>10.2f}"
        )
    print(f"{'SQL: rows of one token_id (ms)':<48} {r['sql_filter']['ms']:>10.1f}")
    print(f"{'SQL: count(*) GROUP BY token_id (ms)':<48} {r['sql_count_by_token']['ms']:>10.1f}")


if __name__ == "__main__":
    main()
