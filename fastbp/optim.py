"""Optimizers on the flat layout: state is a (n_state, n_params) array, the update is one fused loop.

An optimizer is an init (`make_optimizer`: validated hyper-parameters packed into
a small array of the model dtype, and how many state vectors it keeps) plus a
compiled update of a range of parameters (`update_range`), which the kernels
call on each thread's slice of the gradient as soon as it is computed.
Definitions and defaults follow torch.optim (SGD, Adam, AdamW, RMSprop).
"""
import math

import numpy as np
from numba import prange

from .config import jit

SGD, ADAM, ADAMW, RMSPROP = range(4)
OPTIMIZERS = {"sgd": SGD, "adam": ADAM, "adamw": ADAMW, "rmsprop": RMSPROP}
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-2}
DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "adam": 0.0, "adamw": 1e-2, "rmsprop": 0.0}

# Indices into the hyper-parameter array passed to compiled code.
LR, MOMENTUM, NESTEROV, WEIGHT_DECAY, BETA1, BETA2, EPS, AMSGRAD, ALPHA, CENTERED, L1 = range(11)
N_HYPER = 11


def _number(name, value, low=None, high=None, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and value >= high:
        raise ValueError(f"{name} must be < {high:g}, got {value!r}")
    return value


def optimizer_code(name):
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


class Optimizer:
    """Validated optimizer settings: `code`, `hyper` values by name, and `n_state` vectors of state."""

    def __init__(self, name, lr=None, momentum=0.0, nesterov=False, weight_decay=None, betas=(0.9, 0.999),
                 eps=1e-8, amsgrad=False, alpha=0.99, centered=False, l1=0.0):
        self.name = name
        self.code = optimizer_code(name)
        lr = DEFAULT_LR[name] if lr is None else lr
        weight_decay = DEFAULT_WEIGHT_DECAY[name] if weight_decay is None else weight_decay
        self.lr = _number("lr", lr, low=0.0, low_open=True)
        self.momentum = _number("momentum", momentum, low=0.0)
        self.nesterov = bool(nesterov)
        self.weight_decay = _number("weight_decay", weight_decay, low=0.0)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_number("betas[0]", beta1, low=0.0, high=1.0), _number("betas[1]", beta2, low=0.0, high=1.0))
        self.eps = _number("eps", eps, low=0.0)
        self.amsgrad = bool(amsgrad)
        self.alpha = _number("alpha", alpha, low=0.0)
        self.centered = bool(centered)
        self.l1 = _number("l1", l1, low=0.0)
        if self.nesterov and (self.code != SGD or self.momentum <= 0):
            raise ValueError("nesterov=True needs optimizer='sgd' and momentum > 0 (as in torch.optim.SGD)")
        if self.momentum > 0 and self.code in (ADAM, ADAMW):
            raise ValueError(f"{name} has no momentum parameter; set betas=(beta1, beta2) instead")
        if self.code == SGD:
            self.n_state = 1 if self.momentum > 0 else 0
        elif self.code in (ADAM, ADAMW):
            self.n_state = 3 if self.amsgrad else 2
        else:
            self.n_state = 1 + (self.momentum > 0) + self.centered

    def settings(self):
        """The constructor arguments, JSON-serializable (saved with models)."""
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "betas": list(self.betas), "eps": self.eps,
                "amsgrad": self.amsgrad, "alpha": self.alpha, "centered": self.centered, "l1": self.l1}

    def hyper(self, dtype, lr=None, momentum=None, beta1=None):
        """The hyper-parameter array; a schedule may override lr, momentum or beta1 for an epoch."""
        h = np.zeros(N_HYPER, dtype=dtype)
        h[LR] = self.lr if lr is None else lr
        h[MOMENTUM] = self.momentum if momentum is None else momentum
        h[NESTEROV] = self.nesterov
        h[WEIGHT_DECAY] = self.weight_decay
        h[BETA1] = self.betas[0] if beta1 is None else beta1
        h[BETA2] = self.betas[1]
        h[EPS] = self.eps
        h[AMSGRAD] = self.amsgrad
        h[ALPHA] = self.alpha
        h[CENTERED] = self.centered
        h[L1] = self.l1
        return h


@jit
def update_range(opt_code, params, grad, state, t, hyper, grad_scale, lo, hi):
    """Step parameters [lo, hi) in place from grad_scale * grad; t is the 1-based step count."""
    if opt_code == SGD:
        _sgd(params, grad, state, t, hyper, grad_scale, lo, hi)
    elif opt_code == RMSPROP:
        _rmsprop(params, grad, state, hyper, grad_scale, lo, hi)
    else:
        _adam(opt_code, params, grad, state, t, hyper, grad_scale, lo, hi)


@jit(parallel=True)
def update_all(opt_code, params, grad, state, t, hyper, grad_scale):
    """update_range over every parameter, in parallel blocks (used when clipping needs the full gradient first)."""
    n = params.size
    block = 4096
    for blk in prange((n + block - 1) // block):
        update_range(opt_code, params, grad, state, t, hyper, grad_scale, blk * block, min(n, (blk + 1) * block))


@jit
def _penalized(params, grad, i, hyper, grad_scale, coupled_decay):
    """The gradient torch's optimizers act on: clipped gradient + L1 sign term + (coupled) L2 decay."""
    g = grad[i] * grad_scale
    l1 = hyper[L1]
    if l1 != 0:
        p = params[i]
        g += l1 * (1 if p > 0 else (-1 if p < 0 else 0))
    if coupled_decay:
        g += hyper[WEIGHT_DECAY] * params[i]
    return g


@jit
def _sgd(params, grad, state, t, hyper, grad_scale, lo, hi):
    lr = hyper[LR]
    momentum = hyper[MOMENTUM]
    nesterov = hyper[NESTEROV] != 0
    decay = hyper[WEIGHT_DECAY] != 0
    for i in range(lo, hi):
        g = _penalized(params, grad, i, hyper, grad_scale, decay)
        if momentum != 0:
            buf = g if t == 1 else momentum * state[0, i] + g  # torch starts the buffer at the first gradient
            state[0, i] = buf
            g = g + momentum * buf if nesterov else buf
        params[i] -= lr * g


@jit
def _adam(opt_code, params, grad, state, t, hyper, grad_scale, lo, hi):
    lr = hyper[LR]
    beta1 = hyper[BETA1]
    beta2 = hyper[BETA2]
    eps = hyper[EPS]
    amsgrad = hyper[AMSGRAD] != 0
    one = params.dtype.type(1.0)
    bias1 = one - beta1 ** t
    step_size = lr / bias1
    bias2_sqrt = np.sqrt(one - beta2 ** t)
    decoupled = opt_code == ADAMW
    coupled = not decoupled and hyper[WEIGHT_DECAY] != 0
    shrink = one - lr * hyper[WEIGHT_DECAY]
    for i in range(lo, hi):
        g = _penalized(params, grad, i, hyper, grad_scale, coupled)
        if decoupled:
            params[i] *= shrink
        m = state[0, i] + (one - beta1) * (g - state[0, i])
        v = beta2 * state[1, i] + (one - beta2) * g * g
        state[0, i] = m
        state[1, i] = v
        if amsgrad:
            v = max(state[2, i], v)
            state[2, i] = v
        params[i] -= step_size * m / (np.sqrt(v) / bias2_sqrt + eps)


@jit
def _rmsprop(params, grad, state, hyper, grad_scale, lo, hi):
    lr = hyper[LR]
    alpha = hyper[ALPHA]
    eps = hyper[EPS]
    momentum = hyper[MOMENTUM]
    centered = hyper[CENTERED] != 0
    decay = hyper[WEIGHT_DECAY] != 0
    one = params.dtype.type(1.0)
    buf_row = 1
    avg_row = 2 if momentum != 0 else 1
    for i in range(lo, hi):
        g = _penalized(params, grad, i, hyper, grad_scale, decay)
        sq = alpha * state[0, i] + (one - alpha) * g * g
        state[0, i] = sq
        if centered:
            avg = state[avg_row, i] + (one - alpha) * (g - state[avg_row, i])
            state[avg_row, i] = avg
            denom = np.sqrt(sq - avg * avg) + eps
        else:
            denom = np.sqrt(sq) + eps
        if momentum != 0:
            buf = momentum * state[buf_row, i] + g / denom
            state[buf_row, i] = buf
            params[i] -= lr * buf
        else:
            params[i] -= lr * g / denom
