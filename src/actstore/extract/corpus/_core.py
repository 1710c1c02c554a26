"""Streaming readers for the corpus an extraction runs over.

:func:`open_corpus` resolves a path (txt, jsonl, csv, parquet, a folder of parquet files
or a saved Hugging Face dataset; txt/jsonl/csv may be gzip-compressed) into a
:class:`Corpus` that yields one :class:`Doc` per record without loading the whole corpus.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import Any, Literal

from actstore.errors import CorpusError, EmptyCorpusError

__all__ = [
    "DEMO_CORPUS",
    "Corpus",
    "CorpusFormat",
    "Doc",
    "doc_id_for",
    "open_corpus",
]

CorpusFormat = Literal["auto", "txt", "jsonl", "csv", "parquet", "hf"]
EncodingErrors = Literal["strict", "replace"]

#: The bundled demo corpus: short English sentences (fields ``text`` and ``topic``).
DEMO_CORPUS: Path = Path(__file__).resolve().parents[2] / "data" / "demo_corpus.jsonl"

_FORMATS = ("txt", "jsonl", "csv", "parquet", "hf")
_SUFFIXES: dict[str, CorpusFormat] = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_SUPPORTED = (
    "txt, jsonl (.jsonl/.json/.ndjson), csv, parquet (.parquet/.pq or a folder of them), "
    "hf (a Dataset.save_to_disk folder); txt/jsonl/csv may be .gz"
)
_GZIP_MAGIC = b"\x1f\x8b"
_BATCH_ROWS = 1024
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


def _jsonable(value: Any) -> Any:
    """Return ``value`` as a JSON scalar: nested values become JSON strings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return str(value)


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open_bytes(path: Path) -> io.BufferedIOBase:
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


def _allow_long_csv_fields() -> None:
    # Long documents exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


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

    def __iter__(self) -> Iterator[Doc]:
        """Stream the records as :class:`Doc` in source order.

        Raises
        ------
        CorpusError
            On undecodable bytes (with ``encoding_errors="strict"``), an invalid JSON
            line, a record without the text field, or a text that is not a string.
        """
        if self.format == "txt":
            return self._iter_txt()
        if self.format == "jsonl":
            return self._iter_jsonl()
        if self.format == "csv":
            return self._iter_csv()
        if self.format == "parquet":
            return self._iter_parquet()
        return self._iter_hf()

    # -- metadata -------------------------------------------------------------------

    def count(self) -> int | None:
        """Return the number of records (empty ones included), or None if unknown.

        Cheap: a newline count for txt/jsonl, metadata for parquet/hf; csv is counted
        by parsing rows (quoted fields may span lines).
        """
        if self.format in ("txt", "jsonl"):
            n = 0
            last = b"\n"
            with _open_bytes(self.path) as fh:
                while chunk := fh.read(1 << 20):
                    n += chunk.count(b"\n")
                    last = chunk[-1:]
            return n + (last != b"\n")
        if self.format == "csv":
            _allow_long_csv_fields()
            lines = self._decoded_lines(errors="replace")
            try:
                next(lines, None)  # header
                return sum(1 for row in csv.reader(lines) if row)
            except csv.Error:
                return None  # iteration reports the bad line
            finally:
                lines.close()
        if self.format == "parquet":
            import pyarrow.parquet as pq

            total = 0
            for file in self._files:
                with pq.ParquetFile(file) as pf:
                    total += int(pf.metadata.num_rows)
            return total
        return int(self._load_hf().num_rows)

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
            self._extra_columns = [c for c in self._columns() if c != self.text_field]
        return list(self._extra_columns)

    def _columns(self) -> list[str]:
        if self.format == "txt":
            return [self.text_field]
        if self.format == "jsonl":
            with closing(self._numbered_lines()) as lines:
                for lineno, line in lines:
                    if line.strip():
                        return list(self._parse_json(line, lineno))
            return [self.text_field]
        if self.format == "csv":
            return _csv_header(self.path, self.encoding_errors)
        if self.format == "parquet":
            return _parquet_columns(self._files[0])
        return list(_hf_features(self.path))

    # -- readers --------------------------------------------------------------------

    def _numbered_lines(
        self, errors: EncodingErrors | None = None
    ) -> Generator[tuple[int, str], None, None]:
        """Yield ``(line number, decoded line)`` with the line ending kept."""
        errors = errors or self.encoding_errors
        with _open_bytes(self.path) as fh:
            for lineno, raw in enumerate(_read_lines(fh, self.path), start=1):
                try:
                    line = raw.decode("utf-8", errors=errors)
                except UnicodeDecodeError as exc:
                    raise CorpusError(
                        f"{self.path}: line {lineno} is not valid UTF-8 (byte {exc.start}); "
                        "fix the file or pass --encoding-errors replace"
                    ) from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                yield lineno, line

    def _decoded_lines(self, errors: EncodingErrors | None = None) -> Generator[str, None, None]:
        return (line for _, line in self._numbered_lines(errors))

    def _iter_txt(self) -> Iterator[Doc]:
        for lineno, line in self._numbered_lines():
            text = line.removesuffix("\n").removesuffix("\r")
            yield Doc(lineno - 1, doc_id_for(text), text, {})

    def _parse_json(self, line: str, lineno: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if lineno == 1 and line.lstrip().startswith("["):
                hint = " (a JSON array file is not JSON lines; write one object per line)"
            raise CorpusError(
                f"{self.path}: line {lineno} is not valid JSON ({exc.msg}){hint}; "
                "expected one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise CorpusError(
                f"{self.path}: line {lineno} is a JSON {type(record).__name__}, expected a "
                f"JSON object with a {self.text_field!r} field"
            )
        return record

    def _iter_jsonl(self) -> Iterator[Doc]:
        for lineno, line in self._numbered_lines():
            if not line.strip():
                # A blank line is an empty record, so that index == line number - 1.
                yield Doc(lineno - 1, doc_id_for(""), "", {})
                continue
            record = self._parse_json(line, lineno)
            if self.text_field not in record:
                raise CorpusError(
                    f"{self.path}: line {lineno} has no field {self.text_field!r} "
                    f"(has {', '.join(map(repr, record)) or 'no fields'}); "
                    "pass --text-field with one of them"
                )
            text = self._check_text(record.pop(self.text_field), f"line {lineno}")
            extra = {k: _jsonable(v) for k, v in record.items()}
            yield Doc(lineno - 1, doc_id_for(text), text, extra)

    def _check_text(self, value: Any, where: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise CorpusError(
                f"{self.path}: {where} has {self.text_field!r} of type "
                f"{type(value).__name__}, expected a string; "
                "fix the record or pick another --text-field"
            )
        return value

    def _iter_csv(self) -> Iterator[Doc]:
        _allow_long_csv_fields()
        reader = csv.reader(self._decoded_lines())
        try:
            header = next(reader, None)
            if header is None:
                return
            col = header.index(self.text_field)
            index = 0
            for row in reader:
                if not row:
                    continue  # the csv module yields [] for a blank line
                if len(row) != len(header):
                    raise CorpusError(
                        f"{self.path}: line {reader.line_num} has {len(row)} fields, the header "
                        f"has {len(header)}; quote fields that contain commas or newlines"
                    )
                text = row[col]
                extra = {k: v for i, (k, v) in enumerate(zip(header, row, strict=True)) if i != col}
                yield Doc(index, doc_id_for(text), text, extra)
                index += 1
        except csv.Error as exc:
            raise CorpusError(
                f"{self.path}: line {reader.line_num} is not valid CSV ({exc}); "
                "expected a header row and comma-separated, double-quoted fields"
            ) from None

    def _iter_rows(self, batches: Iterable[Any], start: int, what: str) -> Iterator[Doc]:
        index = start
        for batch in batches:
            for row in batch.to_pylist():
                text = self._check_text(row.pop(self.text_field), f"{what} {index}")
                extra = {k: _jsonable(v) for k, v in row.items()}
                yield Doc(index, doc_id_for(text), text, extra)
                index += 1

    def _iter_parquet(self) -> Iterator[Doc]:
        import pyarrow.parquet as pq

        index = 0
        for file in self._files:
            with pq.ParquetFile(file) as pf:
                for doc in self._iter_rows(pf.iter_batches(batch_size=_BATCH_ROWS), index, "row"):
                    index = doc.index + 1
                    yield doc

    def _load_hf(self) -> Any:
        import datasets

        return datasets.load_from_disk(str(self.path)).with_format("arrow")

    def _iter_hf(self) -> Iterator[Doc]:
        ds = self._load_hf()
        yield from self._iter_rows(ds.iter(batch_size=_BATCH_ROWS), 0, "row")


# -- eager checks ------------------------------------------------------------------------


def _csv_header(path: Path, errors: EncodingErrors) -> list[str]:
    corpus = Corpus(path, "csv", "text", encoding_errors=errors)
    lines = corpus._decoded_lines()
    try:
        return next(csv.reader(lines), [])
    except csv.Error as exc:
        raise CorpusError(f"{path}: the header row is not valid CSV ({exc})") from None
    finally:
        lines.close()


def _csv_has_row(path: Path, errors: EncodingErrors) -> bool:
    corpus = Corpus(path, "csv", "text", encoding_errors=errors)
    lines = corpus._decoded_lines()
    try:
        reader = csv.reader(lines)
        next(reader, None)
        return any(row for row in reader)
    except csv.Error:
        return True  # a malformed row is reported, with its line, during iteration
    finally:
        lines.close()


def _parquet_columns(file: Path) -> list[str]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(file) as pf:
        return list(pf.schema_arrow.names)


def _check_parquet(files: list[Path], text_field: str) -> None:
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


def _hf_features(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorpusError(
            f"{folder}: cannot read dataset_info.json ({exc}); expected a folder written by "
            "datasets.Dataset.save_to_disk"
        ) from None
    features = info.get("features") or {}
    if not isinstance(features, dict):
        raise CorpusError(f"{folder}: dataset_info.json has no 'features' mapping")
    return features


def _check_hf(folder: Path, text_field: str) -> None:
    if (folder / "dataset_dict.json").is_file():
        try:
            meta = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))
            splits = [str(s) for s in meta.get("splits", [])]
        except (OSError, ValueError, AttributeError):
            splits = []
        if not splits:
            splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        raise CorpusError(
            f"{folder} holds a DatasetDict with splits {', '.join(splits) or '(none)'}, "
            "expected one Dataset; point at one split folder, e.g. "
            f"{folder / (splits or ['train'])[0]}"
        )
    features = _hf_features(folder)
    if text_field not in features:
        raise CorpusError(
            f"{folder}: no column {text_field!r} (has {', '.join(map(repr, features))}); "
            "pass --text-field with one of them"
        )
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict) and state.get("_data_files") == []:
        raise EmptyCorpusError(f"{folder}: the dataset has 0 rows; expected at least one document")
    feature = features[text_field]
    if not (isinstance(feature, dict) and feature.get("dtype") in ("string", "large_string")):
        raise CorpusError(
            f"{folder}: column {text_field!r} is {json.dumps(feature)}, expected a string "
            "Value; pick another --text-field"
        )


def _is_hf_folder(folder: Path) -> bool:
    return any(
        (folder / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def _detect(path: Path) -> CorpusFormat:
    if path.is_dir():
        if _is_hf_folder(path):
            return "hf"
        if any(path.glob("*.parquet")):
            return "parquet"
        raise CorpusError(
            f"{path}: cannot tell the corpus format of this folder (no dataset_info.json, "
            f"state.json or *.parquet); supported: {_SUPPORTED}"
        )
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise CorpusError(
            f"{path}: cannot tell the corpus format from the name; supported: {_SUPPORTED}; "
            "rename the file or pass --format"
        )
    return fmt


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
    if format not in (*_FORMATS, "auto"):
        raise CorpusError(f"unknown corpus format {format!r}; expected auto or one of {_SUPPORTED}")
    if encoding_errors not in ("strict", "replace"):
        raise CorpusError(f"encoding_errors must be 'strict' or 'replace', got {encoding_errors!r}")
    fmt: CorpusFormat = _detect(path) if format == "auto" else format
    field = "text" if text_field is None else text_field
    if fmt == "txt" and field != "text":
        raise CorpusError(
            f"{path}: a txt corpus has one doc per line and no fields, got text_field "
            f"{field!r}; leave --text-field unset or use jsonl/csv/parquet"
        )

    files: list[Path] | None = None
    if fmt in ("txt", "jsonl", "csv"):
        if not path.is_file():
            raise CorpusError(f"{path} is a folder, expected a {fmt} file; pass the file itself")
        with _open_bytes(path) as fh:
            try:
                first = fh.read(1)
            except (OSError, EOFError) as exc:
                raise CorpusError(f"{path}: cannot read the gzip data ({exc})") from None
        if not first:
            raise EmptyCorpusError(f"{path} is empty; expected at least one document")
        if fmt == "csv":
            header = _csv_header(path, encoding_errors)
            if field not in header:
                raise CorpusError(
                    f"{path}: no column {field!r} in the header "
                    f"(has {', '.join(map(repr, header))}); pass --text-field with one of them"
                )
            if not _csv_has_row(path, encoding_errors):
                raise EmptyCorpusError(
                    f"{path} has a header row but no data rows; expected at least one document"
                )
    elif fmt == "parquet":
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not files:
            raise CorpusError(f"{path}: the folder has no *.parquet files; expected at least one")
        _check_parquet(files, field)
    else:
        if not path.is_dir():
            raise CorpusError(
                f"{path} is a file, expected a folder written by datasets.Dataset.save_to_disk"
            )
        _check_hf(path, field)
    return Corpus(path, fmt, field, encoding_errors=encoding_errors, files=files)
