"""Model fastbp's samples/s against thread count from costs measured on this machine (docs/threads.md).

One training batch of B rows on p threads costs about

    T(p) = F / (q * r(B/q))  +  2 * S  +  R(p)  +  O / q,        q = min(p, B) threads with rows

F: the batch's floating-point operations (fastbp.core.layout.flops_per_row times B);
r(m): one thread's GEMM rate on the workload's layer shapes with m rows (measured here, SciPy's BLAS,
      the one the kernels call): a thread's share of the batch shrinks as threads are added;
S: one fork/join of a parallel region (measured: an empty Numba prange with 2 threads);
R(p): the slab reduction, (p - 1) * P gradient values summed by p threads at the rate measured here,
      when the kernels choose slabs (kernels.uses_slabs); otherwise the threads split the weights.
O: everything else a batch costs on one thread (gathering rows, activations, loss, optimizer step,
   cache misses): a measured one-thread fastbp epoch minus the model's first three terms, taken to
   divide evenly over the threads (which flatters the model).
The measured two-thread epoch is printed beside the model's, to show how far to trust it.
Machines with more cores than this one are extrapolated: S is taken as measured with 2 threads,
which understates barriers across sockets.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/thread_model.py
"""
import time

import numba
import numpy as np
from numba import prange
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

from fastbp.bench import WORKLOADS, layer_sizes, make_data, time_fastbp
from fastbp.core.threads import thread_limits
from fastbp.core.layout import flops_per_row

THREADS = (1, 2, 4, 8, 16, 32, 64)


@numba.njit(parallel=True)
def _empty_regions(count, n_parts, out):
    for _ in range(count):
        for part in prange(n_parts):
            out[part] += 1.0


def fork_join_seconds(n_parts=2, count=20000):
    out = np.zeros(n_parts)
    with thread_limits(n_parts):
        _empty_regions(10, n_parts, out)
        start = time.perf_counter()
        _empty_regions(count, n_parts, out)
        return (time.perf_counter() - start) / count


def gemm_rate(rows, sizes, repeat=30):
    """One thread's GFLOP/s on the forward, weight-gradient and delta products of `rows` rows."""
    rng = np.random.default_rng(0)
    mats = [(np.asfortranarray(rng.random((rows, a), dtype=np.float32)),
             np.asfortranarray(rng.random((a, b), dtype=np.float32)),
             np.asfortranarray(rng.random((rows, b), dtype=np.float32))) for a, b in zip(sizes[:-1], sizes[1:])]
    flops = sum(2 * rows * a * b * 3 for a, b in zip(sizes[:-1], sizes[1:]))
    with threadpool_limits(1, user_api="blas"):
        blas.sgemm(1.0, np.ones((1024, 128), np.float32), np.ones((128, 128), np.float32))  # warm the buffer
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            for x, w, d in mats:
                blas.sgemm(1.0, x, w)                 # forward
                blas.sgemm(1.0, x, d, trans_a=1)      # weight gradient
                blas.sgemm(1.0, d, w, trans_b=1)      # delta to the layer below
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def fastbp_rate(name, threads, rows=65536):
    """Samples/s of one fastbp epoch (best of 2 after a warm-up) on `rows` rows of the workload."""
    X, y = make_data(name, np.float32)
    return rows / time_fastbp(name, X[:rows], y[:rows], threads, 2)


def add_rate(n=1 << 20, repeat=20):
    """Values summed per second by one thread (a slab into the gradient)."""
    a, b = np.ones(n, np.float32), np.ones(n, np.float32)
    best = min(_timed(lambda: np.add(a, b, out=a)) for _ in range(repeat))
    return n / best


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    S = fork_join_seconds()
    adds = add_rate()
    print(f"fork/join of one region, 2 threads: {S * 1e6:.1f} us; slab sums: {adds / 1e9:.2f} G values/s per thread\n")
    print("| workload | " + " | ".join(f"{p} threads" for p in THREADS) + " | measured 1 / 2 threads | limit at 64 |")
    print("|---|" + "---|" * (len(THREADS) + 2))
    for name in WORKLOADS:
        sizes = layer_sizes(name)
        batch = WORKLOADS[name][4]
        P = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        F = flops_per_row(sizes) * batch
        measured = {t: fastbp_rate(name, t, rows=8192 if name == "wide" else 65536) for t in (1, 2)}
        other = None
        cells = []
        for p in THREADS:
            q = min(p, batch)
            compute = F / (q * gemm_rate(batch // q, sizes) * 1e9)
            sync = 2 * S if p > 1 else 0.0
            slabs = p > 1 and (p - 1) * P <= batch * sum(sizes)  # kernels.uses_slabs
            reduce = (p - 1) * P / (p * adds) if slabs else 0.0
            if other is None:  # p == 1: what the measured epoch costs beyond the modelled terms
                other = max(0.0, batch / measured[1] - compute)
            terms = {"compute": compute, "fork/join": sync, "slab sums": reduce, "other": other / q}
            cells.append(f"{batch / sum(terms.values()):,.0f}")
        limit = max(terms, key=terms.get)
        print(f"| {name} | " + " | ".join(cells) + f" | {measured[1]:,.0f} / {measured[2]:,.0f} | {limit} |",
              flush=True)


if __name__ == "__main__":
    main()
