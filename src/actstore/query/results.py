"""The one way an analysis saves its result: ``results/<name>/`` through the store's writer.

A saved result is a table (a SQL view named after the result), optional arrays and a
``meta.json`` saying what was computed on which run, site and rows. Every store-level
analysis (similarity, mapping, sparse) returns or builds an :class:`AnalysisResult` and
saves it with :meth:`AnalysisResult.save` (or :func:`write_result`); the command line only
passes ``--save NAME`` through. The file layout lives in :mod:`actstore.store.results`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actstore.store.results import (
    check_can_save,
    list_results,
    read_result,
    remove_result,
    result_dir,
    write_result,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AnalysisResult",
    "check_can_save",
    "list_results",
    "read_result",
    "remove_result",
    "result_dir",
    "write_result",
]


@dataclass
class AnalysisResult:
    """What a store-level analysis computed: a table, its description, optional arrays.

    Attributes
    ----------
    table : pandas.DataFrame
        The result rows (saved as ``result.parquet``).
    meta : dict
        JSON-able description: ``analysis``, ``run``, sites, options, summary values.
    arrays : dict of str to ndarray
        Extra arrays saved as ``arrays/<key>.npy``.
    path : Path or None
        Where the result was saved, once :meth:`save` ran.
    """

    table: pd.DataFrame
    meta: dict[str, Any]
    arrays: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)
    path: Path | None = None

    def save(self, store: str | Path, name: str | None, *, overwrite: bool = False) -> None:
        """Save as result ``name`` of ``store`` (nothing when ``name`` is None)."""
        if name is not None:
            arrays = {k: np.asarray(v) for k, v in self.arrays.items()}
            self.path = write_result(
                store, name, self.table, meta=self.meta, arrays=arrays, overwrite=overwrite
            )

    def to_json(self) -> dict[str, Any]:
        """``meta`` with the table's rows under ``"rows"`` (JSON-able)."""
        import json

        rows = json.loads(self.table.to_json(orient="records"))
        return {**self.meta, "rows": rows, **({"path": str(self.path)} if self.path else {})}
