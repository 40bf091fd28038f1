"""Measure MPI Allreduce here and model data-parallel scaling of the benchmark workloads.

    mpiexec -n 2 python -m mpi4py scripts/allreduce_model.py --markdown docs/scaling-measured.md

Rank 0 times Allreduce (float32 SUM, in place) for buffer sizes 4 KiB .. 64 MiB between the local
ranks, fits time = latency + bytes / bandwidth, times one fastbp training step per workload on one
thread at the per-rank batch, and prints the predicted scaling efficiency of synchronous
data-parallel SGD for 2..64 ranks on 10 and 100 Gbit/s links:

    step(p) = compute(batch / p) + allreduce(p),
    allreduce(p) = 2 (p - 1) * latency + 2 (p - 1) / p * bytes / bandwidth   (ring algorithm)
    efficiency(p) = compute(batch) / (p * step(p))

Compute is measured on this machine's cores; the link figures are assumptions (no network here).
"""
import argparse
import time

import numpy as np
from mpi4py import MPI

LINKS = {"10 Gbit/s": (25e-6, 10e9 / 8), "100 Gbit/s": (5e-6, 100e9 / 8)}  # assumed latency, bytes/s


def time_allreduce(comm, n_bytes, repeat=20):
    buf = np.ones(n_bytes // 4, dtype=np.float32)
    comm.Barrier()
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    best = float("inf")
    for _ in range(repeat):
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        best = min(best, time.perf_counter() - start)
    return best


def step_seconds(workload, rows):
    """One fastbp training step (forward, backward, update) on `rows` rows, one thread."""
    from fastbp import Trainer
    from fastbp.bench import WORKLOADS, layer_sizes, make_data
    X, y = make_data(workload, np.float32)
    n = max(rows * 64, WORKLOADS[workload][4] * 8)
    X, y = X[:n], y[:n]
    tr = Trainer(layer_sizes(workload), batch_size=rows, epochs=1, n_threads=1, lr=0.01)
    tr.fit(X, y)
    start = time.perf_counter()
    tr.fit(X, y)
    return (time.perf_counter() - start) / (len(X) // rows), tr.params.nbytes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    sizes = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
    times = [time_allreduce(comm, s) for s in sizes]
    if comm.Get_rank() != 0:
        return
    latency, bandwidth = times[0], max(s / t for s, t in zip(sizes, times))
    lines = [f"Allreduce between {comm.Get_size()} local ranks (float32 SUM, in place, best of 20):", "",
             "| bytes | seconds | GB/s |", "|---|---|---|"]
    lines += [f"| {s:,} | {t:.2e} | {s / t / 1e9:.2f} |" for s, t in zip(sizes, times)]
    lines += ["", f"Latency (4 KiB) {latency * 1e6:.1f} us, best bandwidth {bandwidth / 1e9:.2f} GB/s "
                  "(shared memory between two processes on this machine).", ""]
    from fastbp.bench import WORKLOADS
    ranks = [2, 4, 8, 16, 32, 64]
    steps = {(w, rows): step_seconds(w, rows) for w, spec in WORKLOADS.items()
             for rows in {spec[4]} | {max(1, spec[4] // p) for p in ranks}}
    for link, (latency, bandwidth) in LINKS.items():  # the network model replaces the local figures
        lines += [f"**Predicted efficiency, {link} (assumed {latency * 1e6:.0f} us latency)**", "",
                  "| workload | " + " | ".join(f"{p} ranks" for p in ranks) + " |", "|---|" + "---|" * len(ranks)]
        for workload, spec in WORKLOADS.items():
            batch = spec[4]
            full, n_bytes = steps[workload, batch]
            cells = []
            for p in ranks:
                local = max(1, batch // p)
                compute, _ = steps[workload, local]
                reduce = 2 * (p - 1) * latency + 2 * (p - 1) / p * n_bytes / bandwidth
                cells.append(f"{full / (p * (compute + reduce)):.0%}")
            lines.append(f"| {workload} ({n_bytes / 1e6:.1f} MB) | " + " | ".join(cells) + " |")
        lines.append("")
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
