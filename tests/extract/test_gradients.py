"""grad.* sites: the stored gradients equal autograd of the same objective computed per doc
without padding (batched or not), agree with finite differences, survive kill -9, and bad
input is one clear line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from actstore.errors import ConfigError, CorpusError, FloatOverflowError
from actstore.query.store import Store

from ..conftest import save_tiny_model
from .test_extract import read_run, run
from .test_resume import _NEVER, assert_interrupted, cli, killed, make_corpus, snapshot

MLM_DOCS = [
    {"text": "The dog [MASK] at the cat.", "target": "The cow [MASK] in the field."},
    {
        "text": "A cow [MASK] in the field while the farmer sleeps under a tree.",
        "target": "Cats [MASK].",
    },
    {"text": "Red and [MASK] make purple.", "target": "The dog [MASK] again."},
    {
        "text": "Paris is the [MASK] of France, and [MASK] is the capital.",
        "target": "Birds [MASK].",
    },
    {"text": "One [MASK] three.", "target": "The dog [MASK] at the cat."},
]
PLAIN = [
    "The dog barks at the cat.",
    "A cow moos in the field while the farmer sleeps under a tree.",
    "Red and blue make purple.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "One two three.",
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def bert_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("bert_mlm", tmp_path_factory.mktemp("mlm") / "bert_mlm")


# ---------------------------------------------------------------- independent reference


def _load(model_dir: Path, kind: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoTokenizer,
    )

    cls = {"mlm": AutoModelForMaskedLM, "causal": AutoModelForCausalLM, "base": AutoModel}[kind]
    model = cls.from_pretrained(model_dir, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def _marked(ids: list[int], tok: Any, position: str) -> list[int]:
    if position == "last":
        return [len(ids) - 1]
    return [i for i, t in enumerate(ids) if t == tok.mask_token_id]


#: the hidden states of the last reference forward pass (for grad.hidden.<i>)
HIDDEN: list[Any] = []


def _run(model: Any, e: torch.Tensor) -> Any:
    out = model(inputs_embeds=e, output_hidden_states=True)
    HIDDEN[:] = list(out.hidden_states)
    return out


def reference_loss(
    model: Any, tok: Any, ids: list[int], objective: str, target: str, position: str
) -> Any:
    """``loss(e)`` for one doc's token embeddings ``e`` (1, n, d), computed one doc at a time
    without padding through ``inputs_embeds`` (positions added by the model itself); the
    softmax and cosine in float64, as actstore computes them."""
    if objective == "cosine-to-text":
        t = tok(target, return_tensors="pt")
        with torch.no_grad():
            ref = model(**t).last_hidden_state[0].double().mean(0)

        def cos_loss(e: torch.Tensor) -> torch.Tensor:
            h = model(inputs_embeds=e).last_hidden_state[0].double().mean(0)
            return 1 - torch.nn.functional.cosine_similarity(h, ref, dim=0)

        return cos_loss
    marked = _marked(ids, tok, position)
    if objective == "kl-to-prompt":
        t = tok(target)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([t])).logits[0]
        logp = torch.log_softmax(logits[_marked(t, tok, position)[0]].double(), -1)

        def kl_loss(e: torch.Tensor) -> torch.Tensor:
            logq = torch.log_softmax(_run(model, e).logits[0, marked].double(), -1)
            return (logp.exp() * (logp - logq)).sum()

        return kl_loss
    want = tok(target, add_special_tokens=False)["input_ids"]

    def ce_loss(e: torch.Tensor) -> torch.Tensor:
        logq = torch.log_softmax(_run(model, e).logits[0, marked].double(), -1)
        return -logq[torch.arange(len(want)), torch.tensor(want)].sum()

    return ce_loss


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def check_against_reference(
    store: Path,
    model_dir: Path,
    kind: str,
    objective: str,
    targets: dict[int, str],
    position: str,
    tol: float = 1e-5,
    fd: bool = True,
    hidden: int | None = None,
) -> None:
    data = read_run(store)
    tokens, g_all = data["tokens"], data["sites"]["grad.embed"]
    losses = pq.read_table(store / "runs/r/losses.parquet").to_pandas().set_index("doc_id")
    model, tok = _load(model_dir, kind, torch.float32)
    emb = model.get_input_embeddings()
    gen = torch.Generator().manual_seed(0)
    for doc_id, unsorted in tokens.groupby("doc_id"):
        grp = unsorted.sort_values("pos")
        ids = grp["token_id"].tolist()
        e = emb(torch.tensor([ids])).detach().requires_grad_(True)
        loss_fn = reference_loss(model, tok, ids, objective, targets[int(doc_id)], position)
        loss = loss_fn(e)
        wrt = [e] if hidden is None else [e, HIDDEN[hidden]]
        g, *gh = torch.autograd.grad(loss, wrt)
        stored = g_all[grp["row"].to_numpy()]
        assert rel(stored, g[0].numpy()) < tol, doc_id
        if hidden is not None:
            stored_h = data["sites"][f"grad.hidden.{hidden}"][grp["row"].to_numpy()]
            assert rel(stored_h, gh[0][0].numpy()) < tol, doc_id
        assert losses.loc[doc_id, "loss"] == pytest.approx(loss.item(), rel=tol, abs=1e-9)
    if not fd:
        return
    # finite differences in float64 along a random direction, for every doc
    model64, _ = _load(model_dir, kind, torch.float64)
    emb64 = model64.get_input_embeddings()
    for doc_id, unsorted in tokens.groupby("doc_id"):
        grp = unsorted.sort_values("pos")
        ids = grp["token_id"].tolist()
        loss_fn = reference_loss(model64, tok, ids, objective, targets[int(doc_id)], position)
        with torch.no_grad():
            e = emb64(torch.tensor([ids]))
            # a random direction with a component along the stored gradient, so that the
            # directional derivative does not vanish by cancellation
            r = torch.randn(e.shape, generator=gen, dtype=torch.float64)
            gs = torch.from_numpy(g_all[grp["row"].to_numpy()].astype(np.float64))[None]
            u = gs / gs.norm() + r / r.norm()
            h = 1e-3 * float(e.norm()) / float(u.norm())  # LlamaRMSNorm computes in float32
            slope = (loss_fn(e + h * u) - loss_fn(e - h * u)) / (2 * h)
        stored = g_all[grp["row"].to_numpy()].astype(np.float64)
        directional = float((stored * u[0].numpy()).sum())
        assert directional == pytest.approx(float(slope), rel=1e-3, abs=1e-12), doc_id


# ------------------------------------------------------------------------------- tests


def _extract(model: Path, data: Path, store: Path, **kw: Any) -> Any:
    kw.setdefault("sites", "hidden.1,grad.embed")
    kw.setdefault("dtype", "float32")
    return run(model, data, store, **kw)


def _single_tokens(tok: Any, words: list[str]) -> list[str]:
    return [w for w in words if len(tok(w, add_special_tokens=False)["input_ids"]) == 1]


@pytest.mark.parametrize(
    ("objective", "batched"),
    [("target-tokens", True), ("target-tokens", False), ("kl-to-prompt", True)],
)
def test_bert_mlm_gradients_equal_autograd_per_doc(
    bert_mlm: Path, tmp_path: Path, objective: str, batched: bool
) -> None:
    from transformers import AutoTokenizer

    words = _single_tokens(AutoTokenizer.from_pretrained(bert_mlm), ["dog", "cat", "the", "red"])
    rows = [dict(d) for d in MLM_DOCS]
    if objective == "target-tokens":  # one target word per [MASK]
        for r in rows:
            r["target"] = " ".join(words[: r["text"].count("[MASK]")])
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    store = tmp_path / "s.acts"
    # batched: every doc in one padded batch (lengths mixed); else one doc per batch
    kw = {"batch_tokens": 4096, "pad_tolerance": 0.9} if batched else {"batch_tokens": 8}
    res = _extract(
        bert_mlm, data, store, objective=objective, objective_target_field="target", **kw
    )
    if batched:
        assert res.counts["batches"] == 1
        assert res.counts["pad_tokens"] > 0
    else:
        assert res.counts["batches"] == len(rows)
        assert res.counts["pad_tokens"] == 0
    targets = dict(zip(_ids_for(rows), [r["target"] for r in rows], strict=True))
    # In this random model a [MASK]'s prediction hardly depends on its context: doc and
    # target distributions differ by ~1e-3, so the KL gradient (q - p) magnifies float32
    # rounding of the logits ~1e3-fold, in the reference as much as in the store.
    tol = 1e-5 if objective == "target-tokens" else 3e-4
    check_against_reference(store, bert_mlm, "mlm", objective, targets, "mask", tol, fd=batched)
    rj = json.loads((store / "runs/r/run.json").read_text())
    assert rj["objective"]["name"] == objective
    assert rj["objective"]["position"] == "mask"
    assert rj["head"]["lm_head"] == "masked"
    with Store(store) as s:
        n = s.sql("SELECT count(*) FROM losses WHERE run = 'r' AND loss > 0").fetchall()[0][0]
        assert n == len(rows)
        special = s.sql("SELECT count(*) FROM tokens WHERE special").fetchall()[0][0]
        masks = sum(r["text"].count("[MASK]") for r in rows)
        assert special == 2 * len(rows) + masks  # CLS, SEP and [MASK]: stored and flagged


def _doc_ids(store: Path) -> list[int]:
    docs = pq.read_table(store / "docs").to_pandas().sort_values("record")
    return [int(d) for d in docs["doc_id"]]


def test_padding_never_changes_a_stored_gradient(bert_mlm: Path, tmp_path: Path) -> None:
    rows = [MLM_DOCS[0], MLM_DOCS[1], MLM_DOCS[2], MLM_DOCS[4]]  # one [MASK] each
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    common: dict[str, Any] = {"objective": "target-tokens", "objective_target": "barks"}
    one = tmp_path / "one.acts"
    _extract(bert_mlm, data, one, batch_tokens=8, **common)
    mixed = tmp_path / "mixed.acts"
    _extract(bert_mlm, data, mixed, batch_tokens=4096, pad_tolerance=0.9, **common)
    a, b = read_run(one), read_run(mixed)
    key = ["doc_id", "pos"]
    ta = a["tokens"].sort_values(key)
    tb = b["tokens"].sort_values(key)
    for site in ("grad.embed", "hidden.1"):
        x = a["sites"][site][ta["row"].to_numpy()]
        y = b["sites"][site][tb["row"].to_numpy()]
        assert rel(y, x) < 1e-5, site


@pytest.mark.parametrize(
    ("arch", "objective"), [("gpt2", "kl-to-prompt"), ("llama", "target-tokens")]
)
def test_decoder_gradients_equal_autograd_per_doc(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, arch: str, objective: str
) -> None:
    model = tiny_model_dirs[arch]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    # per-doc single-token targets (a next token that is one token of this vocabulary)
    singles = [
        w
        for w in (" dog", " cat", " the", " barks", " cow")
        if len(tok(w, add_special_tokens=False)["input_ids"]) == 1
    ]
    assert len(singles) >= 2
    rows = [{"text": t, "target": singles[i % len(singles)]} for i, t in enumerate(PLAIN)]
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    store = tmp_path / "s.acts"
    if objective == "kl-to-prompt":
        kw: dict[str, Any] = {"objective_target": "The cow moos in the"}
        targets = dict.fromkeys(_ids_for(rows), "The cow moos in the")
    else:
        kw = {"objective_target_field": "target"}
        targets = dict(zip(_ids_for(rows), [r["target"] for r in rows], strict=True))
    _extract(
        model,
        data,
        store,
        sites="hidden.2,grad.embed,grad.hidden.1",
        objective=objective,
        batch_tokens=4096,
        pad_tolerance=0.9,
        **kw,
    )
    check_against_reference(store, model, "causal", objective, targets, "last", hidden=1)
    rj = json.loads((store / "runs/r/run.json").read_text())
    assert [s["name"] for s in rj["sites"]] == ["hidden.2", "grad.embed", "grad.hidden.1"]


def _ids_for(rows: list[dict[str, Any]]) -> list[int]:
    from actstore.extract.corpus import doc_id_for

    return [doc_id_for(r["text"]) for r in rows]


def test_minilm_cosine_to_text_equals_autograd(minilm_dir: Path, tmp_path: Path) -> None:
    rows = [
        {"text": "The dog barks at the cat.", "target": "A cow moos."},
        {"text": "Aspirin treats a headache quickly.", "target": "Insulin is used for diabetes."},
        {"text": "Paris is in France.", "target": "Berlin is the capital of Germany."},
    ]
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    store = tmp_path / "s.acts"
    _extract(
        minilm_dir,
        data,
        store,
        sites="grad.embed",
        objective="cosine-to-text",
        objective_target_field="target",
        batch_tokens=4096,
        pad_tolerance=0.9,
    )
    targets = dict(zip(_ids_for(rows), [r["target"] for r in rows], strict=True))
    check_against_reference(store, minilm_dir, "base", "cosine-to-text", targets, "last")


# ------------------------------------------------------------------------- bad input


def test_objective_needing_a_head_on_minilm_is_one_line(minilm_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", MLM_DOCS[:1])
    store = tmp_path / "s.acts"
    with pytest.raises(ConfigError, match=r"needs the model's output head.*has none") as exc:
        _extract(minilm_dir, data, store, objective="kl-to-prompt", objective_target="x [MASK]")
    assert "\n" not in str(exc.value)
    assert not store.exists()


def test_missing_marker_target_field_and_bad_options(bert_mlm: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    # an earlier committed run is never touched by a refused job
    good = write_jsonl(tmp_path / "good.jsonl", MLM_DOCS[:2])
    _extract(bert_mlm, good, store, run="keep", objective="target-tokens", objective_target="dog")
    before = read_run(store, "keep")["sites"]["grad.embed"].copy()
    rows = [*MLM_DOCS[:2], {"text": "no marker here", "target": "x [MASK]"}]
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(CorpusError, match=r"record 2 has no \[MASK\] token") as exc:
        _extract(bert_mlm, data, store, objective="kl-to-prompt", objective_target_field="target")
    assert "\n" not in str(exc.value)
    with pytest.raises(CorpusError, match=r"objective target field 'label' is not in the corpus"):
        _extract(bert_mlm, data, store, objective="kl-to-prompt", objective_target_field="label")
    with pytest.raises(CorpusError, match=r"has 2 tokens, the doc has 1 marked positions"):
        _extract(bert_mlm, good, store, objective="target-tokens", objective_target="dog cat")
    with pytest.raises(ConfigError, match="needs an objective"):
        _extract(bert_mlm, good, store)
    with pytest.raises(ConfigError, match="long-docs window"):
        _extract(
            bert_mlm,
            good,
            store,
            objective="target-tokens",
            objective_target="dog",
            long_docs="window",
        )
    with pytest.raises(ConfigError, match="exactly one target"):
        _extract(bert_mlm, good, store, objective="target-tokens")
    np.testing.assert_array_equal(read_run(store, "keep")["sites"]["grad.embed"], before)
    with Store(store) as s:
        assert s.runs == ["keep"]


def test_float16_overflow_of_a_gradient_is_one_line(bert_mlm: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

    # Input embeddings 1e-9 times smaller (the decoder untied, so logits stay) and a
    # LayerNorm eps below their scale: the LayerNorm after them divides by their scale,
    # so the gradient with respect to them is ~1e7, far beyond float16.
    small = AutoModelForMaskedLM.from_pretrained(bert_mlm)
    config = small.config
    config.tie_word_embeddings, config.layer_norm_eps = False, 1e-30
    model = BertForMaskedLM(config).eval()
    model.load_state_dict(small.state_dict(), strict=False)
    with torch.no_grad():
        model.cls.predictions.decoder.weight.copy_(small.cls.predictions.decoder.weight)
        for name, p in model.named_parameters():
            if "embeddings" in name and "LayerNorm" not in name:
                p.mul_(1e-9)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(bert_mlm).save_pretrained(folder)
    data = write_jsonl(tmp_path / "c.jsonl", MLM_DOCS[:2])
    store = tmp_path / "s.acts"
    kw: dict[str, Any] = {"objective": "target-tokens", "objective_target": "dog"}
    _extract(folder, data, store, run="keep", **kw)  # float32 keeps them
    with pytest.raises(FloatOverflowError, match=r"site grad\.embed has values beyond") as exc:
        _extract(folder, data, store, dtype="float16", **kw)
    assert "\n" not in str(exc.value)
    with Store(store) as s:
        assert s.runs == ["keep"]


# ------------------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_killed_gradient_extraction_resumes_identically(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model = tiny_model_dirs["gpt2"]
    data = make_corpus(tmp_path / "c.jsonl", n=40)
    extra = [
        "--sites",
        "hidden.1,grad.embed,grad.hidden.2",
        "--objective",
        "kl-to-prompt",
        "--objective-target",
        "the dog barks",
    ]
    ref = tmp_path / "ref.acts"
    proc = cli(model, data, ref, extra, crash_at=_NEVER)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    total = int(re.search(r"crash points: (\d+)", err.decode()).group(1))  # type: ignore[union-attr]
    want = snapshot(ref)
    ref_losses = pq.read_table(ref / "runs/r/losses.parquet").to_pandas()
    for i, at in enumerate((total // 2,)):  # one kill point: each job is a slow CLI start
        store = tmp_path / f"s{i}.acts"
        killed(cli(model, data, store, extra, crash_at=at))
        assert_interrupted(store)
        proc = cli(model, data, store, extra)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        got = snapshot(store)
        assert got["tokens"].equals(want["tokens"])
        for k in want["sites"]:
            np.testing.assert_array_equal(got["sites"][k], want["sites"][k])
        assert got["counts"] == want["counts"]
        losses = pq.read_table(store / "runs/r/losses.parquet").to_pandas()
        assert losses.equals(ref_losses)
