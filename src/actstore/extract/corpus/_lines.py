"""Line-by-line reading of the text formats (txt, jsonl, csv), plain or gzip-compressed."""

from __future__ import annotations

import gzip
import io
from collections.abc import Generator, Iterator
from pathlib import Path

from actstore.errors import CorpusError, EmptyCorpusError
from actstore.extract.corpus._base import EncodingErrors, Source

__all__ = ["check_file", "count_lines", "decoded_lines", "numbered_lines", "open_bytes"]

_GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def open_bytes(path: Path) -> io.BufferedIOBase:
    """Open ``path`` for reading bytes, decompressing it if it is gzip data."""
    if _is_gzip(path):
        return gzip.open(path, "rb")
    return path.open("rb")


def _read_lines(fh: io.BufferedIOBase, path: Path) -> Iterator[bytes]:
    """Yield the raw lines of ``fh``, turning a corrupt gzip stream into a CorpusError."""
    lineno = 0
    try:
        for raw in fh:
            lineno += 1
            yield raw
    except (EOFError, OSError) as exc:
        raise CorpusError(
            f"{path}: cannot read past line {lineno} ({exc}); the file is truncated or not "
            "valid gzip, re-create or decompress it"
        ) from None


def numbered_lines(
    source: Source, errors: EncodingErrors | None = None
) -> Generator[tuple[int, str], None, None]:
    """Yield ``(line number, decoded line)`` of ``source.path`` with the line ending kept.

    Parameters
    ----------
    source : Source
        The corpus; its ``encoding_errors`` apply unless ``errors`` is given.
    errors : {"strict", "replace"}, optional
        Overrides ``source.encoding_errors``.

    Raises
    ------
    CorpusError
        On bytes that are not UTF-8 (with "strict") or a truncated gzip stream.
    """
    errors = errors or source.encoding_errors
    with open_bytes(source.path) as fh:
        for lineno, raw in enumerate(_read_lines(fh, source.path), start=1):
            try:
                line = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as exc:
                raise CorpusError(
                    f"{source.path}: line {lineno} is not valid UTF-8 (byte {exc.start}); "
                    "fix the file or pass --encoding-errors replace"
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            yield lineno, line


def decoded_lines(
    source: Source, errors: EncodingErrors | None = None
) -> Generator[str, None, None]:
    """Yield the decoded lines of ``source.path``, as :func:`numbered_lines` without numbers."""
    return (line for _, line in numbered_lines(source, errors))


def count_lines(path: Path) -> int:
    """Return the number of lines of ``path``, a last line without a newline included."""
    n = 0
    last = b"\n"
    with open_bytes(path) as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def check_file(source: Source, fmt: str) -> None:
    """Check that ``source.path`` is a readable, non-empty file of format ``fmt``.

    Raises
    ------
    CorpusError
        If the path is a folder or its gzip data cannot be read.
    EmptyCorpusError
        If the file (decompressed) is empty.
    """
    path = source.path
    if not path.is_file():
        raise CorpusError(f"{path} is a folder, expected a {fmt} file; pass the file itself")
    with open_bytes(path) as fh:
        try:
            first = fh.read(1)
        except (OSError, EOFError) as exc:
            raise CorpusError(f"{path}: cannot read the gzip data ({exc})") from None
    if not first:
        raise EmptyCorpusError(f"{path} is empty; expected at least one document")
