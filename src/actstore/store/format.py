"""Names, paths and JSON shapes of the on-disk store format (v1).

``docs/format.md`` describes the same layout for people; this module is its single
definition for code. Nothing here touches the disk.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, NotRequired, TypedDict

__all__ = [
    "ARRAYS_DIR",
    "CENTROIDS_DIR",
    "DOCS_DIR",
    "DOCS_SCHEMA_BASE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOCKS_DIR",
    "LOCK_NAME",
    "LOSSES_DIR",
    "LOSSES_NAME",
    "MANIFEST_NAME",
    "PARTS_DIR",
    "PART_META_NAME",
    "PROGRESS_NAME",
    "PROGRESS_VERSION",
    "RESULTS_DIR",
    "RESULT_META",
    "RESULT_TABLE",
    "RUNS_DIR",
    "RUN_JSON_NAME",
    "RUN_NAME",
    "SITE_NAME",
    "TOKENS_COLUMNS",
    "TOKENS_DIR",
    "TRASH_DIR",
    "USERS_NAME",
    "VOCAB_NAME",
    "VOCAB_STRINGS_NAME",
    "ManifestJSON",
    "ManifestRunJSON",
    "PartJSON",
    "PartMetaJSON",
    "ProgressJSON",
    "RunJSON",
    "SiteJSON",
    "StorageDType",
    "docs_file_name",
    "docs_file_part",
    "part_array_path",
    "part_dir",
    "part_index",
    "part_lock_path",
    "part_name",
    "run_dir",
    "run_json_path",
    "run_locks_dir",
    "staging_dir",
    "tokens_file_name",
]

FORMAT_NAME = "actstore"
FORMAT_VERSION = 1

# -- names in the store root
MANIFEST_NAME = "actstore.json"
LOCK_NAME = ".actstore.lock"
#: shared ``flock`` held by every job using the store (so an unused new store can go)
USERS_NAME = ".actstore.users"
#: ``.locks/<run>/part-KKKK.lock``: one writer lock (flock) per part; never deleted
LOCKS_DIR = ".locks"
#: ``.trash/<ns>-<pid>-<host>/``: what a drop moved out of sight before deleting it
TRASH_DIR = ".trash"
DOCS_DIR = "docs"
RUNS_DIR = "runs"
#: ``results/<name>``: a saved analysis result (table, meta.json, arrays/*.npy)
RESULTS_DIR = "results"
RESULT_TABLE = "result.parquet"
RESULT_META = "meta.json"

# -- names in runs/<run>/ (TOKENS_DIR and DOCS_DIR are reused inside a part's staging)
RUN_JSON_NAME = "run.json"
TOKENS_DIR = "tokens"
VOCAB_NAME = "vocab.parquet"
#: per-doc objective values of a gradient run (``doc_id``, ``loss``; an optimisation run
#: also ``step``); see docs/format.md
LOSSES_NAME = "losses.parquet"
#: a part's staged loss files (inside its staging directory)
LOSSES_DIR = "losses"
ARRAYS_DIR = "arrays"
CENTROIDS_DIR = "centroids"
PARTS_DIR = "parts"

# -- names in runs/<run>/parts/part-KKKK/ (staging of an unfinished part)
PART_META_NAME = "meta.json"
PROGRESS_NAME = "progress.json"
#: 2: staged docs files hold every record (``record``, ``empty``, ``repeat_of``).
PROGRESS_VERSION = 2
VOCAB_STRINGS_NAME = "vocab_strings.parquet"

StorageDType = Literal["float32", "float16", "bfloat16"]

#: A run name: a directory name and a SQL value (checked when typed and when read).
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
#: A site name: ``hidden.N``, ``module:<dotted.path>`` and the like; it names an array
#: folder, so no path separators and no leading dot.
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,254}$")

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
#: Columns every ``docs/*.parquet`` file has, one row per input record; the corpus's other
#: fields follow them as given (see ``store/docs.py``).
DOCS_SCHEMA_BASE: dict[str, str] = {
    "record": "int64",
    "doc_id": "int64",
    "text": "string",
    "empty": "bool",
    "repeat_of": "int64",
}


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
    objective: NotRequired[dict[str, object]]
    """A gradient run's objective (name, target, positions, loss formula)."""
    optimize: NotRequired[dict[str, object]]
    """An optimisation run's optimiser (steps, lr, stored steps, init, seed, precision)."""
    created_at: str
    committed_at: str


class PartMetaJSON(TypedDict):
    """``runs/<run>/parts/part-KKKK/meta.json``: what a part was started with.

    Written when a part starts (and again when it resumes); the commit copies these
    fields of part 0 into ``run.json``, after checking every part has the same identity.
    """

    identity: dict[str, object]
    config: dict[str, object]
    model: dict[str, object]
    tokenizer: dict[str, object]
    sites: list[SiteJSON]
    matrices: dict[str, list[int]]
    head: dict[str, object]
    dtype: StorageDType
    vocab_size: int
    versions: dict[str, str]
    created_at: str
    objective: NotRequired[dict[str, object]]
    optimize: NotRequired[dict[str, object]]


class ProgressJSON(TypedDict):
    """``runs/<run>/parts/part-KKKK/progress.json``: the part's last durable checkpoint.

    Every file listed (relative to the part's staging directory) is complete on disk;
    the part's site arrays hold ``rows`` rows.
    """

    version: int
    pools: int
    """Pools complete."""
    consumed: int
    """Source records read by the complete pools (where a resumed job reads on)."""
    batches: NotRequired[int]
    """Batches of the next pool already appended (a checkpoint inside a pool); absent: 0."""
    rows: int
    counts: dict[str, int]
    timings: dict[str, float]
    token_files: list[str]
    doc_files: list[str]
    centroid_file: str | None
    complete: bool
    loss_files: NotRequired[list[str]]
    """Per-doc objective values of a gradient run's durable batches (absent otherwise)."""


def run_dir(store: Path, run: str) -> Path:
    """Directory of run ``run`` inside ``store``."""
    return store / RUNS_DIR / run


def run_json_path(store: Path, run: str) -> Path:
    """``run.json`` of run ``run`` (present once the run is committed)."""
    return run_dir(store, run) / RUN_JSON_NAME


def staging_dir(store: Path, run: str) -> Path:
    """Directory holding the staging of every unfinished part of ``run``."""
    return run_dir(store, run) / PARTS_DIR


def part_name(index: int) -> str:
    """Zero-padded name of part ``index`` (``part-0003``)."""
    return f"part-{index:04d}"


def part_dir(store: Path, run: str, index: int) -> Path:
    """Staging directory of one shard writer (progress, local token files)."""
    return staging_dir(store, run) / part_name(index)


def part_index(name: str) -> int | None:
    """The index of a part directory name (``part-0003`` -> 3); None for other names."""
    digits = name.removeprefix("part-")
    return int(digits) if digits != name and digits.isdigit() else None


def part_array_path(index: int, site: str) -> str:
    """Path of a site array of one part, relative to the run's Zarr group."""
    return f"{part_name(index)}/{site}"


def tokens_file_name(index: int, seq: int) -> str:
    """Name of a committed tokens file in ``runs/<run>/tokens/`` (part, then sequence)."""
    return f"{part_name(index)}-{seq:06d}.parquet"


def docs_file_name(run: str, index: int) -> str:
    """Name of the docs file of one part of ``run`` in the store's ``docs/``."""
    return f"{run}.{part_name(index)}.parquet"


def docs_file_part(run: str, name: str) -> int | None:
    """The part index of ``name`` if it is a docs file of ``run`` (see :func:`docs_file_name`).

    Exact: the docs of a run named ``a.part-0000`` are not docs of run ``a``.

    >>> docs_file_part("a", "a.part-0001.parquet")
    1
    >>> docs_file_part("a", "a.part-0000.part-0001.parquet") is None
    True
    """
    prefix, suffix = f"{run}.", ".parquet"
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    return part_index(name[len(prefix) : len(name) - len(suffix)])


def run_locks_dir(store: Path, run: str) -> Path:
    """Directory of the part lock files of ``run`` (outside ``runs/``: a drop never removes a
    lock file someone may hold)."""
    return store / LOCKS_DIR / run


def part_lock_path(store: Path, run: str, index: int) -> Path:
    """The lock file of part ``index`` of ``run``: its writer holds ``flock`` on it."""
    return run_locks_dir(store, run) / f"{part_name(index)}.lock"
