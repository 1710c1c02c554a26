"""actstore optimize: the stored trajectories equal a plain Adam loop per doc (batched or
not), step 0 is the start point, the loss decreases, random-ellipsoid draws fit the
vocabulary, kill -9 then rerun gives the same store, and bad input is one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from actstore.errors import ConfigError, CorpusError, RunExistsError
from actstore.extract.optimize import OptimizeConfig, optimize
from actstore.extract.trajectory import draw_ellipsoid, fit_ellipsoid
from actstore.query.store import Store
from actstore.store import _faults

from .test_extract import read_run
from .test_gradients import MLM_DOCS, _load, reference_loss, write_jsonl
from .test_resume import assert_interrupted, killed, snapshot

STEPS, EVERY, LR = 12, 4, 0.05


def run_optimize(model: Path, data: Path, store: Path, **kw: Any) -> Any:
    progress = kw.pop("progress", None)
    kw.setdefault("run", "r")
    kw.setdefault("quiet", True)
    kw.setdefault("device", "cpu")
    kw.setdefault("steps", STEPS)
    kw.setdefault("every", EVERY)
    kw.setdefault("lr", LR)
    config = OptimizeConfig(model=str(model), data=str(data), store=str(store), **kw)
    return optimize(config, progress=progress)


def reference_trajectory(
    model: Any, tok: Any, ids: list[int], objective: str, target: str, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Adam on one doc's input embeddings, unpadded, through ``inputs_embeds``; special
    tokens' gradients zeroed. The embeddings at every step (steps + 1, n, d) and losses."""
    loss_fn = reference_loss(model, tok, ids, objective, target, "mask")
    with torch.no_grad():
        e0 = model.get_input_embeddings()(torch.tensor([ids])).float()
    moving = ~torch.tensor([i in set(tok.all_special_ids) for i in ids])[None, :, None]
    x = e0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=LR)
    xs, losses = [], []
    for step in range(steps + 1):
        xs.append(x.detach()[0].numpy().copy())
        loss = loss_fn(x)
        losses.append(float(loss.detach()))
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        assert x.grad is not None
        x.grad = torch.where(moving, x.grad, torch.zeros(()))
        opt.step()
    return np.stack(xs), np.array(losses)


def _stored(store: Path, run: str = "r") -> tuple[Any, dict[str, np.ndarray], Any, dict[str, Any]]:
    data = read_run(store, run)
    losses = pq.read_table(store / "runs" / run / "losses.parquet").to_pandas()
    return data["tokens"], data["sites"], losses, data["run"]


@pytest.fixture(scope="module")
def bert_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ..conftest import save_tiny_model

    return save_tiny_model("bert_mlm", tmp_path_factory.mktemp("mlm") / "bert_mlm")


@pytest.fixture(scope="module")
def mlm_run(bert_mlm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kl-to-prompt on the tiny BERT-MLM, every doc in one padded batch."""
    root = tmp_path_factory.mktemp("opt")
    data = write_jsonl(root / "c.jsonl", MLM_DOCS)
    store = root / "s.acts"
    res = run_optimize(
        bert_mlm,
        data,
        store,
        objective="kl-to-prompt",
        objective_target_field="target",
        batch_tokens=4096,
        pad_tolerance=0.9,
    )
    assert res.counts["batches"] == 1
    assert res.counts["pad_tokens"] > 0
    return store


def test_trajectories_equal_adam_per_doc_and_the_loss_decreases(
    mlm_run: Path, bert_mlm: Path
) -> None:
    from transformers import AutoTokenizer

    tokens, sites, losses, rj = _stored(mlm_run)
    steps = [0, 4, 8, 12]
    assert sorted(sites) == sorted(f"traj.{k}" for k in steps)
    assert rj["optimize"]["stored_steps"] == steps
    assert rj["optimize"]["init"] == "tokens"
    assert rj["optimize"]["precision"] == "float32"
    assert rj["objective"]["name"] == "kl-to-prompt"
    assert set(losses.columns) == {"doc_id", "step", "loss"}
    tok = AutoTokenizer.from_pretrained(bert_mlm)
    model, _ = _load(bert_mlm, "mlm", torch.float32)
    texts = {json.dumps(r["text"]): r["target"] for r in MLM_DOCS}
    with Store(mlm_run) as s:
        docs = s.sql("SELECT doc_id, text FROM docs").df()
    for doc_id, text in zip(docs["doc_id"], docs["text"], strict=True):
        rows = tokens[tokens["doc_id"] == doc_id].sort_values("pos")
        ids = rows["token_id"].tolist()
        assert ids == tok(text)["input_ids"]
        want_x, want_loss = reference_trajectory(
            model, tok, ids, "kl-to-prompt", texts[json.dumps(text)], STEPS
        )
        r = rows["row"].to_numpy()
        # Adam moves an element by about lr whatever its gradient's size, and this random
        # model's KL gradients carry float32 rounding magnified ~1e3-fold (see
        # test_gradients.py); batched and unpadded passes round differently, so the two
        # trajectories agree to a few % of one step (of 12), not to the last bit
        for k in steps:
            np.testing.assert_allclose(sites[f"traj.{k}"][r], want_x[k], rtol=0, atol=0.05 * LR)
        got = losses[losses["doc_id"] == doc_id].sort_values("step")
        assert got["step"].tolist() == list(range(STEPS + 1))
        # the KL of this near-uniform random model is ~1e-4..1e-6, and its float32
        # rounding differs between a batched and an unpadded pass by up to ~1e-7
        np.testing.assert_allclose(got["loss"], want_loss, rtol=1e-3, atol=1e-6)
        # step 0 is the model's input embeddings of the prompt; special rows never move
        E = read_run(mlm_run)["group"]["embed"][:]
        np.testing.assert_array_equal(sites["traj.0"][r], E[ids])
        special = rows["special"].to_numpy()
        assert special.sum() >= 3  # CLS, SEP and at least one [MASK]
        np.testing.assert_array_equal(sites[f"traj.{STEPS}"][r][special], E[ids][special])
        assert (np.abs(sites[f"traj.{STEPS}"][r][~special] - E[ids][~special]).max(1) > 0).all()
    # this near-uniform random model starts every doc at a KL of only ~1e-4..1e-6 (its
    # tokenizer, trained afresh per session, changes which), where float32 noise is
    # ~1e-6: a doc already near its target only random-walks, so the fall is checked
    # over all docs together (and per doc on clearer objectives below)
    total = losses.groupby("step")["loss"].sum()
    assert total[STEPS] < 0.5 * total[0], total


def test_batching_and_padding_never_change_a_trajectory(
    mlm_run: Path, bert_mlm: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", MLM_DOCS)
    one = tmp_path / "one.acts"
    res = run_optimize(
        bert_mlm, data, one, objective="kl-to-prompt", objective_target_field="target",
        batch_tokens=8,
    )  # fmt: skip
    assert res.counts["batches"] == len(MLM_DOCS)
    assert res.counts["pad_tokens"] == 0
    ta, sa, la, _ = _stored(one)
    tb, sb, lb, _ = _stored(mlm_run)
    key = ["doc_id", "pos"]
    ra = ta.sort_values(key)["row"].to_numpy()
    rb = tb.sort_values(key)["row"].to_numpy()
    for site in sa:  # to a few % of one Adam step: see the test above
        np.testing.assert_allclose(sa[site][ra], sb[site][rb], rtol=0, atol=0.05 * LR)
    la, lb = la.sort_values(["doc_id", "step"]), lb.sort_values(["doc_id", "step"])
    np.testing.assert_allclose(la["loss"].to_numpy(), lb["loss"].to_numpy(), rtol=1e-3, atol=1e-6)


def test_cosine_to_text_on_a_model_without_head(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in ("the dog barks", "a cat")])
    store = tmp_path / "s.acts"
    seen: list[Any] = []
    run_optimize(
        tiny_model_dirs["bert"], data, store, objective="cosine-to-text",
        objective_target="the red sky of the cow", steps=10, every=5, lr=0.1,
        progress=seen.append,
    )  # fmt: skip
    # the bar's ticks, as extract's, and inside the one batch after every Adam step
    assert seen[0].records == 0
    assert seen[-1].records == seen[-1].total_records == 2
    records = [p.records for p in seen]
    assert len(records) >= 10
    assert records == sorted(records)
    tokens, sites, losses, rj = _stored(store)
    assert rj["head"]["lm_head"] is None
    first = losses[losses["step"] == 0].set_index("doc_id")["loss"]
    last = losses[losses["step"] == 10].set_index("doc_id")["loss"]
    assert (last < 0.8 * first).all(), (first, last)
    E = read_run(store)["group"]["embed"][:]
    np.testing.assert_array_equal(sites["traj.0"], E[tokens["token_id"].to_numpy()])


def test_kl_to_prompt_on_a_decoder_reads_the_last_token(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    texts = ["the dog barks at", "a cow moos in the field and", "red sky of"]
    data = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    store = tmp_path / "s.acts"
    run_optimize(
        tiny_model_dirs["gpt2"], data, store, objective="kl-to-prompt",
        objective_target="the cat meows at", steps=8, every=8, lr=0.05,
    )  # fmt: skip
    tokens, sites, losses, rj = _stored(store)
    assert rj["objective"]["position"] == "last"
    assert sorted(sites) == ["traj.0", "traj.8"]
    first = losses[losses["step"] == 0].set_index("doc_id")["loss"]
    last = losses[losses["step"] == 8].set_index("doc_id")["loss"]
    assert (last < 0.5 * first).all(), (first, last)
    E = read_run(store)["group"]["embed"][:]
    ids = tokens["token_id"].to_numpy()
    np.testing.assert_array_equal(sites["traj.0"], E[ids])
    special = tokens["special"].to_numpy()
    np.testing.assert_array_equal(sites["traj.8"][special], E[ids][special])
    assert (np.abs(sites["traj.8"][~special] - E[ids][~special]).max(1) > 0).all()


def test_random_ellipsoid_draws_fit_the_vocabulary(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    A = rng.normal(size=(6, 6))
    E = rng.normal(size=(4000, 6)) @ A + np.arange(6.0)
    mean, L = fit_ellipsoid(E)
    draws = np.concatenate([draw_ellipsoid(mean, L, 7, doc, 500) for doc in range(40)])
    np.testing.assert_allclose(draws.mean(0), E.mean(0), atol=0.1)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), np.cov(E, rowvar=False), atol=0.25)
    # a doc's draws depend on (seed, doc_id) only
    np.testing.assert_array_equal(
        draw_ellipsoid(mean, L, 7, 3, 5), draw_ellipsoid(mean, L, 7, 3, 5)
    )
    assert not np.array_equal(draw_ellipsoid(mean, L, 7, 3, 5), draw_ellipsoid(mean, L, 8, 3, 5))
    assert not np.array_equal(draw_ellipsoid(mean, L, 7, 3, 5), draw_ellipsoid(mean, L, 7, 4, 5))


def test_random_ellipsoid_start_is_the_documented_draw(bert_mlm: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", MLM_DOCS[:3])
    store = tmp_path / "s.acts"
    run_optimize(
        bert_mlm, data, store, objective="kl-to-prompt", objective_target="The dog [MASK].",
        init="random-ellipsoid", seed=11, steps=2, every=1, batch_tokens=16,
    )  # fmt: skip
    tokens, sites, _, rj = _stored(store)
    assert rj["optimize"]["init"] == "random-ellipsoid"
    assert rj["optimize"]["seed"] == 11
    E = read_run(store)["group"]["embed"][:]
    mean, L = fit_ellipsoid(E)
    for doc_id, group in tokens.groupby("doc_id"):
        rows = group.sort_values("pos")
        r, special = rows["row"].to_numpy(), rows["special"].to_numpy()
        want = draw_ellipsoid(mean, L, 11, int(doc_id), int((~special).sum()))
        np.testing.assert_allclose(sites["traj.0"][r][~special], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(sites["traj.0"][r][special], E[rows["token_id"]][special])


# ------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_loses_nothing(
    bert_mlm: Path,
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from actstore.cli import main

    store = tmp_path / "s.acts"
    good = write_jsonl(tmp_path / "good.jsonl", MLM_DOCS[:2])
    kw: dict[str, Any] = {"objective": "kl-to-prompt", "steps": 2, "every": 1}
    run_optimize(bert_mlm, good, store, run="keep", objective_target="x [MASK]", **kw)
    before = read_run(store, "keep")["sites"]["traj.2"].copy()
    with pytest.raises(ConfigError, match=r"needs the model's output head.*has none") as exc:
        run_optimize(tiny_model_dirs["bert"], good, store, objective_target="x [MASK]", **kw)
    assert "\n" not in str(exc.value)
    bad = write_jsonl(tmp_path / "c.jsonl", [*MLM_DOCS[:2], {"text": "no marker", "target": "x"}])
    with pytest.raises(CorpusError, match=r"record 2 has no \[MASK\] token") as exc:
        run_optimize(bert_mlm, bad, store, objective_target_field="target", **kw)
    assert "\n" not in str(exc.value)
    with pytest.raises(CorpusError, match=r"objective target field 'label' is not in the corpus"):
        run_optimize(bert_mlm, bad, store, objective_target_field="label", **kw)
    with pytest.raises(RunExistsError, match=r"other arguments: lr 0.05 != 0.5"):
        run_optimize(bert_mlm, good, store, run="keep", objective_target="x [MASK]", lr=0.5, **kw)
    again = run_optimize(bert_mlm, good, store, run="keep", objective_target="x [MASK]", **kw)
    assert again.status == "already-committed"
    with pytest.raises(ConfigError, match="optimize needs --objective"):
        run_optimize(bert_mlm, good, store, steps=2)
    with pytest.raises(ConfigError, match="steps and every must be >= 1"):
        run_optimize(bert_mlm, good, store, objective_target="x [MASK]", **{**kw, "steps": 0})
    with pytest.raises(ConfigError, match="mixed precision on CUDA"):
        run_optimize(
            bert_mlm, good, store, objective_target="x [MASK]", compute_dtype="float16", **kw
        )
    # the command line: one line on stderr, a non-zero exit status
    argv = ["optimize", "--model", str(tiny_model_dirs["bert"]), "--data", str(good)]
    argv += ["--store", str(store), "--objective", "kl-to-prompt", "--quiet"]
    argv += ["--objective-target", "x [MASK]", "--device", "cpu"]
    capsys.readouterr()
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "has none" in err
    np.testing.assert_array_equal(read_run(store, "keep")["sites"]["traj.2"], before)
    with Store(store) as s:
        assert s.runs == ["keep"]
    # and a good one, with --json
    argv = ["optimize", "--model", str(bert_mlm), "--data", str(good), "--store", str(store)]
    argv += ["--objective", "target-tokens", "--objective-target", "dog", "--steps", "3"]
    argv += ["--every", "2", "--run", "cli", "--device", "cpu", "--quiet", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "committed"
    assert out["steps"] == [0, 2, 3]
    assert out["rows"] == read_run(store, "cli")["tokens"].shape[0]


# ------------------------------------------------------------------------- kill -9


def _cli(model: Path, data: Path, store: Path, crash_at: int | None = None) -> Any:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("ACTSTORE_CRASH_AT", None)
    if crash_at is not None:
        env["ACTSTORE_CRASH_AT"] = str(crash_at)
    argv = ["optimize", "--model", str(model), "--data", str(data), "--store", str(store)]
    argv += [*RESUME_ARGS, "--device", "cpu", "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-m", "actstore.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


RESUME_ARGS = [
    "--run", "r", "--objective", "kl-to-prompt", "--objective-target-field", "target",
    "--steps", "3", "--every", "2", "--lr", "0.05", "--batch-tokens", "40", "--pool-batches", "2",
    "--checkpoint-seconds", "0", "--chunk-rows", "8", "--shard-rows", "16",
    "--init", "random-ellipsoid",
]  # fmt: skip


@pytest.mark.slow
def test_killed_optimisation_resumes_identically(bert_mlm: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", [*MLM_DOCS, *MLM_DOCS[::-1]])
    values: dict[str, Any] = {}
    flags = iter(RESUME_ARGS)
    for flag, value in zip(flags, flags, strict=True):
        values[flag[2:].replace("-", "_")] = value
    for k in ("steps", "every", "batch_tokens", "pool_batches", "chunk_rows", "shard_rows"):
        values[k] = int(values[k])
    values["checkpoint_seconds"], values["lr"] = 0.0, 0.05
    ref = tmp_path / "ref.acts"
    _faults.arm(str(10**9))  # count the crash points of an uninterrupted job
    try:
        res = run_optimize(bert_mlm, data, ref, **values)
        total = _faults.crash_points_passed()
    finally:
        _faults.arm(None)
    assert res.counts["batches"] >= 4
    want = snapshot(ref)
    ref_losses = pq.read_table(ref / "runs/r/losses.parquet").to_pandas()
    # killed half-way through by the command line; the same job resumed in this process
    store = tmp_path / "s.acts"
    killed(_cli(bert_mlm, data, store, crash_at=total // 2))
    assert_interrupted(store)
    assert json.loads((store / "runs/r/parts/part-0000/progress.json").read_text())["rows"] > 0
    assert run_optimize(bert_mlm, data, store, **values).status == "committed"
    got = snapshot(store)
    assert got["tokens"].equals(want["tokens"])
    assert got["sites"].keys() == want["sites"].keys()
    for k in want["sites"]:
        np.testing.assert_array_equal(got["sites"][k], want["sites"][k])
    assert got["counts"] == want["counts"]
    assert got["docs"].equals(want["docs"])
    losses = pq.read_table(store / "runs/r/losses.parquet").to_pandas()
    assert losses.equals(ref_losses)


# ------------------------------------------------------------------------------ CUDA


@pytest.mark.gpu
def test_mixed_precision_on_cuda_decreases_the_loss(bert_mlm: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    data = write_jsonl(tmp_path / "c.jsonl", MLM_DOCS)
    store = tmp_path / "s.acts"
    run_optimize(
        bert_mlm, data, store, objective="kl-to-prompt", objective_target_field="target",
        device="cuda", steps=20, every=10,
    )  # fmt: skip
    tokens, sites, losses, rj = _stored(store)
    assert rj["optimize"]["precision"] == "float16"
    assert rj["optimize"]["grad_scaler"] is True
    first = losses[losses["step"] == 0].set_index("doc_id")["loss"]
    last = losses[losses["step"] == 20].set_index("doc_id")["loss"]
    assert (last < first).all(), (first, last)
    E = read_run(store)["group"]["embed"][:]
    np.testing.assert_array_equal(sites["traj.0"], E[tokens["token_id"].to_numpy()])
