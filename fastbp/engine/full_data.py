"""Whole-data computations around the compiled kernels: the forward pass in blocks (predict),
the loss and gradient over all rows (gradient checks, L-BFGS), and the output nonlinearities
that turn logits into probabilities. Each sizes its workspace, sets the thread limits and
calls one kernel.
"""

import numpy as np
from scipy.special import expit, logsumexp

from ..core import kernels
from ..core.activations import GELU
from ..core.bundles import (TABLE_DIM, TABLE_ROWS, kernel_input, make_hyper, make_optimizer, make_regularization,
                            make_table_marks, make_workspace)
from ..core.compile import announced_compiles
from ..core.threads import resolve_n_threads, thread_limits, threads_for
from ..core.layout import flops_per_row
from ..core.losses import LOG_LINK_LOSSES, SIGMOID_LOSSES, SOFTMAX_LOSSES
from ..core.optim import SGD

PREDICT_BLOCK_ROWS = 1024   # rows per forward block: keeps the workspace small
GRADIENT_BLOCK_ROWS = 4096  # rows per block of the full-data gradient


def workspace(net, capacity, dtype, grad=None):
    """A Workspace for batches of up to `capacity` rows of this net (members x capacity workspace rows for an
    ensemble; pre-activations only when a layer uses gelu or the members have adapters, and two more sections with
    adapters on every layer)."""
    n_params = net.n_layer_params + int((net.tables[:, TABLE_ROWS] * net.tables[:, TABLE_DIM]).sum())
    zs_sections = 3 if kernels.every_layer(net) else int(bool((net.act_codes == GELU).any()) or net.members > 1)
    return make_workspace(net.sizes, zs_sections, capacity * net.members, n_params, dtype, grad)


def table_marks(net, capacity, dtype, touched=None):
    """The embedding tables' TableMarks for batches of up to `capacity` rows of this net."""
    return make_table_marks(int(net.tables[:, TABLE_ROWS].sum()), len(net.tables), capacity * net.members, dtype,
                            touched)


def forward(params, net, X, n_threads=None):
    """Logits (n, n_out) of every row of the C-contiguous X, in blocks, rows split over n_threads
    (None: every core)."""
    n = X.shape[0]
    out = np.empty((n, net.members * int(net.sizes[-1])), dtype=params.dtype)
    if n:
        block = min(n, PREDICT_BLOCK_ROWS)
        n_threads = threads_for(resolve_n_threads(n_threads),
                                block * flops_per_row(net.sizes, backward=False, members=net.members))
        ws = workspace(net, block, params.dtype, grad=np.empty(0, dtype=params.dtype))
        with thread_limits(n_threads), announced_compiles(f"{kernels.build_name(net)} prediction"):
            kernels.forward_all(out, params, net, kernels.extras_of(net), ws, kernel_input(X), n_threads)
    return out if net.members == 1 else ensemble_logits(out.reshape(n, net.members, -1), net.loss_code)


def ensemble_logits(member_logits, loss_code):
    """The logits (n, n_out) of an ensemble's prediction, the mean of its members' predictions (probabilities,
    a Poisson rate, a value) from their logits (n, members, n_out): the loss's link of that mean, so that
    probabilities, metrics and losses computed from them are the ensemble's."""
    z = member_logits.astype(np.float64)
    if loss_code in SOFTMAX_LOSSES:
        mean = to_probabilities(z.reshape(-1, z.shape[2]), softmax=True).reshape(z.shape).mean(axis=1)
        out = np.log(np.maximum(mean, np.finfo(member_logits.dtype).tiny))
    elif loss_code in SIGMOID_LOSSES:
        eps = np.finfo(member_logits.dtype).eps
        mean = np.clip(expit(z).mean(axis=1), np.finfo(member_logits.dtype).tiny, 1 - eps)
        out = np.log(mean) - np.log1p(-mean)
    elif loss_code in LOG_LINK_LOSSES:
        out = logsumexp(z, axis=1) - np.log(z.shape[1])
    else:
        out = z.mean(axis=1)
    return out.astype(member_logits.dtype)


class FullGradient:
    """The loss and gradient over all rows of X, with its workspace kept for repeated calls (L-BFGS).

    No dropout, no penalty, no optimizer step: the gradient of the loss the data defines.
    """

    def __init__(self, net, X, Y, weights, n_threads, dtype):
        block = min(X.shape[0], GRADIENT_BLOCK_ROWS)
        n_threads = threads_for(resolve_n_threads(n_threads), block * flops_per_row(net.sizes, members=net.members))
        self.net = net
        self.ws, self.marks = workspace(net, block, dtype), table_marks(net, block, dtype)
        self.reg = make_regularization(np.zeros(net.sizes.size - 1), dtype)
        self.inert, self.no_hyper = make_optimizer(SGD, 0, dtype, ()), make_hyper(1.0)
        self.X, self.Y, self.weights = kernel_input(X), kernel_input(Y), kernel_input(weights)
        self.n_threads = n_threads

    def __call__(self, params, grad):
        """Mean loss at `params`; its gradient into `grad`."""
        with thread_limits(self.n_threads), announced_compiles(f"{kernels.build_name(self.net)} full-data gradient"):
            loss = kernels.loss_and_gradient(params, self.net, kernels.extras_of(self.net), self.ws._replace(grad=grad),
                                             self.marks, self.reg, self.inert, self.no_hyper, self.X, self.Y,
                                             self.weights, self.n_threads)
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
