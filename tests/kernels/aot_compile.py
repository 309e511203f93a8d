"""Compile, ahead of time and without a GPU, every Triton kernel exactly as the launchers launch it.

Run as a script (``python tests/kernels/aot_compile.py ARCH DTYPE``, TRITON_INTERPRET unset) by
``test_triton_compile.py``. It replaces ``JITFunction.run`` with a function that builds the kernel's
signature from the arguments of the launch (tensors, ints, floats, constexprs), compiles it for
``GPUTarget("cuda", ARCH, 32)`` down to a cubin (ptxas included) and launches nothing; then it
calls the public kernel functions forward and backward on CPU tensors at the TFLA head sizes.
This catches what the interpreter cannot: typing, layout and ptxas errors, and shared memory over
the device limit. It prints one line per kernel and exits non-zero on the first failure.
"""

import inspect
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

ARCH = int(sys.argv[1]) if len(sys.argv) > 1 else 90
DTYPE = getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.bfloat16
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}[ARCH]  # max dynamic smem per block
TT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas")
seen = set()


def compile_launch(self, *args, grid, warmup=False, **kwargs):
    params = list(inspect.signature(self.fn).parameters)
    values = dict(zip(params, args, strict=False))
    values.update({k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS})
    signature, constexprs = {}, {}
    for idx, p in enumerate(params):
        v = values[p]
        if self.params[idx].is_constexpr:
            signature[p] = "constexpr"
            constexprs[(idx,)] = v
        elif isinstance(v, torch.Tensor):
            signature[p] = "*" + TT[v.dtype]
        elif isinstance(v, float):
            signature[p] = "fp32"
        elif isinstance(v, bool | int):
            signature[p] = "i32" if abs(int(v)) < 2**31 else "i64"
        else:
            raise TypeError(f"{self.fn.__name__}: cannot type argument {p}={v!r}")
    key = (self.fn.__name__, tuple(sorted((str(k), str(v)) for k, v in constexprs.items())))
    if key in seen:
        return None
    seen.add(key)
    options = {k: kwargs[k] for k in LAUNCH_OPTIONS if k in kwargs}
    src = ASTSource(fn=self, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", ARCH, 32), options=options)
    shared = compiled.metadata.shared
    print(f"sm_{ARCH} {TT[DTYPE]} {self.fn.__name__}: cubin {len(compiled.asm['cubin'])} B, "
          f"shared {shared} B, warps {compiled.metadata.num_warps}", flush=True)
    assert shared <= SHARED_LIMIT, f"{self.fn.__name__}: shared memory {shared} B > {SHARED_LIMIT} B"
    return None


JITFunction.run = compile_launch

import xlram.kernels.triton.mlstm_chunkwise as mc  # noqa: E402
import xlram.kernels.triton.mlstm_step as ms  # noqa: E402
import xlram.kernels.triton.slstm as sl  # noqa: E402
from xlram.ops.mlstm import MLSTMState  # noqa: E402

for mod in (mc, ms, sl):  # let CPU tensors through the device check; nothing is launched
    mod.interpreting = lambda: True

B, H, S, DK, DV = 1, 2, 256, 128, 256  # the TFLA head sizes; S only sets the grid
q, k = (torch.randn(B, H, S, DK).to(DTYPE).requires_grad_(True) for _ in range(2))
v = torch.randn(B, H, S, DV).to(DTYPE).requires_grad_(True)
i, f = (torch.randn(B, H, S, requires_grad=True) for _ in range(2))
h, st = mc.mlstm_chunkwise_triton(q, k, v, i, f)
torch.autograd.backward((h, st.C), (torch.zeros_like(h), torch.zeros_like(st.C)))

with torch.no_grad():
    ms.mlstm_step_triton(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0],
                         MLSTMState(torch.zeros(B, H, DK, DV), torch.zeros(B, H, DK), torch.zeros(B, H)))

NH, DH = 4, 192
wx = torch.randn(2, 4, 4, NH, DH).to(DTYPE).requires_grad_(True)
r = torch.randn(NH, DH, 4, DH).to(DTYPE).requires_grad_(True)
b = torch.zeros(4, NH, DH).to(DTYPE).requires_grad_(True)
out, fin = sl.slstm_triton(wx, r, b)
torch.autograd.backward(out, torch.zeros_like(out))
with torch.no_grad():
    sl.slstm_triton(wx, r, b)
print(f"compiled {len(seen)} kernels")
