"""Compiled kernels against tests/naive.py: gradients and whole SGD epochs."""
import numpy as np
import pytest

import fastbp
import naive
from conftest import ACTIVATIONS, LOSSES, make_problem


def naive_layers(trainer):
    return [(W.astype(np.float64).copy(), b.astype(np.float64).copy()) for W, b in trainer.layers]


def hidden_names(trainer):
    n_hidden = len(trainer.layer_sizes) - 2
    a = trainer.activation
    return [a] * n_hidden if isinstance(a, str) else list(a)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_and_grad_matches_naive(activation, loss):
    sizes = [5, 9, 7, 3]
    X, y = make_problem(loss, 23, sizes[0], sizes[-1], seed=1)
    tr = fastbp.Trainer(sizes, activation=activation, loss=loss, dtype="float64", seed=3)
    value, grad = tr.loss_and_grad(X, y)
    ref_value, ref_grads = naive.loss_and_grad(naive_layers(tr), hidden_names(tr), loss, X, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(grad, naive.flatten(ref_grads), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("sizes", [[1, 1], [1, 4, 2], [6, 3, 3, 3, 2], [4, 16, 2]])
@pytest.mark.parametrize("n", [1, 5, 4099])  # 4099 spans two gradient blocks of 4096 rows
def test_loss_and_grad_shapes(sizes, n):
    loss = "cross_entropy" if sizes[-1] > 1 else "mse"
    X, y = make_problem(loss, n, sizes[0], sizes[-1], seed=n)
    tr = fastbp.Trainer(sizes, activation="tanh", loss=loss, dtype="float64", seed=0)
    value, grad = tr.loss_and_grad(X, y)
    ref_value, ref_grads = naive.loss_and_grad(naive_layers(tr), hidden_names(tr), loss, X, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-11)
    np.testing.assert_allclose(grad, naive.flatten(ref_grads), rtol=1e-8, atol=1e-13)


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("batch_size", [1, 7, 40, 64])  # 7 and 40 leave a partial last batch of 40 rows
@pytest.mark.parametrize("n_threads", [1, 2])
def test_sgd_epoch_matches_naive(activation, loss, batch_size, n_threads):
    sizes = [4, 12, 10, 3]
    X, y = make_problem(loss, 40 + 7 * 6 + 3, sizes[0], sizes[-1], seed=2)
    # lr small enough that no run is chaotic: an unstable run amplifies last-bit rounding differences
    tr = fastbp.Trainer(sizes, activation=activation, loss=loss, lr=0.01, momentum=0.9, nesterov=True,
                        weight_decay=1e-3, batch_size=batch_size, epochs=2, shuffle=True, seed=5,
                        dtype="float64", n_threads=n_threads)
    layers = naive_layers(tr)
    rng = np.random.default_rng()
    rng.bit_generator.state = tr.state.shuffle_rng.bit_generator.state  # the orders fit will draw
    tr.fit(X, y)
    buffers, step = None, 0
    for _ in range(2):
        buffers, step = naive.sgd_epoch(layers, hidden_names(tr), loss, X, y, rng.permutation(len(X)),
                                        batch_size, 0.01, 0.9, True, 1e-3, buffers, step)
    np.testing.assert_allclose(tr.params, naive.flatten(layers), rtol=1e-9, atol=1e-12)


def test_epoch_loss_is_mean_over_batches():
    X, y = make_problem("cross_entropy", 50, 3, 4, seed=0)
    tr = fastbp.Trainer([3, 8, 4], lr=1e-12, batch_size=50, epochs=1, shuffle=False, dtype="float64")
    before, _ = tr.loss_and_grad(X, y)
    tr.fit(X, y)
    np.testing.assert_allclose(tr.history[0]["loss"], before, rtol=1e-9)


def test_full_batch_epoch_is_one_gradient_step():
    X, y = make_problem("mse", 30, 4, 2, seed=4)
    tr = fastbp.Trainer([4, 6, 2], activation="sigmoid", loss="mse", lr=0.3, batch_size=30, epochs=1,
                        dtype="float64")
    start = tr.params.copy()
    _, grad = tr.loss_and_grad(X, y)
    tr.fit(X, y)
    np.testing.assert_allclose(tr.params, start - 0.3 * grad, rtol=1e-12, atol=1e-14)


def test_float32_close_to_float64():
    X, y = make_problem("cross_entropy", 300, 10, 3, seed=7)
    runs = {}
    for dtype in ("float32", "float64"):
        tr = fastbp.Trainer([10, 32, 3], lr=0.05, batch_size=16, epochs=2, dtype=dtype, seed=1)
        runs[dtype] = tr.fit(X, y).params
    assert runs["float32"].dtype == np.float32 and runs["float64"].dtype == np.float64
    np.testing.assert_allclose(runs["float32"], runs["float64"], rtol=1e-3, atol=1e-4)


def test_large_logits_are_finite():
    tr = fastbp.Trainer([2, 2], loss="cross_entropy", dtype="float64")
    W, b = tr.layers[0]
    W[...] = [[1000.0, -1000.0], [0.0, 0.0]]
    b[...] = 0.0
    X = np.array([[1.0, 0.0], [-1.0, 0.0]])
    value, grad = tr.loss_and_grad(X, [1, 1])
    assert np.isfinite(value) and np.isfinite(grad).all()
    np.testing.assert_allclose(value, 1000.0, rtol=1e-12)  # mean of 2000 and 0
    for loss, y in (("binary_cross_entropy", [[1.0, 0.0], [0.0, 1.0]]), ("mse", [[0.0, 0.0], [0.0, 0.0]])):
        tr2 = fastbp.Trainer([2, 2], loss=loss, dtype="float32")
        tr2.params[:] = tr.params
        value, grad = tr2.loss_and_grad(X, y)
        assert np.isfinite(value) and np.isfinite(grad).all()


@pytest.mark.parametrize("sizes", [[37, 70, 33, 5], [16, 64, 64, 2], [3, 130, 2]])
@pytest.mark.parametrize("batch_size", [50, 4])
def test_thread_split_matches_single_thread(sizes, batch_size):
    """2 threads (rows, then per-thread slabs or aligned dW slices) agree with 1 thread and the reference."""
    from fastbp.core.kernels import uses_slabs
    X, y = make_problem("cross_entropy", 203, sizes[0], sizes[-1], seed=6)
    n_params = fastbp.Trainer(sizes).params.size
    assert uses_slabs(n_params, np.array(sizes), batch_size, 2) == (batch_size == 50)  # both paths covered
    runs = []
    for n_threads in (1, 2):
        tr = fastbp.Trainer(sizes, activation="gelu", lr=0.05, momentum=0.9, batch_size=batch_size, epochs=2,
                            dtype="float64", n_threads=n_threads, seed=1)
        layers = naive_layers(tr)
        rng = np.random.default_rng()
        rng.bit_generator.state = tr.state.shuffle_rng.bit_generator.state
        runs.append(tr.fit(X, y).params)
    buffers, step = None, 0
    for _ in range(2):
        buffers, step = naive.sgd_epoch(layers, ["gelu"] * (len(sizes) - 2), "cross_entropy", X, y,
                                        rng.permutation(len(X)), batch_size, 0.05, 0.9, False, 0.0, buffers, step)
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(runs[1], naive.flatten(layers), rtol=1e-9, atol=1e-12)


def test_float32_gelu_matches_the_erf_form():
    """float32 GELU and its derivative are polynomials (so their loops vectorize): within a float32 rounding or
    two of the exact erf form, relative to max(1, |z|), everywhere, and exactly 0 / z / 1 far out."""
    from scipy.special import erf

    from fastbp.core.activations import gelu_bias_activate, gelu_scale_by_derivative
    z = np.concatenate([np.linspace(-12, 12, 240001), [-1e30, -1e4, -7, 7, 1e4, 1e30, 0.0]]).astype(np.float32)
    exact = z.astype(np.float64)
    phi = 0.5 * (1 + erf(exact / np.sqrt(2)))
    zs, a = np.zeros_like(z), np.empty_like(z)
    gelu_bias_activate(zs, z, a)  # zs + bias z: zs becomes z
    np.testing.assert_array_equal(zs, z)
    assert (np.abs(a - exact * phi) / np.maximum(1.0, np.abs(exact))).max() < 2.5e-7
    derivative = phi + exact * np.exp(-0.5 * exact * exact) / np.sqrt(2 * np.pi)
    d = np.ones_like(z)
    gelu_scale_by_derivative(d, z)
    assert np.abs(d - derivative).max() < 2.5e-7
    np.testing.assert_array_equal(a[-7:], np.maximum(z[-7:], 0))
    np.testing.assert_array_equal(d[-7:], [0, 0, 0, 1, 1, 1, 0.5])
