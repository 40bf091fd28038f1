"""Peak memory and throughput of `fastbp train` streaming a large .npy file.

    python scripts/stream_memory.py --gigabytes 10            # writes /tmp/fastbp-stream.npy first
    python scripts/stream_memory.py --gigabytes 0.03 --compare  # also in-memory vs streamed samples/s

The file has the tabular workload's shape (28 float32 features + a 0/1 target column).
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


def write_file(path, gigabytes, seed=0, block=1_000_000):
    """A (rows, 29) float32 .npy of about `gigabytes`, written block by block (bounded memory)."""
    rows = int(gigabytes * 1e9 // (29 * 4))
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(28, dtype=np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 29))
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        X = rng.standard_normal((stop - start, 28), dtype=np.float32)
        out[start:stop, :28] = X
        out[start:stop, 28] = (X @ w > 0)
        out.flush()
    del out
    return rows


def run_train(path, epochs, threads, extra=()):
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "log.jsonl")
        cmd = [sys.executable, "-c",
               "import sys, resource; from fastbp.cli import main; code = main(sys.argv[1:]); "
               "print('VmHWM', open('/proc/self/status').read().split('VmHWM:')[1].split()[0]); sys.exit(code)",
               "train", path, "--target", "28", "--hidden", "256,256", "--batch-size", "256", "--optimizer", "sgd",
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


def in_memory_rate(path, threads):
    import fastbp
    data = np.load(path)
    X, y = np.ascontiguousarray(data[:, :28]), data[:, 28].astype(int)
    X = (X - X.mean(0)) / X.std(0)
    tr = fastbp.Trainer([28, 256, 256, 2], lr=0.01, batch_size=256, epochs=1, n_threads=threads)
    tr.fit(X, y)
    tr.fit(X, y)
    return tr.history[-1]["samples_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=10.0)
    parser.add_argument("--path", default="/tmp/fastbp-stream.npy")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compare", action="store_true", help="also train in memory (the file must fit)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args()
    if not os.path.exists(args.path):
        start = time.perf_counter()
        rows = write_file(args.path, args.gigabytes)
        print(f"wrote {args.path}: {rows:,} rows, {os.path.getsize(args.path) / 1e9:.2f} GB "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
    try:
        peak, history, wall = run_train(args.path, args.epochs, args.threads)
        rate = history[-1]["samples_per_s"]
        print(f"streamed training: peak RSS {peak:.0f} MiB, {rate:,.0f} samples/s in the last epoch, "
              f"{wall:.0f} s in all (first pass + {args.epochs} epoch(s))")
        if args.compare:
            memory_rate = in_memory_rate(args.path, args.threads)
            print(f"in memory: {memory_rate:,.0f} samples/s; streamed / in memory = {rate / memory_rate:.2f}")
    finally:
        if not args.keep:
            os.unlink(args.path)


if __name__ == "__main__":
    main()
