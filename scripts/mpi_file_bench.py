"""Training from a Parquet file under MPI: bytes each rank reads and samples/s, per --shard mode.

    python scripts/mpi_file_bench.py --rows 2000000                      # 1 process, all cores
    NUMBA_NUM_THREADS=1 mpiexec -n 2 python -m mpi4py scripts/mpi_file_bench.py --shard rows
    NUMBA_NUM_THREADS=1 mpiexec -n 2 python -m mpi4py scripts/mpi_file_bench.py --shard chunks
    ... --format npy                                                      # the same data as a .npy

The file (the tabular workload's shape: 28 float32 features, a 2-class label, row groups of
65,536 rows) is written once to --path (its extension follows --format). Bytes read are
/proc/self/io rchar (what the process asked the kernel for, cached or not) over the training
epochs, not the first pass; a memory-mapped .npy reads through page faults, which rchar misses.
"""
import argparse
import os
import time

import numpy as np

import fastbp
from fastbp.parallel.comm import make_comm
from fastbp.files.preprocess import Preprocessor
from fastbp.files.sources import open_source


def read_bytes():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


def write_file(path, rows):
    from sklearn.datasets import make_classification
    X, y = make_classification(rows, 28, n_informative=12, random_state=0)
    if path.endswith(".npy"):
        with open(path + ".tmp", "wb") as f:
            np.save(f, np.column_stack([X, y]).astype(np.float32))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = pa.table({**{f"f{i}": X[:, i].astype(np.float32) for i in range(28)}, "label": y})
        pq.write_table(table, path + ".tmp", row_group_size=65536)
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--format", default="parquet", choices=["parquet", "npy"])
    parser.add_argument("--path", default="/tmp/fastbp_mpi_bench")
    parser.add_argument("--shard", default="auto", choices=["auto", "rows", "chunks"])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    args.path += "." + args.format
    distributed = "PMI_SIZE" in os.environ or "OMPI_COMM_WORLD_SIZE" in os.environ
    comm = make_comm("mpi" if distributed else None)
    if comm.rank == 0 and not os.path.exists(args.path):
        write_file(args.path, args.rows)
    comm.barrier()
    source = open_source(args.path)
    start = time.perf_counter()
    target = "label" if args.format == "parquet" else "28"
    prep, _, n = Preprocessor.fit(source, target, comm=comm)
    first_pass = time.perf_counter() - start
    tr = fastbp.Trainer([prep.n_inputs, 256, 256, 2], batch_size=512, epochs=args.epochs, lr=0.01, comm=comm,
                        n_threads=1 if comm.size > 1 else None)
    before = read_bytes()
    start = time.perf_counter()
    tr.fit_source(source, prep, n, shard=args.shard)
    seconds = time.perf_counter() - start
    per_rank = comm.allgather(read_bytes() - before)
    if comm.rank == 0:
        size = os.path.getsize(args.path)
        what = f"{comm.size} ranks x 1 thread, shard {args.shard}" if comm.size > 1 else "1 process"
        print(f"{what}: first pass {first_pass:.2f} s; {args.epochs * n / seconds:,.0f} samples/s over "
              f"{args.epochs} epochs; read per rank per epoch "
              f"{', '.join(f'{b / args.epochs / size:.2f}' for b in per_rank)} x the file ({size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
