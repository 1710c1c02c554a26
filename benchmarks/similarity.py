"""Benchmark the similarity analyses on the MiniLM demo store.

* Exact pairwise cosine statistics of the MiniLM ``embed`` matrix (30,522 x 384,
  ~466 M pairs): wall time divided by one float32 matmul ``E @ E.T`` timed in the same
  run (gemm on a contiguous copy of E.T), and the peak memory the statistics allocate
  (tracemalloc, which sees NumPy's buffers) and the RSS growth.
* The sink scan at full-vocabulary scale (30,522 synthetic centroids vs the embeddings).
* The sink scan over every non-special token occurring >= 5 times in the demo corpus.
* Linear CKA of two representations of the same ``--cka-rows`` rows (``rsa.py``'s synthetic
  X and Y = XW + noise, float32) against the NumPy feature-space formula a user writes
  (center, ``||Xc'Yc||_F^2 / (||Xc'Xc||_F ||Yc'Yc||_F)``), and RSA (correlation RDMs,
  Spearman and Pearson) against rsatoolbox when it is installed; interleaved rounds,
  medians, and each value's difference from a float64 reference (CKA) or from rsatoolbox's.

Builds the demo store (MiniLM over the bundled corpus) in ``benchmarks/out/`` once.
Prints a markdown table and writes ``benchmarks/out/similarity.json``.

    python benchmarks/similarity.py --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    current_rss,
    fmt_bytes,
    interleave,
    machine_info,
    markdown_table,
    median,
    now_iso,
    timed,
    write_json,
)
from rsa import data, rsatoolbox_cases

import actstore
from actstore.query.similarity.centroids import sink_pairs, sink_scan
from actstore.query.similarity.cka import linear_cka
from actstore.query.similarity.pairwise import pairwise_cosine_stats
from actstore.query.similarity.rsa import rsa

OUT = Path(__file__).parent / "out"
RUN = "minilm"


def build(path: Path) -> None:
    """Extract the demo store unless it is there."""
    if (path / "actstore.json").is_file():
        return
    from actstore._demo import demo_config
    from actstore.extract import extract

    print(f"building {path} ...", flush=True)
    extract(demo_config(path, run=RUN, dtype="float32", quiet=True, device="cpu"))


def numpy_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA in feature space, as a NumPy user writes it (Kornblith et al. 2019)."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    num = np.linalg.norm(Xc.T @ Yc) ** 2
    return float(num / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)))


def cka_and_rsa(rows: int, repeats: int) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """CKA ÷ NumPy feature-space and RSA ÷ rsatoolbox (when installed) on the same rows."""
    X, Y = data(rows, 384)
    reference = numpy_cka(X.astype(np.float64), Y.astype(np.float64))
    cases: dict[str, Any] = {
        "actstore linear_cka": lambda: linear_cka(X, Y),
        "NumPy feature-space CKA": lambda: numpy_cka(X, Y),
        "actstore rsa correlation spearman": lambda: rsa(X, Y, metric="correlation"),
        "actstore rsa correlation pearson": lambda: rsa(
            X, Y, metric="correlation", method="pearson"
        ),
    }
    try:
        import rsatoolbox  # noqa: F401
    except ImportError:
        print("rsatoolbox is not installed: RSA timed for actstore alone (pip install rsatoolbox)")
    else:
        for method, fn in rsatoolbox_cases(X, Y, "correlation").items():
            cases[f"rsatoolbox correlation {method}"] = fn
    runs = interleave({k: (lambda f=f: timed(f)) for k, f in cases.items()}, repeats)
    t = {k: median([s for _, s in v]) for k, v in runs.items()}
    v = {k: float(out[0][0]) for k, out in runs.items()}
    pairs = [
        ("actstore linear_cka", "NumPy feature-space CKA", "CKA"),
        ("actstore rsa correlation spearman", "rsatoolbox correlation spearman", "RSA Spearman"),
        ("actstore rsa correlation pearson", "rsatoolbox correlation pearson", "RSA Pearson"),
    ]
    table, out = [], []
    for ours, theirs, what in pairs:
        has = theirs in t
        ratio = t[ours] / t[theirs] if has else float("nan")
        if what == "CKA":
            diff = f"{abs(v[ours] - reference):.1e} (NumPy {abs(v[theirs] - reference):.1e})"
        else:
            diff = f"{abs(v[ours] - v[theirs]):.1e}" if has else "-"
        peer = f"{t[theirs]:.3f} s" if has else "not installed"
        table.append([what, f"{t[ours]:.3f} s", peer, f"{ratio:.2f}", f"{v[ours]:.6f}", diff])
        out.append(
            {"case": what, "actstore_s": t[ours], "peer_s": t.get(theirs), "ratio": ratio}
            | {"value": v[ours], "peer_value": v.get(theirs), "cka_float64": reference}
        )
    return table, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats (median)")
    parser.add_argument("--block-rows", type=int, default=2048, help="rows per block")
    parser.add_argument("--site", default="hidden.6", help="site of the sink scan")
    parser.add_argument("--cka-rows", type=int, default=5000, help="rows of the CKA/RSA data")
    args = parser.parse_args()

    store_path = OUT / "similarity-demo.acts"
    build(store_path)
    results: dict[str, Any] = {"machine": machine_info(), "created_at": now_iso()}
    with actstore.query.Store(store_path) as s:
        E = np.ascontiguousarray(s.matrix(RUN, "embed"), np.float32)
        # a contiguous E.T: NumPy sends ``E @ E.T`` (same buffer) to OpenBLAS syrk, which
        # crashes at this size with scipy-openblas 0.3.31; gemm is the plain matmul
        Et = np.ascontiguousarray(E.T)
        n_tok = s.sql(
            "SELECT count(*) FROM vocab WHERE run = ? AND count >= 5 AND NOT special", [RUN]
        ).first_column()[0]
        mm, stats, mem, rss = [], [], 0, 0
        for _ in range(args.repeats):
            gc.collect()
            t0 = time.perf_counter()
            G = E @ Et
            mm.append(time.perf_counter() - t0)
            del G
            gc.collect()
            rss0 = current_rss() or 0
            tracemalloc.start()
            t0 = time.perf_counter()
            st = pairwise_cosine_stats(E, block_rows=args.block_rows)
            stats.append(time.perf_counter() - t0)
            mem = max(mem, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            rss = max(rss, (current_rss() or 0) - rss0)
        t0 = time.perf_counter()
        cen = pairwise_cosine_stats(E, center=True, block_rows=args.block_rows)
        t_cen = time.perf_counter() - t0
        t0 = time.perf_counter()
        sinks = sink_scan(s, RUN, args.site, min_count=5)
        t_sink = time.perf_counter() - t0
    # the scan at full-vocabulary scale: 30,522 centroids (the embeddings pushed through a
    # random linear map plus noise) against the embeddings themselves
    rng = np.random.default_rng(0)
    C = E @ rng.standard_normal((E.shape[1], E.shape[1])).astype(np.float32)
    C += rng.standard_normal(C.shape).astype(np.float32)
    t0 = time.perf_counter()
    full = sink_pairs(C, E, threshold=0.9, max_embed_cos=0.5, top_k=100)
    t_full = time.perf_counter() - t0
    t_mm, t_st = float(np.median(mm)), float(np.median(stats))
    results.update(
        {
            "embed_shape": list(E.shape),
            "n_pairs": st.n_pairs,
            "matmul_s": t_mm,
            "pairwise_s": t_st,
            "ratio": t_st / t_mm,
            "pairwise_centered_s": t_cen,
            "peak_traced_bytes": mem,
            "rss_growth_bytes": rss,
            "raw_mean": st.mean,
            "centered_mean": cen.mean,
            "sink_site": args.site,
            "sink_tokens": int(n_tok),
            "sink_s": t_sink,
            "sink_pairs": len(sinks),
            "sink_full_vocab_s": t_full,
            "sink_full_vocab_pairs": len(full[0]),
            "block_rows": args.block_rows,
        }
    )
    rows = [
        ["E @ E.T float32 (baseline)", f"{t_mm:.2f} s", "1.00", fmt_bytes(E.shape[0] ** 2 * 4)],
        [
            f"pairwise stats, raw ({st.n_pairs:,} pairs)",
            f"{t_st:.2f} s",
            f"{t_st / t_mm:.2f}",
            f"{fmt_bytes(mem)} traced, {fmt_bytes(rss)} RSS growth",
        ],
        ["pairwise stats, centered", f"{t_cen:.2f} s", f"{t_cen / t_mm:.2f}", ""],
        [
            f"sink scan {args.site}, {n_tok} tokens >= 5 occurrences ({len(sinks)} pairs)",
            f"{t_sink:.2f} s",
            "",
            "",
        ],
        [
            f"sink_pairs over all {E.shape[0]:,} tokens (synthetic centroids)",
            f"{t_full:.2f} s",
            "",
            "",
        ],
    ]
    print(markdown_table(["case", "wall", "÷ matmul", "memory"], rows))
    print(f"\nraw mean cos {st.mean:.4f}, centered {cen.mean:.4f}")
    table, cka_rows = cka_and_rsa(args.cka_rows, args.repeats)
    results["cka_rsa"] = {"rows": args.cka_rows, "dim": 384, "cases": cka_rows}
    print(f"\n{args.cka_rows:,} rows x 384, {args.repeats} interleaved rounds, medians\n")
    header = ["analysis", "actstore", "peer", "ratio", "value", "|diff|"]
    print(markdown_table(header, table))
    write_json(OUT / "similarity.json", results)


if __name__ == "__main__":
    main()
