"""The one device policy of the analyses: which array library and which torch device.

Every analysis that can run in torch takes ``backend`` (``"numpy"`` or ``"torch"``) and an
optional ``device``; this module alone turns them into an array module and a device, so
the rule is the same everywhere: an explicit ``device`` wins, else CUDA when torch sees a
GPU, else the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from actstore.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["BACKENDS", "Backend", "check_backend", "torch_device", "xp_for"]

Backend = Literal["numpy", "torch"]
BACKENDS: tuple[Backend, ...] = ("numpy", "torch")


def check_backend(backend: str) -> Backend:
    """``backend`` if it is ``"numpy"`` or ``"torch"``; else a :class:`ConfigError`."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    return backend


def torch_device(device: str | None = None) -> torch.device:
    """The torch device: ``device`` when given, else ``cuda`` when available, else ``cpu``.

    Raises
    ------
    ConfigError
        ``device`` names CUDA but torch sees no GPU, or is not a device name.
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU; use cpu")
    return dev


def xp_for(backend: str, device: str | None = None) -> tuple[Any, Any]:
    """The array module (``numpy`` or ``torch``) and a function moving NumPy arrays onto it.

    Examples
    --------
    >>> xp, put = xp_for("numpy")
    >>> xp is np, put([1, 2]).tolist()
    (True, [1, 2])
    """
    if check_backend(backend) == "numpy":
        return np, np.asarray
    import torch

    dev = torch_device(device)
    return torch, lambda a: torch.as_tensor(np.ascontiguousarray(a), device=dev)
