"""fastbp.blas.gemm: row-major sub-block GEMM with offsets, leading dimensions and beta."""
import numba
import numpy as np
import pytest

from fastbp.core.blas import gemm


@numba.njit
def _sub_gemm(ta, tb, A, B, C, rows, cols, alpha, beta):
    """C[rows, cols] = alpha * op(A)[rows, :] @ op(B)[:, cols] + beta * C[rows, cols] via offsets."""
    r0, r1 = rows
    c0, c1 = cols
    k = A.shape[0] if ta else A.shape[1]
    a_off = r0 if ta else r0 * A.shape[1]
    b_off = c0 * B.shape[1] if tb else c0
    gemm(ta, tb, r1 - r0, c1 - c0, k, alpha, A.ravel(), a_off, A.shape[1], B.ravel(), b_off, B.shape[1],
         beta, C.ravel(), r0 * C.shape[1] + c0, C.shape[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_sub_block_gemm_matches_numpy(dtype, ta, tb, beta):
    rng = np.random.default_rng(0)
    m, k, n = 9, 5, 11
    A = rng.normal(size=(k, m) if ta else (m, k)).astype(dtype)
    B = rng.normal(size=(n, k) if tb else (k, n)).astype(dtype)
    C = rng.normal(size=(m, n)).astype(dtype)
    expected = C.copy()
    full = (A.T if ta else A) @ (B.T if tb else B)
    expected[2:7, 3:10] = 2.0 * full[2:7, 3:10] + beta * C[2:7, 3:10]
    _sub_gemm(ta, tb, A, B, C, (2, 7), (3, 10), dtype(2.0), dtype(beta))
    np.testing.assert_allclose(C, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_empty_inner_dimension_only_scales():
    A = np.zeros((3, 0))
    B = np.zeros((0, 4))
    C = np.ones((3, 4))
    _sub_gemm(False, False, A, B, C, (0, 3), (0, 4), 1.0, 0.5)
    np.testing.assert_array_equal(C, 0.5)
