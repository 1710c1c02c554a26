"""Benchmark RSA: actstore's ``rsa`` against rsatoolbox on the same two representations.

Two synthetic representations of the same rows (default 5,000 rows, 384 and 384 dims,
float32 like stored activations; Y is a random linear image of X plus noise), compared by
Spearman and by Pearson correlation of their RDMs:

* ``correlation`` RDMs: rsatoolbox end to end (``calc_rdm(method="correlation")`` of both,
  then ``compare(method="spearman" | "corr")``) against
  ``rsa(X, Y, metric="correlation")``.
* ``cosine`` RDMs: rsatoolbox has no cosine RDM, so its side is SciPy's ``pdist(X,
  "cosine")`` wrapped in ``RDMs`` and ``compare``-d; actstore's is ``rsa(X, Y)``.

Rounds are interleaved (each case once per round, the order rotating); the table shows
medians, the ratio actstore / rsatoolbox (target <= 0.5) and the largest difference of the
two values. Writes ``benchmarks/out/rsa.json``.

    python benchmarks/rsa.py --rows 5000 --repeats 3
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    command_line,
    interleave,
    machine_info,
    markdown_table,
    median,
    now_iso,
    summary,
    timed,
    write_json,
)

from actstore.query.similarity.rsa import rsa

OUT = Path(__file__).parent / "out"


def data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X (n x d) and Y = X W + noise, float32."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32) + 0.2
    W = rng.standard_normal((d, d), dtype=np.float32) / np.sqrt(d)
    Y = X @ W + rng.standard_normal((n, d), dtype=np.float32)
    return X, Y


def rsatoolbox_cases(X: np.ndarray, Y: np.ndarray, metric: str) -> dict[str, Callable[[], Any]]:
    """rsatoolbox's Spearman and Pearson of the two RDMs, RDMs included in the time."""
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import RDMs, calc_rdm, compare
    from scipy.spatial.distance import pdist

    def rdms() -> tuple[Any, Any]:
        if metric == "correlation":
            return calc_rdm(Dataset(X), method="correlation"), calc_rdm(Dataset(Y), "correlation")
        return RDMs(pdist(X, "cosine")[None]), RDMs(pdist(Y, "cosine")[None])

    def run(method: str) -> Callable[[], float]:
        def go() -> float:
            a, b = rdms()
            return float(compare(a, b, method=method)[0, 0])

        return go

    return {"spearman": run("spearman"), "pearson": run("corr")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000, help="rows of X and Y")
    parser.add_argument("--dim", type=int, default=384, help="columns of X and Y")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--metrics", default="correlation,cosine", help="RDM metrics (correlation,cosine)"
    )
    args = parser.parse_args()

    X, Y = data(args.rows, args.dim)
    try:
        import rsatoolbox  # noqa: F401

        have_toolbox = True
    except ImportError:
        have_toolbox = False
        print("rsatoolbox is not installed: timing actstore alone (pip install rsatoolbox)")
    cases: dict[str, Callable[[], Any]] = {}
    for metric in args.metrics.split(","):
        for method in ("spearman", "pearson"):

            def ours(metric: Any = metric, method: Any = method) -> float:
                return rsa(X, Y, method=method, metric=metric)

            cases[f"actstore {metric} {method}"] = ours
        if have_toolbox:
            for method, fn in rsatoolbox_cases(X, Y, metric).items():
                cases[f"rsatoolbox {metric} {method}"] = fn
    timed_cases = {name: (lambda fn=fn: timed(fn)) for name, fn in cases.items()}
    runs = interleave(timed_cases, args.repeats)
    times = {name: [t for _, t in out] for name, out in runs.items()}
    values = {name: out[0][0] for name, out in runs.items()}

    rows, table = [], []
    for metric in args.metrics.split(","):
        for method in ("spearman", "pearson"):
            ours_name, theirs_name = f"actstore {metric} {method}", f"rsatoolbox {metric} {method}"
            t_ours = median(times[ours_name])
            t_theirs = median(times[theirs_name]) if theirs_name in times else float("nan")
            diff = abs(values[ours_name] - values.get(theirs_name, np.nan))
            rows.append(
                {
                    "metric": metric,
                    "method": method,
                    "actstore_s": summary(times[ours_name]),
                    "rsatoolbox_s": summary(times.get(theirs_name, [])),
                    "ratio": t_ours / t_theirs,
                    "actstore_value": values[ours_name],
                    "rsatoolbox_value": values.get(theirs_name),
                    "abs_diff": diff,
                }
            )
            table.append(
                [
                    metric,
                    method,
                    f"{t_ours:.2f} s",
                    f"{t_theirs:.2f} s",
                    f"{t_ours / t_theirs:.2f}",
                    f"{values[ours_name]:.6f}",
                    f"{diff:.1e}",
                ]
            )
    header = ["RDM", "method", "actstore", "rsatoolbox", "ratio", "value", "|diff|"]
    print(f"{args.rows:,} rows x {args.dim} dims, {args.repeats} interleaved rounds, medians\n")
    print(markdown_table(header, table))
    write_json(
        OUT / "rsa.json",
        {
            "machine": machine_info(),
            "created_at": now_iso(),
            "command": command_line(),
            "rows": args.rows,
            "dim": args.dim,
            "repeats": args.repeats,
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
