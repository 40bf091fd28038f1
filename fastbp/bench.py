"""Benchmark fastbp against PyTorch and scikit-learn on the same data, net, batch size and threads.

Run as `python scripts/compare_peers.py` or `fastbp bench`. Each system trains
plain SGD (no momentum, no weight decay) for one warm-up epoch, then the best of
`--repeat` timed epochs counts. The float32 GEMM peak (numpy matmul) is measured
in the same run, at 1024^3 and at each workload's layer shapes.
"""
import argparse
import platform
import time
import warnings

import numpy as np

# name: (rows, features, hidden, classes, batch)
WORKLOADS = {
    "tabular": (262144, 28, (256, 256), 2, 256),
    "small_batch": (65536, 28, (256, 256), 2, 32),
    "narrow": (262144, 16, (64, 64), 2, 128),
    "wide": (65536, 512, (1024, 1024), 10, 1024),
}
LR = 0.01


def layer_sizes(workload):
    _, features, hidden, classes, _ = WORKLOADS[workload]
    return [features, *hidden, classes]


def flops_per_sample(sizes):
    """Forward 2*sum(P) + weight grads 2*sum(P) + input grads 2*sum(P) without the first layer."""
    P = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * sum(P) + 2 * sum(P) + 2 * sum(P[1:])


def make_data(workload, dtype, seed=0):
    rows, features, _, classes, _ = WORKLOADS[workload]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal(size=(rows, features), dtype=dtype)
    w = rng.standard_normal(size=(features, classes), dtype=dtype)
    return X, (X @ w).argmax(axis=1)


def best_time(run, repeat):
    run()  # warm-up: compilation, caches, allocator
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def time_fastbp(workload, X, y, threads, repeat):
    from fastbp import Trainer

    batch = WORKLOADS[workload][4]
    tr = Trainer(layer_sizes(workload), activation="relu", loss="cross_entropy", lr=LR, batch_size=batch,
                 epochs=1, dtype=X.dtype.name, n_threads=threads, seed=0)
    return best_time(lambda: tr.fit(X, y), repeat)


def optimizer_costs(workload, dtype, threads, repeat):
    """Seconds per fastbp epoch with each optimizer (torch defaults), for the cost of Adam & co over SGD."""
    from fastbp import Trainer

    X, y = make_data(workload, np.dtype(dtype).type)
    batch = WORKLOADS[workload][4]
    costs = {}
    for optimizer in ("sgd", "adam", "adamw", "rmsprop"):
        tr = Trainer(layer_sizes(workload), optimizer=optimizer, batch_size=batch, epochs=1, dtype=dtype,
                     n_threads=threads, seed=0)
        costs[optimizer] = best_time(lambda tr=tr: tr.fit(X, y), repeat)
    return costs


def time_torch(workload, X, y, threads, repeat):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sizes = layer_sizes(workload)
    dtype = torch.float32 if X.dtype == np.float32 else torch.float64
    modules = []
    for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        modules.append(torch.nn.Linear(a, b, dtype=dtype))
        if l < len(sizes) - 2:
            modules.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*modules)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).long()
    batch = WORKLOADS[workload][4]

    def epoch():
        perm = torch.randperm(len(Xt))
        Xs, ys = Xt[perm], yt[perm]  # one gather per epoch: the cheapest loop PyTorch offers
        for start in range(0, len(Xs), batch):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(Xs[start:start + batch]), ys[start:start + batch]).backward()
            opt.step()

    return best_time(epoch, repeat)


def time_sklearn(workload, X, y, threads, repeat):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    _, _, hidden, _, batch = WORKLOADS[workload]
    model = MLPClassifier(hidden_layer_sizes=hidden, solver="sgd", batch_size=batch, learning_rate_init=LR,
                          momentum=0.0, alpha=0.0, max_iter=1, shuffle=True, random_state=0)

    def epoch():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)

    with threadpool_limits(limits=threads):
        return best_time(epoch, repeat)


def gemm_gflops(shapes, dtype, threads, min_seconds=0.3):
    """GFLOP/s of numpy matmul over a list of (m, k, n) shapes, timed together."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(m, k)).astype(dtype), rng.normal(size=(k, n)).astype(dtype)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    with threadpool_limits(limits=threads, user_api="blas"):
        for a, b in pairs:
            a @ b
        best = float("inf")
        deadline = time.perf_counter() + min_seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for a, b in pairs:
                a @ b
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


SYSTEMS = {"fastbp": time_fastbp, "torch": time_torch, "sklearn": time_sklearn}


def dropin_speedup(workload, solver, epochs, threads):
    """(fastbp.sklearn seconds, scikit-learn seconds) to fit `epochs` epochs with the same estimator settings."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SkMLP
    from threadpoolctl import threadpool_limits

    from fastbp.sklearn import MLPClassifier as FastMLP

    if workload == "digits":
        from sklearn.datasets import load_digits
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
        hidden, batch = (100,), "auto"
    else:
        X, y = make_data(workload, np.float32)
        _, _, hidden, _, batch = WORKLOADS[workload]
    settings = dict(hidden_layer_sizes=hidden, solver=solver, batch_size=batch, max_iter=epochs, random_state=0,
                    n_iter_no_change=10 ** 9)
    times = []
    for make in (lambda: FastMLP(n_threads=threads, **settings), lambda: SkMLP(**settings)):
        with warnings.catch_warnings(), threadpool_limits(limits=threads):
            warnings.simplefilter("ignore", ConvergenceWarning)
            make().set_params(max_iter=1).fit(X[:2000], y[:2000])  # warm-up (compilation)
            start = time.perf_counter()
            make().fit(X, y)
            times.append(time.perf_counter() - start)
    return tuple(times)


def _child_peak_rss(system, workload, dtype, threads):
    """Run in a fresh process: print RSS (MiB) after imports and data, and the peak after one warm-up and one epoch."""
    X, y = make_data(workload, np.dtype(dtype).type)
    if system == "torch":
        import torch  # noqa: F401  (count the library, not only the training)
    elif system == "sklearn":
        import sklearn.neural_network  # noqa: F401
    else:
        import fastbp  # noqa: F401
    before = _proc_status_mib("VmRSS")
    SYSTEMS[system](workload, X, y, threads, 1)
    print(f"{before:.0f} {_proc_status_mib('VmHWM'):.0f}")


def _proc_status_mib(key):
    # VmHWM, unlike getrusage's ru_maxrss, starts afresh at exec instead of inheriting the parent's peak
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":")) / 1024


def peak_rss(system, workload, dtype, threads):
    """(MiB after imports and data, MiB peak after training) measured in a subprocess."""
    import subprocess
    import sys

    code = f"from fastbp.bench import _child_peak_rss; _child_peak_rss({system!r}, {workload!r}, {dtype!r}, {threads})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), float(out[-1])


_STARTUP = """
import time
start = time.perf_counter()
import numpy as np
import fastbp
try:
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
except ImportError:  # same shape as digits
    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 17, size=(1797, 64)).astype(float), rng.integers(0, 10, size=1797)
fastbp.Trainer([64, 100, 10], lr=0.01, batch_size=200, epochs=1, dtype={dtype!r}).fit(X / 16.0, y)
print(time.perf_counter() - start)
"""


def startup_seconds(dtype):
    """(seconds with an empty Numba cache, seconds with a warm cache) for import + one epoch on digits."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        run = lambda: float(subprocess.run([sys.executable, "-c", _STARTUP.format(dtype=dtype)], env=env,
                                           capture_output=True, text=True, check=True).stdout.split()[-1])
        cold = run()
        warm = min(run() for _ in range(3))
    return cold, warm


def available(system):
    if system == "fastbp":
        return True
    try:
        __import__("torch" if system == "torch" else "sklearn")
        return True
    except ImportError:
        return False


def run(workloads, threads, dtype, repeat, systems):
    np_dtype = np.dtype(dtype).type
    peak = gemm_gflops([(1024, 1024, 1024)], np_dtype, threads)
    rows = []
    for name in workloads:
        X, y = make_data(name, np_dtype)
        n, batch = WORKLOADS[name][0], WORKLOADS[name][4]
        sizes = layer_sizes(name)
        shape_peak = gemm_gflops([(batch, a, b) for a, b in zip(sizes[:-1], sizes[1:])], np_dtype, threads)
        rate = {}
        for system in systems:
            if available(system):
                rate[system] = n / SYSTEMS[system](name, X, y, threads, repeat)
        fpss = flops_per_sample(sizes)
        rows.append({"workload": name, "rate": rate, "gflops": {s: r * fpss / 1e9 for s, r in rate.items()},
                     "peak": peak, "shape_peak": shape_peak})
        print(format_row(rows[-1], systems), flush=True)
    return rows


HEADER = ("| workload | fastbp samples/s | torch samples/s | sklearn samples/s | fastbp/torch | fastbp/sklearn "
          "| fastbp GFLOP/s | fastbp % peak | torch % peak | GEMM GFLOP/s at layer shapes |")


def format_row(row, systems):
    rate, gf, peak = row["rate"], row["gflops"], row["peak"]

    def cell(system, fmt):
        return fmt(system) if system in rate else "—"

    ratio = lambda s: f"{rate['fastbp'] / rate[s]:.2f}×" if s in rate and "fastbp" in rate else "—"
    return (f"| {row['workload']} | {cell('fastbp', lambda s: f'{rate[s]:,.0f}')} "
            f"| {cell('torch', lambda s: f'{rate[s]:,.0f}')} | {cell('sklearn', lambda s: f'{rate[s]:,.0f}')} "
            f"| {ratio('torch')} | {ratio('sklearn')} | {cell('fastbp', lambda s: f'{gf[s]:.1f}')} "
            f"| {cell('fastbp', lambda s: f'{100 * gf[s] / peak:.0f} %')} "
            f"| {cell('torch', lambda s: f'{100 * gf[s] / peak:.0f} %')} | {row['shape_peak']:.0f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="compare_peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--threads", default=None, help="thread counts, comma-separated (default: all cores)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=3, help="timed epochs per system; the best counts")
    parser.add_argument("--systems", default="fastbp,torch,sklearn")
    parser.add_argument("--memory", action="store_true",
                        help="also report peak RSS of one epoch per system (each in a fresh process)")
    parser.add_argument("--startup", action="store_true",
                        help="also time import + one epoch on digits with an empty and a warm Numba cache")
    parser.add_argument("--dropin", action="store_true",
                        help="also time fastbp.sklearn.MLPClassifier against scikit-learn's (adam and sgd; "
                             "the workloads and digits)")
    parser.add_argument("--optimizers", action="store_true",
                        help="also time one fastbp epoch per optimizer (sgd, adam, adamw, rmsprop)")
    parser.add_argument("--markdown", default=None, help="also write the table(s) to this Markdown file")
    args = parser.parse_args(argv)
    from fastbp.core.config import max_threads

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    systems = [s.strip() for s in args.systems.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [max_threads()]
    lines = []
    for threads in thread_counts:
        title = f"{args.dtype}, {threads} thread(s), best of {args.repeat} epochs after one warm-up"
        print(f"\n{title}\n{HEADER}\n|{'---|' * HEADER.count('|')[:-1] if False else '---|' * (HEADER.count('|') - 1)}")
        rows = run(workloads, threads, args.dtype, args.repeat, systems)
        lines += [f"**{title}**", "", HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
        lines += [format_row(r, systems) for r in rows] + [""]
        peak = rows[0]["peak"] if rows else float("nan")
        lines += [f"{args.dtype} GEMM peak (numpy matmul 1024³, {threads} thread(s)): {peak:.0f} GFLOP/s", ""]
        print(lines[-2])
    if args.memory:
        threads = thread_counts[-1]
        lines += [f"**Peak RSS, one {args.dtype} epoch, {threads} thread(s)** (MiB: after imports and data → peak)", "",
                  "| workload | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
        for name in workloads:
            cells = []
            for system in systems:
                if available(system):
                    base, peak = peak_rss(system, name, args.dtype, threads)
                    cells.append(f"{base:.0f} → {peak:.0f}")
                else:
                    cells.append("—")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        lines.append("")
    if args.startup:
        cold, warm = startup_seconds(args.dtype)
        lines += [f"Import + one {args.dtype} epoch on digits in a fresh process: {cold:.1f} s with an empty "
                  f"Numba cache, {warm:.2f} s with a warm cache.", ""]
        print(lines[-2])
    if args.optimizers:
        threads = thread_counts[-1]
        lines += [f"**Epoch time relative to SGD, fastbp, {args.dtype}, {threads} thread(s)**", "",
                  "| workload | adam | adamw | rmsprop |", "|---|---|---|---|"]
        for name in workloads:
            c = optimizer_costs(name, args.dtype, threads, args.repeat)
            lines.append(f"| {name} | " + " | ".join(f"{c[o] / c['sgd']:.2f}×" for o in ("adam", "adamw", "rmsprop"))
                         + " |")
            print(lines[-1], flush=True)
        lines.append("")
    if args.dropin:
        threads = thread_counts[-1]
        lines += [f"**fastbp.sklearn.MLPClassifier vs scikit-learn's, {threads} thread(s), whole fit**", "",
                  "| data | solver | epochs | fastbp.sklearn s | scikit-learn s | speed-up |", "|---|---|---|---|---|---|"]
        for name in workloads + ["digits"]:
            epochs = 200 if name == "digits" else (1 if name == "wide" else 3)
            for solver in ("adam", "sgd"):
                ours, theirs = dropin_speedup(name, solver, epochs, threads)
                lines.append(f"| {name} | {solver} | {epochs} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f}× |")
                print(lines[-1], flush=True)
        lines.append("")
    machine = f"{platform.processor() or platform.machine()}, {max_threads()} cores, Python {platform.python_version()}"
    lines.append(f"Machine: {machine}.")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
