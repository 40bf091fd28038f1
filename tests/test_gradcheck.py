"""loss_and_grad against central finite differences in float64."""
import numpy as np
import pytest

import fastbp
import naive
from conftest import ACTIVATIONS, LOSSES, make_problem


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_gradient_matches_central_differences(activation, loss):
    sizes = [3, 5, 4, 2]
    X, y = make_problem(loss, 11, sizes[0], sizes[-1], seed=8)
    tr = fastbp.Trainer(sizes, activation=activation, loss=loss, dtype="float64", seed=2)
    tr.params[:] += np.random.default_rng(0).normal(scale=0.1, size=tr.params.size)  # non-zero biases too
    _, grad = tr.loss_and_grad(X, y)
    numeric = naive.numeric_gradient(tr, X, y)
    rel = np.linalg.norm(grad - numeric) / max(np.linalg.norm(numeric), 1e-12)
    assert rel < 1e-6, f"relative gradient error {rel:.2e}"
