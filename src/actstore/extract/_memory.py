"""How an extraction asks the C allocators for memory: flat peak RSS without the price.

Two settings, both Linux-only (elsewhere nothing happens), measured in
``benchmarks/allocator.py``:

* :func:`flat_memory` lowers glibc's mmap threshold while the pools run, so that freed batch
  buffers go back to the OS instead of fragmenting the heap (peak RSS flat in corpus size);
* :func:`prefer_huge_pages` (the command line only) asks torch to advise the kernel to back
  its large CPU tensors by transparent huge pages, which takes most of the threshold's
  price away: every large temporary is a fresh mapping the kernel zero-fills on first
  touch, 4 KiB page by page without it, 2 MiB at a time with it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

__all__ = ["flat_memory", "prefer_huge_pages"]

#: glibc's ``mallopt`` parameter, and the values it is set to during and after a job.
_M_MMAP_THRESHOLD, _DURING, _AFTER = -3, 1 << 20, 32 << 20

#: torch's switch (c10 ``alloc_cpu``): CPU blocks of 2 MiB or more get ``MADV_HUGEPAGE``.
THP_ENV = "THP_MEM_ALLOC_ENABLE"


@contextlib.contextmanager
def flat_memory() -> Iterator[None]:
    """Serve large allocations from mmap while the pools run, so that freed batch buffers
    go back to the OS; afterwards, a threshold at glibc's own ceiling again.

    glibc keeps freed blocks below its adaptive mmap threshold in the heap; batches of
    many shapes then fragment it, and peak RSS grew with corpus size (MiniLM: 1.26 GB at
    2,000 docs, 2.08 GB at 8,000; with ``malloc_trim`` after batches 1.57 / 1.72 GB at
    4,000 / 8,000, still growing). A 1 MiB threshold keeps it flat (1.30 / 1.40 GB) at a
    price: every large temporary is a fresh zero-filled mapping (the forward ~20 % slower
    with 4 KiB pages; see :func:`prefer_huge_pages`). Left in place after the job it slowed
    any code the process ran next by 25-50 %, hence the reset (to 32 MiB, the most glibc's
    adaptive threshold grows to; the adaptive behaviour itself cannot be switched back on).
    """
    import ctypes

    mallopt = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            mallopt = ctypes.CDLL("libc.so.6").mallopt
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _DURING)
    try:
        yield
    finally:
        if mallopt is not None:
            mallopt(_M_MMAP_THRESHOLD, _AFTER)


def prefer_huge_pages() -> bool:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` for torch, if torch is not imported yet and the
    variable is not set; True when it was set here.

    Called by the ``actstore extract`` and ``optimize`` commands only, never by
    :func:`~actstore.extract.runner.extract`: torch reads the variable once, at its first
    CPU allocation, and keeps it for the life of the process, and it helps only together
    with :func:`flat_memory`. With it, torch aligns CPU blocks to pages and advises
    ``MADV_HUGEPAGE`` on blocks of 2 MiB or more; where the kernel's transparent huge pages
    are ``madvise`` or ``always`` (most distributions), each fresh mapping of
    :func:`flat_memory` is then faulted in 2 MiB at a time. Measured on CPU (fresh
    processes; tiny GPT-2 forward over batches of many shapes, as extraction runs them):
    the 1 MiB threshold alone costs +20 %, with huge pages -8 % against glibc's defaults,
    peak RSS as flat (``benchmarks/allocator.py`` for MiniLM). But with glibc's defaults
    (the heap, as after a job) the same advice made a SAELens-style loop of one batch
    shape ~15 % slower, so a library call must not leave it behind in a user's process: a
    script or notebook that wants it sets ``THP_MEM_ALLOC_ENABLE=1`` itself before importing
    torch. An explicit ``THP_MEM_ALLOC_ENABLE=0`` is left alone (the opt-out); kernels with
    THP ``never`` ignore the advice.
    """
    if not sys.platform.startswith("linux") or "torch" in sys.modules or THP_ENV in os.environ:
        return False
    os.environ[THP_ENV] = "1"
    return True
