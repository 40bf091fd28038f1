"""The one place that owns how Numba compiles fastbp's kernels, and where it caches them.

Environment variables override the defaults:
  FASTBP_FASTMATH=0   compile without fast-math (strict IEEE ordering)
  FASTBP_CACHE=0      do not write compiled kernels to the on-disk kernel cache
  FASTBP_CACHE_DIR    where the cache goes (default: NUMBA_CACHE_DIR/fastbp if set, else the user's cache
                      folder, ~/.cache/fastbp on Linux)
"""
import contextlib
import glob
import hashlib
import os
import shutil
import sys
import time

import numba
from numba.core import caching
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
    """numba.njit with the project's settings; every kernel is compiled through here, and cached in the shared
    kernel cache (kernel_cache_dir())."""
    def wrap(f):
        # error_model="numpy": float division by zero gives inf/nan instead of a
        # Python exception, whose check would stop every loop with a division
        # (Adam, RMSprop) from vectorizing.
        dispatcher = numba.njit(fastmath=FASTMATH, parallel=_prange_only() if parallel else False, nogil=True,
                                error_model="numpy")(f)
        if CACHE:
            # what Dispatcher.enable_caching does, with the shared cache's locator tried first
            dispatcher._cache = _SharedFunctionCache(f)
        return dispatcher
    return wrap(fn) if fn is not None else wrap


# The shared kernel cache. Numba keeps a function's compiled code beside its source file (__pycache__), so the
# source tree, the installed package and every virtual environment compiled everything again (30 s or more each
# here); and it checks only the function's own file, so a change to a helper in another module left callers'
# stale code in the cache. fastbp's cache folder is named by a digest of every source file of the kernels, the
# compile settings and Numba's version instead: every copy of the same code shares it, any change to the kernels
# gets a fresh folder. Numba's index inside keys each entry by the CPU's name and features, so a cache from
# another CPU is not loaded: that process compiles (and adds its own entries).
KEEP_UNUSED_DAYS = 14   # folders of other versions not used this long are removed
KEEP_FOLDERS = 8        # nor more than this many kept


def _user_cache_root():
    if sys.platform == "win32":
        return os.environ.get("LOCALAPPDATA") or os.path.expanduser("~")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches")
    return os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")


def _kernel_digest():
    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for path in sorted(glob.glob(os.path.join(here, "*.py"))):
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read() + b"\0")
    settings = (sorted(FASTMATH) if FASTMATH else False, numba.__version__, numba.config.BOUNDSCHECK,
                numba.config.OPT, sys.version_info[:2])
    digest.update(repr(settings).encode())
    return digest.hexdigest()[:20]


def kernel_cache_root():
    """The folder that holds the kernel cache folders (one per version of the kernels)."""
    if os.environ.get("FASTBP_CACHE_DIR"):
        return os.path.abspath(os.environ["FASTBP_CACHE_DIR"])
    if numba.config.CACHE_DIR:
        return os.path.join(numba.config.CACHE_DIR, "fastbp")
    return os.path.join(_user_cache_root(), "fastbp")


_DIGEST = _kernel_digest()


def kernel_cache_dir():
    """Where this code's compiled kernels are cached."""
    return os.path.join(kernel_cache_root(), f"kernels-{_DIGEST}")


def _prune_other_folders(root, current):
    """Removes the kernel folders of other code not used for KEEP_UNUSED_DAYS, and the least recently used beyond
    KEEP_FOLDERS (a process still loading from one then compiles what it misses)."""
    used = {}
    for path in glob.glob(os.path.join(root, "kernels-*")):
        try:
            used[path] = os.stat(path).st_mtime
        except OSError:  # removed meanwhile by another process
            pass
    used.pop(current, None)
    cutoff = time.time() - KEEP_UNUSED_DAYS * 86400
    for rank, path in enumerate(sorted(used, key=used.get, reverse=True)):
        if rank + 1 >= KEEP_FOLDERS or used[path] < cutoff:
            shutil.rmtree(path, ignore_errors=True)


_used_folders = set()


class _SharedCacheLocator(caching._CacheLocator):
    def __init__(self, py_func, py_file):
        self._lineno = py_func.__code__.co_firstlineno
        self._py_file = py_file  # Numba names it when it warns that a function cannot be cached
        self._path = kernel_cache_dir()

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return _DIGEST  # the folder's name already says which code it holds

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
            if self._path not in _used_folders:  # marks it used (its mtime), once per process
                _used_folders.add(self._path)
                os.utime(self._path)
                _prune_other_folders(os.path.dirname(self._path), self._path)
        except OSError:
            return None  # not writable: Numba's own places (beside the source, or its user-wide folder)
        return self


class _SharedCacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_SharedCacheLocator, *caching.CompileResultCacheImpl._locator_classes]


class _SharedFunctionCache(caching.FunctionCache):
    """Numba's cache with its folder locked around each read and write. Numba writes a function's index (signature ->
    data file) and then the data file, with no lock: two processes that compile other signatures of the same function
    at once (two builds, two dtypes, `fastbp compile`'s processes) could each pick the same data file, and the index
    could then name the other signature's code. Writers take the lock alone, readers together."""
    _impl_class = _SharedCacheImpl

    def load_overload(self, sig, target_context):
        with _folder_lock(self.cache_path, shared=True):
            return super().load_overload(sig, target_context)

    def save_overload(self, sig, data):
        with _folder_lock(self.cache_path, shared=False):
            super().save_overload(sig, data)


@contextlib.contextmanager
def _folder_lock(folder, shared):
    """An advisory lock on the cache folder (POSIX; elsewhere none, as in Numba's own cache)."""
    try:
        import fcntl
        handle = open(os.path.join(folder, ".lock"), "a+b")
    except (ImportError, OSError):  # no fcntl, or the folder is not writable (Numba's own places are used then)
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CompileNotice(UserWarning):
    """Kernels were compiled (not loaded from the kernel cache) in this process: once per version and CPU."""


class _CompileWatch(numba_events.Listener):
    """Says, before the pause, that Numba started compiling (a cache miss; loading from the cache fires nothing)."""

    def __init__(self, what):
        self.what, self.started = what, None

    def on_start(self, event):
        if self.started is None:
            self.started = time.perf_counter()
            if CACHE:
                later = ("later processes, in any environment, load them from fastbp's kernel cache; `fastbp compile` "
                         "compiles them ahead, e.g. when building an image")
            else:
                later = "the kernel cache is off (FASTBP_CACHE=0): every process compiles"
            warn(f"compiling fastbp's {self.what} kernels, once for this version and CPU ({later})", CompileNotice)

    def on_end(self, event):
        pass


@contextlib.contextmanager
def announced_compiles(what):
    """Around a kernel call: a CompileNotice when Numba starts compiling, and one with the time it took.
    what: the kernels' purpose, e.g. "single-model training". Silence them with warnings.filterwarnings("ignore",
    category=fastbp.CompileNotice), or fill the cache ahead with `fastbp compile`."""
    watch = _CompileWatch(what)
    with numba_events.install_listener("numba:compile", watch):
        yield
    if watch.started is not None:
        warn(f"compiled fastbp's {what} kernels in {time.perf_counter() - watch.started:.1f} s", CompileNotice)
