"""Benchmark fastbp against PyTorch and scikit-learn on the same data, net, batch size and threads.

Run as `python scripts/compare_peers.py` or `fastbp bench`. Each system trains
plain SGD (no momentum, no weight decay) for one warm-up epoch, then the best of
`--repeat` timed epochs counts. The float32 GEMM peak (numpy matmul) is measured
in the same run, at 1024^3 and at each workload's layer shapes.
"""
import argparse
import contextlib
import os
import platform
import time
import warnings

import numpy as np

from .core.layout import flops_per_row

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


def make_data(workload, dtype, seed=0):
    rows, features, _, classes, _ = WORKLOADS[workload]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal(size=(rows, features), dtype=dtype)
    w = rng.standard_normal(size=(features, classes), dtype=dtype)
    return X, (X @ w).argmax(axis=1)


SPREADS = []  # slowest / fastest timed repeat of every best_time call, to tell a noisy run


def best_time(run, repeat):
    run()  # warm-up: compilation, caches, allocator
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    SPREADS.append(max(times) / min(times))
    return min(times)


def time_fastbp(workload, X, y, threads, repeat):
    from fastbp import Trainer

    batch = WORKLOADS[workload][4]
    tr = Trainer(layer_sizes(workload), activation="relu", loss="cross_entropy", lr=LR, batch_size=batch,
                 epochs=1, dtype=X.dtype.name, n_threads=threads, seed=0)
    return best_time(lambda: tr.fit(X, y), repeat)


OPTIMIZER_VARIANTS = {name: {"optimizer": name} for name in ("sgd", "adam", "adamw", "rmsprop")}
ENSEMBLE_VARIANTS = {**{k: {"ensemble": k} for k in (1, 4, 8)},
                     "8 every_layer": {"ensemble": 8, "ensemble_adapters": "every_layer"}}


def epoch_costs(workload, dtype, threads, repeat, variants):
    """Seconds per fastbp epoch of each variant (name -> Trainer arguments over the workload's SGD run): the cost
    of Adam & co over SGD (OPTIMIZER_VARIANTS), of an ensemble over one model (ENSEMBLE_VARIANTS)."""
    from fastbp import Trainer

    X, y = make_data(workload, np.dtype(dtype).type)
    batch = WORKLOADS[workload][4]
    costs = {}
    for name, settings in variants.items():
        tr = Trainer(layer_sizes(workload), batch_size=batch, epochs=1, dtype=dtype, n_threads=threads, seed=0,
                     **settings)
        costs[name] = best_time(lambda tr=tr: tr.fit(X, y), repeat)
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


_JAX_EPOCH = """
import sys, time
import numpy as np
import jax, jax.numpy as jnp
from fastbp.bench import LR, WORKLOADS, layer_sizes, make_data
workload, dtype, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
jax.config.update("jax_enable_x64", dtype == "float64")
X, y = make_data(workload, np.dtype(dtype).type)
batch = WORKLOADS[workload][4]
sizes = layer_sizes(workload)
key = jax.random.PRNGKey(0)
params = []
for a, b in zip(sizes[:-1], sizes[1:]):  # PyTorch's nn.Linear initialisation
    key, kw, kb = jax.random.split(key, 3)
    bound = 1 / np.sqrt(a)
    params.append((jax.random.uniform(kw, (a, b), dtype, -bound, bound),
                   jax.random.uniform(kb, (b,), dtype, -bound, bound)))

def loss(params, xb, yb):
    h = xb
    for W, b in params[:-1]:
        h = jax.nn.relu(h @ W + b)
    W, b = params[-1]
    log_p = jax.nn.log_softmax(h @ W + b)
    return -jnp.mean(jnp.take_along_axis(log_p, yb[:, None], axis=1))

@jax.jit
def epoch(params, X, y, key):
    perm = jax.random.permutation(key, X.shape[0])
    Xb = X[perm].reshape(-1, batch, X.shape[1])
    yb = y[perm].reshape(-1, batch)
    def step(p, xy):
        g = jax.grad(loss)(p, *xy)
        return jax.tree_util.tree_map(lambda w, d: w - LR * d, p, g), None
    return jax.lax.scan(step, params, (Xb, yb))[0]

X, y = jnp.asarray(X), jnp.asarray(y.astype(np.int32))
start = time.perf_counter()
params = jax.block_until_ready(epoch(params, X, y, key))  # warm-up: compiles
compile_s = time.perf_counter() - start
best = float("inf")
for i in range(repeat):
    start = time.perf_counter()
    params = jax.block_until_ready(epoch(params, X, y, jax.random.PRNGKey(i + 1)))
    best = min(best, time.perf_counter() - start)
print(best, compile_s)
"""


def time_jax(workload, X, y, threads, repeat):
    """JAX's compiled epoch (lax.scan over the batches, plain SGD) in a fresh process pinned to `threads`
    cores (XLA's CPU client sizes its thread pool by the cores it may use)."""
    import os
    import subprocess
    import sys

    cores = sorted(os.sched_getaffinity(0))[:threads]
    result = subprocess.run([sys.executable, "-c", _JAX_EPOCH, workload, X.dtype.name, str(repeat)],
                            capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if result.returncode != 0:
        raise RuntimeError(f"the JAX epoch failed: {result.stderr.strip()[-500:]}")
    seconds, compile_s = map(float, result.stdout.split()[-2:])
    JAX_COMPILE_SECONDS[workload] = compile_s
    return seconds


JAX_COMPILE_SECONDS = {}


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


SYSTEMS = {"fastbp": time_fastbp, "torch": time_torch, "sklearn": time_sklearn, "jax": time_jax}


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
    """(seconds with an empty kernel cache, seconds with a warm cache) for import + one epoch on digits."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, FASTBP_CACHE_DIR=cache)
        run = lambda: float(subprocess.run([sys.executable, "-c", _STARTUP.format(dtype=dtype)], env=env,
                                           capture_output=True, text=True, check=True).stdout.split()[-1])
        cold = run()
        warm = min(run() for _ in range(3))
    return cold, warm


def available(system):
    import importlib.util

    return system == "fastbp" or importlib.util.find_spec(system) is not None


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
                seconds = SYSTEMS[system](name, X, y, threads, repeat)
                if seconds is not None:
                    rate[system] = n / seconds
        fpss = flops_per_row(sizes)
        rows.append({"workload": name, "rate": rate, "gflops": {s: r * fpss / 1e9 for s, r in rate.items()},
                     "peak": peak, "shape_peak": shape_peak})
        print(format_row(rows[-1], systems), flush=True)
    return rows


def header(systems):
    peers = [p for p in systems if p != "fastbp"]
    cells = (["workload"] + [f"{s} samples/s" for s in systems] + [f"fastbp/{p}" for p in peers]
             + ["fastbp GFLOP/s"] + [f"{s} % peak" for s in systems] + ["GEMM GFLOP/s at layer shapes"])
    return "| " + " | ".join(cells) + " |\n|" + "---|" * len(cells)


def format_row(row, systems):
    rate, gf, peak = row["rate"], row["gflops"], row["peak"]
    dash = "—"
    peers = [p for p in systems if p != "fastbp"]
    cells = [row["workload"]] + [f"{rate[s]:,.0f}" if s in rate else dash for s in systems]
    cells += [f"{rate['fastbp'] / rate[p]:.2f}×" if p in rate and "fastbp" in rate else dash for p in peers]
    cells.append(f"{gf['fastbp']:.1f}" if "fastbp" in gf else dash)
    cells += [f"{100 * gf[s] / peak:.0f} %" if s in gf else dash for s in systems]
    cells.append(f"{row['shape_peak']:.0f}")
    return "| " + " | ".join(cells) + " |"


def blas_in_use():
    """One line per BLAS library loaded (threadpoolctl): library, version, kernel, file."""
    from threadpoolctl import threadpool_info

    import fastbp.core.threads  # noqa: F401  (loads SciPy's BLAS, the one fastbp's kernels call)
    return [f"{i['internal_api']} {i.get('version') or ''} {i.get('architecture') or ''} ({i['filepath']})"
            for i in threadpool_info() if i["user_api"] == "blas"]


def conditions_warnings(busy):
    """What makes this run's numbers unrepresentative, as sentences (empty when nothing)."""
    import os

    notes = []
    forced = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if os.environ.get(v)]
    if forced:
        notes.append(f"{' and '.join(forced)} set: NumPy/SciPy's OpenBLAS (fastbp, scikit-learn) is forced to "
                     f"{os.environ.get('OPENBLAS_CORETYPE', 'another')} kernels, PyTorch is not; unset them "
                     "for this command (env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ...) to compare fairly")
    used = others_cpu_share()
    if not busy and used is not None and used > 0.25:
        notes.append(f"other processes were using {100 * used:.0f} % of the CPUs when the run started")
    return notes


def others_cpu_share(seconds=0.5):
    """Share of all CPUs busy over the next `seconds` (this process idles meanwhile), from /proc/stat;
    None where there is no /proc/stat."""
    def sample():
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return None
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def spread_warning():
    worst = max(SPREADS, default=1.0)
    if worst > 1.25:
        return (f"repeats of one measurement differed by up to {worst:.2f}×: the machine was not quiet "
                "(the best repeat counts)")
    return None


@contextlib.contextmanager
def busy_process(enabled):
    """With `enabled`, one other process spinning on a core for the block (as a shared machine has)."""
    import subprocess
    import sys

    if not enabled:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        yield
    finally:
        proc.kill()
        proc.wait()


def small_fits(repeat):
    """[(what, fastbp.sklearn seconds, scikit-learn seconds)]: whole fits on small data with default threads,
    where thread start-up and wake-ups weigh most."""
    from sklearn.datasets import load_digits, load_iris
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV
    from sklearn.neural_network import MLPClassifier as SkMLP

    from fastbp.sklearn import MLPClassifier as FastMLP

    X_iris, y_iris = load_iris(return_X_y=True)
    X_digits, y_digits = load_digits(return_X_y=True)
    X_digits = X_digits / 16.0
    grid = {"hidden_layer_sizes": [(32,), (64,)], "alpha": [1e-4, 1e-2]}
    cases = [("iris, lbfgs, 200 iterations", X_iris, y_iris, lambda M: M(solver="lbfgs", max_iter=200, random_state=0)),
             ("iris, adam, 200 epochs", X_iris, y_iris, lambda M: M(solver="adam", max_iter=200, random_state=0)),
             ("digits, GridSearchCV(n_jobs=2), 4 settings x 3 folds, adam, 50 epochs", X_digits, y_digits,
              lambda M: GridSearchCV(M(max_iter=50, random_state=0), grid, cv=3, n_jobs=2))]
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for what, X, y, make in cases:
            ours, theirs = (best_time(lambda M=M: make(M).fit(X, y), repeat) for M in (FastMLP, SkMLP))
            results.append((what, ours, theirs))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastbp bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--threads", default=None, help="thread counts, comma-separated (default: all cores)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=3, help="timed epochs per system; the best counts")
    parser.add_argument("--systems", default="fastbp,torch,sklearn",
                        help="comma-separated, from fastbp, torch, jax (pip install jax), sklearn")
    parser.add_argument("--busy", action="store_true",
                        help="run everything beside one other process spinning on a core, as on a shared machine")
    parser.add_argument("--memory", action="store_true",
                        help="also report peak RSS of one epoch per system (each in a fresh process)")
    parser.add_argument("--startup", action="store_true",
                        help="also time import + one epoch on digits with an empty and a warm Numba cache")
    parser.add_argument("--dropin", action="store_true",
                        help="also time fastbp.sklearn.MLPClassifier against scikit-learn's (adam and sgd; "
                             "the workloads and digits)")
    parser.add_argument("--fits", action="store_true",
                        help="also time whole fits on small data against scikit-learn: iris (lbfgs, adam) and "
                             "GridSearchCV(n_jobs=2) on digits")
    parser.add_argument("--optimizers", action="store_true",
                        help="also time one fastbp epoch per optimizer (sgd, adam, adamw, rmsprop)")
    parser.add_argument("--ensembles", action="store_true",
                        help="also time fastbp's epochs with ensembles of 4 and 8 members against one model")
    parser.add_argument("--markdown", default=None, help="also write the table(s) to this Markdown file")
    parser.add_argument("--quality", action="store_true",
                        help="instead: held-out quality on real tables (fastbp.quality): fastbp's defaults against "
                             "HistGradientBoosting, scikit-learn's MLP and pytabkit's RealMLP/TabM, each fit in its "
                             "own process; --tables and --systems choose")
    parser.add_argument("--tables", default=None, help="with --quality: comma-separated tables (default: all)")
    parser.add_argument("--seeds", default="0",
                        help="with --quality: comma-separated seeds; each system fits once per seed on the same "
                             "split, metrics as mean ± standard deviation (default: 0)")
    parser.add_argument("--variant", action="append", metavar="NAME=ARGS",
                        help="with --quality: also fastbp with these `fastbp train` arguments, reported as NAME "
                             "(repeatable; for ablations)")
    args = parser.parse_args(argv)
    if args.quality:
        return _quality(parser, args)
    from fastbp.core.threads import max_threads

    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [max_threads()]
    lines = []

    def emit(*new_lines):
        for line in new_lines:
            print(line, flush=True)
        lines.extend(new_lines)

    notes = conditions_warnings(args.busy)
    emit(*(f"WARNING: {n}." for n in notes))
    emit("BLAS: " + "; ".join(blas_in_use()), "")
    with busy_process(args.busy):
        condition = "beside one busy process" if args.busy else "quiet machine"
        for threads in thread_counts:
            emit(f"**{args.dtype}, {threads} thread(s), {condition}, best of {args.repeat} epochs after one "
                 f"warm-up**", "", header(systems))
            rows = run(workloads, threads, args.dtype, args.repeat, systems)
            lines.extend(format_row(r, systems) for r in rows)
            peak = rows[0]["peak"] if rows else float("nan")
            over = [f"{r['workload']} ({s})" for r in rows for s, g in r["gflops"].items() if g > peak]
            if over:
                emit("", f"WARNING: above the GEMM peak measured in the same run: {', '.join(over)}; the peak "
                     "was measured while the machine was slower (load, frequency): do not trust this table's %.")
            emit("", f"{args.dtype} GEMM peak (numpy matmul 1024³, {threads} thread(s)): {peak:.0f} GFLOP/s", "")
            if JAX_COMPILE_SECONDS:
                emit("JAX compile + first epoch (s): " + ", ".join(f"{w} {t:.1f}" for w, t in JAX_COMPILE_SECONDS.items()),
                     "")
                JAX_COMPILE_SECONDS.clear()
        if args.memory:
            threads = thread_counts[-1]
            emit(f"**Peak RSS, one {args.dtype} epoch, {threads} thread(s)** (MiB: after imports and data → peak)",
                 "", "| workload | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems))
            for name in workloads:
                cells = [("{:.0f} → {:.0f}".format(*peak_rss(system, name, args.dtype, threads))
                          if available(system) and system != "jax" else "—") for system in systems]
                emit(f"| {name} | " + " | ".join(cells) + " |")
            emit("")
        if args.startup:
            cold, warm = startup_seconds(args.dtype)
            emit(f"Import + one {args.dtype} epoch on digits in a fresh process: {cold:.1f} s with an empty "
                 f"Numba cache, {warm:.2f} s with a warm cache.", "")
        if args.optimizers:
            threads = thread_counts[-1]
            emit(f"**Epoch time relative to SGD, fastbp, {args.dtype}, {threads} thread(s)**", "",
                 "| workload | adam | adamw | rmsprop |", "|---|---|---|---|")
            for name in workloads:
                c = epoch_costs(name, args.dtype, threads, args.repeat, OPTIMIZER_VARIANTS)
                emit(f"| {name} | " + " | ".join(f"{c[o] / c['sgd']:.2f}×" for o in ("adam", "adamw", "rmsprop"))
                     + " |")
            emit("")
        if args.ensembles:
            threads = thread_counts[-1]
            emit(f"**Epoch time of an ensemble relative to one model, fastbp, {args.dtype}, {threads} thread(s), "
                 f"{condition}** (k members cost at most k×)", "",
                 "| workload | one model s | 4 members | 8 members | 8, adapters on every layer |",
                 "|---|---|---|---|---|")
            for name in workloads:
                c = epoch_costs(name, args.dtype, threads, args.repeat, ENSEMBLE_VARIANTS)
                emit(f"| {name} | {c[1]:.3f} | {c[4] / c[1]:.2f}× | {c[8] / c[1]:.2f}× | "
                     f"{c['8 every_layer'] / c[1]:.2f}× |")
            emit("")
        if args.dropin:
            threads = thread_counts[-1]
            emit(f"**fastbp.sklearn.MLPClassifier vs scikit-learn's, {threads} thread(s), whole fit**", "",
                 "| data | solver | epochs | fastbp.sklearn s | scikit-learn s | speed-up |",
                 "|---|---|---|---|---|---|")
            for name in workloads + ["digits"]:
                epochs = 200 if name == "digits" else (1 if name == "wide" else 3)
                for solver in ("adam", "sgd"):
                    ours, theirs = dropin_speedup(name, solver, epochs, threads)
                    emit(f"| {name} | {solver} | {epochs} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f}× |")
            emit("")
        if args.fits:
            emit(f"**Whole fits on small data, default threads, {condition}, best of {args.repeat}**", "",
                 "| fit | fastbp.sklearn s | scikit-learn s | fastbp time / scikit-learn time |", "|---|---|---|---|")
            for what, ours, theirs in small_fits(args.repeat):
                emit(f"| {what} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")
            emit("")
    spread = spread_warning()
    if spread:
        emit(f"WARNING: {spread}.")
    machine = f"{platform.processor() or platform.machine()}, {max_threads()} cores, Python {platform.python_version()}"
    emit(f"Machine: {machine}.")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


def _quality(parser, args):
    from fastbp import quality
    tables = [t.strip() for t in (args.tables or ",".join(quality.TABLES)).split(",") if t.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.systems == parser.get_default("systems"):
        systems = list(quality.SYSTEMS)
    variants = {}
    for spec in args.variant or []:
        name, sep, train_args = spec.partition("=")
        if not sep or not name.strip() or name.strip() in quality.SYSTEMS:
            parser.error(f"--variant takes NAME=ARGS (a new name, then fastbp train's arguments), got {spec!r}")
        variants[name.strip()] = train_args
    systems += [name for name in variants if name not in systems]
    unknown = [t for t in tables if t not in quality.TABLES] + [s for s in systems
                                                               if s not in quality.SYSTEMS and s not in variants]
    if unknown:
        parser.error(f"unknown table(s) or system(s) for --quality: {', '.join(unknown)}; tables: "
                     f"{', '.join(quality.TABLES)}; systems: {', '.join(quality.SYSTEMS)}")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    lines = quality.main(tables, systems, variants, seeds or [quality.SEED])
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}")
    print(f"Machine: {machine}.")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(lines + ["", f"Machine: {machine}."]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
