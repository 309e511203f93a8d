"""Keep large freed CPU blocks in the process heap (glibc), so that big tensors reuse memory.

glibc's malloc serves a request above its mmap threshold (128 KiB at first, rising with use to at
most 32 MiB) with fresh pages from ``mmap`` and unmaps them on free. torch allocates CPU tensors with
malloc, so each large temporary of a training step is new memory: one page fault per 4 KiB page on
its first write, and the kernel zeroes every page. For the chunkwise mLSTM at long contexts that is
a large share of the time. Measured on the project's 2-core EPYC, one thread, fp32 forward + backward
at B=1, H=4, d=128, page faults per call once warm: S=4,096 10-28 thousand untuned, 0 tuned; S=16,384
171 thousand (670 MB of fresh pages a call), 0 tuned. Time per call (one process each way, same
hour): S=1,024 35.6 -> 26.6 ms (8.2 -> 0.0 ms of it system time), S=4,096 125.5 -> 106.9 ms.
The price: that process kept 1,009 MB resident after an S=16,384 call, against 524-556 MB untuned.

:func:`tune_cpu_allocator` raises the mmap threshold, so large blocks come from the heap and are
reused after a free, and the trim threshold, so the heap keeps up to ``keep_bytes`` of freed memory
instead of returning it to the system. The cost is memory: the process's resident size stays near
its peak plus up to ``keep_bytes``. The ``xlram`` command calls it on start; a program that imports
xlram calls it itself (or sets glibc's ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``).
"""

from __future__ import annotations

import ctypes
import os
import platform

# Switches the tuning off where it would otherwise run (the ``xlram`` command): XLRAM_MALLOC=0.
ENV = "XLRAM_MALLOC"
# glibc's own variables: a user who set any of them has chosen, and is left alone.
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters (malloc.h)
_DONE: list[bool] = []


def tune_cpu_allocator(keep_bytes: int = 1 << 30) -> bool:
    """Set glibc's mmap and trim thresholds to ``keep_bytes`` (and a 64 MiB top pad) for this process.

    Returns True if the settings were applied now or by an earlier call; False where this is not glibc
    (macOS, Windows, musl), where ``XLRAM_MALLOC=0``, or where one of glibc's ``MALLOC_*`` variables
    is set. Safe to call more than once.
    """
    if isinstance(keep_bytes, bool) or not isinstance(keep_bytes, int) or not 0 < keep_bytes < 2**31:
        raise ValueError(f"keep_bytes must be an int in (0, 2**31), got {keep_bytes!r}")
    if _DONE:
        return _DONE[0]
    if os.environ.get(ENV, "1") == "0" or any(name in os.environ for name in GLIBC_ENV):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # An older glibc caps the mmap threshold at 32 MiB (half its largest heap): then that.
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, keep_bytes) == 1 or mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    trim_ok = mallopt(_M_TRIM_THRESHOLD, keep_bytes) == 1
    ok = mmap_ok and trim_ok and mallopt(_M_TOP_PAD, 64 << 20) == 1
    _DONE.append(ok)
    return ok
