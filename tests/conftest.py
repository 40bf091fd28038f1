import os

# Tests ask for 2 threads on small data to exercise the parallel paths: let them have them
# (the work-size policy is tested on its own in test_threads.py). Set before fastbp is imported.
os.environ.setdefault("FASTBP_MIN_FLOPS_PER_THREAD", "0")

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


@pytest.fixture
def problem():
    return make_problem


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path, monkeypatch):
    """Whatever a test (or the CLI it runs) writes to the working directory stays out of the repository."""
    monkeypatch.chdir(tmp_path)
