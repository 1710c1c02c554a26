"""Benchmark the ridge map: all alphas by GCV from streamed statistics vs scikit-learn RidgeCV.

Plants ``Y = X W + noise`` (``--rows`` x 384 -> 384, float32, X with a decaying spectrum so
the penalty matters), then times

* ``ours (in memory)``: :class:`actstore.query.ridge.RidgeMap` (cv="gcv", 10 alphas) on the
  arrays, against ``sklearn RidgeCV(alphas, gcv_mode="auto")`` on the same arrays; the
  chosen alphas and the predictions are compared;
* ``streamed``: the same fit streamed from a store holding X and Y as two sites of a run
  (rows resolved from the tokens table, vectors read in blocks), and ``read once``: the
  rows read in one gather per site, as ``fit_map`` does under its memory budget; each
  against the in-memory fit, interleaved round by round (ratio: median over rounds).

Prints a markdown table and writes ``benchmarks/out/mapping-<rows>.json``.

    python benchmarks/mapping.py                 # 100,000 rows
    python benchmarks/mapping.py --rows 2000 --repeats 15 --sklearn-repeats 0  # small n
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from _common import (
    interleave,
    machine_info,
    markdown_table,
    now_iso,
    summary,
    timed,
    write_json,
)

import actstore
from actstore.query.mapping.pairs import PairSpec, iter_pairs, pair_rows, read_pairs
from actstore.query.mapping.ridgecv import RidgeMap
from actstore.store.arrays import Layout
from actstore.store.commit import commit_run
from actstore.store.format import PartMetaJSON
from actstore.store.manifest import create_store
from actstore.store.part import PartWriter

OUT = Path(__file__).parent / "out"
RUN, D, VOCAB, TOKENS_PER_DOC = "bench", 384, 1000, 100
ALPHAS = np.logspace(-1, 6, 10)


def planted(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X (rows, D) with a decaying spectrum and Y = X W + 0.5 + noise, both float32."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(0, -2, D).astype(np.float32)
    X = rng.standard_normal((rows, D), dtype=np.float32) * scales
    W = rng.standard_normal((D, D), dtype=np.float32) / np.sqrt(D)
    Y = X @ W + 0.5 + 0.05 * rng.standard_normal((rows, D), dtype=np.float32)
    return X, Y.astype(np.float32)


def write_store(path: Path, X: np.ndarray, Y: np.ndarray) -> None:
    """A one-part run with sites hidden.0 = X and hidden.1 = Y (float32)."""
    shutil.rmtree(path, ignore_errors=True)
    create_store(path)
    rng = np.random.default_rng(1)
    sites = {"hidden.0": D, "hidden.1": D}
    part = PartWriter(path, RUN, 0, sites=sites, dtype="float32", layout=Layout(), resume=None)
    part.write_matrices({"embed": np.zeros((VOCAB, D), np.float32)})
    ident: dict[str, object] = {"benchmark": "mapping", "rows": len(X)}
    meta: PartMetaJSON = {
        "identity": ident,
        "config": ident,
        "model": {"id": "planted", "model_type": "synthetic", "d_model": D},
        "tokenizer": {"class": "synthetic", "vocab_size": VOCAB},
        "sites": [{"name": s, "d": D, "dtype": "float32", "describes": "planted"} for s in sites],
        "matrices": {"embed": [VOCAB, D]},
        "head": {"has_unembed": False, "final_norm": None},
        "dtype": "float32",
        "vocab_size": VOCAB,
        "versions": {},
        "created_at": now_iso(),
    }
    part.write_meta(meta)
    names = [f"t{i}" for i in range(VOCAB)]
    vocab = {"token_id": pa.array(range(VOCAB), pa.int32()), "token": names, "piece": names}
    part.write_vocab_strings(pa.table({**vocab, "special": np.zeros(VOCAB, bool)}))
    n_docs = len(X) // TOKENS_PER_DOC
    for d0 in range(0, n_docs, 200):
        docs = np.arange(d0, min(d0 + 200, n_docs))
        a, b = d0 * TOKENS_PER_DOC, (docs[-1] + 1) * TOKENS_PER_DOC
        pos = np.tile(np.arange(TOKENS_PER_DOC, dtype=np.int32), len(docs))
        tokens = {
            "doc_id": np.repeat(docs.astype(np.int64), TOKENS_PER_DOC),
            "pos": pos,
            "token_id": rng.integers(0, VOCAB, b - a).astype(np.int32),
            "start": pos * 4,
            "end": pos * 4 + 3,
            "special": np.zeros(b - a, bool),
        }
        part.add_batch({"hidden.0": X[a:b], "hidden.1": Y[a:b]}, tokens)
        table = pa.table(
            {
                "doc_id": pa.array(docs, pa.int64()),
                "doc_index": pa.array(docs, pa.int64()),
                "text": [f"doc {i}" for i in docs],
            }
        )
        part.checkpoint(
            consumed=int(docs[-1]) + 1, docs=table, counts={"docs": len(docs)}, timings={}
        )
    part.finish()
    commit_run(path, RUN, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of our fits")
    ap.add_argument("--sklearn-repeats", type=int, default=1, help="0 skips scikit-learn")
    args = ap.parse_args()
    from sklearn.linear_model import RidgeCV

    X, Y = planted(args.rows)
    store = OUT / f"mapping-{args.rows}.acts"
    t0 = time.perf_counter()
    write_store(store, X, Y)
    print(f"wrote {store} in {time.perf_counter() - t0:.1f} s", flush=True)
    spec = PairSpec(RUN, "hidden.0", "hidden.1")
    stages: dict[str, list[float]] = {"open + rows": [], "read": [], "fit": []}

    def ours() -> RidgeMap:
        return RidgeMap(alphas=tuple(ALPHAS), cv="gcv").fit(X, Y)

    def streamed() -> RidgeMap:
        with actstore.open(store) as s:
            rows = pair_rows(s, spec)
            return RidgeMap(alphas=tuple(ALPHAS), cv="gcv").fit_blocks(
                lambda: iter_pairs(s, spec, rows)
            )

    def read_once() -> RidgeMap:  # what fit_map does under its memory budget
        t = time.perf_counter()
        with actstore.open(store) as s:
            rows = pair_rows(s, spec)
            t1 = time.perf_counter()
            data = read_pairs(s, spec, rows, memory_mb=1024)
            assert data is not None
            t2 = time.perf_counter()
            m = RidgeMap(alphas=tuple(ALPHAS), cv="gcv").fit(*data)
        t3 = time.perf_counter()
        for k, v in zip(stages, (t1 - t, t2 - t1, t3 - t2), strict=True):
            stages[k].append(v)
        return m

    cases = {"ours": ours, "streamed": streamed, "read_once": read_once}
    got = interleave({k: (lambda f=f: timed(f)) for k, f in cases.items()}, args.repeats)
    times = {k: [t for _, t in v] for k, v in got.items()}
    fits = {k: v[-1][0] for k, v in got.items()}
    m_ours, m_str = fits["ours"], fits["streamed"]
    times["sklearn"] = []
    ref = None
    for _ in range(args.sklearn_repeats):
        ref, t = timed(lambda: RidgeCV(alphas=ALPHAS, gcv_mode="auto").fit(X, Y))
        times["sklearn"].append(t)
    p_ours = m_ours.predict(X[:20000])
    rel_str = float(np.abs(m_str.predict(X[:20000]) - p_ours).max() / np.abs(p_ours).max())
    rel_once = float(
        np.abs(fits["read_once"].predict(X[:20000]) - p_ours).max() / np.abs(p_ours).max()
    )
    med = {k: summary(v)["median"] for k, v in times.items()}
    # ratios per round (same round = same machine state), then their median
    ratio_st = float(np.median(np.array(times["streamed"]) / np.array(times["ours"])))
    ratio_once = float(np.median(np.array(times["read_once"]) / np.array(times["ours"])))
    header = [
        "case",
        "wall ms (median)",
        "ratio (median of rounds)",
        "target",
        "alpha",
        "max rel. pred. diff",
    ]
    rows = [
        [
            "ours, in memory (GCV)",
            f"{med['ours'] * 1e3:.1f}",
            "1",
            "",
            f"{float(m_ours.alpha_):g}",
            "0",
        ],
        [
            "streamed from store (blocks)",
            f"{med['streamed'] * 1e3:.1f}",
            f"{ratio_st:.3f} of in-memory",
            "",
            f"{float(m_str.alpha_):g}",
            f"{rel_str:.1e}",
        ],
        [
            "from store, read once (fit_map)",
            f"{med['read_once'] * 1e3:.1f}",
            f"{ratio_once:.3f} of in-memory",
            "<= 1.2",
            f"{float(fits['read_once'].alpha_):g}",
            f"{rel_once:.1e}",
        ],
    ]
    ratio_sk = None
    if ref is not None:
        ratio_sk = med["ours"] / med["sklearn"]
        rel = float(np.abs(p_ours - ref.predict(X[:20000])).max() / np.abs(p_ours).max())
        rows.insert(
            0,
            [
                "sklearn RidgeCV (gcv auto)",
                f"{med['sklearn'] * 1e3:.1f}",
                "",
                "",
                f"{ref.alpha_:g}",
                "",
            ],
        )
        rows[1][2], rows[1][3], rows[1][5] = f"{ratio_sk:.3f} of sklearn", "<= 0.33", f"{rel:.1e}"
    print(
        f"\n{args.rows:,} x {D} -> {D}, {len(ALPHAS)} alphas, float32 input, "
        f"{args.repeats} rounds\n"
    )
    print(markdown_table(header, rows))
    st_med = {k: summary(v)["median"] * 1e3 for k, v in stages.items()}
    print(
        "\nread-once stages, ms (median): " + ", ".join(f"{k} {v:.1f}" for k, v in st_med.items())
    )
    write_json(
        OUT / f"mapping-{args.rows}.json",
        {
            "created_at": now_iso(),
            "rows": args.rows,
            "d": D,
            "alphas": ALPHAS.tolist(),
            "repeats": args.repeats,
            "times": {k: summary(v) for k, v in times.items()},
            "read_once_stages_ms": st_med,
            "ratio_vs_sklearn": ratio_sk,
            "ratio_streamed_vs_memory": ratio_st,
            "ratio_read_once_vs_memory": ratio_once,
            "alpha": {k: float(v.alpha_) for k, v in fits.items()},
            "max_rel_pred_diff": {"streamed_vs_memory": rel_str, "read_once_vs_memory": rel_once},
            "machine": machine_info(),
        },
    )


if __name__ == "__main__":
    main()
