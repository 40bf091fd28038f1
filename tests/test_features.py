"""Weights, dropout, validation, early stopping, callbacks and divergence handling."""
import numpy as np
import pytest

import fastbp
import naive
from conftest import make_problem
from fastbp.core.dropout import row_key, uniform


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "binary_cross_entropy", "huber"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_integer_sample_weights_equal_repeated_rows(loss, optimizer):
    X, y = make_problem(loss if loss != "huber" else "mse", 40, 5, 2, seed=2)
    counts = np.random.default_rng(0).integers(0, 4, size=40)
    counts[0] = 1
    kwargs = dict(layer_sizes=[5, 9, 2], activation="tanh", loss=loss, optimizer=optimizer, epochs=3,
                  shuffle=False, dtype="float64", seed=1)
    weighted = fastbp.Trainer(batch_size=40, **kwargs).fit(X, y, sample_weight=counts)
    repeated = fastbp.Trainer(batch_size=int(counts.sum()), **kwargs).fit(np.repeat(X, counts, axis=0),
                                                                         np.repeat(y, counts, axis=0))
    np.testing.assert_allclose(weighted.params, repeated.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weighted.history[-1]["loss"], repeated.history[-1]["loss"], rtol=1e-9)
    l_w, g_w = weighted.loss_and_grad(X, y, sample_weight=counts)
    l_r, g_r = weighted.loss_and_grad(np.repeat(X, counts, axis=0), np.repeat(y, counts, axis=0))
    np.testing.assert_allclose([l_w, *g_w], [l_r, *g_r], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weighted.evaluate(X, y, sample_weight=counts)["loss"], l_w, rtol=1e-9)


def test_balanced_class_weight_matches_sklearn():
    from fastbp.inputs import class_weights_per_sample
    sklearn_utils = pytest.importorskip("sklearn.utils")
    y = np.array([0, 0, 0, 1, 2, 2])
    expected = sklearn_utils.compute_class_weight("balanced", classes=np.unique(y), y=y)
    per_row = class_weights_per_sample("balanced", y.reshape(-1, 1).astype(float), "cross_entropy")
    np.testing.assert_allclose(per_row, expected[y])


def test_dropout_masks_keep_fraction_and_scale():
    from fastbp.core.dropout import apply_mask
    a = np.ones(200_000, dtype=np.float32)
    apply_mask(a, 0.3, row_key(11, 5, 0, 7))
    kept = a > 0
    assert abs(kept.mean() - 0.7) < 0.005
    np.testing.assert_allclose(a[kept], 1 / 0.7, rtol=1e-6)
    b = np.ones(200_000, dtype=np.float32)
    apply_mask(b, 0.3, row_key(11, 6, 0, 7))
    assert not np.array_equal(a, b)  # a new step draws a new mask


def test_dropout_step_matches_reference_with_the_same_masks():
    X, y = make_problem("cross_entropy", 12, 4, 3, seed=0)
    tr = fastbp.Trainer([4, 7, 6, 3], activation="tanh", dropout=[0.4, 0.2], lr=0.1, batch_size=12, epochs=1,
                        shuffle=False, dtype="float64", seed=3)
    layers = [(W.copy(), b.copy()) for W, b in tr.layers]
    seed = tr.state.dropout_seed

    def mask(layer, n_rows, n_units, p):
        return np.array([[uniform(np.uint64(row_key(seed, 1, layer, i)), j) >= p for j in range(n_units)]
                         for i in range(n_rows)]) / (1 - p)

    masks = [mask(0, 12, 7, 0.4), mask(1, 12, 6, 0.2)]
    acts, zs = [X], []
    for l, (W, b) in enumerate(layers):
        z = acts[-1] @ W + b
        zs.append(z)
        acts.append(z if l == 2 else np.tanh(z) * masks[l])
    _, d = naive.loss_and_dlogits("cross_entropy", acts[-1], y)
    grads = [None] * 3
    for l in (2, 1, 0):
        grads[l] = (acts[l].T @ d, d.sum(axis=0))
        if l > 0:
            d = (d @ layers[l][0].T) * masks[l - 1] * (1 - np.tanh(zs[l - 1]) ** 2)
    expected = naive.flatten(layers) - 0.1 * naive.flatten(grads)
    tr.fit(X, y)
    np.testing.assert_allclose(tr.params, expected, rtol=1e-10, atol=1e-12)


def test_dropout_is_deterministic_and_thread_independent_and_off_at_predict():
    X, y = make_problem("cross_entropy", 300, 8, 3, seed=1)
    runs = [fastbp.Trainer([8, 64, 3], dropout=0.5, batch_size=50, epochs=2, dtype="float64", n_threads=t, seed=4)
            .fit(X, y) for t in (1, 1, 2)]
    np.testing.assert_array_equal(runs[0].params, runs[1].params)
    np.testing.assert_allclose(runs[0].params, runs[2].params, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(runs[0].predict_proba(X), runs[0].predict_proba(X))
    no_dropout = fastbp.Trainer([8, 64, 3], batch_size=50, epochs=0, dtype="float64").fit(X, y)
    no_dropout.params[:] = runs[0].params
    np.testing.assert_allclose(runs[0].predict_proba(X), no_dropout.predict_proba(X), rtol=1e-12)


def test_validation_history_and_stratified_split():
    X, y = make_problem("cross_entropy", 400, 6, 3, seed=2)
    y[:40] = 2  # uneven classes
    tr = fastbp.Trainer([6, 16, 3], lr=0.05, batch_size=32, epochs=3)
    tr.fit(X, y, validation_split=0.25)
    assert {"val_loss", "val_accuracy", "lr", "loss"} <= set(tr.history[0])
    from fastbp.inputs import validation_indices
    train, val = validation_indices(400, 0.25, y.astype(float), 0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 400
    for c in range(3):
        np.testing.assert_allclose(np.mean(y[val] == c), np.mean(y == c), atol=0.01)
    reg = fastbp.Trainer([6, 8, 1], loss="mse", epochs=1).fit(X, X[:, 0], validation_data=(X[:50], X[:50, 0]))
    assert "val_r2" in reg.history[0]


def test_early_stopping_restores_best_epoch_exactly():
    X, y = make_problem("cross_entropy", 300, 6, 3, seed=3)
    Xv, yv = make_problem("cross_entropy", 100, 6, 3, seed=4)  # unrelated labels: validation loss rises soon
    snapshots = {}

    class Record(fastbp.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            snapshots[epoch] = trainer.params.copy()

    stopper = fastbp.EarlyStopping(monitor="val_loss", patience=3)
    tr = fastbp.Trainer([6, 64, 3], optimizer="adam", lr=0.01, batch_size=16, epochs=100, dtype="float64")
    tr.fit(X, y, validation_data=(Xv, yv), callbacks=[Record(), stopper])
    losses = {h["epoch"]: h["val_loss"] for h in tr.history}
    best = min(losses, key=losses.get)
    assert len(tr.history) < 100 and len(tr.history) == best + 3
    np.testing.assert_array_equal(tr.params, snapshots[best])


def test_model_checkpoint_and_failing_callback(tmp_path):
    X, y = make_problem("cross_entropy", 100, 4, 2, seed=0)
    tr = fastbp.Trainer([4, 8, 2], batch_size=10, epochs=3)
    tr.fit(X, y, callbacks=[fastbp.ModelCheckpoint(tmp_path / "m-{epoch}.fbp")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-1.fbp", "m-2.fbp", "m-3.fbp"]
    np.testing.assert_array_equal(fastbp.load(tmp_path / "m-3.fbp").params, tr.params)

    class Boom(fastbp.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            self.params = trainer.params.copy()
            raise RuntimeError("user callback failed")

    boom = Boom()
    with pytest.raises(RuntimeError, match="user callback failed"):
        tr.fit(X, y, callbacks=[boom])
    np.testing.assert_array_equal(tr.params, boom.params)
    assert np.isfinite(tr.params).all() and len(tr.history) == 4


def test_divergence_can_warn_and_keep_last_finite_parameters():
    X, y = make_problem("mse", 64, 4, 1, seed=0)
    tr = fastbp.Trainer([4, 16, 1], loss="mse", lr=50.0, batch_size=8, epochs=50, on_divergence="warn")
    with pytest.warns(RuntimeWarning, match="diverged"):
        tr.fit(X * 1e3, y)
    assert np.isfinite(tr.params).all() and len(tr.history) < 50


def test_verbose_modes(capsys, monkeypatch):
    from fastbp.engine import engine

    X, y = make_problem("cross_entropy", 60, 3, 2, seed=0)
    fastbp.Trainer([3, 4, 2], epochs=2, verbose=2).fit(X, y)
    out = capsys.readouterr().out
    assert out.count("epoch") == 2 and "samples/s" in out
    fastbp.Trainer([3, 4, 2], epochs=2, verbose=1).fit(X, y, validation_split=0.2)
    err = capsys.readouterr().err  # standard error is no terminal here: a line per epoch, no bar
    assert err.count("epoch ") == 2 and "val_loss" in err and "\r" not in err
    monkeypatch.setattr(engine, "on_terminal", lambda stream: True)
    fastbp.Trainer([3, 4, 2], epochs=2, verbose=1).fit(X, y, validation_split=0.2)
    assert "2/2" in capsys.readouterr().err


def test_save_load_keeps_optimizer_and_schedule_state(tmp_path):
    X, y = make_problem("cross_entropy", 120, 4, 3, seed=1)
    kwargs = dict(layer_sizes=[4, 8, 3], optimizer="adam", batch_size=16, epochs=2, dropout=0.2,
                  lr_schedule=("reduce_on_plateau", {"patience": 0, "factor": 0.5}), seed=3, dtype="float64")
    uninterrupted = fastbp.Trainer(**kwargs).fit(X, y).fit(X, y)
    first = fastbp.Trainer(**kwargs).fit(X, y)
    first.save(tmp_path / "m.fbp")
    resumed = fastbp.load(tmp_path / "m.fbp").fit(X, y)
    np.testing.assert_array_equal(resumed.params, uninterrupted.params)
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in uninterrupted.history]
