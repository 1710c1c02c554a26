"""Fixtures for query tests: synthetic stores and two hand-tokenized runs over one corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actstore.store.arrays import Layout, write_matrix
from actstore.store.commit import commit_run
from actstore.store.format import ARRAYS_DIR, part_dir, run_dir
from actstore.store.manifest import atomic_write_json, create_store
from actstore.store.part import PartWriter, now_iso
from actstore.store.synthetic import write_synthetic_run

#: The corpus of the hand-tokenized runs.
TEXTS = {0: "The dogs barked.", 1: "Dog dog hotdog"}

#: Run "words": one token per word, [CLS]/[SEP] around each doc (zero-length spans).
WORDS = {
    0: [
        ("[CLS]", 0, 0),
        ("The", 0, 3),
        (" dogs", 3, 8),
        (" barked", 8, 15),
        (".", 15, 16),
        ("[SEP]", 0, 0),
    ],
    1: [("[CLS]", 0, 0), ("Dog", 0, 3), (" dog", 3, 7), (" hotdog", 7, 14), ("[SEP]", 0, 0)],
}
#: Run "pieces": subword tokens, no special tokens.
PIECES = {
    0: [
        ("The", 0, 3),
        (" do", 3, 6),
        ("gs", 6, 8),
        (" bark", 8, 13),
        ("ed", 13, 15),
        (".", 15, 16),
    ],
    1: [("Dog", 0, 3), (" dog", 3, 7), (" hot", 7, 11), ("dog", 11, 14)],
}


def write_hand_run(
    store: Path, run: str, tokens: dict[int, list[tuple[str, int, int]]], d: int = 4
) -> None:
    """Commit a run with the given tokens (string, start, end) per doc; row r = [r]*d."""
    create_store(store)
    vocab = sorted({t for toks in tokens.values() for t, _, _ in toks})
    ids = {t: i for i, t in enumerate(vocab)}
    write_matrix(run_dir(store, run) / ARRAYS_DIR, "embed", np.eye(len(vocab), d, dtype=np.float32))
    part = PartWriter(
        store,
        run,
        0,
        sites={"hidden.0": d},
        dtype="float32",
        layout=Layout(chunk_rows=2),
        resume=None,
    )
    pdir = part_dir(store, run, 0)
    meta: dict[str, Any] = {
        "identity": {"run": run},
        "config": {},
        "model": {"id": f"hand/{run}", "model_type": "hand"},
        "tokenizer": {"class": "hand"},
        "sites": [{"name": "hidden.0", "d": d, "dtype": "float32", "describes": "row id"}],
        "matrices": {"embed": [len(vocab), d]},
        "head": {},
        "dtype": "float32",
        "vocab_size": len(vocab),
        "versions": {},
        "created_at": now_iso(),
    }
    atomic_write_json(pdir / "meta.json", meta)
    pq.write_table(
        pa.table(
            {
                "token_id": pa.array(range(len(vocab)), pa.int32()),
                "token": vocab,
                "piece": vocab,
                "special": [t.startswith("[") for t in vocab],
            }
        ),
        pdir / "vocab_strings.parquet",
    )
    cols: dict[str, list[Any]] = {
        k: [] for k in ("doc_id", "pos", "token_id", "start", "end", "special")
    }
    for doc_id, toks in tokens.items():
        for pos, (t, s, e) in enumerate(toks):
            for k, v in zip(cols, (doc_id, pos, ids[t], s, e, t.startswith("[")), strict=True):
                cols[k].append(v)
    n = len(cols["pos"])
    part.add_batch(
        {"hidden.0": np.repeat(np.arange(n, dtype=np.float32)[:, None], d, axis=1)},
        {
            "doc_id": np.array(cols["doc_id"], np.int64),
            "pos": np.array(cols["pos"], np.int32),
            "token_id": np.array(cols["token_id"], np.int32),
            "start": np.array(cols["start"], np.int32),
            "end": np.array(cols["end"], np.int32),
            "special": np.array(cols["special"], bool),
        },
    )
    docs = pa.table(
        {
            "doc_id": pa.array(list(tokens), pa.int64()),
            "doc_index": pa.array(list(tokens), pa.int64()),
            "text": [TEXTS[i] for i in tokens],
            "source": [f"{run}.txt"] * len(tokens),
        }
    )
    part.checkpoint(consumed=len(tokens), docs=docs, counts={"docs": len(tokens)}, timings={})
    part.finish()
    commit_run(store, run, 1)


@pytest.fixture(scope="session")
def hand_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs "words" and "pieces" over the same two docs."""
    path = tmp_path_factory.mktemp("hand") / "hand.acts"
    write_hand_run(path, "words", WORDS)
    write_hand_run(path, "pieces", PIECES)
    return path


@pytest.fixture(scope="session")
def syn_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic runs (float16 in 2 parts, bfloat16) over the same 20 docs."""
    path = tmp_path_factory.mktemp("syn") / "syn.acts"
    layout = Layout(chunk_rows=8, shard_rows=24)
    write_synthetic_run(
        path,
        "a",
        n_docs=20,
        tokens_per_doc=9,
        d=8,
        dtype="float16",
        num_parts=2,
        layout=layout,
        docs_per_pool=3,
        vocab_size=50,
    )
    write_synthetic_run(
        path,
        "b",
        n_docs=20,
        tokens_per_doc=5,
        d=8,
        dtype="bfloat16",
        layout=layout,
        vocab_size=50,
        seed=7,
    )
    return path


@pytest.fixture(scope="session")
def gpt2_store(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random GPT-2 (with its output head) over two lines, every site, float32."""
    from actstore.extract import ExtractConfig, extract

    root = tmp_path_factory.mktemp("gpt2sim")
    data = root / "c.txt"
    data.write_text("The dog barks at the cat.\nAspirin treats a headache.\n")
    store = root / "g.acts"
    extract(
        ExtractConfig(
            model=str(tiny_model_dirs["gpt2"]),
            data=str(data),
            store=str(store),
            run="g",
            sites="all",
            dtype="float32",
            quiet=True,
            device="cpu",
        )
    )
    return store


class CLIFailed(Exception):
    """``actstore`` exited non-zero; ``str()`` is its one error line."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code = code


class CLI:
    """Run ``actstore`` through :func:`actstore.cli.main` as a user would: the exit status,
    stdout, and on failure exactly one ``actstore: error: ...`` line on stderr."""

    Failed = CLIFailed

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> str:
        """Stdout of a successful run; raises :class:`CLIFailed` on a non-zero exit."""
        from actstore.cli import main

        self.capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        if code == 0:
            return out
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"expected one error line, got {err!r}"
        assert lines[0].startswith("actstore: error: "), lines[0]
        assert code in (1, 2), code
        raise CLIFailed(code, lines[0])

    def json(self, *argv: str) -> Any:
        """The parsed ``--json`` output of a successful run."""
        import json

        return json.loads(self(*argv, "--json"))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CLI:
    """``cli("map", "fit", ...)`` runs the command line (see :class:`CLI`)."""
    return CLI(capsys)
