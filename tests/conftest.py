import os

# Tests ask for 2 threads on small data to exercise the parallel paths: let them have them
# (the work-size policy is tested on its own in test_threads.py). Set before fastbp is imported.
os.environ.setdefault("FASTBP_MIN_FLOPS_PER_THREAD", "0")

import subprocess
import sys

import numpy as np
import pytest

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "identity", "elu", "softplus", "gelu"]
LOSSES = ["mse", "cross_entropy", "binary_cross_entropy", "poisson"]


def make_problem(loss, n, n_in, n_out, seed=0, dtype=np.float64):
    """Random X and targets valid for `loss`."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in)).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, n_out, size=n)
    elif loss == "binary_cross_entropy":
        y = rng.integers(0, 2, size=(n, n_out)).astype(dtype)
    elif loss == "poisson":
        y = rng.poisson(2.0, size=(n, n_out)).astype(dtype)
    else:
        y = rng.normal(size=(n, n_out)).astype(dtype)
    return X, y


def _lowest_priority():
    """In the child: run only on a core nothing else wants (Linux's idle class; elsewhere the highest nice)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


_float64_compile = None


def pytest_sessionstart(session):
    """With an empty kernel cache the tests compile float32 first (one core busy compiling, the other idle) and
    float64 later: `fastbp compile --dtype float64` fills the cache's float64 kernels meanwhile, on the idle core,
    and the tests load them (about 45 s less of a cold run on 2 cores). With a warm cache it only loads them."""
    global _float64_compile
    if os.environ.get("NUMBA_DISABLE_JIT", "0") != "0" or hasattr(session.config, "workerinput"):
        return
    _float64_compile = subprocess.Popen([sys.executable, "-m", "fastbp", "compile", "--dtype", "float64"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_lowest_priority if os.name == "posix" else None)


def pytest_sessionfinish(session):
    if _float64_compile is not None and _float64_compile.poll() is None:
        _float64_compile.terminate()  # the kernels it finished stay cached; Numba writes each file whole
        _float64_compile.wait()


@pytest.fixture
def problem():
    return make_problem


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path, monkeypatch):
    """Whatever a test (or the CLI it runs) writes to the working directory stays out of the repository."""
    monkeypatch.chdir(tmp_path)
