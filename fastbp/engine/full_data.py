"""Whole-data computations around the compiled kernels: the forward pass in blocks (predict),
the loss and gradient over all rows (gradient checks, L-BFGS), and the output nonlinearities
that turn logits into probabilities. Each sizes its workspace, sets the thread limits and
calls one kernel.
"""

import numpy as np
from scipy.special import expit

from ..core import kernels
from ..core.activations import GELU
from ..core.bundles import (TABLE_DIM, TABLE_ROWS, make_hyper, make_optimizer, make_regularization, make_table_marks,
                            make_workspace)
from ..core.compile import announced_compiles
from ..core.threads import resolve_n_threads, thread_limits, threads_for
from ..core.layout import flops_per_row
from ..core.optim import SGD

PREDICT_BLOCK_ROWS = 1024   # rows per forward block: keeps the workspace small
GRADIENT_BLOCK_ROWS = 4096  # rows per block of the full-data gradient


def workspace(net, capacity, dtype, grad=None):
    """A Workspace for `capacity` rows of this net (gelu pre-activations only when a layer uses gelu)."""
    n_params = net.n_layer_params + int((net.tables[:, TABLE_ROWS] * net.tables[:, TABLE_DIM]).sum())
    return make_workspace(net.sizes, bool((net.act_codes == GELU).any()), capacity, n_params, dtype, grad)


def table_marks(net, capacity, dtype, touched=None):
    """The embedding tables' TableMarks for batches of up to `capacity` rows of this net."""
    return make_table_marks(int(net.tables[:, TABLE_ROWS].sum()), len(net.tables), capacity, dtype, touched)


def forward(params, net, X, n_threads=None):
    """Logits (n, n_out) of every row of the C-contiguous X, in blocks, rows split over n_threads
    (None: every core)."""
    n = X.shape[0]
    out = np.empty((n, int(net.sizes[-1])), dtype=params.dtype)
    if n:
        block = min(n, PREDICT_BLOCK_ROWS)
        n_threads = threads_for(resolve_n_threads(n_threads), block * flops_per_row(net.sizes, backward=False))
        ws = workspace(net, block, params.dtype, grad=np.empty(0, dtype=params.dtype))
        with thread_limits(n_threads), announced_compiles("prediction"):
            kernels.forward_all(out, params, net, ws, X, n_threads)
    return out


class FullGradient:
    """The loss and gradient over all rows of X, with its workspace kept for repeated calls (L-BFGS).

    No dropout, no penalty, no optimizer step: the gradient of the loss the data defines.
    """

    def __init__(self, net, X, Y, weights, n_threads, dtype):
        block = min(X.shape[0], GRADIENT_BLOCK_ROWS)
        n_threads = threads_for(resolve_n_threads(n_threads), block * flops_per_row(net.sizes))
        self.net = net
        self.ws, self.marks = workspace(net, block, dtype), table_marks(net, block, dtype)
        self.reg = make_regularization(np.zeros(net.sizes.size - 1), dtype)
        self.inert, self.no_hyper = make_optimizer(SGD, 0, dtype, ()), make_hyper(1.0)
        self.X, self.Y, self.weights, self.n_threads = X, Y, weights, n_threads

    def __call__(self, params, grad):
        """Mean loss at `params`; its gradient into `grad`."""
        with thread_limits(self.n_threads), announced_compiles("full-data gradient"):
            loss = kernels.loss_and_gradient(params, self.net, self.ws._replace(grad=grad), self.marks, self.reg,
                                             self.inert, self.no_hyper, self.X, self.Y, self.weights, self.n_threads)
        return loss


def to_probabilities(logits, softmax):
    """In place: softmax over each row, or an element-wise sigmoid; returns the array."""
    if softmax:
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
    else:
        expit(logits, out=logits)
    return logits
