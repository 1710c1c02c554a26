"""Every documented bad input: one clear line, non-zero exit, nothing stored is damaged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from actstore.cli import main
from actstore.errors import ConfigError, RunExistsError
from actstore.extract.config import ExtractConfig

from .test_extract import run, write_corpus


def tree_hash(root: Path) -> dict[str, str]:
    """Hashes of the store's data files (hidden bookkeeping such as lock files left out)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


@pytest.fixture(scope="module")
def good(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("bad")
    data = write_corpus(root / "c.jsonl", ["a dog barks", "a cat meows", "the cow moos"])
    store = root / "s.acts"
    run(tiny_model_dirs["bert"], data, store, sites="hidden.1")
    return tiny_model_dirs["bert"], data, store


def fail(capsys: pytest.CaptureFixture[str], argv: list[str], match: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("actstore: error: ")
    assert match in err, err
    return err


def test_bad_inputs_give_one_line_and_keep_the_store(
    good: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data, store = good
    before = tree_hash(store)
    base = ["extract", "--model", str(model), "--store", str(store), "--quiet", "--device", "cpu"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blanks = write_corpus(tmp_path / "blank.jsonl", ["", "", ""])
    bad_bytes = tmp_path / "bytes.txt"
    bad_bytes.write_bytes(b"fine line\n\xff\xfe broken\n")
    not_model = tmp_path / "not_a_model"
    not_model.mkdir()
    (not_model / "config.json").write_text("{not json")
    cases = [
        (["--data", str(tmp_path / "missing.jsonl"), "--run", "x"], "missing.jsonl"),
        (["--data", str(empty), "--run", "x"], "empty"),
        (["--data", str(blanks), "--run", "x"], "no document with text"),
        (["--data", str(data), "--run", "x", "--text-field", "body"], "body"),
        (["--data", str(bad_bytes), "--run", "x"], "UTF-8"),
        (["--data", str(data), "--run", "x", "--sites", "hidden.99"], "hidden.0..hidden.3"),
        (["--data", str(data), "--run", "x", "--sites", "module:encoder.nope"], "module"),
        (["--data", str(data), "--run", "x", "--sites", "layer3"], "hidden."),
        (["--data", str(data), "--run", "r", "--sites", "hidden.2"], "--overwrite"),
        (["--data", str(data), "--run", "bad name!"], "run name"),
    ]
    for args, match in cases:
        fail(capsys, [*base, *args], match)
        assert tree_hash(store) == before, args
    fail(
        capsys,
        [
            "extract",
            "--model",
            str(not_model),
            "--data",
            str(data),
            "--store",
            str(store),
            "--run",
            "x",
            "--quiet",
        ],
        "not_a_model",
    )
    fail(
        capsys,
        [
            "extract",
            "--model",
            str(tmp_path / "nowhere"),
            "--data",
            str(data),
            "--store",
            str(store),
            "--run",
            "x",
            "--quiet",
        ],
        "nowhere",
    )
    assert tree_hash(store) == before
    manifest = json.loads((store / "actstore.json").read_text())
    assert list(manifest["runs"]) == ["r"]
    assert not (store / "runs" / "x").exists()


def test_unsupported_dtype(
    good: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data, store = good
    argv = ["extract", "--model", str(model), "--data", str(data), "--store", str(store)]
    assert main([*argv, "--dtype", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1  # one line, not a usage block
    assert "invalid choice: 'int8'" in err[0]
    with pytest.raises(ConfigError, match="unsupported dtype 'int8'"):
        ExtractConfig(model="m", data="d", store="s", run="r", dtype="int8")  # type: ignore[arg-type]


def test_store_path_problems(
    good: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data, _ = good
    a_file = tmp_path / "file.acts"
    a_file.write_text("hello")
    fail(
        capsys,
        [
            "extract",
            "--model",
            str(model),
            "--data",
            str(data),
            "--store",
            str(a_file),
            "--run",
            "x",
            "--quiet",
        ],
        "is a file",
    )
    assert a_file.read_text() == "hello"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    fail(
        capsys,
        [
            "extract",
            "--model",
            str(model),
            "--data",
            str(data),
            "--store",
            str(other),
            "--run",
            "x",
            "--quiet",
        ],
        "not a store",
    )
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]
    newer = tmp_path / "newer.acts"
    newer.mkdir()
    (newer / "actstore.json").write_text(
        json.dumps({"format": "actstore", "version": 99, "runs": {}})
    )
    fail(
        capsys,
        [
            "extract",
            "--model",
            str(model),
            "--data",
            str(data),
            "--store",
            str(newer),
            "--run",
            "x",
            "--quiet",
        ],
        "version 99",
    )
    fail(capsys, ["info", str(newer)], "upgrade actstore")
    fail(capsys, ["info", str(tmp_path / "none")], "no actstore store")


def test_reuse_overwrite_and_idempotent_rerun(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = write_corpus(tmp_path / "c.jsonl", ["a dog barks", "a cat meows"])
    store = tmp_path / "s.acts"
    first = run(tiny_model_dirs["gpt2"], data, store, sites="hidden.1")
    again = run(tiny_model_dirs["gpt2"], data, store, sites="hidden.1")
    assert (first.status, again.status) == ("committed", "already-committed")
    with pytest.raises(RunExistsError, match="sites"):
        run(tiny_model_dirs["gpt2"], data, store, sites="hidden.2")
    replaced = run(tiny_model_dirs["gpt2"], data, store, sites="hidden.2", overwrite=True)
    assert replaced.status == "committed"
    rj = json.loads((store / "runs/r/run.json").read_text())
    assert [s["name"] for s in rj["sites"]] == ["hidden.2"]
    assert not (store / "runs/r/arrays/part-0000/hidden.1").exists()


def test_cli_options_keep_the_dataclass_defaults() -> None:
    from actstore.cli import build_parser

    args = build_parser().parse_args(["extract", "--model", "m", "--data", "d", "--store", "s"])
    defaults = ExtractConfig(model="m", data="d", store="s", run="r")
    for name in (
        "add_special_tokens",
        "centroids",
        "overwrite",
        "quiet",
        "dtype",
        "sites",
        "batch_tokens",
        "long_docs",
        "text_field",
        "max_length",
    ):
        assert getattr(args, name) == getattr(defaults, name), name
    args = build_parser().parse_args(
        ["extract", "--model", "m", "--no-add-special-tokens", "--text-column", "body"]
    )
    assert args.add_special_tokens is False
    assert args.text_field == "body"
