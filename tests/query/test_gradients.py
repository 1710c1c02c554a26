"""Gradient analyses from the store: equal to NumPy on the same arrays, right on a planted
case, saved and queryable in SQL; logit lens through a stored MLM head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from actstore.cli import main
from actstore.errors import ConfigError
from actstore.query.similarity.gradients import gradient_directions
from actstore.query.similarity.on_store import grad_result
from actstore.query.store import Store

from ..conftest import save_tiny_model
from ..extract.test_extract import run

DOCS = [
    {"text": "The dog [MASK] at the cat.", "target": "The cow [MASK] in the field."},
    {"text": "A cow [MASK] in the field while the farmer sleeps.", "target": "Cats [MASK]."},
    {"text": "Red and [MASK] make purple.", "target": "The dog [MASK] again."},
]


@pytest.fixture(scope="module")
def grad_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grad")
    model = save_tiny_model("bert_mlm", root / "bert_mlm")
    data = root / "c.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    store = root / "s.acts"
    run(
        model,
        data,
        store,
        sites="hidden.0,hidden.2,grad.embed",
        dtype="float32",
        objective="target-tokens",
        objective_target="dog",
    )
    return store


def numpy_reference(G: np.ndarray, ids: np.ndarray, E: np.ndarray) -> dict[str, np.ndarray]:
    """Brute force, one row at a time."""
    out: dict[str, list[float]] = {k: [] for k in ("norm", "nearest_id", "heading_id", "cos_e0")}
    out |= {"nearest_cos": [], "heading_cos": []}
    for g, t in zip(G.astype(np.float64), ids, strict=True):
        cos = [g @ e / (np.linalg.norm(g) * np.linalg.norm(e)) for e in E]
        heads = [
            -np.inf
            if j == t
            else g @ (E[j] - E[t]) / (np.linalg.norm(g) * np.linalg.norm(E[j] - E[t]))
            for j in range(len(E))
        ]
        out["norm"].append(np.linalg.norm(g))
        out["nearest_id"].append(int(np.argmax(cos)))
        out["nearest_cos"].append(max(cos))
        out["heading_id"].append(int(np.argmax(heads)))
        out["heading_cos"].append(max(heads))
        out["cos_e0"].append(g @ E[t] / (np.linalg.norm(g) * np.linalg.norm(E[t])))
    return {k: np.asarray(v) for k, v in out.items()}


def test_planted_gradients_point_at_known_rows() -> None:
    rng = np.random.default_rng(0)
    E = rng.standard_normal((50, 8))
    ids = np.array([3, 7, 11])
    # g = E[j] - E[t] heads exactly at j; g = E[j] is nearest to j
    G = np.stack([2.0 * (E[20] - E[3]), 0.5 * (E[5] - E[7]), 3.0 * E[40]])
    out = gradient_directions(G, ids, E)
    assert out["heading_id"][:2].tolist() == [20, 5]
    np.testing.assert_allclose(out["heading_cos"][:2], 1.0)
    assert out["nearest_id"][2] == 40
    assert out["nearest_cos"][2] == pytest.approx(1.0)
    np.testing.assert_allclose(out["norm"], np.linalg.norm(G, axis=1))
    descent = gradient_directions(-G[:1], ids[:1], E, sign=-1.0)
    assert descent["heading_id"][0] == 20
    ref = numpy_reference(G, ids, E)
    for k, v in ref.items():
        np.testing.assert_allclose(out[k], v, rtol=1e-10, atol=1e-12)


def test_store_analysis_equals_numpy_and_is_saved(grad_store: Path, tmp_path: Path) -> None:
    import shutil

    store_path = tmp_path / "s.acts"
    shutil.copytree(grad_store, store_path)
    with Store(store_path) as store:
        res = grad_result(store, "r", top_k=None, save="g")
        ids = store.rows("r", "SELECT row FROM tokens WHERE NOT special")
        G = store.vectors("r", "grad.embed", ids)
        tok = store.token_columns("r", "token_id")["token_id"][ids]
        E = store.matrix("r", "embed")
    ref = numpy_reference(G, tok, E)
    table = res.table.sort_values("row")
    assert table["row"].tolist() == sorted(ids.tolist())
    for k, v in ref.items():
        np.testing.assert_allclose(table[k].to_numpy(), v, rtol=1e-6, atol=1e-9)
    assert res.meta["n_rows"] == len(ids)
    assert res.meta["objective"] == "target-tokens"
    counts = res.arrays["hist_cos_e0"]
    assert counts.sum() == len(ids)
    np.testing.assert_array_equal(counts, np.histogram(ref["cos_e0"], bins=50, range=(-1, 1))[0])
    # per doc ranks by norm, and the result is a SQL view joinable with the losses
    with Store(store_path) as store:
        top = store.sql(
            "SELECT g.doc_id, g.token, g.norm, l.loss FROM g JOIN losses l USING (doc_id) "
            "WHERE g.rank = 1 AND l.run = 'r' ORDER BY g.doc_id"
        ).df()
    assert len(top) == len(DOCS)
    best = table.loc[table.groupby("doc_id")["norm"].idxmax()].sort_values("doc_id")
    np.testing.assert_allclose(top["norm"].to_numpy(), best["norm"].to_numpy())


def test_cli_grad_json_and_errors(grad_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["similarity", "grad", str(grad_store), "--top-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["analysis"] == "similarity.grad"
    assert all(r["rank"] <= 2 for r in out["rows"])
    assert len(out["rows"]) == 2 * len(DOCS)
    assert main(["similarity", "grad", str(grad_store), "--site", "hidden.2"]) == 1
    err = capsys.readouterr().err
    assert "is not a stored gradient" in err
    assert len(err.strip().splitlines()) == 1
    with Store(grad_store) as store, pytest.raises(ConfigError, match="selected no rows"):
        grad_result(store, "r", rows="SELECT row FROM tokens WHERE false")


def test_logit_lens_through_a_stored_mlm_head(grad_store: Path) -> None:
    """The offline head (MLM transform + decoder) at hidden.L equals the model's logits."""
    import torch
    from transformers import AutoModelForMaskedLM

    from actstore.query.head import Head

    with Store(grad_store) as store:
        head = Head.from_store(store, "r", site="hidden.2")
        ids = store.rows("r", "SELECT row FROM tokens ORDER BY row")
        H = store.vectors("r", "hidden.2", ids)
        tok = store.token_columns("r", "doc_id", "token_id")
        path = store.run_info("r")["model"]["path"]
    model = AutoModelForMaskedLM.from_pretrained(path).eval()
    first = tok["doc_id"] == tok["doc_id"][0]
    with torch.no_grad():
        want = model(
            input_ids=torch.from_numpy(tok["token_id"][first].astype(np.int64))[None]
        ).logits[0]
    got = head.logits(H[first])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    lp = head.log_probs(H[first])
    np.testing.assert_allclose(lp, torch.log_softmax(want.double(), -1).numpy(), atol=1e-4)
    params = head.torch_params("cpu")
    tl = head.torch_log_probs(torch.from_numpy(H[first]), params)
    np.testing.assert_allclose(tl.numpy(), lp, atol=1e-4)
