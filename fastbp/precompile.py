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
    """Run tiny fits of each dtype, so their kernels are compiled and cached; returns seconds per dtype."""
    from .core.compile import kernel_cache_dir

    seconds = {}
    for dtype in dtypes:
        start = time.perf_counter()
        for members in BUILDS:
            tiny_fits(dtype, members)
        seconds[dtype] = time.perf_counter() - start
        progress(f"{dtype}: {seconds[dtype]:.1f} s")
    progress(f"compiled kernels are cached in {kernel_cache_dir()}")
    return seconds
