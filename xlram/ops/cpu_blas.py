"""Batched matrix products on CPU through OpenBLAS, with its AVX-512 kernels where the CPU has them.

torch's CPU matmuls go to MKL, which on AMD CPUs runs a generic path: on this project's machine (an
AMD EPYC with AVX-512) one thread reached about 100 GFLOP/s in fp32, numpy's OpenBLAS about 115
(its AVX2 kernels: the machine's environment sets ``OPENBLAS_CORETYPE=Haswell``; without it, OpenBLAS
detects SkylakeX), and OpenBLAS with its SkylakeX (AVX-512) kernels about 220. This module loads
its own OpenBLAS, the ``scipy-openblas32`` wheel (a library of its own, independent of numpy's), asks
for the SkylakeX kernels when the CPU has the AVX-512 subsets they use, and calls its
``cblas_?gemm_batch_strided`` once per batched product.

OpenBLAS runs on one thread, and by default only while torch does too (``torch.get_num_threads()``
is 1); on more, products stay torch's. Two thread pools, torch's OpenMP and OpenBLAS's, fought for
the two cores here: the demo model's training step ran at 2,164 tokens/s with both on two threads,
against 8,442 for torch alone; with OpenBLAS on one thread beside torch's two, 8,131.

Which library runs is measured, once per process, at the first product: a batched fp32 product of
the chunkwise mLSTM's shape in both, and OpenBLAS takes over only where it is at least 10% faster.
On an Intel Xeon (the GPU machine's host) MKL won: 108-146 against 82-101 GFLOP/s for OpenBLAS's
SkylakeX kernels on the mLSTM's shapes. ``XLRAM_CPU_BLAS`` = ``auto`` (default), ``openblas`` or ``torch``
sets the choice; ``info()`` says what was loaded, measured and chosen.

The kernel set of this copy is chosen here, not by ``OPENBLAS_CORETYPE``: that variable is read by
every OpenBLAS in the process, and this machine's environment sets it to Haswell for all of them.
``XLRAM_OPENBLAS_CORETYPE`` names another set for this copy (e.g. Haswell, Zen).

    bmm(a, b)                   (N, m, k) @ (N, k, n) -> (N, m, n)
    bmm(a, b, out=c, beta=1.0)  c += a @ b in place
    linear_t(x, w)              (m, k) @ (n, k)ᵀ -> (m, n), a layer's product, fast for few rows

fp32 and fp64 CPU tensors whose matrices are row- or column-major (unit stride in one of the last two
dims: ``x.transpose(-1, -2)`` of a contiguous tensor qualifies). Anything else (another dtype or
device, other strides, sizes over 2^31, no library) goes to ``torch.bmm`` / ``torch.baddbmm``, so the
result is the same function either way; so does everything under ``torch.compile``'s tracing. Not
differentiable: for use inside autograd Functions and under no_grad.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
import time
from pathlib import Path

import torch

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_INT_MAX = 2**31 - 1
# What OpenBLAS's SkylakeX kernels need (Skylake-SP's AVX-512 subsets).
_AVX512_FLAGS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}

_state: dict = {}
_load_lock = threading.Lock()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _library_path() -> Path | None:
    """The scipy-openblas32 shared library, found without importing the package (its import loads
    the library, and OpenBLAS picks its kernels once, when it is loaded)."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib_dir = Path(next(iter(spec.submodule_search_locations))) / "lib"
    libs = sorted(p for p in lib_dir.glob("libscipy_openblas*") if p.suffix in (".so", ".dylib")
                  or ".so." in p.name)
    return libs[0] if libs else None


def _load():
    """Load the library once; returns the state dict (``lib`` is None when unavailable)."""
    if _state:
        return _state
    with _load_lock:
        if not _state:
            _state.update(_open())
    return _state


def _set_environ(values: dict) -> None:
    """Set (a string) or remove (None) environment variables."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _open() -> dict:
    """The library and its functions (``lib`` None and the reason where there is none), and the
    route: "openblas" or "torch"."""
    choice = os.environ.get("XLRAM_CPU_BLAS", "auto").lower() or "auto"
    if choice not in ("auto", "openblas", "torch"):
        raise ValueError(f"XLRAM_CPU_BLAS: expected auto, openblas or torch, got {choice!r}")
    st = {"lib": None, "reason": "", "core": "", "route": "torch", "chosen_by": choice}
    if choice == "torch":
        st["reason"] = "XLRAM_CPU_BLAS=torch"
        return st
    path = _library_path()
    if path is None:
        st["reason"] = "no scipy-openblas32 shared library (not installed, or not a .so/.dylib build)"
        return st
    core = os.environ.get("XLRAM_OPENBLAS_CORETYPE") or ("SkylakeX" if _AVX512_FLAGS <= _cpu_flags() else "")
    # Read once, by the library's constructor: the kernel set ("" lets it detect the CPU), and one
    # thread, so that it starts no thread pool at all. Restored right after.
    settings = {"OPENBLAS_CORETYPE": core or None, "OPENBLAS_NUM_THREADS": "1"}
    previous = {name: os.environ.get(name) for name in settings}
    _set_environ(settings)
    try:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
        fns = {}
        for name, real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
            fn = getattr(lib, f"scipy_cblas_{name}gemm_batch_strided")
            i, p = ctypes.c_int, ctypes.c_void_p
            fn.argtypes = [i, i, i, i, i, i, real, p, i, i, p, i, i, real, p, i, i, i]
            fn.restype = None
            fns[name] = fn
        lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
        lib.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
        lib.scipy_openblas_set_num_threads(1)
    except (OSError, AttributeError) as e:
        st["reason"] = f"{path.name}: {e}"
        return st
    finally:
        _set_environ(previous)
    st.update(lib=lib, gemm={torch.float32: fns["s"], torch.float64: fns["d"]}, path=str(path),
              core=lib.scipy_openblas_get_corename().decode())
    if choice == "openblas":
        st["route"] = "openblas"
    else:
        st["measured_gflops"] = _race(st)
        fast = st["measured_gflops"]
        st["route"] = "openblas" if fast["openblas"] >= 1.1 * fast["torch"] else "torch"
    return st


def _race(st) -> dict:
    """fp32 GFLOP/s of one batched product, (32, 64, 128) @ (32, 128, 128)ᵀ (the chunkwise mLSTM's
    q Cᵀ at head dim 128), in torch and in OpenBLAS, on one thread (on two, the wait at OpenMP's
    barriers made torch's figure swing 2x from run to run on a shared machine): the best of 7
    alternating rounds, about 30 ms in all here. torch's thread count is 1 for that time, then restored."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 64, 128, generator=g)
    b = torch.randn(32, 128, 128, generator=g).transpose(1, 2)
    out = torch.empty(32, 64, 128)
    runs = {"torch": lambda: torch.bmm(a, b, out=out), "openblas": lambda: _openblas(st, a, b, out, 0.0)}
    best = dict.fromkeys(runs, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for fn in runs.values():
            fn()  # warm-up: first-call set-up
        for _ in range(7):
            for name, fn in runs.items():
                t0 = time.process_time()
                for _ in range(3):
                    fn()
                best[name] = min(best[name], (time.process_time() - t0) / 3)
    finally:
        torch.set_num_threads(threads)
    flop = 2.0 * 32 * 64 * 128 * 128
    return {name: round(flop / max(t, 1e-9) / 1e9, 1) for name, t in best.items()}


def info() -> dict:
    """{"available", "route" ("openblas" or "torch": the race's or the setting's choice, which applies
    while torch runs on one thread), "chosen_by" (auto, openblas or torch), "measured_gflops" (the
    race that chose, if one ran), "core" (OpenBLAS's kernel set, e.g. "SkylakeX"), "path", "reason"
    if there is no OpenBLAS}."""
    st = _load()
    out = {"available": st["lib"] is not None, "route": st["route"], "chosen_by": st["chosen_by"],
           "core": st["core"]}
    if "measured_gflops" in st:
        out["measured_gflops"] = st["measured_gflops"]
    out.update({"path": st["path"]} if st["lib"] is not None else {"reason": st["reason"]})
    return out


def available() -> bool:
    """Whether the OpenBLAS library is loaded (``bmm(..., library="openblas")`` can use it)."""
    return _load()["lib"] is not None


def gemm_address(dtype: torch.dtype) -> int:
    """The address of the loaded OpenBLAS's ``cblas_sgemm`` (fp32) or ``cblas_dgemm`` (fp64), for
    kernels that call it themselves (``blas_numba``); 0 where there is no library or other dtypes."""
    st = _load()
    name = {torch.float32: "scipy_cblas_sgemm", torch.float64: "scipy_cblas_dgemm"}.get(dtype)
    if st["lib"] is None or name is None:
        return 0
    addresses = st.setdefault("gemm_addresses", {})  # looked up once: callers ask on every call
    if name not in addresses:
        addresses[name] = ctypes.cast(getattr(st["lib"], name), ctypes.c_void_p).value or 0
    return addresses[name]


def chosen() -> str:
    """The library the race or ``XLRAM_CPU_BLAS`` chose for this process, whatever torch's thread
    count: "openblas" (loaded and chosen) or "torch"."""
    st = _load()
    return "openblas" if st["lib"] is not None and st["route"] == "openblas" else "torch"


def route() -> str:
    """The library products go to by default now: "openblas" where it was chosen and torch runs on
    one thread, else "torch"."""
    st = _load()
    return "openblas" if st["route"] == "openblas" and torch.get_num_threads() == 1 else "torch"


def _layout(x: torch.Tensor):
    """(transpose flag, leading dimension) of the matrices of a 3-d tensor, or None."""
    rows, cols = x.shape[-2], x.shape[-1]
    if x.stride(-1) == 1 and x.stride(-2) >= max(1, cols):
        return _NO_TRANS, x.stride(-2)
    if x.stride(-2) == 1 and x.stride(-1) >= max(1, rows):
        return _TRANS, x.stride(-1)
    return None


def bmm(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None, beta: float = 0.0,
        library: str | None = None):
    """a @ b for a (N, m, k), b (N, k, n); with ``out`` (N, m, n) the result goes there, plus ``beta``
    times what ``out`` held (beta 0: out's contents are ignored, as in BLAS); ``out`` must not overlap
    ``a`` or ``b``. ``library``: "openblas" or "torch" instead of the chosen route (``route()``).
    Returns the result."""
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"bmm: expected (N, m, k) and (N, k, n), got {tuple(a.shape)} and {tuple(b.shape)}")
    st = _load()
    if _openblas_route(st, library):
        res = _openblas(st, a, b, out, beta)
        if res is not None:
            return res
    if out is None:
        return torch.bmm(a, b)
    if beta == 0.0:
        return torch.bmm(a, b, out=out)
    return torch.baddbmm(out, a, b, beta=beta, out=out)


def _openblas_route(st, library) -> bool:
    """OpenBLAS for this call: asked for, or chosen and torch on one thread; loaded; and not under
    torch.compile's tracing (dynamo cannot trace a foreign call)."""
    if st["lib"] is None or torch.compiler.is_compiling():
        return False
    if library is not None:
        return library == "openblas"
    return st["route"] == "openblas" and torch.get_num_threads() == 1


def _openblas(st, a, b, out, beta):
    """``bmm`` through OpenBLAS, or None where it does not apply."""
    N, m, k = a.shape
    n = b.shape[2]
    gemm = st["gemm"].get(a.dtype)
    la, lb = _layout(a), _layout(b)
    lo = _layout(out) if out is not None else (_NO_TRANS, n)
    usable = (
        gemm is not None and a.device.type == "cpu" and b.dtype == a.dtype and b.device.type == "cpu"
        and (out is None or (out.dtype == a.dtype and out.device.type == "cpu" and out.shape == (N, m, n)))
        and la is not None and lb is not None and lo is not None and lo[0] == _NO_TRANS
        and min(N, m, n, k) > 0
        and max(N, m, n, k, a.stride(0), b.stride(0), la[1], lb[1], lo[1], m * n) <= _INT_MAX
        and (out is None or N == 1 or (m - 1) * lo[1] + n <= out.stride(0) <= _INT_MAX)
    )
    if not usable:
        return None
    if out is None:
        out = torch.empty(N, m, n, dtype=a.dtype)
    gemm(_ROW_MAJOR, la[0], lb[0], m, n, k, 1.0, a.data_ptr(), la[1], a.stride(0),
         b.data_ptr(), lb[1], b.stride(0), beta, out.data_ptr(), lo[1], out.stride(0), N)
    return out


# A product with few rows runs in OpenBLAS's small-matrix kernels, which skip packing the operands,
# when m * n * k is at most about 1e6: the columns of the weight are then taken in blocks of
# ``_SMALL_BLOCK`` (one batched call over the blocks, x shared). One thread, x (16, 256) @ wᵀ
# (256, 1,024): 44 µs in blocks of 64, 82-88 in one product, 106 for torch's MKL; x (4, 256):
# 13 against 62 and 45 µs.
_SMALL_MNK = 1_000_000
_SMALL_BLOCK = 64


def small_block(m: int, k: int) -> int:
    """How many of a weight's rows one small-matrix product takes, for x (m, k) (see above); plain
    integer arithmetic, so that numba kernels can compile it (``xlram.kernels.numba_step``)."""
    block = _SMALL_BLOCK
    while block > 16 and m * block * k > _SMALL_MNK:
        block //= 2
    return block


def linear_t(x: torch.Tensor, w: torch.Tensor, *, out: torch.Tensor | None = None, beta: float = 0.0,
             library: str | None = None):
    """x @ wᵀ for x (m, k) and a layer's weight w (n, k), both row-major (unit last stride); with
    ``out`` (m, n, unit last stride) the result goes there plus ``beta`` times what it held. Where
    the OpenBLAS route does not apply, ``bmm``'s rules (and torch) take over; ``library`` as there."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"linear_t: expected (m, k) and (n, k), got {tuple(x.shape)} and {tuple(w.shape)}")
    m, k = x.shape
    n = w.shape[0]
    block = small_block(m, k)
    st = _load()
    gemm = st["gemm"].get(x.dtype) if _openblas_route(st, library) else None
    split = (
        gemm is not None and m * block * k <= _SMALL_MNK and n >= 2 * block
        and x.device.type == "cpu" and w.dtype == x.dtype and w.device.type == "cpu"
        and x.stride(1) == 1 and w.stride(1) == 1 and x.stride(0) >= k and w.stride(0) >= k
        and (out is None or (out.shape == (m, n) and out.dtype == x.dtype and out.device.type == "cpu"
                             and out.stride(1) == 1 and out.stride(0) >= n))
        and min(m, k) > 0
        and max(x.stride(0), w.stride(0) * block, n if out is None else out.stride(0)) <= _INT_MAX
    )
    if not split:
        res = bmm(x[None], w.t()[None], out=None if out is None else out[None], beta=beta, library=library)
        return res[0]
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype)
    blocks, ldw, ldc = n // block, w.stride(0), out.stride(0)
    gemm(_ROW_MAJOR, _NO_TRANS, _TRANS, m, block, k, 1.0, x.data_ptr(), x.stride(0), 0,
         w.data_ptr(), ldw, block * ldw, beta, out.data_ptr(), ldc, block, blocks)
    rest = n - blocks * block
    if rest:
        size = x.element_size()
        gemm(_ROW_MAJOR, _NO_TRANS, _TRANS, m, rest, k, 1.0, x.data_ptr(), x.stride(0), 0,
             w.data_ptr() + blocks * block * ldw * size, ldw, 0, beta,
             out.data_ptr() + blocks * block * size, ldc, 0, 1)
    return out
