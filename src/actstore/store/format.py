"""Names, paths and JSON shapes of the on-disk store format (v1).

``docs/format.md`` describes the same layout for people; this module is its single
definition for code. Nothing here touches the disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NotRequired, TypedDict

__all__ = [
    "ARRAYS_DIR",
    "DOCS_SCHEMA_BASE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "RESULTS_DIR",
    "RESULT_META",
    "RESULT_TABLE",
    "TOKENS_COLUMNS",
    "ManifestJSON",
    "ManifestRunJSON",
    "PartJSON",
    "RunJSON",
    "SiteJSON",
    "StorageDType",
    "part_array_path",
    "part_dir",
    "part_name",
    "run_dir",
]

FORMAT_NAME = "actstore"
FORMAT_VERSION = 1
MANIFEST_NAME = "actstore.json"
ARRAYS_DIR = "arrays"
#: ``results/<name>/``: a saved analysis result (table, meta.json, arrays/*.npy).
RESULTS_DIR = "results"
RESULT_TABLE = "result.parquet"
RESULT_META = "meta.json"

StorageDType = Literal["float32", "float16", "bfloat16"]

#: Columns of ``runs/<run>/tokens/*.parquet`` in order, with their Arrow types.
TOKENS_COLUMNS: dict[str, str] = {
    "row": "int64",
    "doc_id": "int64",
    "pos": "int32",
    "token_id": "int32",
    "start": "int32",
    "end": "int32",
    "special": "bool",
}
#: Columns every ``docs/*.parquet`` file has; corpus columns follow them as given.
DOCS_SCHEMA_BASE: dict[str, str] = {"doc_id": "int64", "doc_index": "int64", "text": "string"}


class ManifestRunJSON(TypedDict):
    """One committed run as listed in ``actstore.json``."""

    committed_at: str
    n_rows: int
    n_docs: int
    num_parts: int


class ManifestJSON(TypedDict):
    """``actstore.json``: the format and the committed runs (only these are visible)."""

    format: str
    version: int
    runs: dict[str, ManifestRunJSON]


class SiteJSON(TypedDict):
    """One stored per-token vector stream of a run."""

    name: str
    d: int
    dtype: StorageDType
    describes: str


class PartJSON(TypedDict):
    """One part of a run (one shard writer's rows): rows ``row_offset .. row_offset+n_rows``."""

    index: int
    n_rows: int
    row_offset: int
    n_docs: int


class RunJSON(TypedDict):
    """``runs/<run>/run.json``, written at commit."""

    version: int
    run: str
    status: Literal["committed"]
    model: dict[str, object]
    tokenizer: dict[str, object]
    sites: list[SiteJSON]
    matrices: dict[str, list[int]]
    head: dict[str, object]
    dtype: StorageDType
    config: dict[str, object]
    identity: dict[str, object]
    counts: dict[str, int]
    parts: list[PartJSON]
    timings: dict[str, float]
    versions: dict[str, str]
    centroids: NotRequired[list[str]]
    created_at: str
    committed_at: str


def run_dir(store: Path, run: str) -> Path:
    """Directory of run ``run`` inside ``store``."""
    return store / "runs" / run


def part_name(index: int) -> str:
    """Zero-padded name of part ``index`` (``part-0003``)."""
    return f"part-{index:04d}"


def part_dir(store: Path, run: str, index: int) -> Path:
    """Staging directory of one shard writer (progress, local token files)."""
    return run_dir(store, run) / "parts" / part_name(index)


def part_array_path(index: int, site: str) -> str:
    """Path of a site array of one part, relative to the run's Zarr group."""
    return f"{part_name(index)}/{site}"
