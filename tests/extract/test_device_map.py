"""--device-map: the model placed by accelerate, the stored run equal to a one-device run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from actstore.errors import ConfigError
from actstore.extract._devicemap import parse_device_map

from .test_extract import SENTENCES, read_run, run, write_corpus


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl", SENTENCES)


def _same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a["tokens"].equals(b["tokens"])
    assert a["sites"].keys() == b["sites"].keys()
    for site, x in a["sites"].items():
        np.testing.assert_allclose(b["sites"][site], x, rtol=0, atol=atol, err_msg=site)


def full_map(model: Path, causal: bool, blocks: str) -> dict[str, str]:
    """A device map naming every top module and each block (accelerate wants all of them
    when any is named), every entry on the CPU."""
    from transformers import AutoModel, AutoModelForCausalLM

    m = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(model)
    out: dict[str, str] = {}

    def walk(prefix: str, module: torch.nn.Module) -> None:
        if prefix == blocks:
            out.update({f"{blocks}.{i}": "cpu" for i in range(len(module))})  # type: ignore[arg-type]
        elif not prefix or blocks.startswith(prefix + "."):
            for name, child in module.named_children():
                walk(f"{prefix}.{name}" if prefix else name, child)
        else:
            out[prefix] = "cpu"

    walk("", m)
    return out


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_a_device_map_stores_what_one_device_stores(
    tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path: Path, arch: str
) -> None:
    model = tiny_model_dirs[arch]
    plain = tmp_path / "plain.acts"
    run(model, corpus, plain, dtype="float32", centroids=True)
    mapped = tmp_path / "mapped.acts"
    run(model, corpus, mapped, dtype="float32", centroids=True, device="auto", device_map="auto")
    a, b = read_run(plain), read_run(mapped)
    _same(a, b)
    assert b["run"]["config"]["device_map"] == "auto"
    # module by module, the last block offloaded to disk (accelerate's hooks bring its
    # weights in for each forward): still the same numbers
    blocks = "model.layers" if arch == "llama" else "encoder.layer"
    dm = full_map(model, arch == "llama", blocks)
    dm[f"{blocks}.{a['run']['model']['n_layers'] - 1}"] = "disk"
    per_module = tmp_path / "modules.acts"
    run(model, corpus, per_module, dtype="float32", device="auto", device_map=json.dumps(dm))
    _same(a, read_run(per_module))


def test_offloaded_modules_really_are_offloaded(tiny_model_dirs: dict[str, Path]) -> None:
    from actstore.extract.model import load_model

    dm = {**full_map(tiny_model_dirs["llama"], True, "model.layers"), "model.layers.2": "disk"}
    lm = load_model(str(tiny_model_dirs["llama"]), device_map=json.dumps(dm))
    assert lm.model.hf_device_map["model.layers.2"] == "disk"
    weight = lm.model.get_submodule("model.layers.2.mlp.up_proj").weight
    assert weight.device.type == "meta"  # loaded from the offload folder per forward


@pytest.mark.parametrize(
    ("device_map", "max_memory", "device", "match"),
    [
        ("everywhere", None, "auto", "not known"),
        ("{not json", None, "auto", "not JSON"),
        ("{}", None, "auto", "non-empty JSON object"),
        ('{"model.layers.0": [0, 1]}', None, "auto", "must name a device"),
        ("auto", "[1]", "auto", "max_memory must be a non-empty JSON object"),
        ("auto", None, "cpu", "not both"),
    ],
)
def test_bad_device_maps_are_one_line_errors(
    device_map: str, max_memory: str | None, device: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_device_map(device_map, max_memory, device)


def test_device_map_options_through_the_cli(
    tiny_model_dirs: dict[str, Path],
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from actstore.cli import main

    store = tmp_path / "s.acts"
    base = ["extract", "--model", str(tiny_model_dirs["gpt2"]), "--data", str(corpus)]
    base += ["--store", str(store), "--run", "r", "--quiet"]
    for extra, match in (
        (["--max-memory", '{"cpu": "1GiB"}'], "max_memory applies with device_map"),
        (["--device", "cpu", "--device-map", "auto"], "not both"),
    ):
        capsys.readouterr()
        assert main([*base, *extra]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert match in err[0]
    assert not store.exists()  # refused before anything was made
    assert main([*base, "--device-map", "auto", "--max-memory", '{"cpu": "8GiB"}']) == 0
    assert read_run(store)["run"]["config"]["max_memory"] == '{"cpu": "8GiB"}'


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_split_between_gpu_and_cpu_stores_what_the_cpu_stores(
    tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path: Path
) -> None:
    model = tiny_model_dirs["llama"]
    cpu = tmp_path / "cpu.acts"
    run(model, corpus, cpu, dtype="float32", centroids=True)
    dm = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu"}
    dm |= {"model.norm": "cpu", "model.rotary_emb": 0, "lm_head": "cpu"}
    split = tmp_path / "split.acts"
    run(
        model,
        corpus,
        split,
        dtype="float32",
        centroids=True,
        device="auto",
        device_map=json.dumps(dm),
        compute_dtype="float32",
    )
    _same(read_run(cpu), read_run(split), atol=1e-4)
