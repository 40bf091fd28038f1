"""Losses: name -> integer code, and the fused output delta.

The output layer is linear (logits); each loss owns its output nonlinearity,
as PyTorch's MSELoss, CrossEntropyLoss and BCEWithLogitsLoss do, with mean
reduction: cross_entropy averages over rows, mse and binary_cross_entropy over
all elements. The delta written is d(mean loss)/d(logits).
"""
import numpy as np

from .activations import sigmoid
from .config import jit

MSE, CROSS_ENTROPY, BINARY_CROSS_ENTROPY = range(3)

LOSSES = {
    "mse": MSE,
    "cross_entropy": CROSS_ENTROPY,
    "binary_cross_entropy": BINARY_CROSS_ENTROPY,
}
CLASSIFICATION_LOSSES = {"cross_entropy", "binary_cross_entropy"}


def loss_code(name):
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return LOSSES[name]


def elements_per_row(code, n_out):
    """How many terms one row adds to the mean: 1 for cross_entropy, n_out otherwise."""
    return 1 if code == CROSS_ENTROPY else n_out


@jit
def row_loss_and_delta(code, z, y, d, scale):
    """Loss of one row (summed over its outputs); d = scale * dloss/dz. Float64 result.

    z: logits (n_out,), y: that row's targets (class index in y[0] for
    cross_entropy), d: output for the delta (may alias nothing else).
    """
    n_out = z.shape[0]
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    loss = 0.0
    if code == CROSS_ENTROPY:
        label = int(y[0])
        z_max = z[0]
        for j in range(1, n_out):
            z_max = max(z_max, z[j])
        total = zero
        for j in range(n_out):
            e = np.exp(z[j] - z_max)
            d[j] = e
            total += e
        inv_total = one / total
        for j in range(n_out):
            d[j] = d[j] * inv_total * scale
        d[label] -= scale
        loss = float(np.log(total) + z_max - z[label])
    elif code == BINARY_CROSS_ENTROPY:
        for j in range(n_out):
            v = z[j]
            # max(v, 0) - v*y + log(1 + exp(-|v|)): finite for any finite logit
            loss += float(max(v, zero) - v * y[j] + np.log1p(np.exp(-abs(v))))
            d[j] = (sigmoid(v, one) - y[j]) * scale
    else:  # MSE
        two = z.dtype.type(2.0)
        for j in range(n_out):
            r = z[j] - y[j]
            loss += float(r * r)
            d[j] = two * r * scale
    return loss


@jit
def loss_sum(code, logits, Y):
    """Sum of row losses over a block of rows (no delta needed)."""
    scratch = np.empty(logits.shape[1], logits.dtype)
    zero = logits.dtype.type(0.0)
    total = 0.0
    for i in range(logits.shape[0]):
        total += row_loss_and_delta(code, logits[i], Y[i], scratch, zero)
    return total
