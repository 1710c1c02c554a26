"""One meaning, one place: the output head, the token lookup, the device policy, the save
path and the CLI options generated from the config dataclasses each have a single
implementation that every analysis uses; these tests pin what it does."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.special import log_softmax

import actstore
from actstore.errors import ConfigError, TokenNotFoundError
from actstore.query.head import Head, apply_head
from actstore.query.results import read_result
from actstore.query.similarity.on_store import pairwise_result

from .conftest import CLI

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "actstore"


# -- one output head ---------------------------------------------------------------------------


def test_one_head_serves_lens_metrics_and_torch(gpt2_store: Path) -> None:
    import torch

    from actstore.query.similarity.nearest import logit_lens

    with actstore.open(gpt2_store) as s:
        L = s.run_info("g")["model"]["n_layers"]
        ids = np.arange(6)
        H = s.vectors("g", "hidden.1", ids, dtype=np.float32)
        head = Head.from_store(s, "g", site="hidden.1")
        assert head.norm_type == "LayerNorm"
        assert head.norm_weight is not None
        assert head.norm_bias is not None
        by_flag = Head.from_store(s, "g", norm=True)
        assert by_flag.norm_type == head.norm_type
        assert by_flag.eps == head.eps
        np.testing.assert_array_equal(by_flag.unembed, head.unembed)
        # the last hidden state already includes the final norm: no norm there
        assert Head.from_store(s, "g", site=f"hidden.{L}").norm_type is None
        lens = logit_lens(s, "g", "hidden.1", ids)
    np.testing.assert_allclose(lens, head.logits(H), rtol=1e-6, atol=1e-6)
    lp = head.log_probs(H)
    np.testing.assert_allclose(lp, log_softmax(lens.astype(np.float64), axis=1), atol=1e-4)
    tlp = head.torch_log_probs(torch.as_tensor(H), head.torch_params("cpu")).numpy()
    np.testing.assert_allclose(tlp, lp, atol=1e-4)
    # apply_head is the same head given as arrays
    assert head.norm_weight is not None
    got = apply_head(
        H,
        head.unembed,
        norm={"type": "LayerNorm", "eps": head.eps},
        weight=head.norm_weight,
        bias=head.norm_bias,
    )
    np.testing.assert_allclose(got, lens, rtol=1e-6, atol=1e-6)


def test_head_refuses_unknown_norms() -> None:
    with pytest.raises(ConfigError, match="'ScaleNorm' is not supported offline"):
        Head(np.eye(2, dtype=np.float32), norm_type="ScaleNorm")


def test_no_other_module_applies_a_head() -> None:
    """log_softmax over an unembedding lives in query/head.py only."""
    offenders = [
        str(p.relative_to(PKG))
        for p in (PKG / "query").rglob("*.py")
        if p.name != "head.py" and "log_softmax" in p.read_text()
    ]
    assert offenders == []


# -- one token lookup -----------------------------------------------------------------------


def test_one_token_lookup_strips_whitespace_everywhere(hand_store: Path) -> None:
    """Exact first, else ignoring surrounding whitespace as str.strip does ("\\tdog\\n")."""
    with actstore.open(hand_store) as s:
        exact = s.token_ids("words", " dog")
        assert len(exact) == 1
        assert s.token_ids("words", "\tdog\n").tolist() == exact.tolist()
        assert s.token_ids("words", "dog ").tolist() == exact.tolist()
        # the centroid (Store) and the centroid comparison (similarity) agree on it
        c1 = s.centroid("words", "hidden.0", token="\tdog\n")
        c2 = s.centroid("words", "hidden.0", token=" dog")
        np.testing.assert_array_equal(c1, c2)
        with pytest.raises(TokenNotFoundError, match="'cat' is not in the vocabulary"):
            s.token_ids("words", "cat")


# -- one device policy ----------------------------------------------------------------------


def test_one_device_policy() -> None:
    import torch

    from actstore.query._backend import torch_device, xp_for

    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert torch_device().type == expect
    assert torch_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="not a torch device"):
        torch_device("bogus")
    with pytest.raises(ConfigError, match="backend must be 'numpy' or 'torch'"):
        xp_for("jax")
    xp, put = xp_for("torch")
    assert xp is torch
    assert put(np.ones(2)).device.type == expect


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the message of a missing GPU"
)
def test_every_torch_analysis_uses_the_policy() -> None:
    """Asking for CUDA without a GPU is the same one-line error in every analysis."""
    from actstore.query.mapping.ridge import RidgeStats
    from actstore.query.sparse.pursuit import lasso
    from actstore.query.sparse.sae import SAEConfig, TopKSAE

    X = np.random.default_rng(0).normal(size=(8, 3))
    msg = "torch sees no CUDA GPU"
    with pytest.raises(ConfigError, match=msg):
        lasso(X, np.eye(3), 0.1, backend="torch", device="cuda")
    with pytest.raises(ConfigError, match=msg):
        TopKSAE(SAEConfig(n_latents=4, k=2, device="cuda")).fit(X.astype(np.float32))
    assert RidgeStats.from_arrays(X, X, backend="torch").n == 8


def test_no_other_module_picks_a_device() -> None:
    offenders = [
        str(p.relative_to(PKG))
        for p in (PKG / "query").rglob("*.py")
        if p.name != "_backend.py" and "cuda.is_available" in p.read_text()
    ]
    assert offenders == []


# -- one save path --------------------------------------------------------------------------


def test_library_and_cli_save_the_same_result(minilm_store: Path, tmp_path: Path, cli: CLI) -> None:
    st = tmp_path / "s.acts"
    shutil.copytree(minilm_store, st)
    with actstore.open(st) as s:
        res = pairwise_result(s, "minilm", matrix="embed", sample=500, save="lib")
    assert res.path is not None
    cli("similarity", "pairwise", str(st), "--matrix", "embed", "--sample", "500", "--save", "cmd")
    t_lib, m_lib, a_lib = read_result(st, "lib")
    t_cmd, m_cmd, a_cmd = read_result(st, "cmd")
    assert t_lib.equals(t_cmd)
    assert {k: v for k, v in m_lib.items() if k not in ("name", "created_at")} == {
        k: v for k, v in m_cmd.items() if k not in ("name", "created_at")
    }
    np.testing.assert_array_equal(a_lib["cos_with_mean"], a_cmd["cos_with_mean"])
    with actstore.open(st) as s:
        n = s.sql("SELECT count(*) FROM cmd").fetchall()[0][0]
    assert n == 2


def test_one_function_writes_results() -> None:
    """One ``write_result`` (store/results.py); the result file name is in format.py alone."""
    defs = [
        str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if "def write_result(" in p.read_text()
    ]
    assert defs == ["store/results.py"]
    named = [
        str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if '"result.parquet"' in p.read_text()
    ]
    assert named == ["store/format.py"]


# -- CLI options from the config dataclasses ----------------------------------------------------


def _options(argv: list[str]) -> dict[str, argparse.Action]:
    from actstore.cli import build_parser

    parser: Any = build_parser()
    for word in argv:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return {a.dest: a for a in parser._actions}


@pytest.mark.parametrize(
    ("argv", "cls_path", "skip"),
    [
        (["map", "fit"], "actstore.query.mapping.on_store:MapConfig", {"batch_rows"}),
        (["sparse", "learn"], "actstore.query.sparse.dictlearn:DictLearnConfig", set()),
        (["sparse", "sae"], "actstore.query.sparse.sae:SAEConfig", set()),
        (["extract"], "actstore.extract.config:ExtractConfig", set()),
    ],
)
def test_cli_options_come_from_the_config(argv: list[str], cls_path: str, skip: set[str]) -> None:
    import importlib

    from actstore.cli._common import field_help

    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    actions = _options(argv)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        assert f.name in actions, f"{' '.join(argv)} lacks an option for {f.name}"
        action = actions[f.name]
        doc = helps[f.name]
        assert action.help, f.name
        assert doc[:20].lower()[1:] in action.help.lower(), (f.name, action.help)
        has_default = f.default is not dataclasses.MISSING and f.default is not None
        if has_default and not isinstance(f.default, bool) and f.name not in ("run",):
            assert "(default: " in action.help, (f.name, action.help)


def test_cli_parses_mixed_and_tuple_options(minilm_store: Path, cli: CLI) -> None:
    with pytest.raises(cli.Failed, match="--cv must be one of auto, gcv, loo, none") as failed:
        cli("map", "fit", str(minilm_store), "--x", "embed", "--y", "hidden.1", "--name", "m",
            "--cv", "sometimes")  # fmt: skip
    assert failed.value.code == 2
    actions = _options(["map", "fit"])
    assert actions["cv"].type("5") == 5
    assert actions["cv"].type("none") is None
    assert actions["cv"].type("loo") == "loo"
    assert actions["alphas"].type("0.5, 2") == (0.5, 2.0)
