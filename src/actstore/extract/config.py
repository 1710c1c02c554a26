"""The options of one extraction job, as a frozen dataclass (the CLI help is built from it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from actstore.errors import ConfigError
from actstore.store._objects import ObjectPath, store_path
from actstore.store.arrays import Codec, Layout
from actstore.store.dtypes import check_storage_dtype
from actstore.store.format import RUN_NAME, StorageDType

__all__ = ["IDENTITY_EXCLUDED", "OBJECTIVES", "ExtractConfig", "Objective", "check_run_name"]

Objective = Literal["kl-to-prompt", "target-tokens", "cosine-to-text"]
#: The objectives grad.* sites can differentiate (see :mod:`actstore.extract.objectives`).
OBJECTIVES: tuple[str, ...] = ("kl-to-prompt", "target-tokens", "cosine-to-text")


_UNSET = object()
#: Options newer than the first stored runs, with their defaults: in a run's identity only
#: when set to something else (``--no-matrices``), so older runs resume and match as before.
IDENTITY_IF_SET: dict[str, Any] = {"matrices": True}

#: Fields that do not change what is stored, so a job may resume with other values.
#: ``data``, ``data_format`` and ``text_field`` are replaced by the resolved corpus (its
#: absolute path, format, text field, size and mtime), so that a relative and an absolute
#: path to one file, or a flag left at its default, are the same run.
IDENTITY_EXCLUDED = frozenset(
    {
        "store",
        "shard",
        "overwrite",
        "quiet",
        "staging",
        "device",
        "device_map",
        "max_memory",
        "checkpoint_seconds",
        "data",
        "data_format",
        "text_field",
        "engine",
        "address",
        "workers",
        "gpus_per_worker",
        "max_retries",
    }
)

#: Fields that only the Ray engine reads (refused with ``engine="local"``).
RAY_ONLY = ("address", "workers", "gpus_per_worker")


def check_run_name(name: str) -> str:
    """Return ``name`` if it can name a run (a directory and a SQL value), else raise.

    >>> check_run_name("minilm-v2")
    'minilm-v2'
    """
    if not RUN_NAME.match(name):
        raise ConfigError(
            f"run name {name!r} is not allowed; use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (at most 128 characters)"
        )
    return name


@dataclass(frozen=True)
class ExtractConfig:
    """Everything an extraction job needs; the resolved form is saved in ``run.json``."""

    model: str
    """Hugging Face model id or local folder (anything AutoModel / AutoModelForCausalLM loads)."""
    data: str
    """Corpus: .txt (one doc per line), .jsonl, .csv, .parquet, or a saved HF dataset folder."""
    store: str
    """Store directory (created if new), or s3://BUCKET/PREFIX (written through a local
    staging store, see --staging; endpoint and credentials the standard AWS way)."""
    run: str
    """Run name inside the store (letters, digits, '_', '-', '.')."""
    sites: str = "all"
    """Comma-separated sites: hidden.i (0 = embedding output), module:<path>, or all; with
    an objective also grad.embed (gradient w.r.t. the input token embeddings) and
    grad.hidden.i (w.r.t. hidden.i)."""
    objective: Objective | None = None
    """Scalar loss per doc whose gradients grad.* sites store (docs/format.md, gradients):
    kl-to-prompt, target-tokens or cosine-to-text; its value per doc goes to the losses
    table."""
    objective_target: str | None = None
    """The objective's target for every doc: the target prompt (kl-to-prompt), the target
    text (cosine-to-text) or the target tokens as text (target-tokens)."""
    objective_target_field: str | None = None
    """Corpus field holding each doc's own objective target (instead of objective_target)."""
    objective_position: Literal["auto", "mask", "last"] = "auto"
    """Positions the objective reads predictions at: mask (every mask token, e.g. [MASK]),
    last (the last token), or auto (mask for masked LMs, last for causal LMs)."""
    dtype: StorageDType = "float16"
    """Storage dtype of the activations: float32, float16 or bfloat16."""
    text_field: str | None = None
    """JSONL field / CSV or Parquet column / dataset column holding the text (default text)."""
    data_format: Literal["auto", "txt", "jsonl", "csv", "parquet", "hf"] = "auto"
    """Corpus format; auto picks it from the file suffix or folder contents."""
    encoding_errors: Literal["strict", "replace"] = "strict"
    """What to do with bytes that are not UTF-8: stop with an error, or replace them."""
    max_length: int | None = None
    """Tokens per sequence fed to the model, special tokens included (default: the model's)."""
    long_docs: Literal["truncate", "window"] = "truncate"
    """Docs longer than max_length: truncate them, or cover them with overlapping windows
    (each token stored once, from the first window that has it after the overlap)."""
    window_overlap: int = 64
    """Tokens of left context each window after the first repeats from the previous one."""
    batch_tokens: int = 16384
    """Token budget of one forward batch (batch size x padded length)."""
    pool_batches: int = 32
    """Batches per length-sorted pool (every pool end is also a checkpoint)."""
    pad_tolerance: float = 0.05
    """A batch also ends where the next sequence is this fraction shorter than the batch's
    longest, which keeps padding below about this fraction of the tokens."""
    centroids: bool = False
    """Also store per-token-id running sums and counts of every site (centroids)."""
    matrices: bool = True
    """Store the model's per-vocabulary matrices (embed, unembed, norms: what the logit
    lens and nearest-token analyses read; ~60 % of a small model's store)."""
    on_overflow: Literal["error", "clip"] = "error"
    """float16 values beyond +-65504: stop with an error, or clip them (counted in run.json)."""
    add_special_tokens: bool = True
    """Add the tokenizer's special tokens (CLS/SEP, BOS) around each sequence."""
    limit_docs: int | None = None
    """Read only the first N records of the corpus (for trials)."""
    revision: str | None = None
    """Model revision (branch, tag or commit) when loading from a hub cache."""
    device: str = "auto"
    """cuda, cuda:1, cpu, or auto (cuda when available)."""
    device_map: str | None = None
    """Spread a model larger than one device over several, the Hugging Face way
    (accelerate): auto, balanced, balanced_low_0, sequential, or a JSON object
    {"module.path": device}; each site is captured where it is computed."""
    max_memory: str | None = None
    """With device_map: a JSON object of memory caps per device, e.g.
    {"0": "70GiB", "1": "70GiB", "cpu": "200GiB"}."""
    compute_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """dtype of the forward pass; auto: float32 on CPU, the checkpoint's half dtype on CUDA."""
    shard: int = 0
    """Index of this writer among num_shards (0-based)."""
    num_shards: int = 1
    """Number of independent writers sharing the run (each takes doc_id % num_shards == shard)."""
    chunk_rows: int = 64
    """Rows per Zarr chunk (the unit a gather reads)."""
    shard_rows: int | None = None
    """Rows per Zarr shard file (multiple of chunk_rows); default about 32 MiB per file."""
    codec: Codec = "none"
    """Chunk compression: none, zstd, or blosc (zstd + bitshuffle)."""
    trust_remote_code: bool = False
    """Allow model code from the model folder (only for models you trust)."""
    overwrite: bool = False
    """Replace an existing run of the same name made with other arguments."""
    checkpoint_seconds: float = 30.0
    """Also checkpoint inside a pool after this many seconds of work (0: after every
    batch), so a killed job loses at most about this much; the stored run is the same."""
    quiet: bool = False
    """No progress bar."""
    staging: str | None = None
    """With an s3:// store: the local folder where this job writes its part before it
    uploads it (a resumed job must find it again); default $ACTSTORE_STAGING/BUCKET/PREFIX,
    else ~/.cache/actstore/staging/BUCKET/PREFIX."""
    engine: Literal["local", "ray"] = "local"
    """Who runs the parts: local (this process runs part --shard), or ray (every part of
    the run as a Ray task, retried when its worker dies; see docs/scale-out.md)."""
    address: str | None = None
    """Ray cluster to connect to (auto, or HOST:PORT); default: start a local Ray
    instance sized to this machine. Only with engine ray."""
    workers: int | None = None
    """With engine ray: parts of the run, one Ray task each (the run's num_shards;
    default: --num-shards); the cluster runs as many at once as its CPUs/GPUs allow."""
    gpus_per_worker: float | None = None
    """With engine ray: GPUs each task reserves (Ray's num_gpus); default 1 when the
    cluster has GPUs and --device is not cpu, else 0."""
    max_retries: int = 3
    """With engine ray: times Ray reruns a part whose worker process died (the part
    resumes from its last checkpoint)."""

    def __post_init__(self) -> None:
        if isinstance(store_path(self.store), ObjectPath):
            if self.overwrite:
                raise ConfigError(
                    f"--overwrite: replacing a run in a store on object storage ({self.store}) "
                    "is not supported; pick another --run name"
                )
        elif self.staging is not None:
            raise ConfigError("--staging: only used with a store on object storage (s3://)")
        check_run_name(self.run)
        check_storage_dtype(self.dtype)
        positive = {"batch_tokens": self.batch_tokens, "pool_batches": self.pool_batches}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")
        if not 0.0 <= self.pad_tolerance < 1.0:
            raise ConfigError(f"pad_tolerance must be in [0, 1), got {self.pad_tolerance}")
        if self.window_overlap < 0:
            raise ConfigError(f"window_overlap must be >= 0, got {self.window_overlap}")
        if not self.checkpoint_seconds >= 0:  # also refuses NaN
            raise ConfigError(f"checkpoint_seconds must be >= 0, got {self.checkpoint_seconds}")
        if self.limit_docs is not None and self.limit_docs < 1:
            raise ConfigError(f"limit_docs must be >= 1, got {self.limit_docs}")
        if self.num_shards < 1 or not 0 <= self.shard < self.num_shards:
            raise ConfigError(
                f"shard must be in 0..num_shards-1, got shard={self.shard} "
                f"num_shards={self.num_shards}"
            )
        if self.device_map is not None:
            from actstore.extract._devicemap import parse_device_map

            parse_device_map(self.device_map, self.max_memory, self.device)
        elif self.max_memory is not None:
            raise ConfigError("max_memory applies with device_map; add --device-map auto")
        self._check_objective()
        self.layout()  # validates chunk/shard/codec
        self._check_engine()

    def _check_engine(self) -> None:
        if self.engine == "local":
            given = [f"--{f.replace('_', '-')}" for f in RAY_ONLY if getattr(self, f) is not None]
            if given:
                raise ConfigError(
                    f"{', '.join(given)}: only used with --engine ray; add it or drop them"
                )
        elif self.engine == "ray":
            if self.workers is not None and self.workers < 1:
                raise ConfigError(f"workers must be >= 1, got {self.workers}")
            if self.workers is not None and self.num_shards not in (1, self.workers):
                raise ConfigError(
                    f"--workers {self.workers} and --num-shards {self.num_shards} disagree; "
                    "with --engine ray, --workers is the run's number of parts: drop --num-shards"
                )
            if self.shard != 0:
                raise ConfigError(
                    "--engine ray runs every part of the run; drop --shard (or run that "
                    "part alone with --engine local)"
                )
            if self.gpus_per_worker is not None and not self.gpus_per_worker >= 0:
                raise ConfigError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
            # one number of parts: the run's num_shards (its identity) is the workers
            object.__setattr__(self, "workers", self.workers or self.num_shards)
            object.__setattr__(self, "num_shards", self.workers)
        else:
            raise ConfigError(f"engine must be local or ray, got {self.engine!r}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")

    def _check_objective(self) -> None:
        grads = [p for p in self.sites.split(",") if p.strip().startswith("grad.")]
        if self.objective is None:
            if grads:
                raise ConfigError(
                    f"site {grads[0].strip()!r} needs an objective to differentiate; add "
                    f"--objective {'|'.join(OBJECTIVES)} (see docs/format.md, gradients)"
                )
            if self.objective_target is not None or self.objective_target_field is not None:
                raise ConfigError("objective_target(_field) applies with --objective")
            return
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if not grads:
            raise ConfigError(
                f"--objective {self.objective} stores gradients only at grad.* sites; add "
                "grad.embed (and/or grad.hidden.<i>) to --sites"
            )
        if (self.objective_target is None) == (self.objective_target_field is None):
            raise ConfigError(
                f"--objective {self.objective} needs exactly one target: --objective-target "
                "TEXT (the same for every doc) or --objective-target-field FIELD (per doc)"
            )
        if self.long_docs == "window":
            raise ConfigError(
                "grad.* sites need one forward pass per doc; --long-docs window splits long "
                "docs into several, use --long-docs truncate (the default)"
            )

    def layout(self) -> Layout:
        """The Zarr layout these options ask for."""
        return Layout(chunk_rows=self.chunk_rows, shard_rows=self.shard_rows, codec=self.codec)

    def to_json(self) -> dict[str, Any]:
        """The options as a JSON-able dict."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The options that decide what is stored (two jobs agree on these to share a run).

        An option added after runs were stored enters only when it is not at its default
        (``IDENTITY_IF_SET``), so a run staged or committed before keeps the same identity.
        """
        return {
            k: v
            for k, v in self.to_json().items()
            if k not in IDENTITY_EXCLUDED and IDENTITY_IF_SET.get(k, _UNSET) != v
        }
