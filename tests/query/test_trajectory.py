"""similarity trajectory: distances, displacement histograms, vocabulary-pair distances,
back-projections and headings equal NumPy on the stored arrays, and find planted answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from actstore.errors import ConfigError
from actstore.query.similarity.trajectory import (
    displacement_histogram,
    distances_travelled,
    heading_tokens,
    pair_distances,
    trajectory_result,
)
from actstore.query.store import Store

from ..extract.test_gradients import MLM_DOCS, write_jsonl

STEPS = [0, 2, 4, 6]

# ------------------------------------------------------------------ planted structure


def test_a_trajectory_toward_a_vocabulary_row_heads_there_and_lands_there() -> None:
    rng = np.random.default_rng(0)
    E = rng.standard_normal((60, 8))
    start, goal = 3, 17
    fractions = np.array([0.0, 0.2, 0.4, 0.9, 1.0])
    X = E[start] + fractions[:, None, None] * (E[goal] - E[start])[None, None, :]  # (5, 1, 8)
    out = distances_travelled(X)
    gap = np.linalg.norm(E[goal] - E[start])
    np.testing.assert_allclose(out["distance"][:, 0], fractions * gap)
    np.testing.assert_allclose(out["path"][:, 0], fractions * gap)
    ids, cos = heading_tokens(X[-1], X[0], E)
    assert ids.tolist() == [goal]
    np.testing.assert_allclose(cos, [1.0])
    ids0, cos0 = heading_tokens(X[0], X[0], E)  # not moved: no heading
    assert ids0.tolist() == [-1]
    assert cos0.tolist() == [0.0]
    from actstore.query.similarity.nearest import nearest_tokens

    near = [int(nearest_tokens(X[s], E, 1, metric="euclidean")[0][0, 0]) for s in range(5)]
    assert near[0] == start
    assert near[-1] == goal
    # a path that goes and comes back: distance returns to 0, the path length does not
    back = np.stack([E[start], E[goal], E[start]])[:, None, :]
    out = distances_travelled(back)
    np.testing.assert_allclose(out["distance"][:, 0], [0.0, gap, 0.0])
    np.testing.assert_allclose(out["path"][:, 0], [0.0, gap, 2 * gap])


def test_heading_from_a_start_that_is_no_vocabulary_row() -> None:
    rng = np.random.default_rng(1)
    E = rng.standard_normal((40, 6))
    x0 = rng.standard_normal((4, 6)) * 0.1
    goals = np.array([5, 9, 9, 30])
    X = x0 + 0.01 * (E[goals] - x0)
    ids, cos = heading_tokens(X, x0, E)
    assert ids.tolist() == goals.tolist()
    np.testing.assert_allclose(cos, 1.0)


def test_displacement_histogram_and_pair_distances_equal_numpy() -> None:
    rng = np.random.default_rng(2)
    D = rng.standard_normal((300, 5)) * np.array([0.1, 1.0, 0.0, 2.0, 0.5])
    h = displacement_histogram(D, bins=20)
    lim = np.abs(D).max()
    counts, edges = np.histogram(D, bins=20, range=(-lim, lim))
    np.testing.assert_array_equal(h["counts"], counts)
    np.testing.assert_allclose(h["edges"], edges)
    for j in range(5):
        col, _ = np.histogram(D[:, j], bins=20, range=(-lim, lim))
        np.testing.assert_array_equal(h["per_dim"][j], col)
    assert h["per_dim"][2].tolist() == [0] * 10 + [len(D)] + [0] * 9  # all in the bin of 0
    np.testing.assert_allclose(h["rms"], np.sqrt((D**2).mean(0)))
    assert h["rms"][2] == 0  # a dimension that never moves
    E = rng.standard_normal((80, 4))
    d = pair_distances(E, 20000, seed=3)
    full = np.linalg.norm(E[:, None] - E[None], axis=2)[np.triu_indices(80, 1)]
    assert d.min() > 0  # never a row with itself
    q = [0.1, 0.5, 0.9]
    np.testing.assert_allclose(np.quantile(d, q), np.quantile(full, q), rtol=0.03)
    np.testing.assert_array_equal(d, pair_distances(E, 20000, seed=3))
    with pytest.raises(ConfigError, match="need >= 2 vocabulary rows"):
        pair_distances(E[:1])


# ------------------------------------------------------------ the store against NumPy


@pytest.fixture(scope="module")
def opt_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from actstore.extract.optimize import OptimizeConfig, optimize

    from ..conftest import save_tiny_model

    root = tmp_path_factory.mktemp("traj")
    model = save_tiny_model("bert_mlm", root / "bert_mlm")
    data = write_jsonl(root / "c.jsonl", MLM_DOCS[:4])
    store = root / "s.acts"
    config = OptimizeConfig(
        model=str(model),
        data=str(data),
        store=str(store),
        run="opt",
        objective="kl-to-prompt",
        objective_target_field="target",
        steps=6,
        every=2,
        lr=0.3,  # large: some tokens' nearest vocabulary row changes
        device="cpu",
        quiet=True,
    )
    optimize(config)
    return store


def test_trajectory_result_equals_numpy(opt_store: Path) -> None:
    with Store(opt_store) as s:
        res = trajectory_result(s, "opt", pairs=3000, seed=4, bins=16)
        by_cos = trajectory_result(s, "opt", pairs=10, metric="cosine").table
        ids = np.sort(s.rows("opt", "SELECT row FROM tokens WHERE NOT special"))
        X = np.stack([s.vectors("opt", f"traj.{k}", ids) for k in STEPS]).astype(np.float64)
        E = s.matrix("opt", "embed").astype(np.float64)
        tok = s.token_columns("opt", "doc_id", "pos", "token_id")
        losses = s.sql("SELECT doc_id, step, loss FROM losses WHERE run = 'opt'").df()
    t = res.table
    assert res.meta["steps"] == STEPS
    assert len(t) == len(ids) * len(STEPS)
    assert set(t["step"]) == set(STEPS)
    for i, row in enumerate(ids):
        got = t[t["row"] == row].sort_values("step")
        assert (got["doc_id"] == tok["doc_id"][row]).all()
        d = np.linalg.norm(X[:, i] - X[0, i], axis=1)
        np.testing.assert_allclose(got["distance"], d, rtol=1e-9, atol=1e-12)
        legs = np.linalg.norm(np.diff(X[:, i], axis=0), axis=1)
        np.testing.assert_allclose(got["path"], np.r_[0, np.cumsum(legs)], rtol=1e-9)
        dist = np.linalg.norm(X[:, i, None, :] - E[None], axis=2)  # (steps, vocab)
        near = dist.argmin(1)
        assert got["nearest_id"].tolist() == near.tolist()
        np.testing.assert_allclose(got["nearest_score"], dist.min(1), rtol=1e-5)
        changed = near != near[0]
        assert got["changed"].tolist() == [bool(changed.any())] * len(STEPS)
        first = STEPS[int(changed.argmax())] if changed.any() else -1
        assert got["first_change"].tolist() == [first] * len(STEPS)
        for s_i in range(1, len(STEPS)):
            v = X[s_i, i] - X[0, i]
            C = E - X[0, i]
            cn = np.linalg.norm(C, axis=1)
            cos = C @ v / (np.linalg.norm(v) * np.maximum(cn, 1e-30))
            cos[cn <= 1e-6 * np.linalg.norm(E, axis=1).max()] = -np.inf
            assert got["heading_id"].iloc[s_i] == cos.argmax()
            np.testing.assert_allclose(got["heading_cos"].iloc[s_i], cos.max(), rtol=1e-9)
        assert got["heading_id"].iloc[0] == -1
        want_loss = losses[losses["doc_id"] == tok["doc_id"][row]].set_index("step")["loss"]
        np.testing.assert_allclose(got["loss"], want_loss.loc[STEPS].to_numpy())
    # --metric cosine: the nearest row by cosine, scored by it
    by_cos = by_cos.sort_values(["row", "step"])
    Xs = X.transpose(1, 0, 2).reshape(-1, X.shape[2])  # (row, step) order
    cos = (Xs / np.linalg.norm(Xs, axis=1, keepdims=True)) @ (
        E / np.linalg.norm(E, axis=1, keepdims=True)
    ).T
    assert by_cos["nearest_id"].tolist() == cos.argmax(1).tolist()
    np.testing.assert_allclose(by_cos["nearest_score"], cos.max(1), rtol=1e-5)
    pairs = pair_distances(E, 3000, seed=4)
    np.testing.assert_allclose(
        t["distance_pct"], [(pairs < d).mean() for d in t["distance"]], atol=1e-12
    )
    D = X[-1] - X[0]
    lim = np.abs(D).max()
    counts, _ = np.histogram(D, bins=16, range=(-lim, lim))
    np.testing.assert_array_equal(res.arrays["hist_displacement"], counts)
    for j in range(D.shape[1]):
        col, _ = np.histogram(D[:, j], bins=16, range=(-lim, lim))
        np.testing.assert_array_equal(res.arrays["hist_displacement_per_dim"][j], col)
    np.testing.assert_allclose(res.arrays["rms_displacement"], np.sqrt((D**2).mean(0)))
    assert res.meta["frac_changed"] == pytest.approx(t.groupby("row")["changed"].first().mean())
    assert 0 < res.meta["frac_changed"] < 1  # planted by the large lr: both kinds present
    first = losses[losses["step"] == 0]["loss"].mean()
    assert res.meta["mean_loss_first"] == pytest.approx(first)


def test_command_line_saves_and_refuses_other_runs(
    opt_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from actstore.cli import main
    from actstore.store.synthetic import write_synthetic_run

    store = tmp_path / "s.acts"
    shutil.copytree(opt_store, store)
    argv = ["similarity", "trajectory", str(store), "--pairs", "500", "--save", "moves"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["analysis"] == "similarity.trajectory"
    assert out["steps"] == STEPS
    with Store(store) as s:
        n = s.sql("SELECT count(*) FROM moves WHERE step = 6").fetchall()[0][0]
        assert n == out["n_rows"]
        view = s.sql(
            "SELECT t.row, l.step, s.site FROM tokens t "
            "JOIN losses l ON l.run = t.run AND l.doc_id = t.doc_id "
            "JOIN sites s ON s.run = t.run AND s.site = 'traj.' || l.step "
            "WHERE t.run = 'opt'"
        ).df()
        assert len(view) == s.run_info("opt")["counts"]["rows"] * len(STEPS)
    plain = tmp_path / "plain.acts"
    write_synthetic_run(plain, "plain", n_docs=2, tokens_per_doc=4)
    assert main(["similarity", "trajectory", str(plain)]) != 0
    err = capsys.readouterr().err
    assert "is not an optimisation run" in err
    assert err.count("\n") == 1


def test_blocks_of_rows_give_the_same_result(
    opt_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import actstore.query.similarity.trajectory as traj

    with Store(opt_store) as s:
        whole = trajectory_result(s, "opt", pairs=500)
        monkeypatch.setattr(traj, "_READ_BYTES", 1)  # 16 rows per block
        blocks = trajectory_result(s, "opt", pairs=500)
    assert whole.meta["n_rows"] > 32
    a, b = whole.table, blocks.table
    floats = [c for c in a.columns if a[c].dtype == np.float64]
    assert a.drop(columns=floats).equals(b.drop(columns=floats))  # ids, tokens, steps
    for c in floats:  # matrix products of other shapes round differently
        np.testing.assert_allclose(a[c], b[c], rtol=1e-12, atol=1e-15)
    for k, v in whole.arrays.items():
        np.testing.assert_allclose(blocks.arrays[k], v, rtol=1e-12)


def test_planted_trajectories_through_the_store(opt_store: Path, tmp_path: Path) -> None:
    """Every non-special token moved in a straight line from its own row of ``embed`` to a
    chosen row: the store-level analysis finds that row as the heading at every step and
    as the back-projection at the end, and the distance it went."""
    import shutil

    import zarr

    store = tmp_path / "planted.acts"
    shutil.copytree(opt_store, store)
    with Store(store) as s:
        E = s.matrix("opt", "embed").astype(np.float64)
        tok = s.token_columns("opt", "token_id", "special")
    n = len(tok["token_id"])
    rng = np.random.default_rng(7)
    goal = rng.integers(5, len(E), n)  # never a special token's row
    goal = np.where(goal == tok["token_id"], (goal + 1 - 5) % (len(E) - 5) + 5, goal)
    start = E[tok["token_id"]]
    moving = ~tok["special"]
    group = zarr.open_group(store / "runs/opt/arrays", mode="r+")
    for k in STEPS:
        x = start + (k / STEPS[-1]) * (E[goal] - start) * moving[:, None]
        group[f"part-0000/traj.{k}"][:] = x.astype(np.float32)
    with Store(store) as s:
        t = trajectory_result(s, "opt", pairs=500).table
    t = t.sort_values(["row", "step"])
    want_goal = goal[t["row"].to_numpy()]
    moved = t["step"] > 0
    assert (t.loc[moved, "heading_id"] == want_goal[moved]).all()
    np.testing.assert_allclose(t.loc[moved, "heading_cos"], 1.0, atol=1e-6)
    last = t["step"] == STEPS[-1]
    assert (t.loc[last, "nearest_id"] == want_goal[last]).all()
    assert t.loc[last, "changed"].all()
    gap = np.linalg.norm(E[goal] - start, axis=1)[t.loc[last, "row"].to_numpy()]
    np.testing.assert_allclose(t.loc[last, "distance"], gap, rtol=1e-5)
    np.testing.assert_allclose(t.loc[last, "path"], gap, rtol=1e-5)  # a straight line
