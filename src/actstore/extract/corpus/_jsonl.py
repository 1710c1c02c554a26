"""Reader of a JSON lines corpus: one JSON object per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from actstore.errors import CorpusError
from actstore.extract.corpus._base import (
    CorpusFormat,
    Doc,
    Source,
    check_text,
    doc_id_for,
    jsonable,
)
from actstore.extract.corpus._lines import check_file, count_lines, numbered_lines

__all__ = ["JsonlReader"]


def _parse_json(source: Source, line: str, lineno: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        hint = ""
        if lineno == 1 and line.lstrip().startswith("["):
            hint = " (a JSON array file is not JSON lines; write one object per line)"
        raise CorpusError(
            f"{source.path}: line {lineno} is not valid JSON ({exc.msg}){hint}; "
            "expected one JSON object per line"
        ) from None
    if not isinstance(record, dict):
        raise CorpusError(
            f"{source.path}: line {lineno} is a JSON {type(record).__name__}, expected a "
            f"JSON object with a {source.text_field!r} field"
        )
    return record


class JsonlReader:
    """One JSON object per line (.jsonl, .json, .ndjson); a blank line is an empty doc."""

    name: CorpusFormat = "jsonl"
    suffixes: tuple[str, ...] = (".jsonl", ".json", ".ndjson")

    def detects(self, folder: Path) -> bool:
        """Return False: a jsonl corpus is a file."""
        return False

    def check(self, source: Source) -> Source:
        """Check that the file is not empty; records are checked as they are read."""
        check_file(source, self.name)
        return source

    def iter_docs(self, source: Source) -> Iterator[Doc]:
        """Yield one :class:`Doc` per line; the other keys become its ``extra``."""
        for lineno, line in numbered_lines(source):
            if not line.strip():
                # A blank line is an empty record, so that index == line number - 1.
                yield Doc(lineno - 1, doc_id_for(""), "", {})
                continue
            record = _parse_json(source, line, lineno)
            if source.text_field not in record:
                raise CorpusError(
                    f"{source.path}: line {lineno} has no field {source.text_field!r} "
                    f"(has {', '.join(map(repr, record)) or 'no fields'}); "
                    "pass --text-field with one of them"
                )
            text = check_text(source, record.pop(source.text_field), f"line {lineno}")
            extra = {k: jsonable(v) for k, v in record.items()}
            yield Doc(lineno - 1, doc_id_for(text), text, extra)

    def count(self, source: Source) -> int:
        """Return the number of lines, blank ones included."""
        return count_lines(source.path)

    def columns(self, source: Source) -> list[str]:
        """Return the keys of the first record."""
        with closing(numbered_lines(source)) as lines:
            for lineno, line in lines:
                if line.strip():
                    return list(_parse_json(source, line, lineno))
        return [source.text_field]
