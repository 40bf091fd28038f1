"""The one place that owns how Numba compiles fastbp's kernels.

Environment variables override the defaults:
  FASTBP_FASTMATH=0   compile without fast-math (strict IEEE ordering)
  FASTBP_CACHE=0      do not write compiled kernels to Numba's on-disk cache
"""
import contextlib
import os
import time

import numba
from numba.core import event as numba_events

from .errors import warn

# No 'nnan'/'ninf': the epoch loop must still see NaN/inf to report divergence.
# No 'afn': approximate exp/log would move float64 results away from PyTorch's.
# No 'reassoc': with it, a fresh compile and the cached kernel round differently,
# so the same seed would not give bit-identical parameters across processes.
_FASTMATH_FLAGS = {"nsz", "arcp", "contract"}


def env_flag(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


FASTMATH = _FASTMATH_FLAGS if env_flag("FASTBP_FASTMATH", True) else False
CACHE = env_flag("FASTBP_CACHE", True)


def _prange_only():
    """Numba's parallel options with only the explicit prange loops parallel. With all of them on,
    every np.zeros, slice fill and array expression in a parallel kernel also became a parallel
    region of its own (a few values each, so only a fork/join more), and each such region costs
    a gufunc build when compiling (~1-2 s). A fresh dict each time: Numba consumes it."""
    return {"prange": True, "comprehension": False, "reduction": False, "inplace_binop": False, "setitem": False,
            "numpy": False, "stencil": False, "fusion": False}


def jit(fn=None, *, parallel=False):
    """numba.njit with the project's settings; every kernel is compiled through here."""
    def wrap(f):
        # error_model="numpy": float division by zero gives inf/nan instead of a
        # Python exception, whose check would stop every loop with a division
        # (Adam, RMSprop) from vectorizing.
        return numba.njit(cache=CACHE, fastmath=FASTMATH, parallel=_prange_only() if parallel else False,
                          nogil=True, error_model="numpy")(f)
    return wrap(fn) if fn is not None else wrap


class CompileNotice(UserWarning):
    """Kernels were compiled (not loaded from Numba's cache) in this process: once per environment."""


class _CompileWatch(numba_events.Listener):
    """Says, before the pause, that Numba started compiling (a cache miss; loading from the cache fires nothing)."""

    def __init__(self, what):
        self.what, self.started = what, None

    def on_start(self, event):
        if self.started is None:
            self.started = time.perf_counter()
            later = ("later processes load them from Numba's cache; `fastbp compile` compiles them ahead, e.g. when "
                     "building an image") if CACHE else "Numba's cache is off (FASTBP_CACHE=0): every process compiles"
            warn(f"compiling fastbp's {self.what} kernels, once for this environment ({later})", CompileNotice)

    def on_end(self, event):
        pass


@contextlib.contextmanager
def announced_compiles(what):
    """Around a kernel call: a CompileNotice when Numba starts compiling, and one with the time it took.
    what: the kernels' purpose, e.g. "training". Silence them with warnings.filterwarnings("ignore",
    category=fastbp.CompileNotice), or fill the cache ahead with `fastbp compile`."""
    watch = _CompileWatch(what)
    with numba_events.install_listener("numba:compile", watch):
        yield
    if watch.started is not None:
        warn(f"compiled fastbp's {what} kernels in {time.perf_counter() - watch.started:.1f} s", CompileNotice)
