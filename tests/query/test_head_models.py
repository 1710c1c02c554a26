"""The one output head against the real models, family by family: the logit lens at
``hidden.L`` equals the model's logits, and at an earlier layer equals what transformers
computes from that hidden state (its own final norm, projection, ``lm_head`` and logit
scaling / softcapping), in NumPy and in torch.

The tiny models have every weight randomised, norm scales included, so a Gemma norm read
as ``w`` instead of ``1 + w``, a forgotten softcap or logit scale, or OPT-350m's
``project_out`` left out all change the logits by far more than the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.special import log_softmax

import actstore
from actstore.errors import ConfigError
from actstore.query.head import Head
from actstore.query.mapping.klmap import fit_kl_map
from actstore.query.similarity.nearest import logit_lens
from tests.conftest import save_tiny_model

torch = pytest.importorskip("torch")

TEXTS = ["The dog barks at the cat.", "Paris is the capital of France, and Berlin is too."]

#: What transformers applies between the blocks and ``lm_head`` (paths in the full model;
#: a module that is None in a checkpoint is skipped, as transformers skips it).
AFTER_BLOCKS = {
    "gemma": ["model.norm"],
    "gemma2": ["model.norm"],
    "cohere": ["model.norm"],
    "opt": ["model.decoder.final_layer_norm", "model.decoder.project_out"],
    "opt350m": ["model.decoder.final_layer_norm", "model.decoder.project_out"],
    "gptj": ["transformer.ln_f"],
}
#: The module whose ``last_hidden_state`` the causal LM feeds to ``lm_head`` (OPT's calls
#: its decoder directly, not the base model).
BODY = {"opt": "model.decoder", "opt350m": "model.decoder"}


def _extract(folder: Path, store: Path) -> Path:
    from actstore.extract import ExtractConfig, extract

    data = store.parent / "texts.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    extract(
        ExtractConfig(
            model=str(folder),
            data=str(data),
            store=str(store),
            run="m",
            sites="all",
            dtype="float32",
            quiet=True,
            device="cpu",
        )
    )
    return store


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """``arch -> (model folder, store)``, each built once per module."""
    cache: dict[str, tuple[Path, Path]] = {}

    def get(arch: str) -> tuple[Path, Path]:
        if arch not in cache:
            root = tmp_path_factory.mktemp(arch)
            folder = save_tiny_model(arch, root / "model")
            cache[arch] = (folder, _extract(folder, root / "s.acts"))
        return cache[arch]

    return get


def _module(model: Any, path: str) -> Any:
    for name in path.split("."):
        model = getattr(model, name, None)
    return model


def _hf(folder: Path, arch: str, text: str) -> tuple[Any, Callable[[Any], Any]]:
    """The model's output on ``text``, and ``lens(h)``: transformers' logits when the hidden
    state ``h`` (1, tokens, d) of an earlier layer replaces the blocks' output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    enc = AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    after = [m for p in AFTER_BLOCKS[arch] if (m := _module(model, p)) is not None]

    def lens(h: Any) -> Any:
        replaced: list[bool] = []

        def replace(_m: Any, _args: Any, output: Any) -> Any:
            x = h
            for module in after:
                x = module(x)
            output["last_hidden_state"] = x
            replaced.append(True)
            return output

        body = _module(model, BODY[arch]) if arch in BODY else model.base_model
        handle = body.register_forward_hook(replace)
        try:
            with torch.no_grad():
                logits = model(**enc).logits[0].numpy()
        finally:
            handle.remove()
        assert replaced == [True]
        return logits

    return out, lens


def _doc_rows(s: Any, text: str) -> Any:
    return s.sql(
        "SELECT row FROM tokens WHERE run = 'm' AND doc_id = "
        "(SELECT doc_id FROM docs WHERE text = ?) ORDER BY pos",
        [text],
    ).first_column()


@pytest.mark.parametrize("arch", list(AFTER_BLOCKS))
def test_logit_lens_equals_transformers(
    arch: str, built: Callable[[str], tuple[Path, Path]]
) -> None:
    folder, store = built(arch)
    for text in TEXTS:
        out, lens = _hf(folder, arch, text)
        with actstore.open(store) as s:
            L = s.run_info("m")["model"]["n_layers"]
            rows = _doc_rows(s, text)
            assert len(rows) == out.logits.shape[1]
            last = logit_lens(s, "m", f"hidden.{L}", rows)
            np.testing.assert_allclose(last, out.logits[0].numpy(), rtol=1e-4, atol=1e-4)
            for i in range(L):
                H = s.vectors("m", f"hidden.{i}", rows, dtype=np.float32)
                np.testing.assert_array_equal(H, out.hidden_states[i][0].numpy())
                ref = lens(out.hidden_states[i])
                np.testing.assert_allclose(
                    logit_lens(s, "m", f"hidden.{i}", rows), ref, rtol=1e-4, atol=1e-4
                )
                head = Head.from_store(s, "m", site=f"hidden.{i}")
                want = log_softmax(ref.astype(np.float64), axis=1)
                np.testing.assert_allclose(head.log_probs(H), want, atol=1e-4)
                tlp = head.torch_log_probs(torch.as_tensor(H), head.torch_params("cpu"))
                np.testing.assert_allclose(tlp.numpy(), want, atol=1e-4)


def test_head_refuses_a_projection_it_was_not_told_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OPT-350m with the "opt" adapter taken away: the inferred adapter knows nothing of
    project_out. hidden.L still equals the model (it is checked against HF at load) and so
    does its lens; the lens of an earlier layer is refused with one line, not wrong."""
    from actstore.extract import adapters

    monkeypatch.delitem(adapters._BY_TYPE, "opt")
    folder = save_tiny_model("opt350m", tmp_path / "model")
    store = _extract(folder, tmp_path / "s.acts")
    out, _ = _hf(folder, "opt350m", TEXTS[0])
    with actstore.open(store) as s:
        info = s.run_info("m")
        assert info["model"]["adapter"] == "inferred:opt"
        rows = _doc_rows(s, TEXTS[0])
        last = logit_lens(s, "m", "hidden.3", rows)
        with pytest.raises(ConfigError) as exc:
            logit_lens(s, "m", "hidden.1", rows)
    np.testing.assert_allclose(last, out.logits[0].numpy(), rtol=1e-4, atol=1e-4)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(
        "run 'm': vectors before hidden.3 cannot go through its head offline: the recorded "
        "final norm and projection give shape"
    )
    assert message.endswith("only hidden.L can go through the head offline")


def _random_head(rng: np.random.Generator) -> Head:
    f32 = np.float32
    return Head(
        rng.normal(size=(11, 4)).astype(f32),
        rng.normal(size=11).astype(f32),
        "RMSNorm",
        rng.normal(size=6).astype(f32),
        None,
        1e-6,
        1.0,
        rng.normal(size=(4, 6)).astype(f32),
        rng.normal(size=4).astype(f32),
        0.5,
        2.0,
    )


def test_every_head_step_in_numpy_and_torch() -> None:
    """Norm with weight offset, projection, bias, scale and softcap, against a plain
    reference; NumPy and torch agree."""
    rng = np.random.default_rng(0)
    head = _random_head(rng)
    H = rng.normal(size=(7, 6)) * 3 + 1
    assert head.width == 6
    x = H / np.sqrt((H * H).mean(1, keepdims=True) + 1e-6) * (1 + head.norm_weight)  # type: ignore[operator]
    x = x @ head.proj.T + head.proj_bias  # type: ignore[union-attr]
    z = (x @ head.unembed.T + head.bias) * 0.5
    z = 2.0 * np.tanh(z / 2.0)
    np.testing.assert_allclose(head.logits(H), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.log_probs(H), log_softmax(z, axis=1), atol=1e-6)
    tlp = head.torch_log_probs(torch.as_tensor(H, dtype=torch.float32), head.torch_params("cpu"))
    np.testing.assert_allclose(tlp.numpy(), log_softmax(z, axis=1), atol=1e-5)


def test_kl_map_takes_the_width_before_the_projection() -> None:
    """Y at an earlier layer of OPT-350m is as wide as the blocks, not as the unembedding."""
    rng = np.random.default_rng(1)
    head = _random_head(rng)
    X = rng.normal(size=(40, 3))
    Y = X @ rng.normal(size=(3, 6))
    fitted = fit_kl_map(lambda: iter([(X, Y)]), head, epochs=2, lr=0.05, device="cpu")
    assert fitted.coef.shape == (3, 6)
