"""Tests of the streaming corpus readers in :mod:`actstore.extract.corpus`."""

from __future__ import annotations

import csv
import gzip
import inspect
import json
import os
import subprocess
import sys
import tracemalloc
import typing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actstore.errors import ActstoreError, CorpusError, EmptyCorpusError
from actstore.extract.config import ExtractConfig
from actstore.extract.corpus import (
    DEMO_CORPUS,
    Corpus,
    CorpusFormat,
    Doc,
    doc_id_for,
    open_corpus,
)
from actstore.extract.corpus._base import FormatReader
from actstore.extract.corpus._core import READERS, _detect, reader_for

TEXTS = ["The dog barks.", "", "Aspirin treats a headache, they say.", "naïve café — 東京 ✓"]
TOPICS = ["animals", "none", "medicine", "unicode"]
SCORES = [1, 2, 3, 4]
# Characters that end a line for str.splitlines(); a txt doc cannot hold "\n" or "\r".
LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _write_txt(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def _write_jsonl(path: Path, records: list[dict[str, Any]], *, compress: bool = False) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _records() -> list[dict[str, Any]]:
    return [
        {"text": t, "topic": c, "score": s} for t, c, s in zip(TEXTS, TOPICS, SCORES, strict=True)
    ]


def _table() -> pa.Table:
    return pa.table({"text": TEXTS, "topic": TOPICS, "score": SCORES})


def _check_docs(docs: list[Doc], *, extras: bool = True, str_scores: bool = False) -> None:
    assert [d.text for d in docs] == TEXTS
    assert [d.index for d in docs] == list(range(len(TEXTS)))
    assert [d.doc_id for d in docs] == [doc_id_for(t) for t in TEXTS]
    if extras:
        scores: list[Any] = [str(s) for s in SCORES] if str_scores else SCORES
        expected = [{"topic": c, "score": s} for c, s in zip(TOPICS, scores, strict=True)]
        assert [d.extra for d in docs] == expected
    else:
        assert all(d.extra == {} for d in docs)


# -- doc ids ---------------------------------------------------------------------------


def test_doc_id_for_is_stable_and_nonnegative() -> None:
    # Pinned: ids are stored on disk, so they must never change between releases.
    assert doc_id_for("") == doc_id_for("")
    assert doc_id_for("The dog barks.") == 0x7FFF_FFFF_FFFF_FFFF & int.from_bytes(
        __import__("hashlib").blake2b(b"The dog barks.", digest_size=8).digest(), "little"
    )
    assert doc_id_for("a") != doc_id_for("b")


@settings(max_examples=50)
@given(st.text())
def test_doc_id_for_range(text: str) -> None:
    assert 0 <= doc_id_for(text) < 2**63


# -- round trips -----------------------------------------------------------------------


def test_txt_round_trip(tmp_path: Path) -> None:
    corpus = open_corpus(_write_txt(tmp_path / "c.txt", TEXTS))
    assert (corpus.format, corpus.text_field) == ("txt", "text")
    _check_docs(list(corpus), extras=False)
    assert corpus.count() == len(TEXTS)
    assert corpus.extra_columns() == []


def test_txt_keeps_whitespace_strips_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"  padded  \r\nlast line without newline")
    corpus = open_corpus(path)
    assert [d.text for d in corpus] == ["  padded  ", "last line without newline"]
    assert corpus.count() == 2


def test_jsonl_round_trip(tmp_path: Path) -> None:
    corpus = open_corpus(_write_jsonl(tmp_path / "c.jsonl", _records()))
    assert (corpus.format, corpus.text_field) == ("jsonl", "text")
    _check_docs(list(corpus))
    assert corpus.count() == len(TEXTS)
    assert corpus.extra_columns() == ["topic", "score"]


def test_jsonl_custom_field_and_nested_extra(tmp_path: Path) -> None:
    records = [{"body": "x", "meta": {"b": 1, "a": [1, 2]}, "flag": None, "f": 0.5}]
    corpus = open_corpus(_write_jsonl(tmp_path / "c.ndjson", records), text_field="body")
    (doc,) = list(corpus)
    assert doc.text == "x"
    assert doc.extra == {"meta": '{"a": [1, 2], "b": 1}', "flag": None, "f": 0.5}
    assert corpus.extra_columns() == ["meta", "flag", "f"]


def test_jsonl_blank_line_is_an_empty_record(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    corpus = open_corpus(path)
    docs = list(corpus)
    assert [(d.index, d.text) for d in docs] == [(0, "a"), (1, ""), (2, "b")]
    assert corpus.count() == 3


def test_jsonl_null_text_is_empty(tmp_path: Path) -> None:
    corpus = open_corpus(_write_jsonl(tmp_path / "c.jsonl", [{"text": None}]))
    assert [d.text for d in corpus] == [""]


def test_csv_round_trip(tmp_path: Path) -> None:
    rows = [[t, c, s] for t, c, s in zip(TEXTS, TOPICS, SCORES, strict=True)]
    corpus = open_corpus(_write_csv(tmp_path / "c.csv", ["text", "topic", "score"], rows))
    assert (corpus.format, corpus.text_field) == ("csv", "text")
    _check_docs(list(corpus), str_scores=True)
    assert corpus.count() == len(TEXTS)
    assert corpus.extra_columns() == ["topic", "score"]


def test_csv_quoted_newlines_and_long_field(tmp_path: Path) -> None:
    long = "word " * 40_000  # above the csv module's default 128 KiB field limit
    texts = ["line one\nline two", 'a "quoted", field', long]
    path = _write_csv(tmp_path / "c.csv", ["id", "body"], [[i + 1, t] for i, t in enumerate(texts)])
    corpus = open_corpus(path, text_field="body")
    docs = list(corpus)
    assert [d.text for d in docs] == texts
    assert [d.extra for d in docs] == [{"id": "1"}, {"id": "2"}, {"id": "3"}]
    assert corpus.count() == 3


def test_csv_utf8_bom_header(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbftext,topic\nhello,x\n")
    assert [(d.text, d.extra) for d in open_corpus(path)] == [("hello", {"topic": "x"})]


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(_table(), path, row_group_size=2)
    corpus = open_corpus(path)
    assert (corpus.format, corpus.text_field) == ("parquet", "text")
    _check_docs(list(corpus))
    assert corpus.count() == len(TEXTS)
    assert corpus.extra_columns() == ["topic", "score"]


def test_parquet_nested_and_null_values(tmp_path: Path) -> None:
    path = tmp_path / "c.pq"
    pq.write_table(pa.table({"text": ["a", None], "tags": [["x", "y"], None]}), path)
    docs = list(open_corpus(path))
    assert [d.text for d in docs] == ["a", ""]
    assert [d.extra for d in docs] == [{"tags": '["x", "y"]'}, {"tags": None}]


def test_parquet_folder(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    table = _table()
    pq.write_table(table.slice(0, 3), folder / "part-0.parquet")
    pq.write_table(table.slice(3), folder / "part-1.parquet")
    corpus = open_corpus(folder)
    assert corpus.format == "parquet"
    _check_docs(list(corpus))
    assert corpus.count() == len(TEXTS)


def test_hf_round_trip(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    ds = datasets.Dataset.from_dict({"text": TEXTS, "topic": TOPICS, "score": SCORES})
    ds.save_to_disk(str(folder))
    corpus = open_corpus(folder)
    assert (corpus.format, corpus.text_field) == ("hf", "text")
    _check_docs(list(corpus))
    assert corpus.count() == len(TEXTS)
    assert corpus.extra_columns() == ["topic", "score"]


@pytest.mark.parametrize("suffix", [".txt.gz", ".jsonl.gz", ".csv.gz"])
def test_gzip(tmp_path: Path, suffix: str) -> None:
    plain = tmp_path / ("plain" + suffix.removesuffix(".gz"))
    if suffix.startswith(".txt"):
        _write_txt(plain, TEXTS)
    elif suffix.startswith(".jsonl"):
        _write_jsonl(plain, _records())
    else:
        _write_csv(plain, ["text"], [[t] for t in TEXTS])
    packed = tmp_path / ("packed" + suffix)
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    corpus = open_corpus(packed)
    assert corpus.format == suffix.split(".")[1]
    assert [d.text for d in corpus] == TEXTS
    assert corpus.count() == len(TEXTS)


def test_same_text_same_id_across_formats(tmp_path: Path) -> None:
    pq.write_table(_table(), tmp_path / "c.parquet")
    rows = [[t] for t in TEXTS]
    paths = [
        _write_txt(tmp_path / "c.txt", TEXTS),
        _write_jsonl(tmp_path / "c.jsonl", _records()),
        _write_csv(tmp_path / "c.csv", ["text"], rows),
        tmp_path / "c.parquet",
    ]
    ids = [[d.doc_id for d in open_corpus(p)] for p in paths]
    assert all(i == ids[0] for i in ids)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters=LINE_BREAKS)),
        min_size=1,
        max_size=20,
    )
)
def test_round_trip_property(tmp_path: Path, texts: list[str]) -> None:
    records = [{"text": t, "i": i} for i, t in enumerate(texts)]
    jsonl = _write_jsonl(tmp_path / "p.jsonl", records)
    pq.write_table(pa.table({"text": texts, "i": list(range(len(texts)))}), tmp_path / "p.parquet")
    csv_path = _write_csv(tmp_path / "p.csv", ["text", "i"], [[t, i] for i, t in enumerate(texts)])
    txt = _write_txt(tmp_path / "p.txt", texts)
    for path in (jsonl, tmp_path / "p.parquet", csv_path, txt):
        docs = list(open_corpus(path))
        assert [d.text for d in docs] == texts
        assert [d.index for d in docs] == list(range(len(texts)))


# -- options ---------------------------------------------------------------------------


def test_explicit_format_overrides_suffix(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "data.log", _records())
    corpus = open_corpus(path, format="jsonl")
    assert corpus.format == "jsonl"
    assert [d.text for d in corpus] == TEXTS


def test_fingerprint(tmp_path: Path) -> None:
    path = _write_txt(tmp_path / "c.txt", TEXTS)
    fp = open_corpus(path).fingerprint()
    assert fp == {
        "path": str(path.resolve()),
        "format": "txt",
        "text_field": "text",
        "size": path.stat().st_size,
        "mtime_ns": path.stat().st_mtime_ns,
    }
    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(_table(), folder / "a.parquet")
    pq.write_table(_table(), folder / "b.parquet")
    fp = open_corpus(folder).fingerprint()
    assert fp["size"] == sum(p.stat().st_size for p in folder.iterdir())


def test_encoding_errors_replace(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"good\nbad \xff byte\n")
    docs = list(open_corpus(path, encoding_errors="replace"))
    assert [d.text for d in docs] == ["good", "bad \ufffd byte"]


def test_encoding_errors_replace_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    assert [d.text for d in open_corpus(path, encoding_errors="replace")] == ["caf\ufffd"]


# -- streaming -------------------------------------------------------------------------


def test_streaming_does_not_load_the_corpus(tmp_path: Path) -> None:
    n = 200_000
    path = tmp_path / "big.txt"
    path.write_text(
        "".join(f"document number {i} with a few words of padding in it\n" for i in range(n)),
        encoding="utf-8",
    )
    corpus = open_corpus(path)
    assert corpus.count() == n
    # Loading the corpus would happen on the first next(); tracing the first docs catches it.
    tracemalloc.start()
    try:
        assert inspect.isgenerator(iter(corpus))
        it = iter(corpus)
        head = [next(it).index for _ in range(20_000)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert head == list(range(20_000))
    assert peak < path.stat().st_size // 10
    last = head[-1]
    for doc in it:
        last = doc.index
    assert last == n - 1


# -- errors ----------------------------------------------------------------------------


def test_errors_are_actstore_and_value_errors() -> None:
    assert issubclass(CorpusError, ActstoreError)
    assert issubclass(CorpusError, ValueError)
    assert issubclass(EmptyCorpusError, CorpusError)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"nope\.txt does not exist"):
        open_corpus(tmp_path / "nope.txt")


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "c.xml"
    path.write_text("<a/>", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"cannot tell the corpus format.*supported: txt, jsonl"):
        open_corpus(path)


def test_unknown_format_name(tmp_path: Path) -> None:
    path = _write_txt(tmp_path / "c.txt", TEXTS)
    with pytest.raises(CorpusError, match=r"unknown corpus format 'xml'.*txt, jsonl"):
        open_corpus(path, format="xml")  # type: ignore[arg-type]


def test_undetectable_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"cannot tell the corpus format of this folder"):
        open_corpus(tmp_path)


def test_folder_for_file_format(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"is a folder, expected a txt file"):
        open_corpus(tmp_path, format="txt")


@pytest.mark.parametrize("name", ["c.txt", "c.jsonl", "c.csv"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(EmptyCorpusError, match=r"is empty; expected at least one document"):
        open_corpus(path)


def test_empty_gzip(tmp_path: Path) -> None:
    path = tmp_path / "c.txt.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(EmptyCorpusError, match=r"is empty"):
        open_corpus(path)


def test_csv_header_only(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "c.csv", ["text", "topic"], [])
    with pytest.raises(EmptyCorpusError, match=r"header row but no data rows"):
        open_corpus(path)


def test_empty_parquet(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    with pytest.raises(EmptyCorpusError, match=r"0 rows"):
        open_corpus(path)


def test_txt_text_field(tmp_path: Path) -> None:
    path = _write_txt(tmp_path / "c.txt", TEXTS)
    with pytest.raises(CorpusError, match=r"txt corpus has one doc per line.*'body'"):
        open_corpus(path, text_field="body")


def test_csv_unknown_column(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "c.csv", ["body", "topic"], [["a", "b"]])
    with pytest.raises(
        CorpusError, match=r"no column 'text' in the header \(has 'body', 'topic'\)"
    ):
        open_corpus(path)


def test_parquet_unknown_column(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["a"]}), path)
    with pytest.raises(CorpusError, match=r"no column 'text' \(has 'body'\); pass --text-field"):
        open_corpus(path)


def test_parquet_non_string_column(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(CorpusError, match=r"column 'text' has type int64, expected a string"):
        open_corpus(path)


def test_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match=r"not a readable parquet file"):
        open_corpus(path)


def test_jsonl_missing_field_reports_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": "a"}, {"text": "b"}, {"body": "c"}])
    corpus = open_corpus(path)  # lazy: found only by reading
    with pytest.raises(CorpusError, match=r"line 3 has no field 'text' \(has 'body'\)"):
        list(corpus)


def test_jsonl_non_string_text(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": "a"}, {"text": 5}])
    with pytest.raises(CorpusError, match=r"line 2 has 'text' of type int, expected a string"):
        list(open_corpus(path))


def test_hf_non_string_column(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": [1, 2]}).save_to_disk(str(folder))
    with pytest.raises(CorpusError, match=r"column 'text' is .*int64.*expected a string"):
        open_corpus(folder)


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 2 is not valid JSON"):
        list(open_corpus(path))


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('[\n{"text": "a"}\n]\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 1 .*JSON array file is not JSON lines"):
        list(open_corpus(path))


def test_jsonl_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('"just a string"\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 1 is a JSON str, expected a JSON object"):
        list(open_corpus(path))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("c.txt", b"fine\nstill fine\nbad \xff\n"),
        ("c.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "\xff"}\n'),
        ("c.csv", b"text\nfine\nbad \xff\n"),
    ],
)
def test_undecodable_bytes_strict(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    corpus = open_corpus(path)
    message = rf"{name}: line 3 is not valid UTF-8.*--encoding-errors replace"
    with pytest.raises(CorpusError, match=message):
        list(corpus)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "c.txt.gz"
    path.write_bytes(gzip.compress(b"".join(b"line %d\n" % i for i in range(10_000)))[:-200])
    corpus = open_corpus(path)
    with pytest.raises(
        CorpusError, match=r"cannot read past line \d+ .*truncated or not valid gzip"
    ):
        list(corpus)


def test_csv_ragged_row(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("text,topic\na,b\nc,d,e\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 3 has 3 fields, the header has 2"):
        list(open_corpus(path))


def test_hf_dataset_dict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a"]})
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(folder))
    with pytest.raises(CorpusError, match=r"DatasetDict with splits train, test.*one split folder"):
        open_corpus(folder)
    assert [d.text for d in open_corpus(folder / "train")] == ["a"]


def test_hf_unknown_column(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": ["a"], "n": [1]}).save_to_disk(str(folder))
    with pytest.raises(CorpusError, match=r"no column 'text' \(has 'body', 'n'\)"):
        open_corpus(folder)
    assert [d.text for d in open_corpus(folder, text_field="body")] == ["a"]


def test_hf_empty(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": []}).save_to_disk(str(folder))
    with pytest.raises(EmptyCorpusError, match=r"0 rows"):
        open_corpus(folder)


def test_hf_format_on_a_file(tmp_path: Path) -> None:
    path = _write_txt(tmp_path / "c.txt", TEXTS)
    with pytest.raises(CorpusError, match=r"is a file, expected a folder written by datasets"):
        open_corpus(path, format="hf")


# -- demo corpus -----------------------------------------------------------------------


def test_demo_corpus() -> None:
    corpus = open_corpus(DEMO_CORPUS)
    assert isinstance(corpus, Corpus)
    docs = list(corpus)
    texts = [d.text for d in docs]
    assert len(docs) >= 300
    assert corpus.count() == len(docs)
    assert all(t.strip() == t and t for t in texts)
    assert len(set(texts)) == len(texts)
    assert corpus.extra_columns() == ["topic"]
    assert {d.extra["topic"] for d in docs} >= {"animals", "medicine", "weather"}
    assert sum(len(t.split()) >= 60 for t in texts) >= 2
    for animal in ("dog", "cat", "cow"):
        assert sum(animal in t.lower() for t in texts) >= 8


def test_module_does_not_import_torch(tmp_path: Path) -> None:
    # The reader is used before the model is loaded; it must stay light, also while reading.
    path = _write_jsonl(tmp_path / "c.jsonl", _records())
    code = (
        "import sys, actstore.extract.corpus as c; "
        "heavy = lambda: sorted({'torch', 'transformers'} & set(sys.modules)); "
        "assert not heavy(), ('import', heavy()); "
        "corpus = c.open_corpus(sys.argv[1]); "
        "docs = list(corpus); corpus.count(); corpus.extra_columns(); "
        f"assert len(docs) == {len(TEXTS)}, docs; "
        "assert not heavy(), ('read', heavy())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr


# -- reader registry -------------------------------------------------------------------


def _documented_formats() -> set[str]:
    # The CLI's --data-format choices are built from this Literal.
    hint = typing.get_type_hints(ExtractConfig)["data_format"]
    return set(typing.get_args(hint)) - {"auto"}


def test_every_documented_format_has_a_reader() -> None:
    documented = _documented_formats()
    assert documented == {"txt", "jsonl", "csv", "parquet", "hf"}
    assert set(typing.get_args(CorpusFormat)) - {"auto"} == documented
    assert set(READERS) == documented
    for name in sorted(documented):
        reader = reader_for(name)
        assert isinstance(reader, FormatReader)
        assert reader.name == name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("c.txt", "txt"),
        ("c.txt.gz", "txt"),
        ("c.jsonl", "jsonl"),
        ("c.json", "jsonl"),
        ("c.NDJSON", "jsonl"),
        ("c.csv", "csv"),
        ("c.parquet", "parquet"),
        ("c.pq", "parquet"),
        ("shards/", "parquet"),
        ("dataset/", "hf"),
        ("both/", "hf"),
    ],
)
def test_detection_resolves_to_a_reader(tmp_path: Path, name: str, expected: str) -> None:
    path = tmp_path / name
    if name.endswith("/"):
        path.mkdir()
        if name in ("shards/", "both/"):
            (path / "part-0.parquet").write_bytes(b"")
        if name in ("dataset/", "both/"):
            (path / "dataset_info.json").write_text("{}", encoding="utf-8")
    else:
        path.write_bytes(b"")
    reader = _detect(path)
    assert reader is reader_for(expected)
    assert reader.name == expected


@pytest.mark.parametrize("name", ["xml", "auto", "datasets", ""])
def test_unknown_format_has_no_reader(tmp_path: Path, name: str) -> None:
    message = rf"unknown corpus format {name!r}; expected auto or one of txt, jsonl"
    with pytest.raises(CorpusError, match=message):
        reader_for(name)
    path = _write_txt(tmp_path / "c.txt", TEXTS)
    with pytest.raises(CorpusError, match=message):
        iter(Corpus(path, name, "text"))  # type: ignore[arg-type]
