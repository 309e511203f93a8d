"""Keep freed CPU blocks of up to 32 MiB in the process heap (glibc), so that big tensors reuse memory.

glibc's malloc serves a request above its mmap threshold (128 KiB at first, rising with use to at
most 32 MiB) with fresh pages from ``mmap`` and unmaps them on free, and gives the top of its heap
back to the system once more than twice that is free there. torch allocates CPU tensors with malloc,
so many large temporaries of a training step are new memory: one page fault per 4 KiB page on its
first write, and the kernel zeroes every page. Measured on the project's 2-core EPYC, one thread,
fp32 chunkwise mLSTM forward + backward at B=1, H=4, d=128, once warm, one process each way in
alternation: S=1,024 28.7-30.6 -> 24.4-24.8 ms (CPU time, system time included); S=4,096 132-133 ->
97-98 ms, with up to 28 thousand page faults per call (a median of about 14 thousand) -> 0-2
thousand. The price: such a process kept 694-790 MB resident against 527-687 MB untuned.

:func:`tune_cpu_allocator` fixes the mmap threshold at 32 MiB (so glibc's first large frees do not
decide it) and raises the trim threshold, so the heap keeps up to ``keep_bytes`` of freed memory
instead of returning it. Larger blocks still come from mmap: at S=16,384 (64 MB temporaries) the
faults stay (90-135 thousand per call against 139-172 thousand untuned). The ``xlram`` command and
``python -m xlram.train`` call it on start; a program that imports xlram calls it itself (or sets
glibc's ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``).
"""

from __future__ import annotations

import ctypes
import os
import platform

import torch

# Switches the tuning off where it would otherwise run (the ``xlram`` command): XLRAM_MALLOC=0.
ENV = "XLRAM_MALLOC"
# glibc's own variables: a user who set any of them has chosen, and is left alone.
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters (malloc.h)
# Blocks above this still come from mmap and go back to the system on free: a block in the heap pins
# the memory below it while it lives, and an early version that kept blocks of up to 1 GiB in the heap
# took a process that peaks at 10 GB (the official package's training at context 4,096) to 14.7 GB
# and the OOM killer. 32 MiB is as far as glibc raises its threshold by itself.
MMAP_BYTES = 32 << 20
_DONE: list[bool] = []


def tune_cpu_allocator(keep_bytes: int = 512 << 20) -> bool:
    """Set glibc's trim threshold to ``keep_bytes``, its mmap threshold to 32 MiB and its top pad to
    64 MiB, for this process.

    Returns True if the settings were applied now or by an earlier call; False where this is not glibc
    (macOS, Windows, musl), where ``XLRAM_MALLOC=0``, or where one of glibc's ``MALLOC_*`` variables
    is set. Safe to call more than once: a later call changes nothing, whatever its ``keep_bytes``.
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
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_BYTES), (_M_TRIM_THRESHOLD, keep_bytes), (_M_TOP_PAD, 64 << 20)))
    _DONE.append(ok)
    return ok


_MADV_HUGEPAGE = 14  # linux/mman.h
_HUGE_PAGE = 2 << 20
_MADVISE: list = []


def _madvise():
    """libc's madvise where transparent huge pages can be asked for (Linux, THP not "never"), else None."""
    if not _MADVISE:
        fn = None
        try:
            with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
                mode = f.read()
            if "[never]" not in mode and os.environ.get(ENV, "1") != "0":
                fn = ctypes.CDLL("libc.so.6", use_errno=True).madvise
                fn.argtypes, fn.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _MADVISE.append(fn)
    return _MADVISE[0]


def empty(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty`` on CPU. A tensor of ``MMAP_BYTES`` or more is, unless glibc's heap has that much
    free, new memory from mmap, faulted in 4 KiB at a time on its first write; it is first marked for
    transparent huge pages (madvise), so that where the kernel has them it faults in 2 MiB at a time.
    The chunkwise mLSTM's outputs and saved tensors at S = 16,384 (fwd+bwd, B = 1, H = 4, d = 128,
    one thread): 49 thousand faults and 56-96 ms of system time per call -> 9.8 thousand and 16-28
    ms; 213-249 -> 177-200 ms in all."""
    t = torch.empty(*shape, dtype=dtype)
    nbytes = t.numel() * t.element_size()
    madvise = _madvise() if nbytes >= MMAP_BYTES else None
    if madvise is not None:
        start = -(-t.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        end = (t.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            madvise(start, end - start, _MADV_HUGEPAGE)  # advice only: a failure changes nothing
    return t
