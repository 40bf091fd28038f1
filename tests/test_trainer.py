"""Trainer behaviour: learning, determinism, views, save/load, divergence."""
import os
import pickle

import numpy as np
import pytest

import fastbp
from conftest import make_problem

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def digits_split():
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    X = X / 16.0
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    return X[idx[:1400]], y[idx[:1400]], X[idx[1400:]], y[idx[1400:]]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_learns_digits(dtype):
    X, y, Xt, yt = digits_split()
    tr = fastbp.Trainer([64, 128, 10], lr=0.05, momentum=0.9, batch_size=32, epochs=20, seed=0, dtype=dtype)
    tr.fit(X, y)
    assert tr.history[-1]["loss"] < tr.history[0]["loss"]
    assert tr.evaluate(Xt, yt)["accuracy"] >= 0.95
    proba = tr.predict_proba(Xt)
    assert proba.shape == (len(Xt), 10) and proba.dtype == np.dtype(dtype)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), tr.predict(Xt))


def test_regression_beats_the_mean():
    X, y = sklearn_datasets.load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    tr = fastbp.Trainer([10, 32, 1], activation="tanh", loss="mse", lr=0.01, momentum=0.9, batch_size=32,
                        epochs=50, seed=1)
    tr.fit(X[:350], y[:350])
    score = tr.evaluate(X[350:], y[350:])
    assert score["r2"] > 0.3
    assert tr.predict(X[350:]).shape == (len(X) - 350,)
    assert score["loss"] < np.mean((y[350:] - y[:350].mean()) ** 2)


def test_multilabel_binary_cross_entropy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    Y = np.stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0], axis=1).astype(float)
    tr = fastbp.Trainer([5, 16, 2], loss="binary_cross_entropy", lr=0.1, batch_size=32, epochs=30, seed=0)
    tr.fit(X, Y)
    assert tr.predict(X).shape == (600, 2)
    assert tr.evaluate(X, Y)["accuracy"] > 0.9
    assert ((tr.predict_proba(X) >= 0) & (tr.predict_proba(X) <= 1)).all()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_same_seed_same_threads_bit_identical(n_threads):
    X, y = make_problem("cross_entropy", 500, 7, 3, seed=0, dtype=np.float32)
    runs = [fastbp.Trainer([7, 20, 3], batch_size=64, epochs=3, seed=9, n_threads=n_threads).fit(X, y).params
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    other = fastbp.Trainer([7, 20, 3], batch_size=64, epochs=3, seed=10, n_threads=n_threads).fit(X, y).params
    assert not np.array_equal(runs[0], other)


def test_params_exist_before_fit_and_layers_are_live_views():
    tr = fastbp.Trainer([3, 4, 2], seed=0)
    assert tr.params.shape == (3 * 4 + 4 + 4 * 2 + 2,)
    W0, b0 = tr.layers[0]
    assert W0.shape == (3, 4) and b0.shape == (4,)
    assert np.all(b0 == 0) and np.any(W0 != 0)
    W0[0, 0] = 42.0
    assert tr.params[0] == 42.0
    tr.params[12] = -1.0  # first bias of layer 0
    assert tr.layers[0][1][0] == -1.0
    # Glorot-uniform bound for the output layer: sqrt(6 / (fan_in + fan_out))
    assert np.abs(tr.layers[1][0]).max() <= np.sqrt(6 / 6)


def test_auto_init_follows_each_layers_activation():
    """Each layer of init="auto" is the layer of the init its following activation asks for: He's before a
    ReLU-family activation, Glorot's before tanh and before the output (every layer draws the same uniforms)."""
    sizes = [30, 40, 50, 20, 3]
    auto = fastbp.Trainer(sizes, activation=["tanh", "relu", "sigmoid"], seed=5)
    he = fastbp.Trainer(sizes, activation="relu", init="he_uniform", seed=5)
    glorot = fastbp.Trainer(sizes, activation="relu", init="glorot_uniform", seed=5)
    for l, expected in enumerate([glorot, he, glorot, glorot]):
        np.testing.assert_array_equal(auto.layers[l][0], expected.layers[l][0])
    relu = fastbp.Trainer(sizes, activation="relu", seed=5)
    for l, expected in enumerate([he, he, he, glorot]):
        np.testing.assert_array_equal(relu.layers[l][0], expected.layers[l][0])
    W = relu.layers[0][0]  # He: U(-sqrt(6 / fan_in), sqrt(6 / fan_in)), whose std is sqrt(2 / fan_in)
    assert np.abs(W).max() <= np.sqrt(6 / 30) and abs(W.std() / np.sqrt(2 / 30) - 1) < 0.05


def test_fit_continues_from_current_parameters():
    X, y = make_problem("cross_entropy", 200, 4, 2, seed=1)
    a = fastbp.Trainer([4, 8, 2], epochs=4, batch_size=20, seed=3).fit(X, y)
    b = fastbp.Trainer([4, 8, 2], epochs=2, batch_size=20, seed=3).fit(X, y).fit(X, y)
    np.testing.assert_array_equal(a.params, b.params)
    assert [h["epoch"] for h in b.history] == [1, 2, 3, 4]


def test_min_steps_adds_epochs_up_to_four_times_epochs(tmp_path):
    """min_steps counts optimizer steps over all fits: 100 rows in batches of 32 take 4 steps an epoch, so 2 epochs
    with min_steps 30 become 8; with min_steps 100 they stop at 4 x 2; a later fit past min_steps runs `epochs`;
    the setting is saved with the model."""
    X, y = make_problem("cross_entropy", 100, 4, 2, seed=1)
    tr = fastbp.Trainer([4, 8, 2], epochs=2, batch_size=32, min_steps=30, seed=3)
    assert tr.epochs_for(100) == 8 and tr.epochs_for(1000) == 2
    tr.fit(X, y)
    assert (len(tr.history), tr.fit_epochs, tr.state.optimizer.step[0]) == (8, 8, 32)
    tr.fit(X, y)
    assert (len(tr.history), tr.fit_epochs) == (10, 2)
    capped = fastbp.Trainer([4, 8, 2], epochs=2, batch_size=32, min_steps=100, seed=3).fit(X, y)
    assert len(capped.history) == 8
    # the same as training those epochs outright
    outright = fastbp.Trainer([4, 8, 2], epochs=8, batch_size=32, seed=3).fit(X, y)
    np.testing.assert_array_equal(capped.params, outright.params)
    capped.save(tmp_path / "m.fbp")
    assert fastbp.load(tmp_path / "m.fbp").min_steps == 100
    with pytest.raises(fastbp.InputError, match="min_steps"):
        fastbp.Trainer([4, 8, 2], min_steps=-1)


def test_history_fields():
    X, y = make_problem("mse", 100, 3, 1, seed=0)
    tr = fastbp.Trainer([3, 5, 1], loss="mse", epochs=3, batch_size=10).fit(X, y[:, 0])
    assert len(tr.history) == 3
    for h in tr.history:
        assert set(h) >= {"epoch", "loss", "seconds", "samples_per_s"}
        assert h["samples_per_s"] > 0


@pytest.mark.parametrize("optimizer_args", [dict(), dict(momentum=0.9, nesterov=True)])
def test_save_load_round_trip(tmp_path, optimizer_args):
    X, y = make_problem("cross_entropy", 300, 6, 3, seed=2, dtype=np.float32)
    tr = fastbp.Trainer([6, 10, 3], activation=["gelu"], batch_size=32, epochs=2, seed=1, **optimizer_args)
    tr.fit(X, y)
    path = tmp_path / "model.fbp"
    tr.save(path)
    loaded = fastbp.load(path)
    np.testing.assert_array_equal(loaded.params, tr.params)
    assert loaded.params.dtype == tr.params.dtype
    np.testing.assert_array_equal(loaded.predict_proba(X), tr.predict_proba(X))
    assert loaded.history == tr.history
    # training on from the loaded model equals training on from the original (optimizer state + RNG kept)
    np.testing.assert_array_equal(loaded.fit(X, y).params, tr.fit(X, y).params)
    assert not [f for f in os.listdir(tmp_path) if f != "model.fbp"]  # no temporary files left


def test_divergence_restores_last_finite_parameters():
    X, y = make_problem("mse", 64, 4, 1, seed=0)
    X *= 1e3
    tr = fastbp.Trainer([4, 16, 1], loss="mse", lr=10.0, batch_size=8, epochs=50, dtype="float32")
    with pytest.raises(fastbp.TrainingDiverged, match="lower learning rate"):
        tr.fit(X, y)
    assert np.isfinite(tr.params).all()


def test_inputs_not_modified():
    X, y = make_problem("cross_entropy", 50, 3, 2, seed=0)
    X_before, y_before = X.copy(), y.copy()
    tr = fastbp.Trainer([3, 4, 2], batch_size=8, epochs=1, dtype="float64")
    tr.fit(X, y)
    tr.loss_and_grad(X, y)
    tr.predict(X)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)


def test_unusual_but_valid_inputs_work(tmp_path):
    X, y = make_problem("cross_entropy", 60, 4, 2, seed=0)
    tr = fastbp.Trainer([4, 4, 2], batch_size=1000, epochs=1, dtype="float64").fit(X, y)  # batch > n is clipped
    reference = tr.predict_proba(X)
    fortran = np.asfortranarray(X)
    strided = np.repeat(X, 2, axis=1)[:, ::2]
    readonly = X.copy()
    readonly.setflags(write=False)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    for variant in (fortran, strided, readonly, mapped, X.tolist(), X.astype(np.float16).astype(np.float64)):
        np.testing.assert_allclose(tr.predict_proba(variant), reference, rtol=1e-3)
    tr.fit(mapped, y.astype(np.float32))
    tr.fit(X.astype(np.int64), y)
    tr.fit(X > 0, y)


def test_read_only_inputs_reuse_the_kernels_compiled_for_writable_ones(tmp_path):
    """A read-only memory map trains, predicts and gives the full-data gradient through the kernels already
    compiled for writable arrays (Numba types read-only arrays apart: it compiled every kernel again), with the
    same results, and the file is left as it was."""
    from fastbp.core import kernels

    X, y = make_problem("cross_entropy", 200, 5, 3, seed=1)
    X = X.astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    settings = dict(batch_size=32, epochs=2, dtype="float32", seed=3, n_threads=1)
    writable = fastbp.Trainer([5, 8, 3], **settings).fit(X, y)
    loss, grad = writable.loss_and_grad(X, y)
    read_only = fastbp.Trainer([5, 8, 3], **settings).fit(mapped, y)
    proba = read_only.predict_proba(mapped)
    loss_mapped, grad_mapped = read_only.loss_and_grad(mapped, y)
    # a Trainer that joblib hands to a worker as read-only memory maps predicts and trains on alike
    joblib = pytest.importorskip("joblib")
    joblib.dump(writable, tmp_path / "model.joblib")
    unpickled = joblib.load(tmp_path / "model.joblib", mmap_mode="r")
    np.testing.assert_array_equal(unpickled.predict_proba(X), writable.predict_proba(X))
    np.testing.assert_array_equal(unpickled.fit(X, y).params, pickle.loads(pickle.dumps(writable)).fit(X, y).params)
    for kernel in (kernels.train_epoch, kernels.forward_all, kernels.loss_and_gradient):
        assert kernel.signatures and not any("readonly" in str(sig) for sig in kernel.signatures)
    np.testing.assert_array_equal(read_only.params, writable.params)
    np.testing.assert_array_equal(proba, writable.predict_proba(X))
    assert loss_mapped == loss
    np.testing.assert_array_equal(grad_mapped, grad)
    np.testing.assert_array_equal(np.load(tmp_path / "X.npy"), X)


def test_poisson_predicts_rates_and_refuses_negative_counts():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    rate = np.exp(0.8 * X[:, 0] - 0.5 * X[:, 1])
    y = rng.poisson(rate).astype(float)
    tr = fastbp.Trainer([3, 16, 1], loss="poisson", optimizer="adam", lr=0.01, epochs=60, batch_size=32,
                        dtype="float64", seed=1).fit(X, y)
    np.testing.assert_allclose(tr.predict(X), np.exp(tr.decision_function(X)[:, 0]), rtol=1e-12)
    pred = tr.predict(X)
    assert pred.min() > 0
    # r2 is of the predicted rates, not of the log-rates
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    np.testing.assert_allclose(tr.evaluate(X, y)["r2"], r2, rtol=1e-9)
    assert np.corrcoef(pred, rate)[0, 1] > 0.9
    with pytest.raises(fastbp.InputError, match="poisson targets .* must be >= 0"):
        tr.fit(X, y - 3)


@pytest.mark.parametrize("dump", ["pickle", "joblib", "deepcopy"])
def test_pickled_trainer_predicts_and_trains_on_identically(dump, tmp_path):
    import copy
    import pickle
    joblib = pytest.importorskip("joblib")
    X, y = make_problem("cross_entropy", 300, 5, 3, seed=4, dtype=np.float32)
    tr = fastbp.Trainer([5, 16, 3], optimizer="adam", dropout=0.2, epochs=2, batch_size=32,
                        lr_schedule=("cosine", {"T_max": 6})).fit(X, y)
    if dump == "pickle":
        twin = pickle.loads(pickle.dumps(tr))
    elif dump == "joblib":
        joblib.dump(tr, tmp_path / "model.joblib")
        twin = joblib.load(tmp_path / "model.joblib")
    else:
        twin = copy.deepcopy(tr)
    np.testing.assert_array_equal(twin.predict_proba(X), tr.predict_proba(X))
    tr.fit(X, y)
    twin.fit(X, y)  # same shuffle, dropout and schedule state: the same steps
    np.testing.assert_array_equal(twin.params, tr.params)
    assert [h["loss"] for h in twin.history] == [h["loss"] for h in tr.history]
