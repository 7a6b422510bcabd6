"""Keep freed CPU memory for reuse instead of handing it back to the kernel (glibc malloc).

A training step frees and re-allocates the same large activation buffers every time (tens of
MB at 64 px). glibc serves allocations above its mmap threshold with fresh ``mmap`` calls and
unmaps them on ``free``, so each step faults every page of them in again: an ``inter_intra``
step at 64 px took about 60,000 minor page faults and 0.2 s of system time (one thread), and
512 faults with the thresholds raised (README, "Speed benchmarks"). Raising the mmap and trim
thresholds keeps those buffers in the heap; the process keeps its peak memory instead of
returning it between steps. Nothing computed changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
#: Tried in order: older glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB).
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)
_TRIM_THRESHOLD = 1 << 30


@cache
def _mallopt():
    """glibc's ``mallopt``, or None (macOS, Windows, a libc without it); looked up once."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def available() -> bool:
    """Whether this process's C library has ``mallopt`` to call."""
    return _mallopt() is not None


@cache
def keep_freed_memory() -> int:
    """Raise glibc's mmap and trim thresholds for this process, once; return the mmap threshold
    set (bytes), or 0 where there is no glibc ``mallopt`` (macOS, Windows, musl) or it refused."""
    mallopt = _mallopt()
    if mallopt is None:
        return 0
    for threshold in _MMAP_THRESHOLDS:
        if mallopt(_M_MMAP_THRESHOLD, threshold) == 1:
            mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            return threshold
    return 0
