"""Losses: name -> integer code, and the fused output delta.

The output layer is linear (logits); each loss owns its output nonlinearity,
as PyTorch's MSELoss, L1Loss, HuberLoss, CrossEntropyLoss, BCEWithLogitsLoss and
PoissonNLLLoss(log_input=True) do, with mean reduction: cross_entropy averages over
rows, the others over all elements. The delta written is d(mean loss)/d(logits).
"""
import numpy as np

from .activations import sigmoid
from .compile import jit
from .errors import InputError

(MSE, CROSS_ENTROPY, BINARY_CROSS_ENTROPY, MAE, HUBER, POISSON,
 SKLEARN_SQUARED, SKLEARN_POISSON, SKLEARN_LOG_LOSS, SKLEARN_BINARY_LOG_LOSS) = range(10)
# scikit-learn's own definitions (fastbp.sklearn only), so loss_curve_ and the convergence rule
# built on it match MLPClassifier/MLPRegressor: its squared loss reports mean(r**2)/2 over outputs
# but back-propagates r, not r/n_outputs; its Poisson loss (half the deviance) is PyTorch's plus
# y*log(y) - y, which makes a perfect fit score 0; its log losses clip each probability to
# [eps, 1 - eps] of the dtype, so one extreme row counts at most -log(eps). Deltas are unclipped.

LOSSES = {
    "mse": MSE,
    "cross_entropy": CROSS_ENTROPY,
    "binary_cross_entropy": BINARY_CROSS_ENTROPY,
    "mae": MAE,
    "huber": HUBER,
    "poisson": POISSON,
}
CLASSIFICATION_LOSSES = {"cross_entropy", "binary_cross_entropy"}
# each loss code's output nonlinearity (the others' is the identity)
SOFTMAX_LOSSES = (CROSS_ENTROPY, SKLEARN_LOG_LOSS)
SIGMOID_LOSSES = (BINARY_CROSS_ENTROPY, SKLEARN_BINARY_LOG_LOSS)
LOG_LINK_LOSSES = (POISSON, SKLEARN_POISSON)


def loss_code(name):
    if not isinstance(name, str) or name not in LOSSES:
        raise InputError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return LOSSES[name]


def elements_per_row(code, n_out):
    """How many terms one row adds to the mean: 1 for cross_entropy, n_out otherwise."""
    return 1 if code == CROSS_ENTROPY else n_out


@jit
def row_loss_and_delta(code, huber_delta, z, y, d, scale, smoothing=0.0):
    """Loss of one row (summed over its outputs); d = scale * dloss/dz. Float64 result.

    z: logits (n_out,), y: that row's targets (class index in y[0] for
    cross_entropy), d: output for the delta (may alias nothing else),
    huber_delta: huber's threshold (unused by the other losses), smoothing: cross_entropy's
    label smoothing eps (torch's: the target is (1 - eps) one-hot + eps / n_out everywhere).
    """
    n_out = z.shape[0]
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    loss = 0.0
    if code == SKLEARN_LOG_LOSS or code == SKLEARN_BINARY_LOG_LOSS:
        eps = np.finfo(z.dtype).eps
        least, most = -np.log(1.0 - eps), -np.log(eps)  # the loss of a probability clipped to [eps, 1 - eps]
    else:
        least = most = 0.0
    if code == CROSS_ENTROPY or code == SKLEARN_LOG_LOSS:
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
        if smoothing > 0:  # -(1 - eps) log p_label - eps/n_out sum_j log p_j: its own pass, free when off
            spread = z.dtype.type(smoothing / n_out) * scale
            mean_z = 0.0
            for j in range(n_out):
                d[j] -= spread
                mean_z += float(z[j])
            d[label] += z.dtype.type(smoothing) * scale
            loss += smoothing * (float(z[label]) - mean_z / n_out)
        if code == SKLEARN_LOG_LOSS:
            loss = min(max(loss, least), most)
    elif code == BINARY_CROSS_ENTROPY or code == SKLEARN_BINARY_LOG_LOSS:
        for j in range(n_out):
            v = z[j]
            # max(v, 0) - v*y + log(1 + exp(-|v|)): finite for any finite logit
            term = float(max(v, zero) - v * y[j] + np.log1p(np.exp(-abs(v))))
            loss += min(max(term, least), most) if code == SKLEARN_BINARY_LOG_LOSS else term
            d[j] = (sigmoid(v, one) - y[j]) * scale
    elif code == MAE:
        for j in range(n_out):
            r = z[j] - y[j]
            loss += float(abs(r))
            d[j] = scale if r > zero else (-scale if r < zero else zero)
    elif code == HUBER:
        half = z.dtype.type(0.5)
        for j in range(n_out):
            r = z[j] - y[j]
            if abs(r) < huber_delta:
                loss += float(half * r * r)
                d[j] = r * scale
            else:
                loss += float(huber_delta * (abs(r) - half * huber_delta))
                d[j] = (huber_delta if r > zero else -huber_delta) * scale
    elif code == POISSON or code == SKLEARN_POISSON:
        # the logit is the log of the predicted rate
        for j in range(n_out):
            rate = np.exp(z[j])
            loss += float(rate - y[j] * z[j])
            if code == SKLEARN_POISSON and y[j] > zero:
                loss += float(y[j] * np.log(y[j]) - y[j])
            d[j] = (rate - y[j]) * scale
    elif code == SKLEARN_SQUARED:
        for j in range(n_out):
            r = z[j] - y[j]
            loss += 0.5 * float(r * r) / n_out
            d[j] = r * scale
    else:  # MSE
        two = z.dtype.type(2.0)
        for j in range(n_out):
            r = z[j] - y[j]
            loss += float(r * r)
            d[j] = two * r * scale
    return loss


@jit
def row_losses(code, huber_delta, logits, Y):
    """Each row's loss (summed over its outputs), float64, for a block of rows."""
    scratch = np.empty(logits.shape[1], logits.dtype)
    zero = logits.dtype.type(0.0)
    out = np.empty(logits.shape[0])
    for i in range(logits.shape[0]):
        out[i] = row_loss_and_delta(code, huber_delta, logits[i], Y[i], scratch, zero, 0.0)
    return out
