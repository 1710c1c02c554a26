"""Benchmark a store read from S3 against the same store on local disk.

Starts moto's S3 server on 127.0.0.1 (a real HTTP server: every read is a request over
loopback), uploads a synthetic store (``--rows`` rows, d=384, float16, one site) and
times, interleaved, each measure on the ``s3://`` copy and on the local copy (warm in the
page cache): a gather of ``--gather`` random rows, a gather of 200 sorted nearby rows,
and a full-site scan. It reports the ratios S3 ÷ local, and the HTTP requests and bytes
per S3 read (the coalescing). With ``--extract``, it also times writing: the demo
extraction (the bundled MiniLM over the bundled corpus, every hidden state, float16,
centroids) into ``s3://`` (staged locally, uploaded, manifest by conditional PUT) ÷ the
same into a local store, interleaved. Prints a table and writes ``benchmarks/out/s3.json``.

    python benchmarks/s3.py                 # 200,000 rows (~150 MB)
    python benchmarks/s3.py --rows 50000    # quick check
    python benchmarks/s3.py --extract 3     # also 3 rounds of extraction to S3 vs local
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import command_line, interleave, machine_info, median, now_iso, write_json

import actstore
from actstore.store._objects import REQUESTS
from actstore.store._ranged import GAP_BYTES, RUN_BYTES
from actstore.store.synthetic import write_synthetic_run

OUT = Path(__file__).parent / "out"
RUN, SITE, D, TOKENS_PER_DOC = "bench", "hidden.0", 384, 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server() -> tuple[Any, Any]:
    """moto's server on a free port, the AWS environment pointing at it, and an uploader."""
    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    fs = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir("bench")
    return server, fs


def counted(fn: Callable[[], object]) -> dict[str, float]:
    """Wall time of ``fn()`` and the requests and bytes it issued."""
    REQUESTS.reset()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    return {
        "ms": wall * 1e3,
        "gets": REQUESTS.gets,
        "heads": REQUESTS.heads,
        "MB": REQUESTS.nbytes / 1e6,
    }


def timed(fn: Callable[[], object]) -> dict[str, float]:
    t0 = time.perf_counter()
    fn()
    return {"ms": (time.perf_counter() - t0) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="token rows (default 200k)")
    parser.add_argument("--gather", type=int, default=10_000, help="rows per random gather")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument(
        "--extract", type=int, default=0, help="rounds of extraction to S3 vs local (0: none)"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"s3-{args.rows}.acts"
    shutil.rmtree(path, ignore_errors=True)
    write_synthetic_run(
        path,
        RUN,
        n_docs=args.rows // TOKENS_PER_DOC,
        tokens_per_doc=TOKENS_PER_DOC,
        d=D,
        sites=(SITE,),
        dtype="float16",
        vocab_size=30522,
        docs_per_pool=2000,
    )
    server, fs = start_server()
    try:
        import pyarrow.fs as pafs

        t0 = time.perf_counter()
        pafs.copy_files(
            str(path),
            "bench/s.acts",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )
        upload_s = time.perf_counter() - t0
        results = run(path, "s3://bench/s.acts", args)
        results["upload_s"] = upload_s
        if args.extract:
            results["extract"] = run_extract(fs, args.extract)
    finally:
        server.stop()
        shutil.rmtree(path, ignore_errors=True)
    write_json(OUT / "s3.json", results)
    _print(results)


def run(path: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    remote, local = actstore.open(url), actstore.open(path)
    n = local.run_info(RUN)["counts"]["rows"]
    probe = rng.integers(0, n, args.gather)
    if not np.array_equal(remote.vectors(RUN, SITE, probe), local.vectors(RUN, SITE, probe)):
        raise SystemExit("the S3 store returned other rows than the local one")
    for _ in local.iter_vectors(RUN, SITE):  # local warm in the page cache, CRCs checked
        pass
    batches = {k: rng.integers(0, n, args.gather) for k in range(args.repeats)}
    near = {k: np.arange(s, s + 200) for k, s in enumerate(rng.integers(0, n - 200, args.repeats))}
    it = {"g": iter(batches.values()), "gl": iter(batches.values())}
    it_near = {"g": iter(near.values()), "gl": iter(near.values())}

    def scan(store: actstore.Store) -> None:
        for _, x in store.iter_vectors(RUN, SITE, batch_rows=1 << 16):
            x.sum(axis=0, dtype=np.float32)

    it["gn"] = iter(batches.values())

    def gather_new_local() -> dict[str, float]:
        """The gather on a newly opened local store: like every S3 gather, it checks the
        CRC32C of every chunk it touches (a memory map remembers checked chunks)."""
        with actstore.open(path) as fresh:
            return timed(lambda: fresh.vectors(RUN, SITE, next(it["gn"])))

    cases = {
        "gather_s3": lambda: counted(lambda: remote.vectors(RUN, SITE, next(it["g"]))),
        "gather_local": lambda: timed(lambda: local.vectors(RUN, SITE, next(it["gl"]))),
        "gather_local_new": gather_new_local,
        "near_s3": lambda: counted(lambda: remote.vectors(RUN, SITE, next(it_near["g"]))),
        "near_local": lambda: timed(lambda: local.vectors(RUN, SITE, next(it_near["gl"]))),
        "scan_s3": lambda: counted(lambda: scan(remote)),
        "scan_local": lambda: timed(lambda: scan(local)),
    }
    got = interleave(cases, args.repeats)
    out: dict[str, Any] = {
        "rows": n,
        "d": D,
        "dtype": "float16",
        "gather_rows": args.gather,
        "repeats": args.repeats,
        "gap_bytes": GAP_BYTES,
        "run_bytes": RUN_BYTES,
        "store_MB": n * D * 2 / 1e6,
        "machine": machine_info(),
        "command": command_line(),
        "when": now_iso(),
    }
    for what in ("gather", "near", "scan"):
        s3, loc = got[f"{what}_s3"], got[f"{what}_local"]
        ms_s3, ms_local = median([x["ms"] for x in s3]), median([x["ms"] for x in loc])
        out[what] = {
            "s3_ms": ms_s3,
            "local_ms": ms_local,
            "ratio": ms_s3 / ms_local,
            "gets": median([x["gets"] for x in s3]),
            "heads": median([x["heads"] for x in s3]),
            "MB": median([x["MB"] for x in s3]),
        }
    new_ms = median([x["ms"] for x in got["gather_local_new"]])
    out["gather"]["local_new_ms"] = new_ms
    out["gather"]["ratio_new"] = out["gather"]["s3_ms"] / new_ms
    # SQL over the tables: one selective filter, on both copies
    q = "SELECT count(*) FROM tokens WHERE run = ? AND token_id = ?"
    sql = interleave(
        {
            "s3": lambda: timed(lambda: remote.sql(q, [RUN, 123]).fetchall()),
            "local": lambda: timed(lambda: local.sql(q, [RUN, 123]).fetchall()),
        },
        args.repeats,
    )
    ms_s3, ms_local = (median([x["ms"] for x in sql[k]]) for k in ("s3", "local"))
    out["sql_filter"] = {"s3_ms": ms_s3, "local_ms": ms_local, "ratio": ms_s3 / ms_local}
    remote.close()
    local.close()
    return out


def run_extract(fs: Any, repeats: int) -> dict[str, Any]:
    """The demo extraction into a new ``s3://`` store ÷ into a new local store."""
    import tempfile

    import pyarrow.fs as pafs

    from actstore._demo import demo_config
    from actstore.extract.runner import extract

    tmp = Path(tempfile.mkdtemp(dir=OUT))
    count = {"s3": 0, "local": 0}

    def to(where: str) -> dict[str, float]:
        count[where] += 1
        k = count[where]
        store = f"s3://bench/x{k}.acts" if where == "s3" else str(tmp / f"x{k}.acts")
        options = {"staging": str(tmp / f"staging{k}")} if where == "s3" else {}
        t0 = time.perf_counter()
        extract(demo_config(store, quiet=True, device="cpu", **options))
        return {"ms": (time.perf_counter() - t0) * 1e3}

    try:
        got = interleave({"s3": lambda: to("s3"), "local": lambda: to("local")}, repeats)
        infos = fs.get_file_info(pafs.FileSelector("bench/x1.acts", recursive=True))
        nbytes = sum(i.size for i in infos if i.type == pafs.FileType.File)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s3_ms, local_ms = (median([x["ms"] for x in got[k]]) for k in ("s3", "local"))
    return {
        "s3_ms": s3_ms,
        "local_ms": local_ms,
        "ratio": s3_ms / local_ms,
        "objects": sum(1 for i in infos if i.type == pafs.FileType.File),
        "MB": nbytes / 1e6,
        "repeats": repeats,
    }


def _print(r: dict[str, Any]) -> None:
    print(
        f"\nstore: {r['rows']:,} rows x d={r['d']} {r['dtype']} ({r['store_MB']:.0f} MB), "
        f"moto on 127.0.0.1, medians of {r['repeats']} interleaved rounds"
    )
    print(f"{'measure':<36} {'S3 ms':>9} {'local ms':>9} {'ratio':>7} {'GETs':>6} {'MB read':>8}")
    for key, label in (
        ("gather", f"gather {r['gather_rows']:,} random rows"),
        ("near", "gather 200 sorted nearby rows"),
        ("scan", "full-site scan"),
        ("sql_filter", "SQL: count of one token_id"),
    ):
        m = r[key]
        gets = f"{m['gets']:>6.0f} {m['MB']:>8.1f}" if "gets" in m else ""
        print(f"{label:<36} {m['s3_ms']:>9.1f} {m['local_ms']:>9.1f} {m['ratio']:>7.1f} {gets}")
    g = r["gather"]
    print(
        f"gather {r['gather_rows']:,} random rows ÷ the same on a newly opened local store "
        f"(every touched chunk's CRC checked, as S3 does): {g['s3_ms']:.1f} ÷ "
        f"{g['local_new_ms']:.1f} ms = {g['ratio_new']:.1f}"
    )
    print(f"upload: {r['upload_s']:.1f} s")
    if "extract" in r:
        e = r["extract"]
        print(
            f"demo extraction to S3 {e['s3_ms'] / 1e3:.1f} s ÷ local {e['local_ms'] / 1e3:.1f} s "
            f"= {e['ratio']:.2f} ({e['objects']} objects, {e['MB']:.1f} MB; medians of "
            f"{e['repeats']})"
        )


if __name__ == "__main__":
    main()
