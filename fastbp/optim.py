"""Optimizers on the flat layout: state is a (n_state, n_params) array, the update is one fused loop.

Each optimizer is an init (how many state vectors, hyper-parameters packed into
a small array of the model dtype) plus a compiled update of a range of
parameters, which the kernels call on each thread's slice of the gradient as
soon as it is computed. Definitions follow torch.optim.
"""
import math

import numpy as np

from .config import jit

SGD = 0
OPTIMIZERS = {"sgd": SGD}

# Indices into the hyper-parameter array passed to compiled code.
LR, MOMENTUM, NESTEROV, WEIGHT_DECAY = range(4)
N_HYPER = 4

def optimizer_code(name):
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def check_hyper(lr, momentum, nesterov, weight_decay):
    def finite_number(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return float(value)

    lr = finite_number("lr", lr)
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr!r}; typical values are 1e-3 to 1e-1")
    momentum = finite_number("momentum", momentum)
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum!r}")
    weight_decay = finite_number("weight_decay", weight_decay)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if nesterov and momentum <= 0:
        raise ValueError("nesterov=True needs momentum > 0 (as in torch.optim.SGD)")
    return lr, momentum, bool(nesterov), weight_decay


def make_hyper(dtype, lr, momentum, nesterov, weight_decay):
    hyper = np.zeros(N_HYPER, dtype=dtype)
    hyper[LR] = lr
    hyper[MOMENTUM] = momentum
    hyper[NESTEROV] = 1.0 if nesterov else 0.0
    hyper[WEIGHT_DECAY] = weight_decay
    return hyper


def n_state_vectors(code, momentum):
    """State vectors the optimizer keeps: SGD needs its momentum buffer only when momentum > 0."""
    return 1 if momentum > 0 else 0


@jit
def update_range(opt_code, params, grad, state, t, hyper, lo, hi):
    """Step parameters [lo, hi) in place from their gradient; t is the 1-based step count."""
    _sgd_block(params, grad, state, t, hyper, lo, hi)


@jit
def _sgd_block(params, grad, state, t, hyper, lo, hi):
    lr = hyper[LR]
    momentum = hyper[MOMENTUM]
    nesterov = hyper[NESTEROV] != 0
    weight_decay = hyper[WEIGHT_DECAY]
    zero = params.dtype.type(0.0)
    for i in range(lo, hi):
        g = grad[i]
        if weight_decay != zero:
            g += weight_decay * params[i]
        if momentum != zero:
            if t == 1:
                buf = g  # torch initializes the buffer with the first gradient
            else:
                buf = momentum * state[0, i] + g
            state[0, i] = buf
            g = g + momentum * buf if nesterov else buf
        params[i] -= lr * g
