"""The thread policy (fastbp.core.threads): OpenMP limits obeyed, threads sized to the work, spin default."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastbp
from fastbp import Trainer
import fastbp.core
from fastbp.core import threads
from fastbp.core.layout import flops_per_row


def test_threads_for_sizes_the_work(monkeypatch):
    monkeypatch.setattr(threads, "MIN_FLOPS_PER_THREAD", 1000)
    assert threads.threads_for(4, 0) == 1
    assert threads.threads_for(4, 1999) == 1
    assert threads.threads_for(4, 2000) == 2
    assert threads.threads_for(4, 10 ** 9) == 4
    monkeypatch.setattr(threads, "MIN_FLOPS_PER_THREAD", 0)
    assert threads.threads_for(3, 0) == 3


def test_flops_per_row_counts_forward_and_backward_products():
    sizes = [3, 5, 2]
    assert flops_per_row(sizes, backward=False) == 2 * (15 + 10)
    assert flops_per_row(sizes) == 2 * 25 + 2 * 25 + 2 * 10


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY",
                                                                   "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_spin_count_default_is_set_unless_the_user_chose():
    code = "import os, fastbp; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert _run(code) == [fastbp.core.SPIN_COUNT]
    assert _run(code, GOMP_SPINCOUNT="77") == ["77"]
    assert _run(code, OMP_WAIT_POLICY="passive") == ["None"]


def test_default_threads_obey_openmp_limits():
    code = ("import numba, fastbp\nfrom fastbp.core.threads import default_threads\n"
            "from threadpoolctl import threadpool_limits\n"
            "print(numba.config.NUMBA_NUM_THREADS, default_threads())\n"
            "with threadpool_limits(1):\n    print(default_threads())\n"
            "print(default_threads())")
    cores, default, limited, after = map(int, _run(code, NUMBA_NUM_THREADS="2"))
    assert (cores, default, after) == (2, 2, 2)
    if limited != 1:
        pytest.skip("Numba does not run on libgomp here: threadpoolctl cannot limit it")
    assert _run("from fastbp.core.threads import default_threads; print(default_threads())",
                NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="1") == ["1"]


def test_small_work_gives_the_one_thread_result(monkeypatch):
    """With the policy on, a tiny net asked for 2 threads trains exactly as with 1 (no parallel split)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4))
    y = rng.integers(0, 3, size=64)
    monkeypatch.setattr(threads, "MIN_FLOPS_PER_THREAD", 10 ** 9)
    two = Trainer([4, 8, 3], epochs=3, batch_size=32, dtype="float64", n_threads=2).fit(X, y).params
    one = Trainer([4, 8, 3], epochs=3, batch_size=32, dtype="float64", n_threads=1).fit(X, y).params
    assert np.array_equal(one, two)


def test_bench_reads_the_cpu_share_of_other_processes():
    from fastbp.bench import others_cpu_share
    share = others_cpu_share(0.05)
    assert share is None or 0.0 <= share <= 1.0


@pytest.mark.slow
def test_the_first_compile_in_a_fresh_cache_is_announced_once(tmp_path):
    code = ("import warnings, numpy as np, fastbp\n"
            "warnings.simplefilter('always')\n"
            "X = np.random.default_rng(0).normal(size=(40, 3))\n"
            "for _ in range(2):\n"
            "    fastbp.Trainer([3, 2], epochs=1, dtype='float64').fit(X, np.arange(40) % 2)\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), FASTBP_CACHE_DIR=str(tmp_path / "cache"))
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    # said before the pause (so a user knows why it waits) and after it, with the time it took
    assert first.stderr.count("CompileNotice: compiling fastbp's single-model training kernels, once for this "
                              "version and CPU") == 1
    assert first.stderr.count("CompileNotice: compiled fastbp's single-model training kernels in") == 1
    assert first.stderr.index("compiling fastbp's single-model") < first.stderr.index("compiled fastbp's single-model")
    assert "<string>:5: CompileNotice" in first.stderr  # attributed to the user's line
    # loaded from the cache, also by another copy of the package (an installed one beside the source tree)
    copy = _copy_of_the_package(tmp_path / "copy")
    again = subprocess.run([sys.executable, "-c", code + "assert fastbp.__file__.startswith(%r)\n" % str(copy)],
                           capture_output=True, text=True, env=dict(env, PYTHONPATH=str(copy)), timeout=600)
    assert again.returncode == 0 and "CompileNotice" not in again.stderr, again.stderr


def _copy_of_the_package(folder):
    shutil.copytree(os.path.dirname(fastbp.__file__), folder / "fastbp", ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def _cache_dir_of(package_folder, **env):
    code = "from fastbp.core.compile import kernel_cache_dir; print(kernel_cache_dir())"
    env = dict({k: v for k, v in os.environ.items() if k != "FASTBP_CACHE_DIR"}, PYTHONPATH=str(package_folder), **env)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


@pytest.mark.slow
def test_the_kernel_cache_is_shared_by_copies_of_the_same_code_and_only_them(tmp_path):
    """The cache folder is named by the kernels' sources and compile settings, not by where the package lies: a
    copy of the same code uses the same folder; a change to any kernel module, or other compile settings, another."""
    root = str(tmp_path / "cache")
    same, changed = _copy_of_the_package(tmp_path / "same"), _copy_of_the_package(tmp_path / "changed")
    with open(changed / "fastbp" / "core" / "activations.py", "a") as f:
        f.write("\n# a change to a helper that every kernel inlines\n")
    here = _cache_dir_of(os.path.dirname(os.path.dirname(fastbp.__file__)), FASTBP_CACHE_DIR=root)
    assert os.path.dirname(here) == root
    assert _cache_dir_of(same, FASTBP_CACHE_DIR=root) == here
    assert _cache_dir_of(changed, FASTBP_CACHE_DIR=root) != here
    # each setting against its other value (the environment running the tests may set either)
    for setting in ("FASTBP_FASTMATH", "NUMBA_BOUNDSCHECK"):
        on, off = (_cache_dir_of(same, FASTBP_CACHE_DIR=root, **{setting: value}) for value in ("1", "0"))
        assert on != off, setting
    # NUMBA_CACHE_DIR, when FASTBP_CACHE_DIR is not set, holds fastbp's folders too
    numba_dir = str(tmp_path / "numba")
    assert os.path.dirname(_cache_dir_of(same, NUMBA_CACHE_DIR=numba_dir)) == os.path.join(numba_dir, "fastbp")


def test_kernel_cache_folders_of_other_code_are_removed_when_long_unused(tmp_path):
    root = tmp_path / "cache"
    old, recent = root / "kernels-old", root / "kernels-recent"
    for folder in (old, recent):
        folder.mkdir(parents=True)
        (folder / "x.nbi").write_bytes(b"")
    month_ago = time.time() - 30 * 86400
    os.utime(old, (month_ago, month_ago))
    current = _cache_dir_of(os.path.dirname(os.path.dirname(fastbp.__file__)), FASTBP_CACHE_DIR=str(root))
    assert os.path.isdir(current) and recent.is_dir() and not old.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="reaches the C library through ctypes.CDLL(None)")
def test_a_kernel_that_cannot_be_cached_still_runs_with_numbas_warning():
    """Numba refuses to cache code holding a process's own addresses (ctypes pointers; at NUMBA_OPT=0 some constant
    arrays too) and warns, naming the source file: the shared cache must give it that file, not fail."""
    import ctypes
    from numba.core.errors import NumbaWarning
    from fastbp.core.compile import jit

    labs = ctypes.CDLL(None).labs
    labs.restype, labs.argtypes = ctypes.c_long, [ctypes.c_long]
    namespace = {"labs": labs}  # a global of the function: Numba's cache cannot pickle a closure over a pointer
    exec("def absolute(x):\n    return labs(x)\n", namespace)
    absolute = jit(namespace["absolute"])
    with pytest.warns(NumbaWarning, match="Cannot cache compiled function"):
        assert absolute(-3) == 3


@pytest.mark.slow
def test_after_fastbp_compile_a_new_process_compiles_nothing(tmp_path):
    """`fastbp compile` fills the cache with what a run uses (the tiny fits reach every kernel): a later process
    that fits a DataFrame with an embedded column, validates, predicts and evaluates, then a single model and an
    ensemble, compiles nothing."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), FASTBP_CACHE_DIR=str(tmp_path / "cache"))
    built = subprocess.run([sys.executable, "-m", "fastbp", "compile", "--dtype", "float32"], capture_output=True,
                           text=True, env=env, timeout=900)
    assert built.returncode == 0, built.stderr
    code = ("import warnings, numpy as np, pandas as pd, fastbp\n"
            "warnings.simplefilter('always')\n"
            "rng = np.random.default_rng(0)\n"
            "df = pd.DataFrame({'x': rng.normal(size=300), 'c': [f'k{i % 200}' for i in range(300)]})\n"
            "y = np.where(df.x > 0, 'a', 'b')\n"
            "tr = fastbp.Trainer(hidden=(8,), optimizer='adamw', epochs=2, categorical='embed', label_smoothing=0.1)\n"
            "tr.fit(df, y, validation_split=0.2)\n"
            "tr.predict_proba(df), tr.evaluate(df, y)\n"
            "fastbp.Trainer([3, 4, 2], loss='mse', epochs=1).fit(rng.normal(size=(50, 3)), rng.normal(size=(50, 2)))\n"
            "X = rng.normal(size=(50, 3))\n"
            "fastbp.Trainer([3, 4, 2], epochs=1).fit(X, np.arange(50) % 2).predict(X)\n"
            "fastbp.Trainer([3, 4, 2], loss='mse', epochs=1, ensemble=3).fit(X, rng.normal(size=(50, 2))).predict(X)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr
    assert "CompileNotice" not in run.stderr, run.stderr


class _Alternating(threads.ThreadChooser):
    """Segments of 3 batches on 2 threads, then 1, then 2, ... (what a busy machine may make of a run)."""
    used = []

    def segments(self, n_batches, groups):
        import numba
        for k, first in enumerate(range(0, n_batches, 3)):
            threads = groups if k % 2 == 0 else 1
            numba.set_num_threads(threads)
            self.used.append(threads)
            yield first, min(3, n_batches - first), threads
        numba.set_num_threads(groups)


@pytest.mark.skipif(threads.max_threads() < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes, batch_size", [
    ([6, 16, 3], 64), ([6, 64, 64, 3], 8),  # slabs, weight slices
    ([16, 64, 64, 3], 48), ([28, 256, 256, 3], 32),  # the benchmark's narrow and small_batch: the BLAS's own kernels
])
def test_results_do_not_depend_on_the_threads_that_run_the_row_groups(monkeypatch, dtype, sizes, batch_size):
    """Training splits every batch into the same row groups on 1 thread as on 2: bit-identical parameters and
    losses whether an epoch runs in one call on 2 threads or in segments on 2 and 1 threads. The benchmark's
    shapes reach OpenBLAS's own sgemm kernels, whose rows' bits depend on the product's height: one thread
    running both groups must still make one product per group."""
    import fastbp.engine.engine as engine_module
    rng = np.random.default_rng(3)
    X = rng.normal(size=(203, sizes[0]))
    y = rng.integers(0, 3, size=203)
    w = rng.uniform(0.5, 2.0, size=203)
    monkeypatch.setattr(threads, "MIN_FLOPS_PER_THREAD", 0)

    def fit():
        tr = Trainer(sizes, optimizer="adam", lr=0.01, batch_size=batch_size, epochs=2, dtype=dtype, n_threads=2,
                     dropout=0.2, clip_grad_norm=1.0, seed=5)
        return tr.fit(X, y, sample_weight=w)

    monkeypatch.setattr(threads, "ADAPT_THREADS", False)
    whole = fit()
    monkeypatch.setattr(threads, "ADAPT_THREADS", True)
    monkeypatch.setattr(engine_module, "ThreadChooser", _Alternating)
    _Alternating.used.clear()
    segmented = fit()
    assert 1 in _Alternating.used and 2 in _Alternating.used
    assert np.array_equal(whole.params, segmented.params)
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in segmented.history]


def _scripted_usage(monkeypatch):
    """threads._usage returns running totals of (wall, cpu, preemptions) steps, one step per segment."""
    totals = [np.zeros(3)]

    def usage():
        return tuple(totals[0])

    def advance(step):
        totals[0] = totals[0] + np.array(step[:3], dtype=float)
        if len(step) > 3:
            time.sleep(step[3])  # real time passes: the chooser's retry clock is perf_counter
    monkeypatch.setattr(threads, "_usage", usage)
    monkeypatch.setattr(threads.numba, "set_num_threads", lambda n: None)  # the logic alone, even for 16 threads
    return advance


def _threads_of_segments(chooser, groups, steps, advance):
    """Run chooser.segments over len(steps) one-batch segments; step k is what segment k measured."""
    used = []
    for (_, count, n_threads), step in zip(chooser.segments(len(steps), groups), steps):
        used.append(n_threads)
        advance(step)
    return used


@pytest.mark.skipif(threads.resource is None, reason="no getrusage here: the chooser keeps every thread")
def test_thread_chooser_gives_way_only_when_the_threads_are_preempted(monkeypatch):
    monkeypatch.setattr(threads, "ADAPT_THREADS", True)
    monkeypatch.setattr(threads.ThreadChooser, "SEGMENT_SECONDS", 0.01)  # one batch per segment below
    monkeypatch.setattr(threads.ThreadChooser, "FIRST_SEGMENT", 1)
    advance = _scripted_usage(monkeypatch)
    quiet, busy, idle_waits = (0.01, 0.019, 0), (0.01, 0.010, 20), (0.01, 0.012, 0)
    # busy: 2 threads got one core's worth and were preempted 2,000 times a second
    chooser = threads.ThreadChooser()
    assert _threads_of_segments(chooser, 2, [quiet, quiet, busy, busy, busy], advance) == [2, 2, 2, 1, 1]
    # a low CPU share without preemptions is our own threads waiting at barriers: keep them
    chooser = threads.ThreadChooser()
    assert _threads_of_segments(chooser, 2, [quiet, idle_waits, idle_waits, quiet], advance) == [2, 2, 2, 2]
    # after RETRY_SECONDS every thread is tried again, and kept when the cores are free
    monkeypatch.setattr(threads.ThreadChooser, "RETRY_SECONDS", 0.2)
    chooser = threads.ThreadChooser()
    steps = [quiet, busy, quiet + (0.3,), quiet, quiet]
    assert _threads_of_segments(chooser, 2, steps, advance) == [2, 2, 1, 2, 2]
    # ... and given up again while the neighbour is still there
    chooser = threads.ThreadChooser()
    steps = [quiet, busy, quiet + (0.3,), busy, quiet]
    assert _threads_of_segments(chooser, 2, steps, advance) == [2, 2, 1, 2, 1]
    # 16 groups with 10 cores free: 8 threads take two groups each (as fast as 10 would, less contended)
    monkeypatch.setattr(threads.ThreadChooser, "RETRY_SECONDS", 60.0)
    chooser = threads.ThreadChooser()
    ten_cores = (0.01, 0.1, 200)
    assert _threads_of_segments(chooser, 16, [quiet, ten_cores, ten_cores], advance) == [16, 16, 8]
    # one group: one call, nothing measured
    assert list(threads.ThreadChooser().segments(50, 1)) == [(0, 50, 1)]
