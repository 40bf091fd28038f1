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
from .fpmode import flush_denormals, restore_fp_mode

SGD, ADAM, ADAMW, RMSPROP, SKLEARN_SGD, SKLEARN_ADAM = range(6)
OPTIMIZERS = {"sgd": SGD, "adam": ADAM, "adamw": ADAMW, "rmsprop": RMSPROP}
# scikit-learn's own forms (fastbp.sklearn): SGD keeps a velocity v = momentum*v - lr*g
# (not torch's lr-free buffer, which differs once the lr changes), and Adam puts eps
# outside the bias correction. Neither applies weight decay: the alpha term is in the gradient.
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
    """Step parameters [lo, hi) in place from grad_scale * grad; t is the 1-based step count.

    The optimizers run on 0-based views of the range: with a non-negative index
    known to the compiler, and numpy's error model, their loops vectorize.
    """
    p = params[lo:hi]
    g = grad[lo:hi]
    if opt_code == SGD:
        _sgd(p, g, state, lo, hi, t, hyper, grad_scale)
    elif opt_code == RMSPROP:
        _rmsprop(p, g, state, lo, hi, hyper, grad_scale)
    elif opt_code == SKLEARN_SGD:
        _sklearn_sgd(p, g, state, lo, hi, hyper)
    elif opt_code == SKLEARN_ADAM:
        _sklearn_adam(p, g, state, lo, hi, t, hyper)
    else:
        _adam(opt_code == ADAMW, p, g, state, lo, hi, t, hyper, grad_scale)


@jit(parallel=True)
def update_all(opt_code, params, grad, state, t, hyper, grad_scale):
    """update_range over every parameter, in parallel blocks (used when clipping needs the full gradient first)."""
    n = params.size
    block = 4096
    for blk in prange((n + block - 1) // block):
        fp_mode = flush_denormals()
        update_range(opt_code, params, grad, state, t, hyper, grad_scale, blk * block, min(n, (blk + 1) * block))
        restore_fp_mode(fp_mode)


@jit
def _effective(p, g, i, grad_scale, decay, l1):
    """The gradient torch's optimizers act on: clipped gradient + coupled L2 decay + L1 sign term."""
    zero = p.dtype.type(0.0)
    sign = p.dtype.type(1.0) if p[i] > zero else (p.dtype.type(-1.0) if p[i] < zero else zero)
    return g[i] * grad_scale + decay * p[i] + l1 * sign


@jit
def _sgd(p, g, state, lo, hi, t, hyper, grad_scale):
    lr = hyper[LR]
    momentum = hyper[MOMENTUM]
    decay = hyper[WEIGHT_DECAY]
    l1 = hyper[L1]
    if momentum == 0:
        for i in range(p.size):
            p[i] -= lr * _effective(p, g, i, grad_scale, decay, l1)
        return
    nesterov = hyper[NESTEROV] != 0
    buf = state[0][lo:hi]
    first = t == 1  # torch starts the buffer at the first gradient
    for i in range(p.size):
        gi = _effective(p, g, i, grad_scale, decay, l1)
        b = gi if first else momentum * buf[i] + gi
        buf[i] = b
        p[i] -= lr * (gi + momentum * b if nesterov else b)


@jit
def _adam(decoupled, p, g, state, lo, hi, t, hyper, grad_scale):
    dtype = p.dtype.type
    one = dtype(1.0)
    lr = hyper[LR]
    beta1 = hyper[BETA1]
    beta2 = hyper[BETA2]
    eps = hyper[EPS]
    l1 = hyper[L1]
    step_size = dtype(lr / (1.0 - float(beta1) ** t))
    inv_bias2_sqrt = dtype(1.0 / np.sqrt(1.0 - float(beta2) ** t))
    # Adam adds decay to the gradient; AdamW shrinks the weights first (decoupled)
    coupled = dtype(0.0) if decoupled else hyper[WEIGHT_DECAY]
    shrink = one - lr * hyper[WEIGHT_DECAY] if decoupled else one
    amsgrad = hyper[AMSGRAD] != 0
    m = state[0][lo:hi]
    v = state[1][lo:hi]
    for i in range(p.size):
        gi = _effective(p, g, i, grad_scale, coupled, l1)
        p[i] *= shrink
        m[i] += (one - beta1) * (gi - m[i])
        v[i] = beta2 * v[i] + (one - beta2) * gi * gi
        if not amsgrad:
            p[i] -= step_size * m[i] / (np.sqrt(v[i]) * inv_bias2_sqrt + eps)
    if amsgrad:  # a separate loop: aliasing v_max to v would stop the common loop from vectorizing
        v_max = state[2][lo:hi]
        for i in range(p.size):
            v_max[i] = max(v_max[i], v[i])
            p[i] -= step_size * m[i] / (np.sqrt(v_max[i]) * inv_bias2_sqrt + eps)


@jit
def _rmsprop(p, g, state, lo, hi, hyper, grad_scale):
    one = p.dtype.type(1.0)
    lr = hyper[LR]
    alpha = hyper[ALPHA]
    eps = hyper[EPS]
    momentum = hyper[MOMENTUM]
    decay = hyper[WEIGHT_DECAY]
    l1 = hyper[L1]
    centered = hyper[CENTERED] != 0
    square_avg = state[0][lo:hi]
    buf = state[1][lo:hi] if momentum != 0 else square_avg
    grad_avg = state[2 if momentum != 0 else 1][lo:hi] if centered else square_avg
    for i in range(p.size):
        gi = _effective(p, g, i, grad_scale, decay, l1)
        square_avg[i] = alpha * square_avg[i] + (one - alpha) * gi * gi
        if centered:
            grad_avg[i] += (one - alpha) * (gi - grad_avg[i])
            denom = np.sqrt(square_avg[i] - grad_avg[i] * grad_avg[i]) + eps
        else:
            denom = np.sqrt(square_avg[i]) + eps
        if momentum != 0:
            buf[i] = momentum * buf[i] + gi / denom
            p[i] -= lr * buf[i]
        else:
            p[i] -= lr * gi / denom


@jit
def _sklearn_sgd(p, g, state, lo, hi, hyper):
    lr = hyper[LR]
    momentum = hyper[MOMENTUM]
    nesterov = hyper[NESTEROV] != 0
    velocity = state[0][lo:hi]
    for i in range(p.size):
        v = momentum * velocity[i] - lr * g[i]
        velocity[i] = v
        p[i] += momentum * v - lr * g[i] if nesterov else v


@jit
def _sklearn_adam(p, g, state, lo, hi, t, hyper):
    dtype = p.dtype.type
    one = dtype(1.0)
    beta1 = hyper[BETA1]
    beta2 = hyper[BETA2]
    eps = hyper[EPS]
    lr_t = dtype(float(hyper[LR]) * np.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t))
    m = state[0][lo:hi]
    v = state[1][lo:hi]
    for i in range(p.size):
        m[i] = beta1 * m[i] + (one - beta1) * g[i]
        v[i] = beta2 * v[i] + (one - beta2) * g[i] * g[i]
        p[i] -= lr_t * m[i] / (np.sqrt(v[i]) + eps)
