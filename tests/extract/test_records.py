"""Every input record is kept: repeated texts, empty texts, sharded and resumed runs.

The corpus is templated: most records repeat a text of an earlier record (as prompts built
from a few templates, or a labelled dataset with repeated sentences, do). A text is run
through the model once per run, but every record keeps its row in ``docs`` with its own
fields, and joins to the token rows of its text.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import actstore
from actstore.extract.config import ExtractConfig
from actstore.extract.corpus import doc_id_for
from actstore.extract.runner import extract

from .test_resume import cli, killed

TEMPLATES = ["The {a} sleeps under the {p}.", "A {a} sings in the {p} while the farmer sleeps."]
ANIMALS = ["dog", "cat", "cow", "bird", "farmer"]
PLACES = ["tree", "capital of France"]
UNICODE = "Café naïve — 東京の犬 🐕 barks; ½ ∑ ñ."
LONG = " ".join(f"red and blue make purple {i}." for i in range(40))
N_RECORDS = 200
EMPTY = {13, 63, 113, 163}
MAX_LENGTH = 32


def templated_records() -> list[dict[str, Any]]:
    """The corpus: 200 records, >= 80 % of them repeating an earlier record's text."""
    rng = random.Random(7)
    texts = [t.format(a=a, p=p) for t in TEMPLATES for a in ANIMALS for p in PLACES]
    records = []
    for i in range(N_RECORDS):
        if i in EMPTY:
            text = ""
        elif i in (5, 120):
            text = LONG
        elif i in (9, 150, 199):
            text = UNICODE
        else:
            text = rng.choice(texts)
        # `tag` is an int in early records and a string in late ones (other pools)
        tag: Any = i if i < 100 else f"t{i}"
        records.append(
            {"id": f"rec-{i:03d}", "text": text, "label": i % 3, "meta": {"k": i}, "tag": tag}
        )
    return records


def expected_docs(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The docs rows the store must hold: one per record, its fields as given."""
    first: dict[str, int] = {}
    rows = []
    for i, r in enumerate(records):
        text = r["text"]
        repeat_of = first.get(text) if text else None
        if text and text not in first:
            first[text] = i
        rows.append(
            {
                "record": i,
                "doc_id": doc_id_for(text),
                "text": text,
                "empty": text == "",
                "repeat_of": repeat_of,
                "id": r["id"],
                "label": r["label"],
                "meta": json.dumps(r["meta"]),
                "tag": str(r["tag"]),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("records") / "templated.jsonl"
    records = templated_records()
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def extract_to(model: Path, data: Path, store: Path, **kw: Any) -> Any:
    kw = {
        "run": "r",
        "sites": "all",
        "dtype": "float32",
        "max_length": MAX_LENGTH,
        "batch_tokens": 96,
        "pool_batches": 1,
        "quiet": True,
        "device": "cpu",
        **kw,
    }
    return extract(ExtractConfig(model=str(model), data=str(data), store=str(store), **kw))


@pytest.fixture(scope="module")
def single(
    tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    store = tmp_path_factory.mktemp("single") / "s.acts"
    extract_to(tiny_model_dirs["gpt2"], corpus, store)
    return store


def docs_of(store: Path) -> pd.DataFrame:
    with actstore.open(store) as s:
        return s.sql("SELECT * FROM docs ORDER BY record").df()


def tokens_of(store: Path) -> pd.DataFrame:
    with actstore.open(store) as s:
        df = s.sql('SELECT doc_id, pos, token_id, start, "end", special FROM tokens').df()
    return df.sort_values(["doc_id", "pos"]).reset_index(drop=True)


def test_the_corpus_is_mostly_repeats() -> None:
    docs = expected_docs(templated_records())
    repeats = docs["repeat_of"].notna().sum()
    assert repeats >= 0.8 * N_RECORDS
    assert docs["empty"].sum() == len(EMPTY)


def test_every_record_is_a_docs_row_with_its_fields(single: Path) -> None:
    expected = expected_docs(templated_records())
    with actstore.open(single) as s:
        assert s.sql("SELECT count(*) FROM docs").fetchall() == [(N_RECORDS,)]
        assert s.run_info("r")["counts"]["docs"] == N_RECORDS
    got = docs_of(single)
    assert list(got.columns) == list(expected.columns)
    got["repeat_of"] = got["repeat_of"].astype("Int64")
    expected["repeat_of"] = expected["repeat_of"].astype("Int64")
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_every_record_joins_to_the_rows_of_its_text(
    single: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["gpt2"])
    expected = expected_docs(templated_records())
    with actstore.open(single) as s:
        per_record = s.sql(
            "SELECT d.record, d.doc_id, d.empty, count(t.row) AS n, min(t.row) AS first_row "
            "FROM docs d LEFT JOIN tokens t USING (doc_id) GROUP BY ALL ORDER BY d.record"
        ).df()
        counts = s.run_info("r")["counts"]
        n_rows = s.sql("SELECT count(*) FROM tokens").fetchall()[0][0]
    assert per_record["record"].tolist() == list(range(N_RECORDS))
    assert (per_record["n"] > 0).tolist() == (~per_record["empty"]).tolist()
    # the records of one text share its rows: each text is stored once
    by_text = per_record[~per_record["empty"]].groupby("doc_id")
    assert (by_text["first_row"].nunique() == 1).all()
    assert by_text["n"].first().sum() == n_rows
    texts = expected.loc[~expected["empty"], "text"].nunique()
    assert counts["texts"] == texts
    assert counts["docs"] == N_RECORDS
    assert counts["empty_docs"] == len(EMPTY)
    assert counts["duplicate_docs"] == N_RECORDS - len(EMPTY) - texts
    # each record's rows are its text's tokens, truncated to max_length (GPT-2 adds no
    # special tokens); the long and the unicode text are truncated, once each
    lengths = [len(tok(t)["input_ids"]) for t in expected["text"]]
    assert per_record["n"].tolist() == [min(n, MAX_LENGTH) for n in lengths]
    long = {t for t, n in zip(expected["text"], lengths, strict=True) if n > MAX_LENGTH}
    assert {LONG, UNICODE} <= long
    assert counts["truncated_docs"] == len(long)


def test_vectors_of_a_repeated_text_equal_a_plain_forward(
    single: Path, tiny_model_dirs: dict[str, Path]
) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = tiny_model_dirs["gpt2"]
    model = AutoModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    docs = docs_of(single)
    # the last record of the most repeated text, the unicode and the long text
    repeated = docs[~docs["empty"]].groupby("doc_id")["record"].agg(["size", "max"])
    records = [
        int(repeated.sort_values("size").iloc[-1]["max"]),
        int(docs.loc[docs["text"] == UNICODE, "record"].max()),
        int(docs.loc[docs["text"] == LONG, "record"].max()),
    ]
    with actstore.open(single) as s:
        L = s.run_info("r")["model"]["n_layers"]
        for record in records:
            rows = s.sql(
                "SELECT t.row FROM docs d JOIN tokens t USING (doc_id) "
                "WHERE d.record = ? ORDER BY t.pos",
                [record],
            ).first_column()
            text = docs.loc[record, "text"]
            ids = tok(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            with torch.no_grad():
                hs = model(**ids, output_hidden_states=True).hidden_states
            assert len(rows) == ids["input_ids"].shape[1]
            for i in range(L + 1):
                stored = s.vectors("r", f"hidden.{i}", rows, dtype=np.float32)
                np.testing.assert_allclose(stored, hs[i][0].numpy(), atol=1e-5, rtol=1e-5)


def test_sharded_run_has_the_same_docs_and_tokens(
    single: Path, tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path: Path
) -> None:
    store = tmp_path / "sharded.acts"
    for shard in (1, 0):
        extract_to(tiny_model_dirs["gpt2"], corpus, store, shard=shard, num_shards=2)
    got = docs_of(store)
    assert got["record"].tolist() == list(range(N_RECORDS))  # each record exactly once
    pd.testing.assert_frame_equal(got, docs_of(single))
    pd.testing.assert_frame_equal(tokens_of(store), tokens_of(single))
    with actstore.open(store) as s:
        parts = s.run_info("r")["parts"]
        assert sum(p["n_docs"] for p in parts) == N_RECORDS
        assert all(p["n_docs"] > 0 for p in parts)


def test_windows_store_a_repeated_long_text_once(
    tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    store = tmp_path / "w.acts"
    res = extract_to(tiny_model_dirs["gpt2"], corpus, store, long_docs="window", window_overlap=8)
    assert res.counts["windows"] > res.counts["texts"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["gpt2"])
    with actstore.open(store) as s:
        assert s.sql("SELECT count(*) FROM docs").fetchall() == [(N_RECORDS,)]
        pos = s.sql(
            "SELECT t.pos FROM docs d JOIN tokens t USING (doc_id) WHERE d.record = 120 "
            "ORDER BY t.pos"
        ).first_column()
    assert pos.tolist() == list(range(len(tok(LONG)["input_ids"])))


@pytest.mark.slow
def test_killed_then_resumed_run_has_the_same_docs(
    tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path: Path
) -> None:
    model = tiny_model_dirs["gpt2"]
    extra = ["--max-length", str(MAX_LENGTH), "--pool-batches", "1"]
    reference = tmp_path / "ref.acts"
    proc = cli(model, corpus, reference, extra)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    store = tmp_path / "s.acts"
    # crash point 17: after the first pool's checkpoint, with rows of the second appended
    killed(cli(model, corpus, store, extra, crash_at=17))
    progress = json.loads((store / "runs/r/parts/part-0000/progress.json").read_text())
    assert progress["pools"] >= 1  # killed after a checkpoint, before the end
    assert not progress["complete"]
    assert 0 < progress["consumed"] < N_RECORDS
    proc = cli(model, corpus, store, extra)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    got = docs_of(store)
    assert got["record"].tolist() == list(range(N_RECORDS))
    pd.testing.assert_frame_equal(got, docs_of(reference))
    pd.testing.assert_frame_equal(tokens_of(store), tokens_of(reference))
