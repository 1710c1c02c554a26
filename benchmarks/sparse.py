"""Benchmark sparse coding on MiniLM: dictionary learning vs scikit-learn, basis pursuit of the
whole vocabulary, and TopK SAE training streamed from the store vs in memory.

* Dictionary learning on ``embed`` (30,522 x 384), 1,536 atoms, Lasso coding with the same
  λ (``alpha``), batch size, initial atoms and batches on both sides; scikit-learn's
  ``MiniBatchDictionaryLearning(fit_algorithm="cd")`` is fed the batches with ``partial_fit``.
  Only ``--dl-batches`` batches are run (a full epoch takes hours for scikit-learn on 2 cores).
  Both dictionaries are scored by the same encoder (OMP, k=8) on 4,096 held rows.
* Basis pursuit: every embedding row against the other 30,521 unit-normalised rows, OMP k=8.
* TopK SAE on ``hidden.6`` of the demo corpus: rows/s streamed from the store ÷ in memory.

Prints a markdown table and writes ``benchmarks/out/sparse.json``.

    python benchmarks/sparse.py
    python benchmarks/sparse.py --dl-batches 2 --bp-rows 4096   # quick check
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, markdown_table, now_iso, write_json

import actstore
from actstore.query.rowstream import ArraySource, StoreSource, shuffled_batches
from actstore.query.sparse.dictlearn import DictionaryLearner, DictLearnConfig
from actstore.query.sparse.metrics import fvu
from actstore.query.sparse.pursuit import omp, reconstruct
from actstore.query.sparse.sae import SAEConfig, TopKSAE

OUT = Path(__file__).parent / "out"


def _store(path: Path) -> Path:
    if not (path / "actstore.json").is_file():
        from actstore._demo import demo_config
        from actstore.extract import extract

        extract(
            demo_config(
                path, sites="hidden.6", centroids=False, dtype="float32", quiet=True, device="cpu"
            )
        )
    return path


def _unit(D: np.ndarray) -> np.ndarray:
    return np.asarray(D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12))


def bench_dictlearn(E: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.decomposition import MiniBatchDictionaryLearning

    rng = np.random.default_rng(0)
    held = rng.choice(len(E), 4096, replace=False)
    D0 = _unit(E[rng.choice(len(E), args.atoms, replace=False)]).astype(np.float32)
    cfg = DictLearnConfig(
        n_atoms=args.atoms,
        lam=args.lam,
        batch_size=256,
        max_batches=args.dl_batches,
        max_overlap=None,
        tol=1e-4,
    )
    t0 = time.perf_counter()
    ours = DictionaryLearner(cfg).fit(E, dict_init=D0).components_
    t_ours = time.perf_counter() - t0
    cfg_omp = DictLearnConfig(
        n_atoms=args.atoms, k=8, batch_size=256, max_batches=args.dl_batches, max_overlap=None
    )
    t0 = time.perf_counter()
    ours_omp = DictionaryLearner(cfg_omp).fit(E, dict_init=D0).components_
    t_omp = time.perf_counter() - t0
    batches = list(shuffled_batches(ArraySource(E), 256, block_rows=cfg.block_rows))
    skl = MiniBatchDictionaryLearning(
        n_components=args.atoms,
        alpha=args.lam,
        fit_algorithm="cd",
        batch_size=256,
        dict_init=D0,
        random_state=0,
        shuffle=False,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in batches[: args.dl_batches]:
            skl.partial_fit(b)
    t_skl = time.perf_counter() - t0
    X = E[held]

    def score(D: np.ndarray) -> float:
        Du = _unit(D)
        return fvu(X, reconstruct(omp(X, Du, 8), Du))

    f_ours, f_skl, f_init = score(ours), score(skl.components_), score(D0)
    f_omp = score(ours_omp)
    return {
        "atoms": args.atoms,
        "lam": args.lam,
        "batches": args.dl_batches,
        "batch_size": 256,
        "wall_ours_s": t_ours,
        "wall_sklearn_s": t_skl,
        "wall_ratio": t_ours / t_skl,
        "fvu_ours": f_ours,
        "fvu_sklearn": f_skl,
        "fvu_init": f_init,
        "wall_ours_omp_k8_s": t_omp,
        "fvu_ours_omp_k8": f_omp,
    }


def bench_basis_pursuit(E: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    n = min(args.bp_rows, len(E))
    D = _unit(E)
    ids = np.arange(n)
    t0 = time.perf_counter()
    codes = omp(E[:n], D, 8, exclude=ids, batch_rows=1024)
    wall = time.perf_counter() - t0
    own = codes.toarray()[ids, ids] if n <= 4096 else codes[ids, ids]
    return {
        "rows": n,
        "atoms": len(D),
        "k": 8,
        "wall_s": wall,
        "rows_per_s": n / wall,
        "fvu": fvu(E[:n], reconstruct(codes, D)),
        "own_row_used": int(np.count_nonzero(own)),
    }


def bench_sae(store: Path, args: argparse.Namespace) -> dict[str, Any]:
    with actstore.open(store) as s:
        src = StoreSource(s, "minilm", "hidden.6")
        X = s.vectors("minilm", "hidden.6", src.rows, dtype=np.float32)
        cfg = SAEConfig(
            n_latents=4 * X.shape[1],
            k=32,
            batch_size=256,
            epochs=args.sae_epochs,
            block_rows=1024,
            device="cpu",
            aux_k=64,
            dead_after=4096,
        )
        out: dict[str, Any] = {"rows": len(X), "epochs": cfg.epochs, "latents": cfg.n_latents}
        walls: dict[str, list[float]] = {"store": [], "memory": []}
        TopKSAE(cfg).fit(X[:2048])  # warm-up: torch's first steps are slow
        for r in range(args.repeats):
            order = (("store", src), ("memory", X))
            for name, source in order[r % 2 :] + order[: r % 2]:
                t0 = time.perf_counter()
                sae = TopKSAE(cfg).fit(source)
                walls[name].append(time.perf_counter() - t0)
        rows = len(X) * cfg.epochs
        out.update(
            {
                "rows_per_s_store": rows / min(walls["store"]),
                "rows_per_s_memory": rows / min(walls["memory"]),
                "walls": walls,
                "fvu_train_last": float(np.mean(sae.history_[-5:])),
            }
        )
        out["time_ratio"] = min(walls["store"]) / min(walls["memory"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", type=Path, default=OUT / "sparse-demo.acts")
    p.add_argument("--atoms", type=int, default=1536)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--dl-batches", type=int, default=4)
    p.add_argument("--bp-rows", type=int, default=30522)
    p.add_argument("--sae-epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args()
    store = _store(args.store)
    with actstore.open(store) as s:
        E = s.matrix("minilm", "embed").astype(np.float32)
    dl = bench_dictlearn(E, args)
    bp = bench_basis_pursuit(E, args)
    sae = bench_sae(store, args)
    rows = [
        [
            f"dictionary learning ({dl['atoms']} atoms, λ={dl['lam']}, {dl['batches']}x256 rows)",
            f"{dl['wall_ours_s']:.1f} s vs sklearn {dl['wall_sklearn_s']:.1f} s",
            f"ratio {dl['wall_ratio']:.2f} (target ≤ 0.33)",
            f"FVU {dl['fvu_ours']:.3f} vs {dl['fvu_sklearn']:.3f} (init {dl['fvu_init']:.3f})",
        ],
        [
            "same, OMP k=8 coding (not matched: sklearn has no OMP fit)",
            f"{dl['wall_ours_omp_k8_s']:.1f} s",
            f"ratio {dl['wall_ours_omp_k8_s'] / dl['wall_sklearn_s']:.2f}",
            f"FVU {dl['fvu_ours_omp_k8']:.3f}",
        ],
        [
            f"basis pursuit, {bp['rows']:,} rows vs rest of vocab, OMP k=8",
            f"{bp['wall_s']:.1f} s",
            f"{bp['rows_per_s']:,.0f} rows/s",
            f"FVU {bp['fvu']:.3f}",
        ],
        [
            f"TopK SAE ({sae['latents']} latents, k=32), {sae['rows']:,} rows x {sae['epochs']}",
            f"{sae['rows_per_s_store']:,.0f} vs {sae['rows_per_s_memory']:,.0f} rows/s",
            f"store ÷ memory time {sae['time_ratio']:.2f} (target ≤ 1.25)",
            f"train FVU {sae['fvu_train_last']:.3f}",
        ],
    ]
    print(markdown_table(["case", "wall", "ratio / rate", "quality"], rows))
    path = write_json(
        OUT / "sparse.json",
        {
            "when": now_iso(),
            "machine": machine_info(),
            "dictlearn": dl,
            "basis_pursuit": bp,
            "sae": sae,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
