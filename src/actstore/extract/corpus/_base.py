"""What every corpus reader shares: the :class:`Doc` record, its id, and the reader protocol."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from actstore.errors import CorpusError

__all__ = [
    "BATCH_ROWS",
    "CorpusFormat",
    "Doc",
    "EncodingErrors",
    "FormatReader",
    "Source",
    "check_text",
    "doc_id_for",
    "iter_rows",
    "jsonable",
]

CorpusFormat = Literal["auto", "txt", "jsonl", "csv", "parquet", "hf"]
EncodingErrors = Literal["strict", "replace"]

#: Rows per Arrow batch read from parquet or a saved dataset.
BATCH_ROWS = 1024
_ID_MASK = 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Doc:
    """One record of a corpus."""

    index: int
    """0-based record index in the source (empty records are counted too)."""
    doc_id: int
    """Stable id of the text, :func:`doc_id_for` of :attr:`text`."""
    text: str
    """The document text; may be ``""`` (callers skip and count empty docs)."""
    extra: dict[str, Any]
    """The record's other columns: JSON scalars as given, nested values as JSON strings."""


def doc_id_for(text: str) -> int:
    """Return the stable 63-bit id of a document text.

    Parameters
    ----------
    text : str
        The document text.

    Returns
    -------
    int
        A non-negative int64 derived from the BLAKE2b hash of the UTF-8 text; equal
        texts get equal ids in every format and process.

    Examples
    --------
    >>> doc_id_for("The dog barks.") == doc_id_for("The dog barks.")
    True
    >>> 0 <= doc_id_for("") < 2**63
    True
    """
    digest = blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _ID_MASK


@dataclass(frozen=True)
class Source:
    """What a reader reads: a resolved corpus path and how to read it."""

    path: Path
    """The file or folder given to :func:`open_corpus`."""
    text_field: str
    """The column or key that holds the text."""
    encoding_errors: EncodingErrors
    """What to do with bytes that are not UTF-8 (txt, jsonl, csv)."""
    files: tuple[Path, ...]
    """The data files in order: ``(path,)``, or the files of a parquet folder."""


@runtime_checkable
class FormatReader(Protocol):
    """How one corpus format is detected, checked and streamed; one instance per format.

    Readers are stateless: every method takes the :class:`Source` it works on.
    """

    name: CorpusFormat
    """The format's name, as passed to ``open_corpus(format=...)``."""
    suffixes: tuple[str, ...]
    """Lower-case file suffixes (a trailing ``.gz`` removed) that auto-detection maps here."""

    def detects(self, folder: Path) -> bool:
        """Return whether auto-detection should read the folder ``folder`` as this format."""
        ...

    def check(self, source: Source) -> Source:
        """Check at open time what is cheap to check; return the source with its files.

        Raises
        ------
        CorpusError
            If the path is of the wrong kind or the text field is not in the data.
        EmptyCorpusError
            If the corpus holds no record.
        """
        ...

    def iter_docs(self, source: Source) -> Iterator[Doc]:
        """Stream the records as :class:`Doc` in source order (a generator)."""
        ...

    def count(self, source: Source) -> int | None:
        """Return the number of records (empty ones included), or None if unknown."""
        ...

    def columns(self, source: Source) -> list[str]:
        """Return the column names, the text field included, in source order."""
        ...


def jsonable(value: Any) -> Any:
    """Return ``value`` as a JSON scalar: nested values become JSON strings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return str(value)


def check_text(source: Source, value: Any, where: str) -> str:
    """Return the text field's ``value`` as a string (``None`` is ``""``).

    Raises
    ------
    CorpusError
        If ``value`` is neither a string nor None; ``where`` names the record.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(
            f"{source.path}: {where} has {source.text_field!r} of type "
            f"{type(value).__name__}, expected a string; "
            "fix the record or pick another --text-field"
        )
    return value


def iter_rows(source: Source, batches: Iterable[Any], start: int, what: str) -> Iterator[Doc]:
    """Yield one :class:`Doc` per row of Arrow record ``batches``, numbered from ``start``."""
    index = start
    for batch in batches:
        for row in batch.to_pylist():
            text = check_text(source, row.pop(source.text_field), f"{what} {index}")
            extra = {k: jsonable(v) for k, v in row.items()}
            yield Doc(index, doc_id_for(text), text, extra)
            index += 1
