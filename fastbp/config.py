"""The one place that owns Numba compile settings and thread control.

Environment variables override the defaults:
  FASTBP_FASTMATH=0   compile without fast-math (strict IEEE ordering)
  FASTBP_CACHE=0      do not write compiled kernels to Numba's on-disk cache
"""
import contextlib
import os

import numba
# Numba's np.dot calls the BLAS that SciPy bundles. Load it now, so threadpoolctl
# sees it and can limit its threads; loaded lazily it would escape the limit and
# spin extra threads inside every parallel kernel.
import scipy.linalg.cython_blas  # noqa: F401

# No 'nnan'/'ninf': the epoch loop must still see NaN/inf to report divergence.
# No 'afn': approximate exp/log would move float64 results away from PyTorch's.
# No 'reassoc': with it, a fresh compile and the cached kernel round differently,
# so the same seed would not give bit-identical parameters across processes.
_FASTMATH_FLAGS = {"nsz", "arcp", "contract"}


def _env_flag(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


FASTMATH = _FASTMATH_FLAGS if _env_flag("FASTBP_FASTMATH", True) else False
CACHE = _env_flag("FASTBP_CACHE", True)


def jit(fn=None, *, parallel=False):
    """numba.njit with the project's settings; every kernel is compiled through here."""
    def wrap(f):
        # error_model="numpy": float division by zero gives inf/nan instead of a
        # Python exception, whose check would stop every loop with a division
        # (Adam, RMSprop) from vectorizing.
        return numba.njit(cache=CACHE, fastmath=FASTMATH, parallel=parallel, nogil=True,
                          error_model="numpy")(f)
    return wrap(fn) if fn is not None else wrap


def max_threads():
    """Threads Numba can use in this process (cores, or NUMBA_NUM_THREADS)."""
    return numba.config.NUMBA_NUM_THREADS


def resolve_n_threads(n_threads):
    limit = max_threads()
    if n_threads is None:
        return limit
    from .data import check_int

    n_threads = check_int("n_threads", n_threads, 1, f" (or None for all {limit} cores)")
    if n_threads > limit:
        raise ValueError(
            f"n_threads={n_threads} exceeds the {limit} threads Numba was started with; "
            f"use n_threads<={limit} or set NUMBA_NUM_THREADS before importing fastbp")
    return n_threads


_blas_controllers = None


def _blas():
    """threadpoolctl's controllers of the loaded BLAS libraries, found once (the scan costs ~0.3 ms)."""
    global _blas_controllers
    if _blas_controllers is None:
        from threadpoolctl import ThreadpoolController
        _blas_controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas_controllers


@contextlib.contextmanager
def thread_limits(numba_threads, blas_threads):
    """Run a block with `numba_threads` Numba workers and `blas_threads` BLAS threads.

    BLAS calls made inside a prange must run single-threaded, or the two pools
    oversubscribe the cores; the caller chooses which side gets the threads.
    """
    previous = numba.get_num_threads()
    blas = _blas()
    previous_blas = [lib.num_threads for lib in blas]
    numba.set_num_threads(numba_threads)
    for lib in blas:
        lib.set_num_threads(blas_threads)
    try:
        yield
    finally:
        for lib, n in zip(blas, previous_blas):
            lib.set_num_threads(n)
        numba.set_num_threads(previous)
