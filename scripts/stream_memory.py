"""Peak memory and throughput of `fastbp train` streaming a large .npy or Parquet file.

    python scripts/stream_memory.py --gigabytes 10            # writes /tmp/fastbp-stream.npy first
    python scripts/stream_memory.py --gigabytes 0.03 --compare  # also in-memory vs streamed samples/s
    python scripts/stream_memory.py --format parquet --gigabytes 1.2 --features 64 --row-group 1048576
    python scripts/stream_memory.py --format parquet --gigabytes 2 --features 5000 --row-group 100000

The default file has the tabular workload's shape (28 float32 features + a 0/1 target column).
Training runs in a subprocess; its peak RSS (VmHWM) and samples/s are reported.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def blocks(rows, features, block, seed=0):
    """(X, y) blocks of a linearly separable problem, generated block by block (bounded memory)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(features, dtype=np.float32)
    for start in range(0, rows, block):
        X = rng.standard_normal((min(rows, start + block) - start, features), dtype=np.float32)
        yield X, (X @ w > 0).astype(np.float32)


def write_file(path, gigabytes, features, row_group):
    """A float32 file of about `gigabytes`: .npy (rows, features + 1), or Parquet columns f0.. and y."""
    rows = int(gigabytes * 1e9 // ((features + 1) * 4))
    if path.endswith(".npy"):
        block = max(1, (64 << 20) // (4 * features))
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, features + 1))
        start = 0
        for X, y in blocks(rows, features, block):
            out[start:start + len(X), :features] = X
            out[start:start + len(X), features] = y
            start += len(X)
        out.flush()
        del out
        return rows
    import pyarrow as pa
    import pyarrow.parquet as pq
    names = [f"f{i}" for i in range(features)] + ["y"]
    with pq.ParquetWriter(path, pa.schema([(n, pa.float32()) for n in names]), compression="none") as writer:
        for X, y in blocks(rows, features, row_group):  # one written table per row group
            writer.write_table(pa.table(dict(zip(names, [*X.T, y]))), row_group_size=row_group)
    return rows


def run_train(path, target, epochs, threads, hidden, extra=()):
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "log.jsonl")
        cmd = [sys.executable, "-c",
               "import sys, resource; from fastbp.cli import main; code = main(sys.argv[1:]); "
               "print('VmHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0]); sys.exit(code)",
               "train", path, "--target", target, "--hidden", hidden, "--batch-size", "256", "--optimizer", "sgd",
               "--lr", "0.01", "--epochs", str(epochs), "--val-split", "0", "--quiet", "--log-file", log,
               "--out", os.path.join(tmp, "m.fbp"), *extra]
        if threads:
            cmd += ["--threads", str(threads)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        peak_kib = int(proc.stdout.split("VmHWM")[-1].split()[0])
        history = [json.loads(line) for line in open(log)]
    return peak_kib / 1024, history, wall


def in_memory_rate(path, threads, hidden):
    import fastbp
    if path.endswith(".npy"):
        data = np.load(path)
        X, y = np.ascontiguousarray(data[:, :-1]), data[:, -1].astype(int)
    else:
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        X = np.column_stack([table.column(n).to_numpy() for n in table.column_names[:-1]])
        y = table.column("y").to_numpy().astype(int)
    X = (X - X.mean(0)) / X.std(0)
    sizes = [X.shape[1], *map(int, hidden.split(",")), 2]
    tr = fastbp.Trainer(sizes, lr=0.01, batch_size=256, epochs=1, n_threads=threads)
    tr.fit(X, y)
    tr.fit(X, y)
    return tr.history[-1]["samples_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=10.0)
    parser.add_argument("--format", choices=["npy", "parquet"], default="npy")
    parser.add_argument("--path", help="default: /tmp/fastbp-stream.npy or .parquet")
    parser.add_argument("--features", type=int, default=28)
    parser.add_argument("--row-group", type=int, default=1 << 20, help="rows per Parquet row group")
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compare", action="store_true", help="also train in memory (the file must fit)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args()
    args.path = args.path or f"/tmp/fastbp-stream.{args.format}"
    target = str(args.features) if args.path.endswith(".npy") else "y"
    if not os.path.exists(args.path):
        start = time.perf_counter()
        rows = write_file(args.path, args.gigabytes, args.features, args.row_group)
        print(f"wrote {args.path}: {rows:,} rows, {os.path.getsize(args.path) / 1e9:.2f} GB "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
    try:
        peak, history, wall = run_train(args.path, target, args.epochs, args.threads, args.hidden)
        rate = history[-1]["samples_per_s"]
        print(f"streamed training: peak RSS {peak:.0f} MiB, {rate:,.0f} samples/s in the last epoch, "
              f"{wall:.0f} s in all (first pass + {args.epochs} epoch(s))")
        if args.compare:
            memory_rate = in_memory_rate(args.path, args.threads, args.hidden)
            print(f"in memory: {memory_rate:,.0f} samples/s; streamed / in memory = {rate / memory_rate:.2f}")
    finally:
        if not args.keep:
            os.unlink(args.path)


if __name__ == "__main__":
    main()
