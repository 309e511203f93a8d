"""Optional numba kernels: built on first use, switched off with ``XLRAM_NUMBA=0``.

numba is a dependency, but every numba path has a torch twin that runs where numba is missing or
switched off (e.g. to compare the two, or to rule numba out when something looks wrong).
"""

from __future__ import annotations

import os
from collections.abc import Callable


def enabled() -> bool:
    """Whether numba may be used: ``XLRAM_NUMBA`` is not ``0`` (read on every call)."""
    return os.environ.get("XLRAM_NUMBA", "1") != "0"


class LazyKernels:
    """What ``build()`` returns (numba-compiled kernels), built once on the first :meth:`get`.

    :meth:`get` returns None where numba is switched off or cannot be imported.
    """

    def __init__(self, build: Callable[[], object]):
        self._build, self._kernels, self._tried = build, None, False

    def get(self):
        if not enabled():
            return None
        if not self._tried:
            self._tried = True
            try:
                self._kernels = self._build()
            except ImportError:
                self._kernels = None
        return self._kernels


def numpy_views(lead: int, *tensors) -> tuple:
    """The tensors as numpy arrays for a kernel, each with its first ``lead`` dims merged into one:
    views of their memory, or of a contiguous copy where a tensor is not contiguous (so a tensor that
    a kernel writes must be contiguous)."""
    return tuple([t.detach().contiguous().numpy().reshape(-1, *t.shape[lead:]) for t in tensors])
