"""Row-major GEMM on sub-blocks of flat buffers, callable from compiled code.

np.dot inside @njit needs whole contiguous matrices and cannot accumulate.
This calls the same BLAS (SciPy's, through Numba's numba_xxgemm helper, which
resolves it by name, so compiled kernels stay cacheable) with explicit offsets
and leading dimensions: a thread can compute a column block of a layer in place,
and beta = 1 accumulates.
"""
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .compile import jit

_char = ir.IntType(8)


@intrinsic
def _xgemm(typingctx, transa, transb, m, n, k, alpha, A, a_off, lda, B, b_off, ldb, beta, C, c_off, ldc):
    """Column-major BLAS xGEMM on A, B, C starting at element offsets a_off, b_off, c_off."""
    dtype = C.dtype
    if dtype not in (types.float32, types.float64) or A.dtype != dtype or B.dtype != dtype:
        return None
    kind = ord("s") if dtype == types.float32 else ord("d")
    sig = types.void(types.boolean, types.boolean, types.intp, types.intp, types.intp, dtype, A, types.intp, types.intp,
                     B, types.intp, types.intp, dtype, C, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        (ta, tb, m_, n_, k_, alpha_, a_arr, a_off_, lda_, b_arr, b_off_, ldb_, beta_, c_arr, c_off_, ldc_) = args
        intp_t = context.get_value_type(types.intp)
        void_p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.IntType(32), [_char, _char, _char, intp_t, intp_t, intp_t, void_p, void_p,
                                                intp_t, void_p, intp_t, void_p, void_p, intp_t])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")

        def data_ptr(arr_type, value, offset):
            arr = context.make_array(arr_type)(context, builder, value)
            return builder.bitcast(builder.gep(arr.data, [offset]), void_p)

        def trans_char(flag):
            return builder.select(flag, ir.Constant(_char, ord("t")), ir.Constant(_char, ord("n")))

        alpha_slot = cgutils.alloca_once_value(builder, alpha_)
        beta_slot = cgutils.alloca_once_value(builder, beta_)
        builder.call(fn, [ir.Constant(_char, kind), trans_char(ta), trans_char(tb), m_, n_, k_,
                          builder.bitcast(alpha_slot, void_p), data_ptr(signature.args[6], a_arr, a_off_), lda_,
                          data_ptr(signature.args[9], b_arr, b_off_), ldb_, builder.bitcast(beta_slot, void_p),
                          data_ptr(signature.args[13], c_arr, c_off_), ldc_])
        return context.get_dummy_value()

    return sig, codegen


@jit
def gemm(trans_a, trans_b, m, n, k, alpha, A, a_off, lda, B, b_off, ldb, beta, C, c_off, ldc):
    """Row-major C[m, n] = alpha * op(A) @ op(B) + beta * C on flat 1-D buffers.

    op(A) is (m, k): A is stored row-major from A[a_off] with row stride lda
    (as (k, m) when trans_a). Likewise B, C. Does nothing when m, n or k is 0
    (BLAS would reject the empty shapes), except scale C by beta when k is 0.
    """
    if m == 0 or n == 0:
        return
    if k == 0:
        for i in range(m):
            for j in range(n):
                C[c_off + i * ldc + j] *= beta
        return
    # A row-major matrix is its transpose in column-major order: C^T = op(B)^T @ op(A)^T.
    _xgemm(trans_b, trans_a, n, m, k, alpha, B, b_off, ldb, A, a_off, lda, beta, C, c_off, ldc)


_WARM_COLUMNS = 1024  # a product 1024 rows tall in BLAS's column-major terms: smaller ones did not do it
_WARM_ROUNDS = 4      # calls per thread, so that the threads' calls overlap and each takes its own buffer


@jit(parallel=True)
def _touch_buffers(n_parts):
    for part in prange(n_parts):
        a = np.ones(128 * _WARM_COLUMNS, dtype=np.float32)
        c = np.empty(128 * _WARM_COLUMNS, dtype=np.float32)
        for _ in range(_WARM_ROUNDS):
            gemm(False, False, 128, _WARM_COLUMNS, 128, np.float32(1.0), a, 0, 128, a, 0, _WARM_COLUMNS,
                 np.float32(0.0), c, 0, _WARM_COLUMNS)


_warmed = 0
_warm_lock = threading.Lock()


def warm_up(n_threads):
    """Make each of n_threads Numba workers call BLAS once with a large product, once per process.

    Measured with SciPy's OpenBLAS (Haswell kernels, AMD EPYC): until a thread's first GEMM with
    about 1,000 rows (column-major), the 256-wide products of a training batch ran at 10 instead
    of 36 GFLOP/s, whatever came later, and the same results bit for bit either way; which
    process was fast depended on what it had computed before. Costs ~4 ms once.
    """
    global _warmed
    if n_threads <= _warmed or numba.config.DISABLE_JIT:
        return
    with _warm_lock:
        if n_threads > _warmed:
            _touch_buffers(n_threads)
            _warmed = n_threads


def _strided(buf, offset, rows, cols, ld):
    """A (rows, cols) view of flat `buf` starting at `offset` with row stride `ld`."""
    item = buf.itemsize
    return np.lib.stride_tricks.as_strided(buf[offset:], shape=(rows, cols), strides=(ld * item, item))


def _gemm_python(trans_a, trans_b, m, n, k, alpha, A, a_off, lda, B, b_off, ldb, beta, C, c_off, ldc):
    if m == 0 or n == 0:
        return
    a = _strided(A, a_off, k, m, lda).T if trans_a else _strided(A, a_off, m, k, lda)
    b = _strided(B, b_off, n, k, ldb).T if trans_b else _strided(B, b_off, k, n, ldb)
    c = _strided(C, c_off, m, n, ldc)
    c[...] = alpha * (a @ b) + (beta * c if beta != 0 else 0)


if numba.config.DISABLE_JIT:  # pure-Python runs (coverage, debugging): intrinsics cannot run there
    gemm = _gemm_python
