"""The thread policy: how many threads a call uses, and BLAS kept single-threaded inside them.

Environment variables override the defaults:
  FASTBP_MIN_FLOPS_PER_THREAD  work a call needs per thread it uses (MIN_FLOPS_PER_THREAD)
  FASTBP_ADAPT_THREADS=0  training keeps all its threads when other processes take the cores (ThreadChooser)
  GOMP_SPINCOUNT      how long idle OpenMP workers spin before sleeping (fastbp.core's
                      SPIN_COUNT unless this or OMP_WAIT_POLICY is set)

Thread policy (docs/threads.md has the measurements):
- Idle workers spin for tens of microseconds, not milliseconds. libgomp's default
  (300,000 spins, ~8 ms on this project's machine) keeps a worker burning a core after
  every parallel region, which Python code, SciPy's L-BFGS or another process needed;
  a spin far shorter than the gap between a batch's regions puts the worker to sleep
  every region, and waking it (a futex, 15-20 us between the cores of a VM) then
  costs up to half the two-thread speed. fastbp.core sets SPIN_COUNT before Numba starts libgomp.
- n_threads=None means every core Numba was started with, capped by the OpenMP
  limit of the calling thread: OMP_NUM_THREADS, threadpoolctl's
  threadpool_limits(...) and joblib's workers (which set NUMBA_NUM_THREADS and
  OMP_NUM_THREADS) are obeyed.
- A call runs on as many of those threads as its work pays for (threads_for):
  at least MIN_FLOPS_PER_THREAD each, so tiny batches run on one thread.
- Training splits each batch into that many row groups, whatever threads run them, so
  the results depend on n_threads and the work, never on the load; within an epoch a
  ThreadChooser runs the groups on fewer threads while other processes take the cores.
"""
import contextlib
import ctypes
import os
import threading
import time

try:
    import resource  # not on Windows: there ThreadChooser keeps every thread
except ImportError:
    resource = None

import numba
# Numba's np.dot calls the BLAS that SciPy bundles. Load it now, so threadpoolctl
# sees it and can limit its threads; loaded lazily it would escape the limit and
# spin extra threads inside every parallel kernel.
import scipy.linalg.cython_blas  # noqa: F401

from .blas import warm_up
from .compile import env_flag


def _env_number(name, default):
    value = os.environ.get(name)
    try:
        return default if value is None else float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number; unset it or give a number like 1e6") from None


# Below this many floating-point operations per thread, a second thread costs more in
# wake-ups and barriers than it saves (measured in docs/threads.md).
MIN_FLOPS_PER_THREAD = _env_number("FASTBP_MIN_FLOPS_PER_THREAD", 1_000_000)
ADAPT_THREADS = env_flag("FASTBP_ADAPT_THREADS", True)


def max_threads():
    """Threads Numba can use in this process (cores, or NUMBA_NUM_THREADS)."""
    return numba.config.NUMBA_NUM_THREADS


_omp_max_threads = None


def _openmp_limit():
    """omp_get_max_threads() of the libgomp Numba runs on, for the calling thread (None when Numba
    uses another threading layer): OMP_NUM_THREADS or a threadpoolctl limit lowers it."""
    global _omp_max_threads
    if _omp_max_threads is None:
        numba.get_num_threads()  # starts the threading layer
        if numba.threading_layer() != "omp":
            _omp_max_threads = False
        else:
            from numba.np.ufunc import omppool
            _omp_max_threads = ctypes.CDLL(omppool.__file__).omp_get_max_threads
    return _omp_max_threads() if _omp_max_threads else None


def _env_thread_limit():
    """OMP_NUM_THREADS as a number (its first level when nested, "4,2"), or None."""
    try:
        return int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        return None


def default_threads():
    """The threads n_threads=None stands for: every core, within OMP_NUM_THREADS and the calling thread's
    OpenMP limit (which Numba sets to its own count when it starts, and threadpool_limits lowers)."""
    limits = [n for n in (max_threads(), _env_thread_limit(), _openmp_limit()) if n]
    return max(1, min(limits))


def resolve_n_threads(n_threads):
    limit = max_threads()
    if n_threads is None:
        return default_threads()
    from .checks import check_int
    from .errors import InputError

    n_threads = check_int("n_threads", n_threads, 1, f" (or None for all {limit} cores)")
    if n_threads > limit:
        raise InputError(
            f"n_threads={n_threads} exceeds the {limit} threads Numba was started with; "
            f"use n_threads<={limit} or set NUMBA_NUM_THREADS before importing fastbp")
    return n_threads


def threads_for(n_threads, flops):
    """How many of n_threads a parallel call of `flops` operations should use (at least 1)."""
    if MIN_FLOPS_PER_THREAD <= 0:
        return n_threads
    return max(1, min(n_threads, int(flops // MIN_FLOPS_PER_THREAD)))


class ThreadChooser:
    """Per run: on how many threads the row groups of each training segment run.

    The kernels split each batch into `groups` row groups whatever threads run them, and sum
    the groups in a fixed order, so the choice changes the speed, never the result. Beside a
    busy process our threads are preempted, a barrier waits for the one that lost its core,
    and one thread running both groups is faster (docs/threads.md). An epoch is trained in
    segments of about SEGMENT_SECONDS; after each, the process's CPU time over the wall time
    says how many cores it got, and its involuntary context switches whether its threads were
    preempted (rather than waiting at a barrier by themselves). When both say the cores are
    taken, the groups run on as many threads as the process got cores, and all the threads
    are tried again after RETRY_SECONDS. FASTBP_ADAPT_THREADS=0 turns this off (one call per
    epoch on `groups` threads).
    """
    SEGMENT_SECONDS = 0.04
    RETRY_SECONDS = 1.0
    FIRST_SEGMENT = 4  # batches; it carries loading and warm-up, so it is not judged
    PREEMPTIONS_PER_THREAD = 50  # per second; a quiet 2-core machine measured ~20 in all, a busy one 3,000-6,000

    def __init__(self):
        self._groups = None

    def segments(self, n_batches, groups):
        """Yield (first batch, batch count, threads) covering n_batches; the caller trains each segment
        before asking for the next, on the threads this sets for the calling thread."""
        if groups == 1 or not ADAPT_THREADS or resource is None:
            yield 0, n_batches, groups
            return
        if groups != self._groups:
            self._groups, self._threads, self._retry_at, self._seconds_per_batch = groups, groups, 0.0, None
        first = 0
        try:
            while first < n_batches:
                threads = self._threads if time.perf_counter() < self._retry_at else groups
                count = self.FIRST_SEGMENT if self._seconds_per_batch is None else \
                    max(1, int(self.SEGMENT_SECONDS / self._seconds_per_batch))
                count = min(count, n_batches - first)
                numba.set_num_threads(threads)
                before = _usage()
                yield first, count, threads
                self._judge(threads, count, before, _usage())
                first += count
        finally:
            numba.set_num_threads(groups)

    def _judge(self, threads, count, before, after):
        wall, cpu, preempted = (a - b for a, b in zip(after, before))
        judged = self._seconds_per_batch is not None
        self._seconds_per_batch = wall / count
        if not judged or wall <= 0:
            return
        cores = cpu / wall
        if cores < threads - 0.5 and preempted / wall >= self.PREEMPTIONS_PER_THREAD * threads:
            usable = max(1, int(cores + 0.5))
            rounds = -(-self._groups // usable)  # groups per thread
            self._threads = -(-self._groups // rounds)
            self._retry_at = time.perf_counter() + self.RETRY_SECONDS
        elif threads == self._groups:
            self._threads = threads


def _usage():
    """(wall time, this process's CPU time, its involuntary context switches so far)."""
    return time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


_blas_controllers = None
_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved = []


def _blas():
    """threadpoolctl's controllers of the loaded BLAS libraries, found once (the scan costs ~0.3 ms)."""
    global _blas_controllers
    if _blas_controllers is None:
        from threadpoolctl import ThreadpoolController
        _blas_controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas_controllers


def _set_blas_threads(counts):
    for lib, n in zip(_blas(), counts):
        # threadpoolctl >= 3.8 lets only one Python thread (the first to set a limit) change
        # OpenBLAS's process-wide pool and silently ignores the others: a fit in a
        # threading.Thread would keep 2 BLAS threads inside every Numba worker (other bits,
        # oversubscribed cores). Take control first; every fastbp entrant sets the same value.
        take_control = getattr(type(lib), "clear_controlling_thread", None)
        if take_control is not None:
            take_control(force=True)
        lib.set_num_threads(n)


@contextlib.contextmanager
def thread_limits(numba_threads):
    """Run a block with `numba_threads` Numba workers and single-threaded BLAS.

    BLAS calls made inside a prange must run single-threaded, or the two pools
    oversubscribe the cores (and split their sums differently). Numba's thread
    count is per calling thread; BLAS's is per process, so the first block to
    enter sets it to 1 and the last to leave restores it, whichever Python
    threads they run in. The first block with more workers than before warms
    their BLAS (blas.warm_up). Under Numba's workqueue layer, blocks in several
    Python threads take turns (_layer_aborts_on_concurrent_calls).
    """
    global _blas_users

    if _forked_after_gnu_openmp:
        raise RuntimeError(
            "this process was forked (multiprocessing's 'fork' start method) from one that had already run fastbp's "
            "kernels on GNU OpenMP, which cannot run again in a forked child (Numba would end the process): start "
            "the workers with multiprocessing.get_context('spawn') or 'forkserver', use joblib (its default backend "
            "starts fresh processes), or train in threads")
    with _serial_layer_lock if _layer_aborts_on_concurrent_calls() else _NO_LOCK:
        previous = numba.get_num_threads()
        with _blas_lock:
            if _blas_users == 0:
                _blas_saved[:] = [lib.num_threads for lib in _blas()]
                _set_blas_threads([1] * len(_blas_saved))
            _blas_users += 1
        numba.set_num_threads(numba_threads)
        try:
            warm_up(numba_threads)
            yield
        finally:
            numba.set_num_threads(previous)
            with _blas_lock:
                _blas_users -= 1
                if _blas_users == 0:
                    _set_blas_threads(_blas_saved)


_serial_layer_lock = threading.RLock()  # re-entrant: a block may run inside another in the same thread
_NO_LOCK = contextlib.nullcontext()
_layer_unsafe = None  # _layer_aborts_on_concurrent_calls, once known
_forked_after_gnu_openmp = False  # set in a forked child (_note_fork)


def _note_fork():
    """In a child of fork(): did the parent start Numba's threading layer on GNU OpenMP? Numba ends such a child
    at its first parallel call (libgomp's threads do not survive fork), which left a multiprocessing pool waiting
    forever; thread_limits raises instead."""
    global _forked_after_gnu_openmp
    try:
        layer = numba.threading_layer()
    except ValueError:  # not started in the parent: the child starts its own
        return
    if layer == "omp":
        from numba.np.ufunc import omppool
        _forked_after_gnu_openmp = omppool.openmp_vendor == "GNU"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


def _layer_aborts_on_concurrent_calls():
    """True under Numba's workqueue threading layer (its fallback without OpenMP or TBB), which aborts the whole
    process when two Python threads run parallel code at once (fits in threads: joblib's threading backend)."""
    global _layer_unsafe
    if _layer_unsafe is None:
        numba.get_num_threads()  # starts the threading layer
        _layer_unsafe = numba.threading_layer() == "workqueue"
    return _layer_unsafe
