"""Benchmark sparse coding: dictionary learning (quality on held-out rows, against
scikit-learn given the same wall time), Lasso coding speed, basis pursuit of the MiniLM
vocabulary, and TopK SAE training streamed from the store vs in memory.

Dictionary learning, both data sets: rows are split into disjoint training and held-out rows
before anything is learned; the initial atoms are unit-normalised training rows, the same for
every learner; every learner sees the same shuffled 256-row batches of the training rows.
actstore's ``DictionaryLearner`` runs whole epochs with its defaults (OMP or Lasso coding, tol
1e-4, atoms overlapping an earlier one by abs cos > 0.8 re-seeded); scikit-learn's
``MiniBatchDictionaryLearning(fit_algorithm="cd", alpha=λ)`` (Lasso coding, the same λ) is fed
those batches by ``partial_fit`` until it has used the wall time of actstore's Lasso learner,
and its dictionary after the batch ending nearest to the OMP learner's wall time is kept too.
The three run interleaved (each actstore learner takes a batch, then scikit-learn takes
batches until its time catches up), so a loaded machine slows all of them alike; times are
those spent in ``partial_fit``.
Every dictionary, the initial one included, is scored on the held-out rows twice: coded by
OMP (the planted k, or k = 8 on MiniLM) on its unit-normalised atoms — the same encoder for
all — and by the encoder it was trained with (OMP k, or Lasso λ on the atoms as learned;
Lasso codes come from actstore's ``lasso``, which equals ``sparse_encode(algorithm=
"lasso_cd")``). "s/batch ÷ scikit-learn" is actstore's wall time per batch over
scikit-learn's in the same time budget.

* **Planted dictionary.** ``X = C @ D_true + noise``: ``--planted-rows`` rows, d = 64,
  128 random unit atoms, 4 non-zeros ±U(1, 2) per row, noise sd 0.01; 20 % held out;
  ``--planted-epochs`` epochs, Lasso λ = ``--planted-lam``, OMP k = 4. Also reported: the
  share of true atoms recovered (max abs cos with a learned atom > 0.95 / > 0.99), and the
  true atoms' own held-out FVU (the noise floor).
* **MiniLM ``embed``** (30,522 x 384): ``--held`` held-out rows, ``--atoms`` atoms, Lasso
  λ = ``--lam``, ``--dl-epochs`` epochs; ``--minilm-omp`` adds actstore's OMP (k = 8) learner
  and scikit-learn's dictionary at its wall time (off by default to keep the run short).
* **Lasso coding speed**: actstore's ``lasso`` ÷ scikit-learn's ``sparse_encode(algorithm=
  "lasso_cd")`` on one 256-row batch, λ = 0.1, the dictionary learner's tolerance (1e-4):
  (a) 64 atoms in d = 64 with pairwise cosines ≈ 0.9, rows planted from 4 atoms, and
  Gaussian rows (dense codes); (b) 1,536 random atoms in d = 384, rows planted from 8
  atoms. Minimum of ``--lasso-repeats`` interleaved rounds (one round for (b): scikit-learn
  takes ~10 s there). Also the largest code difference and the objective of actstore's
  codes relative to scikit-learn's (negative: lower, i.e. better).
* Basis pursuit: the first ``--bp-rows`` embedding rows against all other rows of the
  unit-normalised vocabulary, OMP k = 8.
* TopK SAE on ``hidden.6`` of the demo corpus: rows/s streamed from the store ÷ in memory.

Prints markdown tables and writes ``benchmarks/out/sparse.json``.

    python benchmarks/sparse.py                    # about 5-6 minutes on 2 cores
    python benchmarks/sparse.py --minilm-omp       # + the OMP learner on MiniLM, ~7 minutes
    python benchmarks/sparse.py --sections planted,lasso --planted-rows 5000   # quick check
    python benchmarks/sparse.py --planted-rows 100000 --dl-epochs 3 --minilm-omp --bp-rows 30522
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    command_line,
    interleave,
    machine_info,
    markdown_table,
    now_iso,
    write_json,
)
from _dictquality import (
    coherent_atoms,
    planted,
    race,
    recovery,
    score,
    sparse_rows,
    unit,
)

import actstore
from actstore.query.rowstream import ArraySource, StoreSource, shuffled_batches
from actstore.query.sparse.dictlearn import DictionaryLearner, DictLearnConfig
from actstore.query.sparse.metrics import fvu
from actstore.query.sparse.pursuit import lasso, omp, reconstruct
from actstore.query.sparse.sae import SAEConfig, TopKSAE

OUT = Path(__file__).parent / "out"
BATCH = 256


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


def _split(n: int, n_held: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, held-out) row ids, each sorted."""
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def _compare(
    X_train: np.ndarray,
    X_held: np.ndarray,
    D0: np.ndarray,
    *,
    k: int,
    lam: float,
    epochs: int,
    with_omp: bool,
    D_true: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Learn with actstore (Lasso, and OMP if asked) and scikit-learn within the same wall
    time; score every dictionary on ``X_held`` (see the module docstring)."""
    cfgs = {f"actstore Lasso λ={lam}": DictLearnConfig(n_atoms=len(D0), lam=lam)}
    if with_omp:
        cfgs = {f"actstore OMP k={k}": DictLearnConfig(n_atoms=len(D0), k=k), **cfgs}
    # initialised from D0 without a step: the steps are taken (and timed) in race()
    learners = {
        name: DictionaryLearner(replace(cfg, max_batches=0)).fit(X_train, dict_init=D0)
        for name, cfg in cfgs.items()
    }
    # the batches DictionaryLearner.fit would draw (same defaults: block_rows, seed 0)
    batches = list(shuffled_batches(ArraySource(X_train), BATCH, epochs=epochs))
    ours, theirs = race(learners, batches, D0, lam)
    learned: list[dict[str, Any]] = [
        {"learner": "initial atoms", "D": D0, "wall_s": 0.0, "batches": 0, "encoder": "lasso"}
    ]
    for name, skl in zip(ours, theirs, strict=True):
        mine = ours[name]
        per_batch = skl["wall_s"] / max(skl["batches"], 1)
        learned.append(
            {
                "learner": name,
                "D": mine["components"],
                "wall_s": mine["wall_s"],
                "batches": mine["batches"],
                "encoder": "omp" if cfgs[name].k is not None else "lasso",
                "per_batch_ratio": mine["wall_s"] / max(mine["batches"], 1) / per_batch,
            }
        )
    for name, skl in zip(ours, theirs, strict=True):
        learned.append(
            {
                "learner": f"scikit-learn λ={lam}, in the time of {name}",
                "D": skl["components"],
                "wall_s": skl["wall_s"],
                "batches": skl["batches"],
                "encoder": "lasso",
            }
        )
    if D_true is not None:
        learned.insert(
            0, {"learner": "true atoms", "D": D_true, "wall_s": 0.0, "batches": 0, "encoder": "omp"}
        )
    per_epoch = -(-len(X_train) // BATCH)
    for row in learned:
        D = row.pop("D")
        row["epochs"] = row["batches"] / per_epoch
        row["same"] = score(X_held, D, k=k)
        own = {"k": k} if row["encoder"] == "omp" else {"lam": lam}
        row["own"] = score(X_held, D, **own)
        if D_true is not None:
            row.update(recovery(D, D_true))
    return learned


def bench_planted(args: argparse.Namespace) -> dict[str, Any]:
    X, D_true = planted(args.planted_rows, 64, 128, 4, 0.01, seed=0)
    train, held = _split(len(X), len(X) // 5, seed=0)
    rng = np.random.default_rng(1)
    D0 = unit(X[rng.choice(train, 128, replace=False)]).astype(np.float32)
    rows = _compare(
        X[train],
        X[held],
        D0,
        k=4,
        lam=args.planted_lam,
        epochs=args.planted_epochs,
        with_omp=True,
        D_true=D_true,
    )
    return {
        "rows": len(X),
        "train_rows": len(train),
        "held_rows": len(held),
        "d": 64,
        "atoms": 128,
        "k": 4,
        "noise": 0.01,
        "lam": args.planted_lam,
        "epochs": args.planted_epochs,
        "learners": rows,
    }


def bench_minilm(E: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    train, held = _split(len(E), args.held, seed=0)
    rng = np.random.default_rng(1)
    D0 = unit(E[rng.choice(train, args.atoms, replace=False)]).astype(np.float32)
    rows = _compare(
        E[train],
        E[held],
        D0,
        k=8,
        lam=args.lam,
        epochs=args.dl_epochs,
        with_omp=args.minilm_omp,
    )
    return {
        "rows": len(E),
        "train_rows": len(train),
        "held_rows": len(held),
        "atoms": args.atoms,
        "lam": args.lam,
        "epochs": args.dl_epochs,
        "learners": rows,
    }


def _objective(X: np.ndarray, C: np.ndarray, D: np.ndarray, lam: float) -> float:
    X64, C64 = X.astype(np.float64), C.astype(np.float64)
    r = X64 - C64 @ D.astype(np.float64)
    return float(0.5 * (r**2).sum() + lam * np.abs(C64).sum())


def bench_lasso_speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    lam, tol = 0.1, 1e-4
    D_coh = coherent_atoms(64, 64, 0.9, seed=2)
    X_coh = sparse_rows(D_coh, BATCH, 4, 0.05, seed=3)
    X_gauss = np.random.default_rng(4).standard_normal((BATCH, 64)).astype(np.float32)
    X_big, D_big = planted(BATCH, 384, 1536, 8, 0.05, seed=5)
    cases = [
        ("(a) 64 atoms, d=64, cos≈0.9, rows from 4 atoms", X_coh, D_coh, args.lasso_repeats),
        ("(a) same atoms, Gaussian rows", X_gauss, D_coh, args.lasso_repeats),
        ("(b) 1,536 random atoms, d=384, rows from 8 atoms", X_big, D_big, 1),
    ]
    out = []
    for name, X, D, repeats in cases:
        res = _time_lasso(X, D.astype(np.float32), lam, tol, repeats)
        G = D.astype(np.float64) @ D.astype(np.float64).T
        res.update(
            case=name,
            atoms=len(D),
            d=D.shape[1],
            mean_abs_cos=float(np.abs(G[~np.eye(len(G), dtype=bool)]).mean()),
            lam=lam,
            tol=tol,
        )
        out.append(res)
    return out


def _time_lasso(
    X: np.ndarray, D: np.ndarray, lam: float, tol: float, repeats: int
) -> dict[str, Any]:
    """actstore's ``lasso`` and scikit-learn's ``sparse_encode`` on the same batch, interleaved."""
    import warnings

    from sklearn.decomposition import sparse_encode

    codes: dict[str, Any] = {}

    def ours() -> float:
        t0 = time.perf_counter()
        codes["ours"] = lasso(X, D, lam, tol=tol).toarray()
        return time.perf_counter() - t0

    def skl() -> float:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cd's ConvergenceWarning (reported below instead)
            codes["skl"] = sparse_encode(X, D, algorithm="lasso_cd", alpha=lam)
        return time.perf_counter() - t0

    walls = interleave({"actstore": ours, "sklearn": skl}, repeats)
    o_ours, o_skl = (_objective(X, codes[w], D, lam) for w in ("ours", "skl"))
    return {
        "walls": walls,
        "ours_s": min(walls["actstore"]),
        "sklearn_s": min(walls["sklearn"]),
        "ratio": min(walls["actstore"]) / min(walls["sklearn"]),
        "nnz_per_row": float((codes["ours"] != 0).sum(1).mean()),
        "max_abs_code_diff": float(np.abs(codes["ours"] - codes["skl"]).max()),
        "objective_rel_to_sklearn": (o_ours - o_skl) / o_skl,
    }


def bench_basis_pursuit(E: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    n = min(args.bp_rows, len(E))
    D = unit(E)
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


SECTIONS = ("planted", "minilm", "lasso", "bp", "sae")


def _learner_table(res: dict[str, Any], k: int, planted: bool) -> str:
    header = ["dictionary", "wall", "batches (epochs)", "s/batch ÷ scikit-learn"]
    if planted:
        header.append("true atoms recovered (max abs cos > 0.95 / > 0.99)")
    header += [f"held-out FVU, OMP k={k} (same for all)", "held-out FVU (L0), own encoder"]
    rows = []
    for r in res["learners"]:
        own = f"OMP k={k}" if r["encoder"] == "omp" else f"Lasso λ={res['lam']}"
        row = [
            r["learner"],
            f"{r['wall_s']:.1f} s" if r["batches"] else "",
            f"{r['batches']} ({r['epochs']:.2f})" if r["batches"] else "",
            f"{r['per_batch_ratio']:.2f}" if "per_batch_ratio" in r else "",
        ]
        if planted:
            row.append(f"{r['recovered_095']:.1%} / {r['recovered_099']:.1%}")
        row += [f"{r['same']['fvu']:.4f}", f"{r['own']['fvu']:.4f} ({r['own']['l0']:.1f}, {own})"]
        rows.append(row)
    return markdown_table(header, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", type=Path, default=OUT / "sparse-demo.acts")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--planted-rows", type=int, default=20000)
    p.add_argument("--planted-lam", type=float, default=0.3)
    p.add_argument("--planted-epochs", type=int, default=3)
    p.add_argument("--atoms", type=int, default=1536)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--dl-epochs", type=int, default=1)
    p.add_argument("--held", type=int, default=4096)
    p.add_argument("--minilm-omp", action="store_true", help="also actstore's OMP learner")
    p.add_argument("--lasso-repeats", type=int, default=3)
    p.add_argument("--bp-rows", type=int, default=8192)
    p.add_argument("--sae-epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=4, help="SAE rounds (interleaved)")
    args = p.parse_args()
    sections = args.sections.split(",")
    if unknown := set(sections) - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}; pick from {', '.join(SECTIONS)}")
    out: dict[str, Any] = {"when": now_iso(), "command": command_line(), "machine": machine_info()}
    walls: dict[str, float] = {}
    E = None
    if {"minilm", "bp", "sae"} & set(sections):
        store = _store(args.store)
        with actstore.open(store) as s:
            E = s.matrix("minilm", "embed").astype(np.float32)
    for name in sections:
        t0 = time.perf_counter()
        if name == "planted":
            out[name] = res = bench_planted(args)
            print(
                f"\nPlanted dictionary: {res['rows']:,} rows ({res['held_rows']:,} held out), "
                f"d={res['d']}, {res['atoms']} atoms, k={res['k']}, λ={res['lam']}, "
                f"{res['epochs']} epochs\n"
            )
            print(_learner_table(res, res["k"], planted=True))
        elif name == "minilm":
            out[name] = res = bench_minilm(E, args)
            print(
                f"\nMiniLM embed: {res['train_rows']:,} training rows, {res['held_rows']:,} "
                f"held out, {res['atoms']} atoms, λ={res['lam']}, {res['epochs']} epoch(s)\n"
            )
            print(_learner_table(res, 8, planted=False))
        elif name == "lasso":
            out[name] = res = bench_lasso_speed(args)
            print("\nLasso coding, one 256-row batch, λ=0.1, tol=1e-4\n")
            print(
                markdown_table(
                    [
                        "case",
                        "actstore",
                        "scikit-learn",
                        "ratio",
                        "nnz/row",
                        "largest code difference",
                        "objective vs sklearn",
                    ],
                    [
                        [
                            r["case"],
                            f"{r['ours_s']:.3f} s",
                            f"{r['sklearn_s']:.3f} s",
                            f"{r['ratio']:.2f}",
                            f"{r['nnz_per_row']:.1f}",
                            f"{r['max_abs_code_diff']:.1e}",
                            f"{r['objective_rel_to_sklearn']:+.1e}",
                        ]
                        for r in res
                    ],
                )
            )
        elif name == "bp":
            out[name] = bp = bench_basis_pursuit(E, args)
            print(
                f"\nbasis pursuit, {bp['rows']:,} rows vs rest of vocab, OMP k=8: "
                f"{bp['wall_s']:.1f} s, {bp['rows_per_s']:,.0f} rows/s, FVU {bp['fvu']:.4f}"
            )
        elif name == "sae":
            out[name] = sae = bench_sae(args.store, args)
            print(
                f"\nTopK SAE ({sae['latents']} latents, k=32), {sae['rows']:,} rows x "
                f"{sae['epochs']}: {sae['rows_per_s_store']:,.0f} vs "
                f"{sae['rows_per_s_memory']:,.0f} rows/s, store ÷ memory time "
                f"{sae['time_ratio']:.2f} (target ≤ 1.25), train FVU {sae['fvu_train_last']:.3f}"
            )
        walls[name] = time.perf_counter() - t0
    out["section_walls_s"] = walls
    path = write_json(OUT / "sparse.json", out)
    print(f"\nsections took {', '.join(f'{k} {v:.0f} s' for k, v in walls.items())}; wrote {path}")


if __name__ == "__main__":
    main()
