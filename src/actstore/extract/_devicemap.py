"""Device maps: one model over several devices, placed by accelerate as Hugging Face does.

``--device-map`` is passed to ``from_pretrained(device_map=..., max_memory=...)``; the batch
goes to the device of the input embeddings and each site is captured on the device that
computes it (then moved to the input device for the copy to the host). Nothing here imports
torch at module level.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from typing import Any

from actstore.errors import ConfigError

__all__ = ["NAMED_MAPS", "parse_device_map"]

#: The strategies ``from_pretrained(device_map=...)`` accepts by name.
NAMED_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {text!r} is not JSON ({exc.msg}); {_HINT}") from exc
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{what} must be a non-empty JSON object, got {text!r}; {_HINT}")
    return value


_HINT = (
    'use auto, balanced, balanced_low_0, sequential or a JSON object such as {"": "cuda:0"} '
    'or {"model.layers.0": 0, "model.layers.1": "cpu"}'
)


def _device_key(key: str) -> int | str:
    return int(key) if key.isdigit() else key


def parse_device_map(
    device_map: str, max_memory: str | None = None, device: str = "auto"
) -> tuple[str | dict[str, Any], dict[int | str, Any] | None]:
    """``device_map`` and ``max_memory`` as ``from_pretrained`` takes them.

    Examples
    --------
    >>> parse_device_map("auto", '{"0": "20GiB", "cpu": "64GiB"}')
    ('auto', {0: '20GiB', 'cpu': '64GiB'})
    >>> parse_device_map('{"": "cpu"}')
    ({'': 'cpu'}, None)
    """
    if device != "auto":
        raise ConfigError(
            f"pass --device-map or --device, not both (got device {device!r}); a device map "
            "places every module itself"
        )
    dm: str | dict[str, Any]
    if device_map in NAMED_MAPS:
        dm = device_map
    elif device_map.lstrip().startswith("{"):
        dm = _json_object(device_map, "device_map")
        for module, place in dm.items():
            if not isinstance(place, (str, int)) or isinstance(place, bool):
                raise ConfigError(
                    f"device_map entry {module!r} must name a device (0, 'cuda:1', 'cpu', "
                    f"'disk'), got {place!r}"
                )
    else:
        raise ConfigError(f"device_map {device_map!r} is not known; {_HINT}")
    mm = None
    if max_memory is not None:
        raw = _json_object(max_memory, "max_memory")
        mm = {_device_key(str(k)): v for k, v in raw.items()}
    return dm, mm


def load_kwargs(device_map: str, max_memory: str | None) -> dict[str, Any]:
    """The ``from_pretrained`` arguments of a device map; checks that accelerate is there."""
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise ConfigError(
            "--device-map needs accelerate; install it with pip install 'actstore[extract]'"
        )
    dm, mm = parse_device_map(device_map, max_memory)
    out: dict[str, Any] = {"device_map": dm}
    if mm is not None:
        out["max_memory"] = mm
    # modules the map (or "auto" short of memory) sends to "disk" are offloaded here; the
    # folder goes with the model (see :func:`remove_with`)
    out["offload_folder"] = tempfile.mkdtemp(prefix="actstore-offload-")
    return out


def remove_with(model: Any, folder: str) -> None:
    """Delete the offload ``folder`` when ``model`` is garbage-collected (or at exit)."""
    weakref.finalize(model, shutil.rmtree, folder, True)


def input_device(hf_model: Any) -> Any:
    """The device the batch goes to: that of the input embeddings' weight."""
    return hf_model.get_input_embeddings().weight.device
