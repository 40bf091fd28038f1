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


_compile = None


def pytest_sessionstart(session):
    """With an empty kernel cache the first tests compile a single model's kernels (one core compiling, the other
    idle): a process of tiny fits compiles the ensembles' builds meanwhile, the ones the tests reach next, and the
    tests load them (about a minute less of a cold run on 2 cores; at its lowest priority it would starve whenever
    the tests train on both cores, and both would compile the same build). With a warm cache it only loads them."""
    global _compile
    if os.environ.get("NUMBA_DISABLE_JIT", "0") != "0" or hasattr(session.config, "workerinput"):
        return
    builds = "('float32', 2), ('float64', 2), ('float64', 1), ('float32', 1)"
    code = f"from fastbp.precompile import tiny_fits\nfor build in ({builds}):\n    tiny_fits(*build)"
    _compile = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pytest_sessionfinish(session):
    if _compile is not None and _compile.poll() is None:
        _compile.terminate()  # the kernels it finished stay cached; Numba writes each file whole
        _compile.wait()


@pytest.fixture
def problem():
    return make_problem


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path, monkeypatch):
    """Whatever a test (or the CLI it runs) writes to the working directory stays out of the repository."""
    monkeypatch.chdir(tmp_path)
