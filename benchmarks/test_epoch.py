"""One training epoch and predict throughput on the benchmark workloads (pytest-benchmark).

    pytest benchmarks --benchmark-only [-k tabular]
"""
import numpy as np
import pytest

from fastbp import Trainer
from fastbp.bench import WORKLOADS, layer_sizes, make_data

_DATA = {}


def data(workload, dtype):
    key = (workload, dtype)
    if key not in _DATA:
        _DATA[key] = make_data(workload, np.dtype(dtype).type)
    return _DATA[key]


def trainer(workload, dtype):
    return Trainer(layer_sizes(workload), activation="relu", loss="cross_entropy", lr=0.01,
                   batch_size=WORKLOADS[workload][4], epochs=1, dtype=dtype, seed=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_train_epoch(benchmark, workload, dtype):
    X, y = data(workload, dtype)
    tr = trainer(workload, dtype)
    tr.fit(X, y)  # compile and warm up outside the timing
    benchmark.extra_info["rows"] = len(X)
    benchmark.pedantic(tr.fit, args=(X, y), rounds=3, iterations=1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_predict(benchmark, workload, dtype):
    X, y = data(workload, dtype)
    tr = trainer(workload, dtype)
    tr.predict(X[:10])
    benchmark.extra_info["rows"] = len(X)
    benchmark.pedantic(tr.predict, args=(X,), rounds=3, iterations=1)
