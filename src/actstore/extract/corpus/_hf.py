"""Reader of a Hugging Face dataset saved with ``datasets.Dataset.save_to_disk``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from actstore.errors import CorpusError, EmptyCorpusError
from actstore.extract.corpus._base import BATCH_ROWS, CorpusFormat, Doc, Source, iter_rows

__all__ = ["HfReader"]

_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _features(folder: Path) -> dict[str, Any]:
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


def _refuse_dataset_dict(folder: Path) -> NoReturn:
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


def _load(folder: Path) -> Any:
    import datasets

    return datasets.load_from_disk(str(folder)).with_format("arrow")


class HfReader:
    """One saved ``Dataset`` (not a ``DatasetDict``), streamed in Arrow batches."""

    name: CorpusFormat = "hf"
    suffixes: tuple[str, ...] = ()

    def detects(self, folder: Path) -> bool:
        """Return whether ``folder`` has the metadata files ``save_to_disk`` writes."""
        return any((folder / n).is_file() for n in _MARKERS)

    def check(self, source: Source) -> Source:
        """Check from the metadata alone: one Dataset, with a string text column and rows."""
        folder, text_field = source.path, source.text_field
        if not folder.is_dir():
            raise CorpusError(
                f"{folder} is a file, expected a folder written by datasets.Dataset.save_to_disk"
            )
        if (folder / "dataset_dict.json").is_file():
            _refuse_dataset_dict(folder)
        features = _features(folder)
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
            raise EmptyCorpusError(
                f"{folder}: the dataset has 0 rows; expected at least one document"
            )
        feature = features[text_field]
        if not (isinstance(feature, dict) and feature.get("dtype") in ("string", "large_string")):
            raise CorpusError(
                f"{folder}: column {text_field!r} is {json.dumps(feature)}, expected a string "
                "Value; pick another --text-field"
            )
        return source

    def iter_docs(self, source: Source) -> Iterator[Doc]:
        """Yield one :class:`Doc` per row; ``datasets`` memory-maps the Arrow files."""
        ds = _load(source.path)
        yield from iter_rows(source, ds.iter(batch_size=BATCH_ROWS), 0, "row")

    def count(self, source: Source) -> int:
        """Return the dataset's number of rows."""
        return int(_load(source.path).num_rows)

    def columns(self, source: Source) -> list[str]:
        """Return the feature names from ``dataset_info.json``."""
        return list(_features(source.path))
