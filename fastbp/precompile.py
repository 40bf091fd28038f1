"""Compile every kernel a run uses into Numba's on-disk cache, ahead of the first real fit.

Numba compiles fastbp's kernels the first time a process needs them (seconds) and keeps them in
fastbp's kernel cache (core.compile.kernel_cache_dir(): one folder per version of the kernels, shared by
every copy and environment of the same code): every later process loads them.
A fresh container or CI image pays the compile again, unless it was built with `fastbp compile`.
Each kernel is compiled once per dtype, per kind of target (class indices, or float targets) and for single
models apart from ensembles and embedding tables (kernels.extras_of), whatever the layer sizes, activations, losses
or optimizer, so a few tiny fits reach them all.
"""
import time

import numpy as np

DTYPES = ("float32", "float64")
BUILDS = (1, 2)  # ensemble sizes whose fits reach a single model's build and the ensembles' (kernels.extras_of)


def tiny_fits(dtype, members):
    """Fits, validation, gradient and predictions of tiny data that reach every kernel of one build: `dtype`,
    single models (members=1) or ensembles and tables (members > 1), for both kinds of target."""
    from .trainer import Trainer

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(dtype)
    classes = rng.integers(0, 3, size=64)
    targets = rng.normal(size=(64, 2)).astype(dtype)
    for loss, y, n_out in (("cross_entropy", classes, 3), ("mse", targets, 2)):
        trainer = Trainer([4, 8, n_out], loss=loss, optimizer="adam", epochs=1, batch_size=16, dtype=dtype,
                          n_threads=1, ensemble=members)
        trainer.fit(X, y, sample_weight=np.ones(64), validation_split=0.25)  # training and validation metrics
        trainer.loss_and_grad(X, y)  # the full-data gradient (L-BFGS)
        trainer.predict(X)


def compile_kernels(dtypes=DTYPES, progress=print):
    """Compile and cache every build of each dtype (tiny_fits), a process per build and at most one per core (a
    compile uses one core); returns the seconds until each dtype's builds were all cached."""
    import os
    import subprocess
    import sys
    import tempfile

    from .core.compile import CACHE, kernel_cache_dir
    from .core.errors import InputError
    from .core.threads import default_threads

    if not CACHE:
        raise InputError("the kernel cache is off (FASTBP_CACHE=0), so compiling ahead would keep nothing: unset "
                         "FASTBP_CACHE (or set it to 1) to fill the cache")

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # these sources, wherever run from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    waiting = [(dtype, members) for dtype in dtypes for members in BUILDS]
    running, seconds, start = {}, {}, time.perf_counter()
    while waiting or running:
        while waiting and len(running) < default_threads():
            build = waiting.pop(0)
            code = f"from fastbp.precompile import tiny_fits\ntiny_fits{build!r}"
            errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stop the process
            running[build] = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                              stderr=errors), errors
        time.sleep(0.05)
        for build, (process, errors) in list(running.items()):
            if process.poll() is None:
                continue
            del running[build]
            with errors:
                errors.seek(0)
                message = errors.read()
            if process.returncode != 0:
                for other, _ in running.values():
                    other.kill()
                raise RuntimeError(f"compiling the {build[0]} build (members={build[1]}) failed:\n{message}")
            dtype = build[0]
            if not any(b[0] == dtype for b in waiting + list(running)):
                seconds[dtype] = time.perf_counter() - start
                progress(f"{dtype}: {seconds[dtype]:.1f} s")
    progress(f"compiled kernels are cached in {kernel_cache_dir()}")
    return seconds
