"""Model loading, site parsing and hook capture against plain Hugging Face forward passes."""

from __future__ import annotations

import dataclasses
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
from actstore.extract.check import check_hidden_sites, padding_mask_needed
from actstore.extract.head import NormSpec, head_info, matrices
from actstore.extract.model import LoadedModel, load_model
from actstore.extract.sites import Site, SiteCapture, list_modules, parse_sites, valid_sites
from tests.conftest import TINY_ARCHS, save_tiny_model

EXTRA_ARCHS = (
    "mistral",
    "qwen3",
    "distilbert",
    "roberta",
    "gemma",
    "gemma2",
    "opt",
    "opt350m",
    "cohere",
    "gptj",
)
CAUSAL = {"gpt2", "gpt_neo", "llama", "qwen2", "mistral", "qwen3"}
#: Built with a layout, not a model type, of their own / with no registered adapter.
LAYOUTS, UNREGISTERED = {"opt350m"}, {"gptj"}

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


def same_at_real_tokens(
    lm: LoadedModel, got: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor
) -> None:
    """``got`` (a site) equals ``ref`` (a hook on the masked HF forward): bitwise where the
    site is taken with the padding mask, else to float rounding, at the real tokens (causal
    families run without the mask, so their padding rows differ; they are never kept)."""
    assert got.shape == ref.shape
    real = mask.bool()
    atol = 0 if lm.padding_mask else 1e-6
    torch.testing.assert_close(got[real], ref[real], atol=atol, rtol=0)


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
        assert out.shape == h.shape  # OPT-350m: hidden.L is 16 wide, the blocks 32
        assert out.shape[:2] == ids.shape
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
    same_at_real_tokens(lm, got, seen[0], mask)


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
            "final_proj": None,
            "lm_head": None,
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
    tested = {*TINY_ARCHS, *EXTRA_ARCHS} - LAYOUTS - UNREGISTERED
    assert {"bert", "gpt2", "gpt_neo", "llama", "qwen2", "mistral"} <= served
    assert tested <= served
    assert not UNREGISTERED & served
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


# ---------------------------------------------------- families: norms, projections, checks


@pytest.mark.parametrize(
    ("arch", "kind", "offset", "bias"),
    [
        ("gpt2", "LayerNorm", 0.0, True),
        ("llama", "RMSNorm", 0.0, False),
        ("gemma", "RMSNorm", 1.0, False),
        ("gemma2", "RMSNorm", 1.0, False),
        ("cohere", "LayerNorm", 0.0, False),
        ("opt", "LayerNorm", 0.0, True),
        ("gptj", "LayerNorm", 0.0, True),
        ("opt350m", None, 0.0, False),
    ],
)
def test_final_norm_is_recorded_as_it_computes(
    arch: str, kind: str | None, offset: float, bias: bool, load: Callable[[str], LoadedModel]
) -> None:
    """Gemma's norms scale by 1 + w: recorded as weight_offset 1.0, not by the class name."""
    lm = load(arch)
    info = json.loads(json.dumps(head_info(lm)))
    mats = matrices(lm)
    assert "unsupported" not in info
    assert "lens_unsupported" not in info
    assert info["check"]["logits"] <= info["check"]["tolerance"]
    assert info["check"]["final"] <= info["check"]["tolerance"]
    if kind is None:
        assert info["final_norm"] is None
        return
    fn = info["final_norm"]
    assert (fn["type"], fn["weight_offset"]) == (kind, offset)
    assert ("final_norm.bias" in mats) == bias
    norm = lm.base.get_submodule(fn["path"])
    x = torch.randn(5, lm.d_model) * 3 + 1
    spec = NormSpec(fn["type"], fn["class"], fn["eps"], fn["weight_offset"])
    w = torch.as_tensor(mats["final_norm.weight"])
    b = torch.as_tensor(mats["final_norm.bias"]) if bias else None
    with torch.inference_mode():
        torch.testing.assert_close(spec.apply(x, w, b), norm(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["gemma2", "opt350m"])
def test_checks_pass_in_bfloat16(arch: str, load: Callable[[str], LoadedModel]) -> None:
    """The load-time and head checks allow bfloat16 rounding, and still tell 1 + w from w."""
    folder = Path(str(load(arch).info["path"]))
    lm = load_model(str(folder), device="cpu", compute_dtype="bfloat16")
    info = head_info(lm)
    assert not {"unsupported", "lens_unsupported"} & set(info)
    if arch == "gemma2":
        assert info["final_norm"] == {
            "type": "RMSNorm",
            "class": "Gemma2RMSNorm",
            "eps": 1e-6,
            "weight_offset": 1.0,
            "path": "norm",
        }


def test_logit_transforms_are_recorded(load: Callable[[str], LoadedModel]) -> None:
    assert head_info(load("gemma2"))["final_logit_softcapping"] == 2.0
    assert head_info(load("cohere"))["logit_scale"] == 0.25
    assert not {"final_logit_softcapping", "logit_scale"} & set(head_info(load("gemma")))


def test_opt350m_projections_are_exported(load: Callable[[str], LoadedModel]) -> None:
    """hidden.0 is the 32-wide block input (after project_in), hidden.L the 16-wide
    hidden_states[L] (after project_out); both projections are exported."""
    lm = load("opt350m")
    assert (lm.adapter.final_norm, lm.adapter.final_proj) == (None, "decoder.project_out")
    dims = SiteCapture(lm, parse_sites("hidden.0,hidden.3", lm)).probe()
    assert dims == {"hidden.0": 32, "hidden.3": 16}
    mats = matrices(lm)
    decoder = lm.base.decoder
    np.testing.assert_array_equal(mats["final_proj.weight"], decoder.project_out.weight.numpy())
    np.testing.assert_array_equal(mats["embed_proj.weight"], decoder.project_in.weight.numpy())
    assert mats["embed"].shape == mats["unembed"].shape == (320, 16)
    assert head_info(lm)["final_proj"] == {"path": "decoder.project_out", "shape": [16, 32]}
    usual = load("opt")
    assert (usual.adapter.final_norm, usual.adapter.final_proj) == (
        "decoder.final_layer_norm",
        None,
    )
    assert not {"final_proj.weight", "embed_proj.weight"} & set(matrices(usual))


@pytest.mark.parametrize("arch", ["opt", "opt350m"])
@pytest.mark.parametrize(("module", "width"), [("fc1", 64), ("fc2", 32), ("final_layer_norm", 32)])
def test_flattened_module_outputs_are_per_token(
    arch: str, module: str, width: int, load: Callable[[str], LoadedModel]
) -> None:
    """OPT's blocks run fc1/fc2/final_layer_norm on [batch * tokens, d]; the site is
    [batch, tokens, d] and equals a hook on the model, reshaped."""
    lm = load(arch)
    path = f"decoder.layers.1.{module}"
    site = f"module:{path}"
    assert SiteCapture(lm, parse_sites(site, lm)).probe() == {site: width}
    ids, mask = batch(lm)
    got = SiteCapture(lm, parse_sites(site, lm))(ids, mask)[site]
    seen: list[torch.Tensor] = []
    handle = lm.base.get_submodule(path).register_forward_hook(
        lambda _m, _i, o: seen.append(o.clone())
    )
    try:
        with torch.inference_mode():
            lm.base(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    # OPT-350m is post-LN: its final_layer_norm runs after the tokens are unflattened.
    flat = not (arch == "opt350m" and module == "final_layer_norm")
    assert seen[0].shape == ((ids.numel(), width) if flat else (*ids.shape, width))
    assert got.shape == (*ids.shape, width)
    same_at_real_tokens(lm, got, seen[0].reshape(*ids.shape, width), mask)


def test_a_family_without_adapter_is_checked(load: Callable[[str], LoadedModel]) -> None:
    """GPT-J has no registered adapter: the inferred one passed the load-time check
    (every hidden site is compared with HF in test_all_hidden_sites_equal_hf_hidden_states)
    and its head (with an unembedding bias) reproduces the model's logits."""
    lm = load("gptj")
    assert lm.adapter.name == "inferred:gptj"
    assert (lm.adapter.layers, lm.adapter.final_norm) == ("h", "ln_f")
    info = head_info(lm)
    assert info["has_unembed_bias"]
    assert "unsupported" not in info
    assert "lens_unsupported" not in info


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_sites_that_differ_from_hf_are_refused(
    load: Callable[[str], LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint whose hidden_states[-1] is not last_hidden_state (HF's
    tie_last_hidden_states=False) is refused, registered adapter or inferred."""
    lm = load("llama")
    check_hidden_sites(lm)
    monkeypatch.setattr(lm.base.config, "tie_last_hidden_states", False, raising=False)
    with pytest.raises(ModelLoadError) as exc:
        check_hidden_sites(lm)
    assert "adapter 'llama' (model type 'llama') does not reproduce Hugging Face's hidden " in (
        one_line(exc)
    )
    assert "hidden.3 differs from hidden_states[3]" in one_line(exc)
    config = SimpleNamespace(model_type="mystery", architectures=["MysteryForCausalLM"])
    guessed = dataclasses.replace(lm, adapter=adapter_for(config, lm.base).resolve(lm.base))
    with pytest.raises(ModelLoadError) as exc:
        check_hidden_sites(guessed)
    assert one_line(exc).startswith(
        "model type 'llama' has no registered adapter, and the one inferred from its modules "
        "(blocks at 'layers') does not reproduce Hugging Face's hidden states: hidden.3 differs"
    )
    assert one_line(exc).endswith("; add an Adapter to actstore/extract/adapters.py")


def test_head_that_differs_from_the_model_is_marked(load: Callable[[str], LoadedModel]) -> None:
    """An output step actstore does not know (here: a hook doubling the logits) or a final
    projection it was not told about (OPT-350m with an inferred adapter) is recorded as a
    reason, which the offline head refuses on (tests/query/test_head_models.py)."""
    lm = load("gptj")
    handle = lm.model.lm_head.register_forward_hook(lambda _m, _i, o: o * 2)
    try:
        info = head_info(lm)
    finally:
        handle.remove()
    assert "the model's logits differ from unembed(hidden.L)" in str(info["unsupported"])
    assert "lens_unsupported" not in info
    opt = load("opt350m")
    config = SimpleNamespace(model_type="mystery", architectures=["MysteryForCausalLM"])
    guessed = dataclasses.replace(opt, adapter=adapter_for(config, opt.base).resolve(opt.base))
    assert guessed.adapter.final_proj is None
    check_hidden_sites(guessed)  # hidden.L is hidden_states[L] whatever the adapter knows
    info = head_info(guessed)
    assert "unsupported" not in info
    assert str(info["lens_unsupported"]).startswith(
        "the recorded final norm and projection give shape (2, 6, 32), hidden.L has (2, 6, 16)"
    )


@pytest.mark.parametrize("arch", [*TINY_ARCHS, *EXTRA_ARCHS, "minilm"])
def test_padding_mask_is_dropped_only_for_registered_causal_families(
    arch: str, load: Callable[[str], LoadedModel]
) -> None:
    """Registered causal families run right-padded batches without the padding mask (their
    real tokens never see the padding); encoders and inferred adapters keep it. That the
    sites are still Hugging Face's masked hidden states at every real token is
    ``test_all_hidden_sites_equal_hf_hidden_states``."""
    lm = load(arch)
    causal = arch in CAUSAL or arch in {"gemma", "gemma2", "opt", "opt350m", "cohere"}
    assert lm.adapter.causal == (causal or arch in UNREGISTERED)
    assert lm.padding_mask is not (causal and arch not in UNREGISTERED)
    assert padding_mask_needed(lm) is lm.padding_mask


def test_padding_mask_is_kept_when_padding_reaches_real_tokens(
    load: Callable[[str], LoadedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted: GPT-2 blocks whose attention is bidirectional when no mask is given (the
    attention modules' ``is_causal`` off) let the padding after a real token change it, so
    the check keeps the mask, and the sites taken with it equal Hugging Face's."""
    lm = load("gpt2")
    assert padding_mask_needed(lm) is False
    for block in lm.base.h:
        monkeypatch.setattr(block.attn, "is_causal", False)
    assert padding_mask_needed(lm) is True
    monkeypatch.setattr(lm, "padding_mask", True)
    check_hidden_sites(lm)
    monkeypatch.setattr(lm, "padding_mask", False)
    with pytest.raises(ModelLoadError, match="differs from hidden_states"):
        check_hidden_sites(lm)
