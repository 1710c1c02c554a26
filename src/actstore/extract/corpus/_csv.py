"""Reader of a CSV corpus: a header row, then one document per row."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from actstore.errors import CorpusError, EmptyCorpusError
from actstore.extract.corpus._base import CorpusFormat, Doc, Source, doc_id_for
from actstore.extract.corpus._lines import check_file, decoded_lines

__all__ = ["CsvReader"]


def _allow_long_csv_fields() -> None:
    # Long documents exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def _header(source: Source) -> list[str]:
    lines = decoded_lines(source)
    try:
        return next(csv.reader(lines), [])
    except csv.Error as exc:
        raise CorpusError(f"{source.path}: the header row is not valid CSV ({exc})") from None
    finally:
        lines.close()


def _has_row(source: Source) -> bool:
    lines = decoded_lines(source)
    try:
        reader = csv.reader(lines)
        next(reader, None)
        return any(row for row in reader)
    except csv.Error:
        return True  # a malformed row is reported, with its line, during iteration
    finally:
        lines.close()


class CsvReader:
    """Comma-separated, double-quoted fields under a header row; blank lines are skipped."""

    name: CorpusFormat = "csv"
    suffixes: tuple[str, ...] = (".csv",)

    def detects(self, folder: Path) -> bool:
        """Return False: a csv corpus is a file."""
        return False

    def check(self, source: Source) -> Source:
        """Check that the header has the text field and at least one data row follows."""
        check_file(source, self.name)
        header = _header(source)
        if source.text_field not in header:
            raise CorpusError(
                f"{source.path}: no column {source.text_field!r} in the header "
                f"(has {', '.join(map(repr, header))}); pass --text-field with one of them"
            )
        if not _has_row(source):
            raise EmptyCorpusError(
                f"{source.path} has a header row but no data rows; expected at least one document"
            )
        return source

    def iter_docs(self, source: Source) -> Iterator[Doc]:
        """Yield one :class:`Doc` per non-blank row; the other columns are strings."""
        _allow_long_csv_fields()
        reader = csv.reader(decoded_lines(source))
        try:
            header = next(reader, None)
            if header is None:
                return
            col = header.index(source.text_field)
            index = 0
            for row in reader:
                if not row:
                    continue  # the csv module yields [] for a blank line
                if len(row) != len(header):
                    raise CorpusError(
                        f"{source.path}: line {reader.line_num} has {len(row)} fields, the "
                        f"header has {len(header)}; quote fields that contain commas or newlines"
                    )
                text = row[col]
                extra = {k: v for i, (k, v) in enumerate(zip(header, row, strict=True)) if i != col}
                yield Doc(index, doc_id_for(text), text, extra)
                index += 1
        except csv.Error as exc:
            raise CorpusError(
                f"{source.path}: line {reader.line_num} is not valid CSV ({exc}); "
                "expected a header row and comma-separated, double-quoted fields"
            ) from None

    def count(self, source: Source) -> int | None:
        """Return the number of non-blank rows by parsing them (fields may span lines).

        None if a row is not valid CSV: iteration reports it with its line.
        """
        _allow_long_csv_fields()
        lines = decoded_lines(source, errors="replace")
        try:
            next(lines, None)  # header
            return sum(1 for row in csv.reader(lines) if row)
        except csv.Error:
            return None
        finally:
            lines.close()

    def columns(self, source: Source) -> list[str]:
        """Return the header row."""
        return _header(source)
