"""Reader of a .txt corpus: one document per line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from actstore.errors import CorpusError
from actstore.extract.corpus._base import CorpusFormat, Doc, Source, doc_id_for
from actstore.extract.corpus._lines import check_file, count_lines, numbered_lines

__all__ = ["TxtReader"]


class TxtReader:
    """One doc per line, the line ending removed and all other whitespace kept."""

    name: CorpusFormat = "txt"
    suffixes: tuple[str, ...] = (".txt",)

    def detects(self, folder: Path) -> bool:
        """Return False: a txt corpus is a file."""
        return False

    def check(self, source: Source) -> Source:
        """Check that the text field is ``"text"`` and the file is not empty."""
        if source.text_field != "text":
            raise CorpusError(
                f"{source.path}: a txt corpus has one doc per line and no fields, got text_field "
                f"{source.text_field!r}; leave --text-field unset or use jsonl/csv/parquet"
            )
        check_file(source, self.name)
        return source

    def iter_docs(self, source: Source) -> Iterator[Doc]:
        """Yield one :class:`Doc` per line, without extra columns."""
        for lineno, line in numbered_lines(source):
            text = line.removesuffix("\n").removesuffix("\r")
            yield Doc(lineno - 1, doc_id_for(text), text, {})

    def count(self, source: Source) -> int:
        """Return the number of lines."""
        return count_lines(source.path)

    def columns(self, source: Source) -> list[str]:
        """Return ``[source.text_field]``: a txt corpus has no other column."""
        return [source.text_field]
