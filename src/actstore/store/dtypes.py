"""Storage dtypes: float32, float16 and bfloat16 (kept as raw uint16 words).

zarr-python has no native bfloat16, so bfloat16 arrays hold the 16 raw bits as
``uint16`` with the logical dtype in the array attributes, and are viewed through
``ml_dtypes.bfloat16`` on read.
"""

from __future__ import annotations

from typing import Any, get_args

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.store.format import StorageDType

__all__ = [
    "FLOAT16_MAX",
    "LOGICAL_DTYPE_ATTR",
    "check_storage_dtype",
    "logical_numpy_dtype",
    "physical_numpy_dtype",
    "to_logical",
    "to_physical",
]

FLOAT16_MAX = 65504.0
#: Array attribute naming the logical dtype of a stored array.
LOGICAL_DTYPE_ATTR = "actstore_dtype"

_PHYSICAL: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
}


def _bfloat16() -> np.dtype[Any]:
    # imported on first use: ml_dtypes takes ~1 s to import, and most stores hold no bfloat16
    import ml_dtypes

    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


def check_storage_dtype(name: str) -> StorageDType:
    """Return ``name`` if it is a supported storage dtype, else raise :class:`ConfigError`.

    >>> check_storage_dtype("bfloat16")
    'bfloat16'
    """
    allowed = get_args(StorageDType)
    if name not in allowed:
        raise ConfigError(f"unsupported dtype {name!r}; expected one of {', '.join(allowed)}")
    return name  # type: ignore[return-value]


def physical_numpy_dtype(name: StorageDType) -> np.dtype[Any]:
    """The NumPy dtype the Zarr array holds on disk (``uint16`` for bfloat16)."""
    return _PHYSICAL[check_storage_dtype(name)]


def logical_numpy_dtype(name: StorageDType) -> np.dtype[Any]:
    """The NumPy dtype readers get back (``ml_dtypes.bfloat16`` for bfloat16)."""
    if check_storage_dtype(name) == "bfloat16":
        return _bfloat16()
    return np.dtype(np.float32 if name == "float32" else np.float16)


def to_physical(x: npt.NDArray[Any], name: StorageDType) -> npt.NDArray[Any]:
    """Cast float values to the on-disk representation of ``name`` (no overflow check).

    >>> to_physical(np.array([1.0], np.float32), "bfloat16")
    array([16256], dtype=uint16)
    """
    logical = logical_numpy_dtype(name)
    y = x if x.dtype == logical else x.astype(logical)
    return y.view(np.uint16) if name == "bfloat16" else y


def to_logical(x: npt.NDArray[Any], name: StorageDType) -> npt.NDArray[Any]:
    """View raw stored values as the logical dtype (a free reinterpretation).

    >>> to_logical(np.array([16256], np.uint16), "bfloat16").astype(np.float32)
    array([1.], dtype=float32)
    """
    return x.view(_bfloat16()) if name == "bfloat16" else x
