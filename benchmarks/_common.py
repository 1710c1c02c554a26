"""Small helpers shared by the benchmark scripts: timing, medians, tables, JSON, memory.

Nothing here knows about actstore; a script imports what it needs with
``from _common import ...`` (``benchmarks/`` is on ``sys.path`` when a script in it runs).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Call ``fn()`` once; return its result and the wall time in seconds."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def median(values: Sequence[float]) -> float:
    """Median of ``values`` (NaN for none)."""
    return statistics.median(values) if values else float("nan")


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the raw values of a list of repeat timings."""
    return {
        "median": median(values),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
        "values": list(values),
    }


def interleave(
    cases: dict[str, Callable[[], Any]], repeats: int, *, rotate: bool = True
) -> dict[str, list[Any]]:
    """Run each case once per round, ``repeats`` rounds, and collect what each returns.

    Interleaving spreads slow phases of a noisy machine over all cases instead of one.
    With ``rotate`` the order shifts each round so that no case always runs first.
    """
    names = list(cases)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)] if rotate else names
        for name in order:
            out[name].append(cases[name]())
    return out


def peak_rss_self() -> int:
    """Peak resident set size of this process so far, in bytes.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` survives
    ``execve``, so a child started from a big parent would report the parent's peak.
    Elsewhere ``ru_maxrss``.
    """
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    return _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def current_rss() -> int | None:
    """Current resident set size of this process in bytes (Linux only; else None)."""
    return _proc_status_bytes("VmRSS")


def _proc_status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _maxrss_bytes(maxrss: int) -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken: host, CPU count, Python, and torch if it is imported."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def command_line() -> str:
    """The command that started this process, shell-quoted."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (parents created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers in the rows should already be formatted."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def fmt_bytes(n: float) -> str:
    """``123.4 MiB`` style."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1024
    return f"{n:,.1f} GiB"
