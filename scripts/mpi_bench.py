"""One tabular epoch: N MPI ranks x 1 thread vs 1 process x N threads, and the Allreduce share of a step.

    NUMBA_NUM_THREADS=1 mpiexec -n 2 python -m mpi4py scripts/mpi_bench.py
    python scripts/mpi_bench.py                    # the 1-process baseline (all cores)
"""
import time

import numpy as np

import fastbp
import fastbp.core.threads
from fastbp.bench import WORKLOADS, layer_sizes, make_data
from fastbp.parallel.comm import MPIComm, SingleProcess


class TimedComm:
    """Wraps a communicator and adds up the seconds spent in allreduce_sum."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0
        self.rank, self.size = inner.rank, inner.size

    def allreduce_sum(self, buf):
        start = time.perf_counter()
        self.inner.allreduce_sum(buf)
        self.seconds += time.perf_counter() - start
        return buf

    def __getattr__(self, name):
        return getattr(self.inner, name)


def main():
    try:
        from mpi4py import MPI
        distributed = MPI.COMM_WORLD.Get_size() > 1
    except ImportError:
        distributed = False
    comm = TimedComm(MPIComm() if distributed else SingleProcess())
    X, y = make_data("tabular", np.float32)
    tr = fastbp.Trainer(layer_sizes("tabular"), batch_size=WORKLOADS["tabular"][4], epochs=1, lr=0.01,
                        comm=comm, n_threads=1 if distributed else None)
    tr.fit(X, y)  # warm-up
    best, share = float("inf"), 0.0
    for _ in range(3):
        comm.seconds = 0.0
        start = time.perf_counter()
        tr.fit(X, y)
        seconds = time.perf_counter() - start
        if seconds < best:
            best, share = seconds, comm.seconds / seconds
    if comm.rank == 0:
        threads = fastbp.core.threads.max_threads()
        what = f"{comm.size} ranks x 1 thread" if distributed else f"1 process x {threads} threads"
        print(f"tabular, {what}: {len(X) / best:,.0f} samples/s; Allreduce {100 * share:.1f} % of the epoch")


if __name__ == "__main__":
    main()
