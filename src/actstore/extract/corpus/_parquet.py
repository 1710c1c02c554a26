"""Reader of a parquet corpus: one file, or a folder of ``*.parquet`` files read in name order."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from actstore.errors import CorpusError, EmptyCorpusError
from actstore.extract.corpus._base import BATCH_ROWS, CorpusFormat, Doc, Source, iter_rows

__all__ = ["ParquetReader"]


def _check_files(files: tuple[Path, ...], text_field: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = 0
    for file in files:
        try:
            with pq.ParquetFile(file) as pf:
                schema = pf.schema_arrow
                total += int(pf.metadata.num_rows)
        except (OSError, pa.ArrowException) as exc:
            raise CorpusError(f"{file}: not a readable parquet file ({exc})") from None
        if text_field not in schema.names:
            raise CorpusError(
                f"{file}: no column {text_field!r} (has {', '.join(map(repr, schema.names))}); "
                "pass --text-field with one of them"
            )
        kind = schema.field(text_field).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise CorpusError(
                f"{file}: column {text_field!r} has type {kind}, expected a string column; "
                "pick another --text-field"
            )
    if total == 0:
        raise EmptyCorpusError(
            f"{files[0].parent if len(files) > 1 else files[0]}: the parquet data has 0 rows; "
            "expected at least one document"
        )


class ParquetReader:
    """Rows of parquet files, streamed in Arrow batches; a folder's files in name order."""

    name: CorpusFormat = "parquet"
    suffixes: tuple[str, ...] = (".parquet", ".pq")

    def detects(self, folder: Path) -> bool:
        """Return whether ``folder`` holds ``*.parquet`` files."""
        return any(folder.glob("*.parquet"))

    def check(self, source: Source) -> Source:
        """List a folder's files; check each has a string text column, and some rows in all."""
        path = source.path
        files = tuple(sorted(path.glob("*.parquet"))) if path.is_dir() else (path,)
        if not files:
            raise CorpusError(f"{path}: the folder has no *.parquet files; expected at least one")
        _check_files(files, source.text_field)
        return dataclasses.replace(source, files=files)

    def iter_docs(self, source: Source) -> Iterator[Doc]:
        """Yield one :class:`Doc` per row, numbered across the files."""
        import pyarrow.parquet as pq

        index = 0
        for file in source.files:
            with pq.ParquetFile(file) as pf:
                for doc in iter_rows(source, pf.iter_batches(batch_size=BATCH_ROWS), index, "row"):
                    index = doc.index + 1
                    yield doc

    def count(self, source: Source) -> int:
        """Return the number of rows from the files' metadata."""
        import pyarrow.parquet as pq

        total = 0
        for file in source.files:
            with pq.ParquetFile(file) as pf:
                total += int(pf.metadata.num_rows)
        return total

    def columns(self, source: Source) -> list[str]:
        """Return the first file's column names."""
        import pyarrow.parquet as pq

        with pq.ParquetFile(source.files[0]) as pf:
            return list(pf.schema_arrow.names)
