"""Matrix products inside numba kernels: OpenBLAS's ``cblas_?gemm`` called through a pointer.

A numba kernel that loops over chunks and multiplies small matrices in between its elementwise work
keeps every intermediate in cache, where a batched product per step of the algorithm sends each one
through memory. numba cannot call a ctypes function from cached code (the address differs from one
process to the next), so the kernel takes the address as an argument: ``cpu_blas.gemm_address(dtype)``
gives it (the library ``cpu_blas`` loaded, with the kernel set it chose), and ``gemm(fn, ...)`` calls
it. Import this module only where numba is importable (inside a kernel's build).

    gemm(fn, trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)

C (m, n) = alpha op(A) op(B) + beta C in row-major storage, op(X) = X or Xᵀ (``trans_*`` False/True);
A, B, C are arrays of the dtype of alpha (their first element is the matrix's), ``ld*`` their row
strides in elements. With beta 0, C's contents are not read (BLAS's rule). Callable only from numba
code.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


@intrinsic
def gemm(typingctx, fn, trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    """See the module docstring."""
    floats = (types.float32, types.float64)
    ints = (fn, m, n, k, lda, ldb, ldc)
    if (alpha not in floats or beta != alpha or any(not isinstance(t, types.Integer) for t in ints)
            or any(not isinstance(t, types.Array) or t.dtype != alpha for t in (A, B, C))
            or any(not isinstance(t, types.Boolean) for t in (trans_a, trans_b))):
        return None
    sig = types.void(fn, trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)

    def codegen(context, builder, signature, args):
        i32, p8 = ir.IntType(32), ir.IntType(8).as_pointer()
        ft = ir.FloatType() if alpha == types.float32 else ir.DoubleType()
        fnty = ir.FunctionType(ir.VoidType(), [i32] * 6 + [ft, p8, i32, p8, i32, ft, p8, i32])
        f = builder.inttoptr(args[0], fnty.as_pointer())

        def as_i32(value):
            width = value.type.width
            if width == 32:
                return value
            return builder.trunc(value, i32) if width > 32 else builder.sext(value, i32)

        def trans(flag):
            return builder.select(builder.trunc(flag, ir.IntType(1)) if flag.type.width > 1 else flag,
                                  i32(_TRANS), i32(_NO_TRANS))

        def data(index):
            arr = cgutils.create_struct_proxy(signature.args[index])(context, builder, value=args[index])
            return builder.bitcast(arr.data, p8)

        builder.call(f, [i32(_ROW_MAJOR), trans(args[1]), trans(args[2]), as_i32(args[3]), as_i32(args[4]),
                         as_i32(args[5]), args[6], data(7), as_i32(args[8]), data(9), as_i32(args[10]),
                         args[11], data(12), as_i32(args[13])])
        return context.get_dummy_value()

    return sig, codegen
