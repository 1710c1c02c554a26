"""The corpus front: :func:`open_corpus` picks a format's reader, :class:`Corpus` streams it.

The readers, one per format, are registered in :data:`READERS`; this module holds what
does not depend on the format (detection, option checks, the resume fingerprint).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from actstore.errors import CorpusError
from actstore.extract.corpus._base import CorpusFormat, Doc, EncodingErrors, FormatReader, Source
from actstore.extract.corpus._csv import CsvReader
from actstore.extract.corpus._hf import HfReader
from actstore.extract.corpus._jsonl import JsonlReader
from actstore.extract.corpus._parquet import ParquetReader
from actstore.extract.corpus._txt import TxtReader

__all__ = ["DEMO_CORPUS", "READERS", "Corpus", "open_corpus", "reader_for"]

#: The bundled demo corpus: short English sentences (fields ``text`` and ``topic``).
DEMO_CORPUS: Path = Path(__file__).resolve().parents[2] / "data" / "demo_corpus.jsonl"

#: The reader of each format, by name. Folder detection asks them in this order, so a
#: saved dataset folder is read as "hf" even if it also holds ``*.parquet`` files.
_ORDER: tuple[FormatReader, ...] = (
    TxtReader(),
    JsonlReader(),
    CsvReader(),
    HfReader(),
    ParquetReader(),
)
READERS: dict[str, FormatReader] = {r.name: r for r in _ORDER}
_SUFFIXES: dict[str, FormatReader] = {s: r for r in READERS.values() for s in r.suffixes}
_SUPPORTED = (
    "txt, jsonl (.jsonl/.json/.ndjson), csv, parquet (.parquet/.pq or a folder of them), "
    "hf (a Dataset.save_to_disk folder); txt/jsonl/csv may be .gz"
)


def reader_for(format: str) -> FormatReader:
    """Return the reader registered for ``format``.

    Parameters
    ----------
    format : str
        A format name, e.g. ``"jsonl"``; not ``"auto"``.

    Returns
    -------
    FormatReader

    Raises
    ------
    CorpusError
        If no reader is registered under ``format``.

    Examples
    --------
    >>> reader_for("csv").suffixes
    ('.csv',)
    """
    reader = READERS.get(format)
    if reader is None:
        raise CorpusError(f"unknown corpus format {format!r}; expected auto or one of {_SUPPORTED}")
    return reader


class Corpus:
    """A resolved corpus source; iterate it for :class:`Doc` records.

    Build one with :func:`open_corpus`, which checks what is cheap to check.

    Parameters
    ----------
    path : Path
        The file or folder.
    format : {"txt", "jsonl", "csv", "parquet", "hf"}
        The resolved format.
    text_field : str
        The column or key that holds the text.
    encoding_errors : {"strict", "replace"}
        What to do with bytes that are not UTF-8 (txt, jsonl, csv).
    files : list of Path, optional
        The parquet files of a parquet folder, in order.

    Examples
    --------
    >>> from actstore.extract.corpus import DEMO_CORPUS, doc_id_for, open_corpus
    >>> corpus = open_corpus(DEMO_CORPUS)
    >>> corpus.format, corpus.text_field, corpus.extra_columns()
    ('jsonl', 'text', ['topic'])
    >>> doc = next(iter(corpus))
    >>> doc.index, doc.doc_id == doc_id_for(doc.text), sorted(doc.extra)
    (0, True, ['topic'])
    """

    path: Path
    format: CorpusFormat
    text_field: str

    def __init__(
        self,
        path: Path,
        format: CorpusFormat,
        text_field: str,
        *,
        encoding_errors: EncodingErrors = "strict",
        files: list[Path] | None = None,
    ) -> None:
        self.path = path
        self.format = format
        self.text_field = text_field
        self.encoding_errors: EncodingErrors = encoding_errors
        self._files = files if files is not None else [path]
        self._extra_columns: list[str] | None = None

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, format={self.format!r}, text_field={self.text_field!r})"

    def _source(self) -> Source:
        return Source(self.path, self.text_field, self.encoding_errors, tuple(self._files))

    def __iter__(self) -> Iterator[Doc]:
        """Stream the records as :class:`Doc` in source order.

        Raises
        ------
        CorpusError
            On undecodable bytes (with ``encoding_errors="strict"``), an invalid JSON
            line, a record without the text field, or a text that is not a string.
        """
        return reader_for(self.format).iter_docs(self._source())

    def count(self) -> int | None:
        """Return the number of records (empty ones included), or None if unknown.

        Cheap: a newline count for txt/jsonl, metadata for parquet/hf; csv is counted
        by parsing rows (quoted fields may span lines).
        """
        return reader_for(self.format).count(self._source())

    def fingerprint(self) -> dict[str, object]:
        """Return what identifies this corpus for resume checks.

        Returns
        -------
        dict
            ``path`` (absolute), ``format``, ``text_field``, ``size`` (bytes of all
            files) and ``mtime_ns`` (the newest file's).
        """
        if self.path.is_file():
            files = [self.path]
        else:
            files = sorted(p for p in self.path.rglob("*") if p.is_file())
        stats = [p.stat() for p in files]
        return {
            "path": str(self.path.resolve()),
            "format": self.format,
            "text_field": self.text_field,
            "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        }

    def extra_columns(self) -> list[str]:
        """Return the names of the non-text columns, in source order.

        For jsonl they are the keys of the first record.
        """
        if self._extra_columns is None:
            columns = reader_for(self.format).columns(self._source())
            self._extra_columns = [c for c in columns if c != self.text_field]
        return list(self._extra_columns)


def _detect(path: Path) -> FormatReader:
    if path.is_dir():
        for reader in READERS.values():
            if reader.detects(path):
                return reader
        raise CorpusError(
            f"{path}: cannot tell the corpus format of this folder (no dataset_info.json, "
            f"state.json or *.parquet); supported: {_SUPPORTED}"
        )
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    found = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise CorpusError(
            f"{path}: cannot tell the corpus format from the name; supported: {_SUPPORTED}; "
            "rename the file or pass --format"
        )
    return found


def open_corpus(
    path: str | Path,
    *,
    format: CorpusFormat = "auto",
    text_field: str | None = None,
    encoding_errors: EncodingErrors = "strict",
) -> Corpus:
    """Open a corpus for streaming, checking what is cheap to check now.

    Parameters
    ----------
    path : str or Path
        A .txt (one doc per line), .jsonl/.json/.ndjson, .csv (with a header row),
        .parquet/.pq file, a folder of parquet files, or a folder written by
        ``datasets.Dataset.save_to_disk``. txt/jsonl/csv may be gzip-compressed.
    format : {"auto", "txt", "jsonl", "csv", "parquet", "hf"}, default "auto"
        The format; "auto" detects it from the suffix (a trailing .gz is ignored) or
        the folder's contents.
    text_field : str, optional
        The key or column holding the text; default ``"text"``. txt has only ``"text"``.
    encoding_errors : {"strict", "replace"}, default "strict"
        "strict" raises on bytes that are not UTF-8; "replace" puts U+FFFD in their place.

    Returns
    -------
    Corpus
        With the resolved ``format`` and ``text_field``.

    Raises
    ------
    CorpusError
        If the path is missing, the format is unknown or cannot be detected, or the text
        field is not a column of a csv header, parquet schema or hf dataset.
    EmptyCorpusError
        If the file is empty, or the parquet data or hf dataset has no rows.

    Examples
    --------
    >>> corpus = open_corpus(DEMO_CORPUS)
    >>> corpus.count() >= 300
    True
    >>> open_corpus("missing.txt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    actstore.errors.CorpusError: corpus path missing.txt does not exist; ...
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(
            f"corpus path {path} does not exist; expected a file or folder ({_SUPPORTED})"
        )
    chosen = None if format == "auto" else reader_for(format)
    if encoding_errors not in ("strict", "replace"):
        raise CorpusError(f"encoding_errors must be 'strict' or 'replace', got {encoding_errors!r}")
    reader = _detect(path) if chosen is None else chosen
    field = "text" if text_field is None else text_field
    source = reader.check(Source(path, field, encoding_errors, (path,)))
    return Corpus(
        path, reader.name, field, encoding_errors=encoding_errors, files=list(source.files)
    )
