"""Model loading, site parsing and hook capture against plain Hugging Face forward passes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from actstore.errors import ConfigError, ModelLoadError, SiteError, SiteNotFoundError
from actstore.extract.adapters import ADAPTERS, adapter_for
from actstore.extract.head import head_info, matrices
from actstore.extract.model import LoadedModel, load_model
from actstore.extract.sites import Site, SiteCapture, list_modules, parse_sites, valid_sites
from tests.conftest import TINY_ARCHS, save_tiny_model

EXTRA_ARCHS = ("mistral", "qwen3", "distilbert", "roberta")
CAUSAL = {"gpt2", "gpt_neo", "llama", "qwen2", "mistral", "qwen3"}

DOCS = [
    "The dog barks at the cat.",
    "Insulin is used for diabetes; penicillin cures an infection, and the dog barks again.",
    "Red and blue.",
]


@pytest.fixture(scope="module")
def extra_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extra_models")
    return {arch: save_tiny_model(arch, root / arch) for arch in EXTRA_ARCHS}


@pytest.fixture(scope="module")
def load(
    tiny_model_dirs: dict[str, Path], extra_model_dirs: dict[str, Path], minilm_dir: Path
) -> Callable[[str], LoadedModel]:
    """``arch -> LoadedModel`` on CPU in float32, each loaded once per module."""
    dirs = {**tiny_model_dirs, **extra_model_dirs, "minilm": minilm_dir}
    cache: dict[str, LoadedModel] = {}

    def get(arch: str) -> LoadedModel:
        if arch not in cache:
            cache[arch] = load_model(str(dirs[arch]), device="cpu")
        return cache[arch]

    return get


def batch(lm: LoadedModel, docs: list[str] = DOCS) -> tuple[torch.Tensor, torch.Tensor]:
    enc = lm.tokenizer(docs, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def hook_count(module: nn.Module) -> int:
    """Hooks on ``module`` and its children (transformers 5 keeps its own output-recording
    hooks once ``output_hidden_states=True`` was used, so compare with a baseline)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.fixture
def call_counts(request: pytest.FixtureRequest) -> Iterator[Callable[[list[nn.Module]], list[int]]]:
    """Count forward calls of given modules; the counting hooks are removed afterwards."""
    handles: list[Any] = []

    def watch(modules: list[nn.Module]) -> list[int]:
        counts = [0] * len(modules)
        for i, module in enumerate(modules):

            def hook(*_: Any, i: int = i) -> None:
                counts[i] += 1

            handles.append(module.register_forward_hook(hook))
        return counts

    yield watch
    for h in handles:
        h.remove()


# ---------------------------------------------------------------------- hidden sites


@pytest.mark.parametrize("arch", [*TINY_ARCHS, *EXTRA_ARCHS, "minilm"])
def test_all_hidden_sites_equal_hf_hidden_states(
    arch: str, load: Callable[[str], LoadedModel]
) -> None:
    lm = load(arch)
    ids, mask = batch(lm)
    assert len(set(mask.sum(1).tolist())) == len(DOCS)  # right-padded, different lengths
    assert (mask[:, 0] == 1).all()
    sites = parse_sites("all", lm)
    with SiteCapture(lm, sites) as capture:
        got = capture(ids, mask)
    with torch.inference_mode():
        ref = lm.base(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(ref) == lm.n_layers + 1
    assert list(got) == valid_sites(lm)
    real = mask.bool()
    for i, h in enumerate(ref):
        out = got[f"hidden.{i}"]
        assert out.shape == (*ids.shape, lm.d_model)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out[real], h[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_hidden_last_follows_the_adapter(arch: str, load: Callable[[str], LoadedModel]) -> None:
    """hidden.L includes the final norm exactly when the adapter names one."""
    lm = load(arch)
    ids, mask = batch(lm)
    last_block = f"module:{lm.adapter.layers}.{lm.n_layers - 1}"
    got = SiteCapture(lm, parse_sites(f"hidden.{lm.n_layers},{last_block}", lm))(ids, mask)
    raw = got[last_block]
    if lm.adapter.final_norm is None:
        torch.testing.assert_close(got[f"hidden.{lm.n_layers}"], raw)
    else:
        norm = lm.base.get_submodule(lm.adapter.final_norm)
        with torch.inference_mode():
            torch.testing.assert_close(got[f"hidden.{lm.n_layers}"], norm(raw))


def test_bfloat16_compute_dtype(tiny_model_dirs: dict[str, Path]) -> None:
    lm = load_model(str(tiny_model_dirs["llama"]), device="cpu", compute_dtype="bfloat16")
    assert lm.compute_dtype == torch.bfloat16
    got = SiteCapture(lm, parse_sites("hidden.1", lm))(*batch(lm))
    assert got["hidden.1"].dtype == torch.bfloat16
    assert all(m.dtype == np.float32 for m in matrices(lm).values())


# ------------------------------------------------------------------------ early exit


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_early_exit_runs_only_the_needed_blocks(
    arch: str,
    load: Callable[[str], LoadedModel],
    call_counts: Callable[[list[nn.Module]], list[int]],
) -> None:
    lm = load(arch)
    assert lm.n_layers == 3
    blocks = list(lm.base.get_submodule(lm.adapter.layers))
    after = [lm.base.get_submodule(lm.adapter.final_norm)] if lm.adapter.final_norm else []
    head = [lm.model.get_output_embeddings()] if arch in CAUSAL else []
    counts = call_counts([*blocks, *after, *head])
    ids, mask = batch(lm)
    with SiteCapture(lm, parse_sites("hidden.1", lm)) as capture:
        capture(ids, mask)
        assert counts == [1, 0, 0] + [0] * (len(after) + len(head))
        capture(ids, mask)
        assert counts == [2, 0, 0] + [0] * (len(after) + len(head))
    counts[:] = [0] * len(counts)
    SiteCapture(lm, parse_sites("hidden.0", lm))(ids, mask)
    assert counts == [0] * len(counts)
    SiteCapture(lm, parse_sites("all", lm))(ids, mask)
    # Every block and the final norm run, the output head never does.
    assert counts == [1, 1, 1] + [1] * len(after) + [0] * len(head)


def test_early_exit_leaves_the_model_usable(load: Callable[[str], LoadedModel]) -> None:
    lm = load("gpt_neo")
    ids, mask = batch(lm)
    first = SiteCapture(lm, parse_sites("hidden.1", lm))(ids, mask)["hidden.1"]
    with torch.inference_mode():
        ref = lm.base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(first[mask.bool()], ref.hidden_states[1][mask.bool()])


# ---------------------------------------------------------------------- module sites


@pytest.mark.parametrize(
    ("arch", "spec", "path"),
    [
        ("gpt2", "module:h.0.mlp", "h.0.mlp"),
        ("gpt2", "module:transformer.h.1.attn", "h.1.attn"),
        ("llama", "module:model.layers.1.mlp", "layers.1.mlp"),
        ("bert", "module:encoder.layer.2.attention.output", "encoder.layer.2.attention.output"),
    ],
)
def test_module_site_equals_a_manual_hook(
    arch: str, spec: str, path: str, load: Callable[[str], LoadedModel]
) -> None:
    lm = load(arch)
    (site,) = parse_sites(spec, lm)
    assert site == Site(name=f"module:{path}", kind="module", module_path=path)
    ids, mask = batch(lm)
    got = SiteCapture(lm, [site])(ids, mask)[site.name]
    seen: list[torch.Tensor] = []
    handle = lm.base.get_submodule(path).register_forward_hook(
        lambda _m, _i, o: seen.append(o[0] if isinstance(o, tuple) else o)
    )
    try:
        with torch.inference_mode():
            lm.base(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    torch.testing.assert_close(got, seen[0], atol=0, rtol=0)


def test_probe_reports_feature_sizes(load: Callable[[str], LoadedModel]) -> None:
    lm = load("gpt2")
    before = hook_count(lm.model)
    capture = SiteCapture(lm, parse_sites("hidden.0,hidden.3,module:h.1.mlp.c_fc", lm))
    assert capture.probe() == {"hidden.0": 32, "hidden.3": 32, "module:h.1.mlp.c_fc": 128}
    assert hook_count(lm.model) == before


def test_module_without_per_token_output_is_rejected(load: Callable[[str], LoadedModel]) -> None:
    lm = load("bert")
    before = hook_count(lm.model)
    capture = SiteCapture(lm, parse_sites("hidden.1,module:pooler", lm))
    with pytest.raises(
        SiteError, match=r"module pooler gave a torch.float32 tensor of shape \(2, "
    ):
        capture.probe()
    assert hook_count(lm.model) == before


# ----------------------------------------------------------------------------- hooks


def test_hooks_are_removed_after_the_context(load: Callable[[str], LoadedModel]) -> None:
    lm = load("llama")
    before = hook_count(lm.model)
    capture = SiteCapture(lm, parse_sites("all,module:layers.0.self_attn", lm))
    with capture:
        assert hook_count(lm.model) > before
        capture(*batch(lm))
    assert hook_count(lm.model) == before
    capture(*batch(lm))  # outside the context: hooks only around the call
    assert hook_count(lm.model) == before


def test_hooks_are_removed_when_forward_raises(load: Callable[[str], LoadedModel]) -> None:
    lm = load("gpt2")
    before = hook_count(lm.model)

    def boom(*_: Any) -> None:
        raise RuntimeError("boom in block 1")

    handle = lm.base.h[1].register_forward_hook(boom)
    try:
        capture = SiteCapture(lm, parse_sites("hidden.3", lm))
        with pytest.raises(RuntimeError, match="boom in block 1"), capture:
            capture(*batch(lm))
    finally:
        handle.remove()
    assert hook_count(lm.model) == before
    # And the model still runs normally afterwards.
    assert SiteCapture(lm, parse_sites("hidden.3", lm))(*batch(lm))["hidden.3"].shape[-1] == 32


# ----------------------------------------------------------------------- parse_sites


def test_parse_sites_order_and_duplicates(load: Callable[[str], LoadedModel]) -> None:
    lm = load("gpt2")
    sites = parse_sites(
        [
            "module:h.0.mlp, hidden.3",
            "hidden.1,hidden.3",
            "module:h.0.ln_1",
            "module:transformer.h.0.mlp",
        ],
        lm,
    )
    assert [s.name for s in sites] == ["hidden.1", "hidden.3", "module:h.0.mlp", "module:h.0.ln_1"]
    assert sites[0] == Site(name="hidden.1", kind="hidden", index=1)
    assert [s.name for s in parse_sites("all,hidden.2", lm)] == valid_sites(lm)
    assert valid_sites(lm) == ["hidden.0", "hidden.1", "hidden.2", "hidden.3"]
    assert "h.0.mlp" in list_modules(lm)
    assert "" not in list_modules(lm)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("hidden.4", SiteError, r"layer out of range: model has hidden.0..hidden.3"),
        ("layer.2", SiteError, r"malformed site 'layer.2': expected 'all', 'hidden.<i>'"),
        ("hidden.x", SiteError, r"malformed site 'hidden.x'.*'module:<dotted.path>'"),
        ("module:", SiteError, r"malformed site 'module:'"),
        (" , ", SiteError, r"no sites given"),
        ("module:h.0.mpl", SiteNotFoundError, r"close matches: h.0.mlp.*--list-modules"),
        ("module:lm_head", SiteNotFoundError, r"outside the base model GPT2Model"),
    ],
)
def test_parse_sites_errors(
    spec: str, error: type[Exception], match: str, load: Callable[[str], LoadedModel]
) -> None:
    with pytest.raises(error, match=match):
        parse_sites(spec, load("gpt2"))


def test_site_not_found_is_also_a_key_error(load: Callable[[str], LoadedModel]) -> None:
    with pytest.raises(KeyError, match=r"^site 'module:nowhere': no module"):
        parse_sites("module:nowhere", load("gpt2"))


# ------------------------------------------------------------------------ load_model


def test_load_model_facts(load: Callable[[str], LoadedModel], minilm_dir: Path) -> None:
    lm = load("gpt2")
    assert (lm.n_layers, lm.d_model, lm.max_length) == (3, 32, 128)
    assert lm.device == torch.device("cpu")
    assert lm.compute_dtype == torch.float32
    assert not lm.model.training
    assert lm.base is lm.model.transformer
    assert lm.tokenizer.is_fast
    assert lm.tokenizer.padding_side == "right"
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token  # GPT-2 has no pad token
    info = json.loads(json.dumps(lm.info))
    assert info["class"] == "GPT2LMHeadModel"
    assert info["model_type"] == "gpt2"
    assert (info["n_layers"], info["d_model"], info["vocab_size"]) == (3, 32, 320)
    assert str(info["weights_hash"]).startswith("sha256:")
    assert info["config"]["n_layer"] == 3
    tok = json.loads(json.dumps(lm.tokenizer_info))
    assert tok["vocab_size"] == 320
    assert tok["padding_side"] == "right"
    assert tok["special_tokens"]["eos_token"] == "<|endoftext|>"
    again = load_model(str(lm.info["path"]), device="cpu")
    assert again.info["weights_hash"] == lm.info["weights_hash"]
    minilm = load("minilm")
    assert (minilm.n_layers, minilm.d_model, minilm.max_length) == (6, 384, 512)
    assert minilm.adapter.name == "bert"
    assert minilm.info["weights_hash"] != lm.info["weights_hash"]
    assert Path(str(minilm.info["path"])) == minilm_dir.resolve()


def test_load_model_errors(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match=r"no such folder"):
        load_model(str(tmp_path / "missing"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"has no config.json.*not a Hugging Face model"):
        load_model(str(tmp_path / "empty"), device="cpu")
    (tmp_path / "file.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match=r"is a file"):
        load_model(str(tmp_path / "file.txt"), device="cpu")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"cannot load the config of model .*garbage"):
        load_model(str(tmp_path / "garbage"), device="cpu")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(
        (tiny_model_dirs["gpt2"] / "config.json").read_text()
    )
    with pytest.raises(ModelLoadError, match=r"cannot load the weights of model"):
        load_model(str(tmp_path / "noweights"), device="cpu")
    with pytest.raises(ModelLoadError, match=r"'no-such-org/no-such-model'.*offline"):
        load_model("no-such-org/no-such-model", device="cpu")
    with pytest.raises(ConfigError, match=r"not a torch device"):
        load_model(str(tiny_model_dirs["gpt2"]), device="potato")
    with pytest.raises(OSError, match=r"no such folder"):  # also an OSError
        load_model("./missing-model", device="cpu")


# ---------------------------------------------------------------- matrices and head


@pytest.mark.parametrize("arch", [*TINY_ARCHS, "minilm"])
def test_matrices(arch: str, load: Callable[[str], LoadedModel]) -> None:
    lm = load(arch)
    mats = matrices(lm)
    embed = lm.model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(mats["embed"], embed)
    assert all(m.dtype == np.float32 for m in mats.values())
    vocab, d = embed.shape
    assert d == lm.d_model
    info = json.loads(json.dumps(head_info(lm)))
    if arch in CAUSAL:
        np.testing.assert_array_equal(
            mats["unembed"], lm.model.get_output_embeddings().weight.detach().numpy()
        )
        assert mats["unembed"].shape == (vocab, d)
        assert info["has_unembed"]
        assert info["final_norm"]["path"] == lm.adapter.final_norm
        assert mats["final_norm.weight"].shape == (d,)
    else:
        assert set(mats) == {"embed"}
        assert info == {
            "has_unembed": False,
            "has_unembed_bias": False,
            "tied": False,
            "final_norm": None,
        }
    expected_norm = {
        "gpt2": "LayerNorm",
        "gpt_neo": "LayerNorm",
        "llama": "RMSNorm",
        "qwen2": "RMSNorm",
    }
    if arch in expected_norm:
        assert info["final_norm"]["type"] == expected_norm[arch]
        assert ("final_norm.bias" in mats) == (expected_norm[arch] == "LayerNorm")
    assert info["tied"] == (arch in {"gpt2", "gpt_neo", "qwen2"})
    if arch == "qwen2":
        assert vocab > len(lm.tokenizer)  # padded vocabulary is exported whole


def test_matrices_are_copies(load: Callable[[str], LoadedModel]) -> None:
    lm = load("llama")
    mats = matrices(lm)
    mats["embed"][:] = 0
    assert lm.model.get_input_embeddings().weight.abs().sum() > 0


# -------------------------------------------------------------------------- adapters


def test_every_adapter_is_exercised() -> None:
    served = {t for a in ADAPTERS for t in a.model_types}
    tested = {*TINY_ARCHS, *EXTRA_ARCHS}
    assert {"bert", "gpt2", "gpt_neo", "llama", "qwen2", "mistral"} <= served
    assert tested <= served
    for adapter in ADAPTERS:
        assert adapter.hidden0
        assert adapter.hidden_last
        assert (adapter.final_norm is None) == (not adapter.causal)


@pytest.mark.parametrize(
    ("arch", "layers", "norm"),
    [("gpt2", "h", "ln_f"), ("llama", "layers", "norm"), ("bert", "encoder.layer", None)],
)
def test_adapter_inferred_for_an_unknown_model_type(
    arch: str, layers: str, norm: str | None, load: Callable[[str], LoadedModel]
) -> None:
    config = SimpleNamespace(model_type="mystery", architectures=["MysteryForCausalLM"])
    with pytest.raises(ModelLoadError, match=r"model type 'mystery' is not supported"):
        adapter_for(config)
    adapter = adapter_for(config, load(arch).base)
    assert (adapter.layers, adapter.final_norm, adapter.causal) == (layers, norm, True)
    assert adapter.name == "inferred:mystery"
