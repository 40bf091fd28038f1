"""Whole-data passes around the compiled kernels, shared by Trainer and fastbp.sklearn.

Each sizes its workspace, sets the thread limits and calls one kernel: the
forward pass in blocks (predict), the loss and gradient over all rows (gradient
checks, L-BFGS), and the output nonlinearities that turn logits into probabilities.
"""
import numpy as np
from scipy.special import expit

from . import kernels
from .activations import GELU
from .config import thread_limits

PREDICT_BLOCK_ROWS = 1024   # rows per forward block: keeps the workspace small
GRADIENT_BLOCK_ROWS = 4096  # rows per block of the full-data gradient


def workspace(sizes, act_codes, capacity, dtype):
    """Activations, gelu pre-activations (only when a layer uses gelu) and deltas for `capacity` rows."""
    width = capacity * int(sizes.sum())
    zs = np.empty(width if (act_codes == GELU).any() else 0, dtype=dtype)
    return np.empty(width, dtype=dtype), zs, np.empty(width, dtype=dtype)


def forward(params, sizes, w_offsets, act_codes, X, n_threads):
    """Logits (n, n_out) of every row of the C-contiguous X, in blocks, rows split over n_threads."""
    n = X.shape[0]
    out = np.empty((n, int(sizes[-1])), dtype=params.dtype)
    if n:
        capacity = min(n, PREDICT_BLOCK_ROWS)
        acts, zs, _ = workspace(sizes, act_codes, capacity, params.dtype)
        with thread_limits(n_threads, 1):
            kernels.forward_all(params, sizes, w_offsets, act_codes, acts, zs, capacity, X, out, n_threads)
    return out


class FullGradient:
    """loss_and_gradient over all rows of X, with its workspace kept for repeated calls (L-BFGS)."""

    def __init__(self, sizes, w_offsets, act_codes, loss_code, loss_param, loss_elements, X, Y, weights,
                 n_threads, dtype):
        self.args = (sizes, w_offsets, act_codes, loss_code, loss_param, loss_elements)
        self.capacity = min(X.shape[0], GRADIENT_BLOCK_ROWS)
        self.ws = workspace(sizes, act_codes, self.capacity, dtype)
        self.X, self.Y, self.weights, self.n_threads = X, Y, weights, n_threads

    def __call__(self, params, grad):
        """Mean loss at `params`; its gradient into `grad`."""
        with thread_limits(self.n_threads, 1):
            return kernels.loss_and_gradient(params, grad, *self.args, *self.ws, self.capacity, self.X, self.Y,
                                             self.weights, self.n_threads)


def to_probabilities(logits, softmax):
    """In place: softmax over each row, or an element-wise sigmoid; returns the array."""
    if softmax:
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
    else:
        expit(logits, out=logits)
    return logits
