"""The training engine: optimizer state for every schedule, option sweeps (run bounds-checked in CI),
thread safety, run settings that are not part of the model, exact resume after an interruption."""
import os
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest

import fastbp
from conftest import make_problem

SCHEDULES = [None, ("step", {"step_size": 1, "gamma": 0.5}), ("cosine", {"warmup_epochs": 1}),
             ("one_cycle", {"cycle_momentum": True}), ("reduce_on_plateau", {"patience": 0})]
OPTIMIZERS = [dict(optimizer="sgd"), dict(optimizer="sgd", momentum=0.9, nesterov=True),
              dict(optimizer="adam", amsgrad=True), dict(optimizer="adamw"),
              dict(optimizer="rmsprop", centered=True), dict(optimizer="rmsprop", momentum=0.5)]


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_one_cycle_momentum_on_an_optimizer_built_without_momentum(optimizer):
    """torch's OneCycleLR default (cycle_momentum=True) sets momentum on SGD(momentum=0) and RMSprop:
    the buffer must exist before the first step that reads it (this used to write past the state)."""
    X, y = make_problem("cross_entropy", 200, 4, 3, seed=0)
    tr = fastbp.Trainer([4, 16, 3], optimizer=optimizer, lr=0.01, batch_size=32, epochs=4, dtype="float64",
                        lr_schedule=("one_cycle", {"cycle_momentum": True}))
    assert tr.state.state_arrays().get("momentum_buffer") is None
    tr.fit(X, y)
    buffer = tr.state.state_arrays()["momentum_buffer"]
    assert buffer.shape == tr.params.shape and np.abs(buffer).max() > 0
    assert np.isfinite(tr.params).all() and tr.history[-1]["loss"] < tr.history[0]["loss"] * 1.5


def test_one_cycle_momentum_matches_an_sgd_with_that_momentum_from_the_start():
    """With the buffer allocated zeroed, epoch 1 of one_cycle equals SGD run at that epoch's momentum."""
    from fastbp.engine.schedules import OneCycle
    X, y = make_problem("cross_entropy", 64, 4, 3, seed=1)
    schedule = OneCycle(cycle_momentum=True, total_epochs=5)
    momentum, lr = schedule.momentum(0), schedule.lr(0, 0.05)
    a = fastbp.Trainer([4, 8, 3], lr=0.05, batch_size=16, epochs=1, dtype="float64", seed=2,
                       lr_schedule=("one_cycle", {"cycle_momentum": True, "total_epochs": 5})).fit(X, y)
    b = fastbp.Trainer([4, 8, 3], lr=lr, momentum=momentum, batch_size=16, epochs=1, dtype="float64",
                       seed=2).fit(X, y)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s if s is None else s[0])
@pytest.mark.parametrize("options", OPTIMIZERS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_sweep_optimizers_schedules_and_options(options, schedule):
    """Every optimizer x schedule with dropout, clipping, sample weights, odd batch sizes and 1-2 threads:
    finite, and the same bits twice. CI runs this compiled with NUMBA_BOUNDSCHECK=1, so any
    out-of-range index in the kernels fails here."""
    X, y = make_problem("cross_entropy", 75, 5, 3, seed=3)
    w = np.random.default_rng(0).uniform(0.0, 2.0, size=len(X))
    runs = []
    for _ in range(2):
        for batch_size, n_threads, extra in ((1, 1, {}), (7, 2, dict(dropout=0.3, clip_grad_norm=0.5)),
                                             (75, 2, dict(dropout=[0.1, 0.0]))):
            tr = fastbp.Trainer([5, 12, 6, 3], lr=1e-3 if options["optimizer"] != "sgd" else 0.02,
                                batch_size=batch_size, epochs=3, seed=4, n_threads=n_threads, lr_schedule=schedule,
                                **options, **extra)
            tr.fit(X, y, sample_weight=w, validation_split=0.2)
            assert np.isfinite(tr.params).all() and len(tr.history) == 3
            runs.append(tr.params.copy())
    for first, second in zip(runs[:3], runs[3:]):
        np.testing.assert_array_equal(first, second)


def _fit_params(result, seed=1, **kwargs):
    X, y = make_problem("cross_entropy", 600, 28, 2, seed=5, dtype=np.float32)
    tr = fastbp.Trainer([28, 256, 2], batch_size=32, epochs=2, seed=seed, n_threads=2, dropout=0.2,
                        optimizer="rmsprop", **kwargs)
    tr.fit(X, y)
    result.append((tr.params.copy(), tr.predict_proba(X)))
    return result[-1]


def test_same_bits_in_any_calling_thread():
    """BLAS is single-threaded inside the kernels whichever Python thread calls fit (threadpoolctl >= 3.8
    ignored limits set from a second thread, which gave other bits)."""
    main = []
    _fit_params(main)
    other = []
    worker = threading.Thread(target=_fit_params, args=(other,))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(main[0][0], other[0][0])
    np.testing.assert_array_equal(main[0][1], other[0][1])


def test_fits_running_at_once_in_threads_equal_fits_one_after_another():
    """Separate Trainers may train at once from several Python threads (joblib's threading backend does): each
    sets its own Numba thread count, and BLAS stays single-threaded until the last of them leaves."""
    from concurrent.futures import ThreadPoolExecutor

    seeds = (1, 2, 3)
    alone = []
    for seed in seeds:
        _fit_params(alone, seed=seed)
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(lambda seed: _fit_params([], seed=seed), seeds))
    for (params, proba), (params_alone, proba_alone) in zip(together, alone):
        np.testing.assert_array_equal(params, params_alone)
        np.testing.assert_array_equal(proba, proba_alone)


def _run_with_fit_params(code, timeout, env=None):
    """`code` in a fresh Python process, after `from test_engine import _fit_params`."""
    preamble = f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\nfrom test_engine import _fit_params\n"
    return subprocess.run([sys.executable, "-c", preamble + code], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_fits_in_threads_take_turns_under_numbas_workqueue_layer():
    """Numba's fallback threading layer (no OpenMP or TBB) aborts the process when two threads run parallel code
    at once; fastbp's kernel calls then take turns, with the same results."""
    code = ("import numba, numpy as np\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "alone = [_fit_params([], seed=s) for s in (1, 2)]\n"
            "with ThreadPoolExecutor(2) as pool:\n"
            "    together = list(pool.map(lambda s: _fit_params([], seed=s), (1, 2)))\n"
            "assert all(np.array_equal(a[0], b[0]) for a, b in zip(alone, together))\n"
            "print(numba.threading_layer())\n")
    proc = _run_with_fit_params(code, timeout=600, env=dict(os.environ, NUMBA_THREADING_LAYER="workqueue"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["workqueue"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_after_openmp_ran_gets_an_error_not_a_hung_pool():
    """A child of fork() may train when its parent has not run the kernels yet; once the parent has (on GNU OpenMP,
    whose threads do not survive fork), Numba would end the child at its first parallel call and the pool would
    wait forever: the child raises saying what to do instead."""
    code = ("import sys, multiprocessing as mp, numba\n"
            "def fit(seed):\n"
            "    return _fit_params([], seed=seed)[0].sum()\n"
            "if __name__ == '__main__':\n"
            "    with mp.get_context('fork').Pool(1) as pool:\n"
            "        pool.map(fit, [1])\n"
            "    print('before: trained')\n"
            "    fit(1)\n"
            "    if numba.threading_layer() != 'omp':\n"
            "        sys.exit(0)\n"
            "    with mp.get_context('fork').Pool(1) as pool:\n"
            "        try:\n"
            "            pool.map(fit, [1])\n"
            "        except RuntimeError as exc:\n"
            "            print('after:', exc)\n")
    proc = _run_with_fit_params(code, timeout=180)  # a pool left waiting for its ended child never returns
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "before: trained" in proc.stdout
    from numba.np.ufunc import omppool
    numba.get_num_threads()  # starts the threading layer here, as in the child
    if numba.threading_layer() == "omp" and omppool.openmp_vendor == "GNU":
        assert "after: this process was forked" in proc.stdout and "get_context('spawn')" in proc.stdout


def test_a_second_concurrent_fit_on_the_same_trainer_is_refused():
    X, y = make_problem("cross_entropy", 100, 4, 3, seed=0)
    started, release = threading.Event(), threading.Event()

    class Hold(fastbp.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            started.set()
            release.wait(30)

    tr = fastbp.Trainer([4, 8, 3], epochs=2)
    worker = threading.Thread(target=tr.fit, args=(X, y), kwargs={"callbacks": [Hold()]})
    worker.start()
    assert started.wait(60)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            tr.fit(X, y)
    finally:
        release.set()
        worker.join()
    assert [h["epoch"] for h in tr.history] == [1, 2]
    tr.fit(X, y)  # free again once the first fit is done
    assert [h["epoch"] for h in tr.history] == [1, 2, 3, 4]


def test_models_load_under_any_thread_count(tmp_path):
    X, y = make_problem("cross_entropy", 100, 4, 3, seed=0)
    path = tmp_path / "m.fbp"
    fastbp.Trainer([4, 8, 3], epochs=1, n_threads=2).fit(X, y).save(path)
    code = ("import sys, fastbp; tr = fastbp.load(sys.argv[1]); "
            "print(tr.n_threads, len(tr.history))")
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "1"]


def test_interrupted_epoch_resumes_bit_identically(tmp_path, monkeypatch):
    """A KeyboardInterrupt in the middle of an epoch (after the epoch drew its shuffles) puts the state back
    to the epoch's start, RNG included: saving then and resuming equals the uninterrupted run."""
    from fastbp.engine.engine import Engine
    X, y = make_problem("cross_entropy", 300, 4, 3, seed=0)
    kwargs = dict(layer_sizes=[4, 8, 3], optimizer="adam", batch_size=16, epochs=4, seed=7, n_threads=1,
                  dropout=0.2, lr_schedule=("reduce_on_plateau", {"patience": 0, "factor": 0.5}))
    full = fastbp.Trainer(**kwargs).fit(X, y, validation_split=0.2)

    calls = {"n": 0}
    real = Engine.train_rows

    def interrupting(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:  # inside epoch 3, after its permutation was drawn and some steps were taken
            real(self, *args)
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Engine, "train_rows", interrupting)
    tr = fastbp.Trainer(**kwargs)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(X, y, validation_split=0.2)
    assert len(tr.history) == 2
    tr.save(tmp_path / "ckpt.fbp")
    monkeypatch.setattr(Engine, "train_rows", real)
    resumed = fastbp.load(tmp_path / "ckpt.fbp")
    resumed.n_threads = 1
    resumed.epochs = 2
    resumed.fit(X, y, validation_split=0.2)
    np.testing.assert_array_equal(resumed.params, full.params)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_seed_none_is_drawn_once_and_saved(tmp_path):
    X, y = make_problem("cross_entropy", 200, 4, 3, seed=0)
    tr = fastbp.Trainer([4, 8, 3], seed=None, dropout=0.3, epochs=1)
    assert isinstance(tr.seed, int)
    tr.fit(X, y)
    tr.save(tmp_path / "m.fbp")
    again = fastbp.load(tmp_path / "m.fbp")
    assert again.seed == tr.seed and again.state.dropout_seed == tr.state.dropout_seed
    same_start = fastbp.Trainer([4, 8, 3], seed=tr.seed, dropout=0.3, epochs=1)
    np.testing.assert_array_equal(same_start.fit(X, y).params, tr.params)


@pytest.mark.parametrize("schedule", [("exponential", {"gamma": -1}), ("one_cycle", {"max_lr": -1}),
                                      ("cosine", {"eta_min": -0.5}), ("step", {"gamma": 0}),
                                      ("one_cycle", {"pct_start": 1.5}), ("reduce_on_plateau", {"min_lr": -1})])
def test_schedules_that_would_make_the_learning_rate_negative_are_refused(schedule):
    with pytest.raises(fastbp.InputError, match=schedule[0].split("_")[0]):
        fastbp.Trainer([2, 2], lr_schedule=schedule)


def test_a_custom_schedule_giving_a_bad_learning_rate_is_refused():
    class Broken(fastbp.Schedule):
        def lr(self, epoch, base_lr):
            return -base_lr

    X, y = make_problem("cross_entropy", 20, 2, 2, seed=0)
    with pytest.raises(fastbp.InputError, match="lr=-"):
        fastbp.Trainer([2, 2], lr_schedule=Broken()).fit(X, y)


def test_checkpoint_names_needing_validation_are_refused_at_fit_start(tmp_path):
    X, y = make_problem("cross_entropy", 20, 2, 2, seed=0)
    tr = fastbp.Trainer([2, 2], epochs=2)
    with pytest.raises(fastbp.InputError, match="val_loss"):
        tr.fit(X, y, callbacks=[fastbp.ModelCheckpoint(str(tmp_path / "m-{val_loss:.3f}.fbp"))])
    assert tr.history == []
    tr.fit(X, y, validation_split=0.5, callbacks=[fastbp.ModelCheckpoint(str(tmp_path / "m-{val_loss:.3f}.fbp"))])
    assert len(list(tmp_path.glob("m-*.fbp"))) >= 1


@pytest.mark.parametrize("scale", [1e300, 1e-300, 1.0])
def test_sample_weights_of_any_magnitude_train_as_their_ratios(scale):
    X, y = make_problem("cross_entropy", 60, 3, 2, seed=1)
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=len(X))
    kwargs = dict(layer_sizes=[3, 6, 2], batch_size=8, epochs=2, shuffle=False)
    reference = fastbp.Trainer(**kwargs).fit(X, y, sample_weight=w)
    scaled = fastbp.Trainer(**kwargs).fit(X, y, sample_weight=w * scale)
    np.testing.assert_allclose(scaled.params, reference.params, rtol=1e-5, atol=1e-6)


def test_sample_weights_spanning_more_than_the_dtype_holds_are_refused():
    X, y = make_problem("cross_entropy", 4, 3, 2, seed=1)
    with pytest.raises(fastbp.InputError, match="sample weights span"):
        fastbp.Trainer([3, 2]).fit(X, y, sample_weight=[1e308, 1e-45, 1.0, 1.0])
    fastbp.Trainer([3, 2], dtype="float64").fit(X, y, sample_weight=[1e10, 1e-10, 1.0, 1.0])


def test_each_kernel_compiles_once_per_dtype():
    """The bundles fix every type: other layer counts, batch sizes, losses, optimizers, dropout, weights,
    thread counts and ensembles of any size and adapters reuse the same compiled kernels, in two builds per dtype
    (a single model's, and one with the ensemble and table code); run in a fresh process to count signatures."""
    code = """
import numpy as np, fastbp
from fastbp.core import kernels
rng = np.random.default_rng(0)
X = rng.normal(size=(50, 3)); y = rng.integers(0, 2, size=50)
for dtype in ("float32", "float64"):
    for sizes, loss, options in (([3, 2], "cross_entropy", {}), ([3, 7, 5, 2], "cross_entropy",
                                  dict(optimizer="adam", dropout=0.2, clip_grad_norm=1.0, n_threads=1)),
                                 ([3, 4, 1], "binary_cross_entropy", dict(optimizer="rmsprop", centered=True)),
                                 ([3, 6, 2], "huber", dict(batch_size=7, momentum=0.9)),
                                 ([3, 5, 2], "cross_entropy", dict(ensemble=2)),
                                 ([3, 5, 5, 2], "cross_entropy", dict(ensemble=3, ensemble_adapters="every_layer"))):
        target = y if loss == "cross_entropy" else np.column_stack([y] * sizes[-1]).astype(float)
        tr = fastbp.Trainer(sizes, loss=loss, dtype=dtype, epochs=1, **options)
        tr.fit(X, target, sample_weight=rng.uniform(size=50) if loss == "huber" else None)
        tr.predict(X)
print(len(kernels.train_epoch.signatures), len(kernels.forward_all.signatures))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["4", "4"]  # per dtype: a single model's build, and the ensembles' (extras_of)


@pytest.mark.parametrize("options", [dict(optimizer="sgd", momentum=0.9), dict(optimizer="adam", amsgrad=True),
                                     dict(optimizer="rmsprop", momentum=0.5, centered=True)])
def test_model_files_from_before_the_state_was_named_still_load(tmp_path, options):
    """Older files hold the optimizer state as one unnamed (n_state, n_params) array and n_threads in the
    model's arguments; they load, and training continues from the same state."""
    from fastbp.files.modelfile import read_model, write_model
    X, y = make_problem("cross_entropy", 60, 3, 2, seed=0)
    tr = fastbp.Trainer([3, 5, 2], epochs=1, **options).fit(X, y)
    tr.save(tmp_path / "new.fbp")
    config, arrays = read_model(tmp_path / "new.fbp")
    config["init_args"]["n_threads"] = 64
    names = tr.optimizer_settings.legacy_state_order()
    old = {"params": arrays["params"], "opt_step": arrays["opt_step"],
           "opt_state": np.stack([arrays[f"opt_{n}"] for n in names if f"opt_{n}" in arrays])}
    write_model(tmp_path / "old.fbp", config, old)
    again = fastbp.load(tmp_path / "old.fbp")
    for name, values in tr.state.state_arrays().items():
        np.testing.assert_array_equal(again.state.state_arrays()[name], values)
    np.testing.assert_array_equal(again.fit(X, y).params, fastbp.load(tmp_path / "new.fbp").fit(X, y).params)


def test_settings_changed_after_construction_apply_to_the_next_fit():
    X, y = make_problem("cross_entropy", 64, 3, 2, seed=0)
    kwargs = dict(layer_sizes=[3, 6, 2], lr=0.5, batch_size=8, epochs=1, dtype="float64", seed=3)
    clipped = fastbp.Trainer(clip_grad_norm=0.01, **kwargs).fit(X, y)
    changed = fastbp.Trainer(**kwargs)
    changed.clip_grad_norm = 0.01
    np.testing.assert_array_equal(changed.fit(X, y).params, clipped.params)
    assert not np.array_equal(fastbp.Trainer(**kwargs).fit(X, y).params, clipped.params)


def test_cosine_restarts_for_a_fit_after_its_cycle_ended(tmp_path):
    """A cosine cycle spans the fit that started it (or the epochs a resumed run has left); a later fit, past its
    end, runs a new cycle (warm restart) rather than an lr of 0."""
    X = np.random.default_rng(0).normal(size=(64, 3))
    y = np.arange(64) % 2
    tr = fastbp.Trainer([3, 4, 2], optimizer="adam", epochs=3, lr_schedule=("cosine", {"warmup_epochs": 1}))
    tr.fit(X, y)
    first = [h["lr"] for h in tr.history]
    assert first[0] == pytest.approx(1e-3) and first[-1] < first[0]
    tr.save(tmp_path / "m.fbp")
    back = fastbp.load(tmp_path / "m.fbp")
    back.fit(X, y)
    assert [h["lr"] for h in back.history[3:]] == pytest.approx(first)
