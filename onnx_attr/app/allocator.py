"""Freed memory kept for reuse by glibc's malloc, in onnx-attr's own processes.

Every pass allocates and frees feature maps of megabytes. glibc serves a block that large with
mmap and hands it back to the kernel on free (or trims it off the heap's top), so the next one is
fresh memory again: each of its pages faults and is zero-filled by the kernel before torch writes
it. glibc adapts its threshold to the blocks freed, so whether a process falls into that churn
depends on the order of its allocations: on PP-OCR's text detector at its package's input size
(736 x 1280), two of five runs of `benchmarks/large_graph.py --allocator default` had steady
DeepLift calls of 1.21 and 1.32 s (a plain forward + gradient up to 0.65 s), the other three
0.53-0.54 s; with the thresholds raised, 0.49-0.61 s in all five. Raising them keeps the freed
blocks in the heap, to be reused without a fault; the process holds on to its peak heap (its
resident size stayed flat over twelve calls).

So the command line and the dataset workers (processes of ours) set them at start; a program using
the API calls `keep_freed_memory()` itself if it wants the same (it changes the whole process's
allocator, which a library should not do behind its user's back). Nothing is changed where the
user chose already: glibc's MALLOC_* environment variables or GLIBC_TUNABLES, another allocator
preloaded (jemalloc, tcmalloc), or ONNX_ATTR_ALLOCATOR=default.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_KEEP = 2**31 - 1  # bytes, mallopt's int maximum: blocks up to 2 GB from the heap, a free top up to 2 GB kept
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once; whether they are now set by
    us. False where the user chose an allocator setting, or the C library is not glibc."""
    global _done
    if _done is not None:
        return _done
    _done = False
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get("ONNX_ATTR_ALLOCATOR", "").lower() == "default" or any(k in os.environ for k in _USER_SETTINGS) \
            or "jemalloc" in preload or "tcmalloc" in preload or "mimalloc" in preload:
        return _done
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP))
    except (OSError, AttributeError):
        pass
    return _done
