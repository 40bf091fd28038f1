"""Optimizers on the flat layout: named state vectors, the update is one fused loop.

Each optimizer has one entry in OPTIMIZERS (its code, defaults, the arguments it reads and
the state vectors it keeps); `OptimizerSettings` validates a run's hyper-parameters and
names the state it needs (`fastbp.core.bundles.make_optimizer` allocates it), and a compiled
update of a range of parameters (`update_range`, dispatching on the code) runs on each
thread's slice of the gradient as soon as it is computed. Definitions and defaults follow
torch.optim (SGD, Adam, AdamW, RMSprop).
"""
from typing import Callable, NamedTuple

import numpy as np
from numba import prange

from .bundles import make_hyper
from .checks import check_bool, check_number
from .compile import jit
from .errors import InputError
from .fpmode import flush_denormals, restore_fp_mode

SGD, ADAM, ADAMW, RMSPROP, SKLEARN_SGD, SKLEARN_ADAM = range(6)


class OptimizerKind(NamedTuple):
    """One optimizer in one place: the code update_range dispatches on, torch.optim's defaults, the arguments
    it reads (summaries) and the state vectors it keeps, states(momentum, amsgrad, centered) -> their names in
    the order older model files stored them."""
    code: int
    lr: float
    weight_decay: float
    reads: tuple
    states: Callable


def _sgd_states(momentum, amsgrad, centered):
    return ("momentum_buffer",) * bool(momentum)


def _adam_states(momentum, amsgrad, centered):
    return ("exp_avg", "exp_avg_sq") + ("max_exp_avg_sq",) * bool(amsgrad)


def _rmsprop_states(momentum, amsgrad, centered):
    return ("exp_avg_sq",) + ("momentum_buffer",) * bool(momentum) + ("grad_avg",) * bool(centered)


_ADAM_READS = ("lr", "betas", "eps", "weight_decay", "amsgrad")
OPTIMIZERS = {
    "sgd": OptimizerKind(SGD, 0.01, 0.0, ("lr", "momentum", "nesterov", "weight_decay"), _sgd_states),
    "adam": OptimizerKind(ADAM, 1e-3, 0.0, _ADAM_READS, _adam_states),
    "adamw": OptimizerKind(ADAMW, 1e-3, 1e-2, _ADAM_READS, _adam_states),
    "rmsprop": OptimizerKind(RMSPROP, 1e-2, 0.0, ("lr", "alpha", "eps", "momentum", "centered", "weight_decay"),
                             _rmsprop_states),
}
# scikit-learn's own forms (fastbp.sklearn): SGD keeps a velocity v = momentum*v - lr*g
# (not torch's lr-free buffer, which differs once the lr changes), and Adam puts eps
# outside the bias correction. Neither applies weight decay: the penalty is in the gradient.
SKLEARN_OPTIMIZERS = {"sgd": (SKLEARN_SGD, _sgd_states(True, False, False)),
                      "adam": (SKLEARN_ADAM, _adam_states(False, False, False))}


def _kind(name):
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


class OptimizerSettings:
    """Validated optimizer settings: `code`, the hyper-parameters by name, and the state they need. Immutable:
    the kernels' state is allocated from them (Trainer.configure_optimizer builds new ones)."""

    def __init__(self, name, lr=None, momentum=0.0, nesterov=False, weight_decay=None, betas=(0.9, 0.999),
                 eps=1e-8, amsgrad=False, alpha=0.99, centered=False, l1=0.0):
        kind = _kind(name)
        self.name, self.code = name, kind.code
        lr = kind.lr if lr is None else lr
        weight_decay = kind.weight_decay if weight_decay is None else weight_decay
        self.lr = check_number("lr", lr, low=0.0, low_open=True)
        self.momentum = check_number("momentum", momentum, low=0.0)
        self.nesterov = check_bool("nesterov", nesterov)
        self.weight_decay = check_number("weight_decay", weight_decay, low=0.0)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            from .errors import InputTypeError
            raise InputTypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (check_number("betas[0]", beta1, low=0.0, high=1.0),
                      check_number("betas[1]", beta2, low=0.0, high=1.0))
        self.eps = check_number("eps", eps, low=0.0)
        self.amsgrad = check_bool("amsgrad", amsgrad)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.centered = check_bool("centered", centered)
        self.l1 = check_number("l1", l1, low=0.0)
        if self.nesterov and (self.code != SGD or self.momentum <= 0):
            raise InputError("nesterov=True needs optimizer='sgd' and momentum > 0 (as in torch.optim.SGD)")
        if self.momentum > 0 and self.code in (ADAM, ADAMW):
            raise InputError(f"{name} has no momentum parameter; set betas=(beta1, beta2) instead")
        self._frozen = True

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError(f"optimizer settings are immutable: set trainer.{name} = {value!r} (or call "
                                 f"trainer.configure_optimizer({name}={value!r})), validated and used from the "
                                 "next fit")
        object.__setattr__(self, name, value)

    def settings(self):
        """The constructor arguments, JSON-serializable (saved with models)."""
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "betas": list(self.betas), "eps": self.eps,
                "amsgrad": self.amsgrad, "alpha": self.alpha, "centered": self.centered, "l1": self.l1}

    def described(self):
        """The settings this optimizer uses, by name (l1 only when set), for summaries."""
        settings = self.settings()
        return {k: settings[k] for k in OPTIMIZERS[self.name].reads + (("l1",) if self.l1 else ())}

    @property
    def cycles_beta1(self):
        """A schedule's momentum cycles beta1 for Adam-type optimizers, momentum for the others."""
        return self.code in (ADAM, ADAMW)

    def state_names(self, schedule_momentum=False):
        """State vectors the run needs; schedule_momentum: a schedule sets momentum for some epochs."""
        momentum = self.momentum > 0 or (schedule_momentum and not self.cycles_beta1)
        return set(OPTIMIZERS[self.name].states(momentum, self.amsgrad, self.centered))

    def legacy_state_order(self):
        """The names of the rows of the unnamed (n_state, n_params) state array of older model files: every
        vector the optimizer can keep, but only the optional ones RMSprop used."""
        rmsprop = self.code == RMSPROP
        return list(OPTIMIZERS[self.name].states(self.momentum > 0 or not rmsprop, True, self.centered or not rmsprop))

    def hyper(self, lr=None, momentum=None):
        """This epoch's hyper-parameters; a schedule may override lr and momentum (beta1 for Adam)."""
        beta1 = self.betas[0]
        base_momentum = self.momentum
        if momentum is not None:
            if self.cycles_beta1:
                beta1 = momentum
            else:
                base_momentum = momentum
        return make_hyper(self.lr if lr is None else lr, base_momentum, self.nesterov, self.weight_decay, beta1,
                          self.betas[1], self.eps, self.amsgrad, self.alpha, self.centered, self.l1)


@jit
def update_range(opt, hyper, params, grad, grad_scale, lo, hi):
    """Step parameters [lo, hi) in place from grad_scale * grad, as step opt.step[0] + 1.

    The optimizers run on 0-based views of the range: with a non-negative index
    known to the compiler, and numpy's error model, their loops vectorize.
    """
    p = params[lo:hi]
    g = grad[lo:hi]
    t = opt.step[0] + 1
    code = opt.code
    if code == SGD:
        _sgd(p, g, opt, hyper, lo, hi, grad_scale)
    elif code == RMSPROP:
        _rmsprop(p, g, opt, hyper, lo, hi, grad_scale)
    elif code == SKLEARN_SGD:
        _sklearn_sgd(p, g, opt, hyper, lo, hi)
    elif code == SKLEARN_ADAM:
        _sklearn_adam(p, g, opt, hyper, lo, hi, t)
    else:
        _adam(code == ADAMW, p, g, opt, hyper, lo, hi, t, grad_scale)


@jit(parallel=True)
def update_all(opt, hyper, params, grad, grad_scale, net, touched):
    """update_range over every layer parameter, in parallel blocks, and over the embedding table rows marked
    non-zero in `touched` (one mark per table row, in table order: the rows some batch looked up), whose
    marks it clears. A distributed step: the gradient is summed over the ranks first."""
    n = net.n_layer_params
    block = 4096
    for blk in prange((n + block - 1) // block):
        fp_mode = flush_denormals()
        update_range(opt, hyper, params, grad, grad_scale, blk * block, min(n, (blk + 1) * block))
        restore_fp_mode(fp_mode)
    base = 0
    for e in range(net.tables.shape[0]):
        n_rows, d, offset = net.tables[e, 0], net.tables[e, 1], net.tables[e, 2]
        for r in range(n_rows):
            if touched[base + r] != 0:
                update_range(opt, hyper, params, grad, grad_scale, offset + r * d, offset + (r + 1) * d)
                touched[base + r] = 0
        base += n_rows


@jit
def _effective(p, g, i, grad_scale, decay, l1):
    """The gradient torch's optimizers act on: clipped gradient + coupled L2 decay + L1 sign term."""
    zero = p.dtype.type(0.0)
    sign = p.dtype.type(1.0) if p[i] > zero else (p.dtype.type(-1.0) if p[i] < zero else zero)
    return g[i] * grad_scale + decay * p[i] + l1 * sign


@jit
def _sgd(p, g, opt, hyper, lo, hi, grad_scale):
    dtype = p.dtype.type
    lr = dtype(hyper.lr)
    momentum = dtype(hyper.momentum)
    decay = dtype(hyper.weight_decay)
    l1 = dtype(hyper.l1)
    if hyper.momentum == 0:
        for i in range(p.size):
            p[i] -= lr * _effective(p, g, i, grad_scale, decay, l1)
        return
    nesterov = hyper.nesterov != 0
    # a zero buffer makes the first step's buffer the gradient itself, as torch starts it
    buf = opt.momentum_buffer[lo:hi]
    for i in range(p.size):
        gi = _effective(p, g, i, grad_scale, decay, l1)
        b = momentum * buf[i] + gi
        buf[i] = b
        p[i] -= lr * (gi + momentum * b if nesterov else b)


@jit
def _adam(decoupled, p, g, opt, hyper, lo, hi, t, grad_scale):
    dtype = p.dtype.type
    one = dtype(1.0)
    lr = dtype(hyper.lr)
    beta1 = dtype(hyper.beta1)
    beta2 = dtype(hyper.beta2)
    eps = dtype(hyper.eps)
    l1 = dtype(hyper.l1)
    step_size = dtype(float(lr) / (1.0 - float(beta1) ** t))
    inv_bias2_sqrt = dtype(1.0 / np.sqrt(1.0 - float(beta2) ** t))
    # Adam adds decay to the gradient; AdamW shrinks the weights first (decoupled)
    coupled = dtype(0.0) if decoupled else dtype(hyper.weight_decay)
    shrink = one - lr * dtype(hyper.weight_decay) if decoupled else one
    amsgrad = hyper.amsgrad != 0
    m = opt.exp_avg[lo:hi]
    v = opt.exp_avg_sq[lo:hi]
    for i in range(p.size):
        gi = _effective(p, g, i, grad_scale, coupled, l1)
        p[i] *= shrink
        m[i] += (one - beta1) * (gi - m[i])
        v[i] = beta2 * v[i] + (one - beta2) * gi * gi
        if not amsgrad:
            p[i] -= step_size * m[i] / (np.sqrt(v[i]) * inv_bias2_sqrt + eps)
    if amsgrad:  # a separate loop: aliasing v_max to v would stop the common loop from vectorizing
        v_max = opt.max_exp_avg_sq[lo:hi]
        for i in range(p.size):
            v_max[i] = max(v_max[i], v[i])
            p[i] -= step_size * m[i] / (np.sqrt(v_max[i]) * inv_bias2_sqrt + eps)


@jit
def _rmsprop(p, g, opt, hyper, lo, hi, grad_scale):
    dtype = p.dtype.type
    one = dtype(1.0)
    lr = dtype(hyper.lr)
    decay_sq = dtype(hyper.square_avg_decay)
    eps = dtype(hyper.eps)
    momentum = dtype(hyper.momentum)
    decay = dtype(hyper.weight_decay)
    l1 = dtype(hyper.l1)
    centered = hyper.centered != 0
    with_momentum = hyper.momentum != 0
    square_avg = opt.exp_avg_sq[lo:hi]
    buf = opt.momentum_buffer[lo:hi] if with_momentum else square_avg
    grad_avg = opt.grad_avg[lo:hi] if centered else square_avg
    for i in range(p.size):
        gi = _effective(p, g, i, grad_scale, decay, l1)
        square_avg[i] = decay_sq * square_avg[i] + (one - decay_sq) * gi * gi
        if centered:
            grad_avg[i] += (one - decay_sq) * (gi - grad_avg[i])
            denom = np.sqrt(square_avg[i] - grad_avg[i] * grad_avg[i]) + eps
        else:
            denom = np.sqrt(square_avg[i]) + eps
        if with_momentum:
            buf[i] = momentum * buf[i] + gi / denom
            p[i] -= lr * buf[i]
        else:
            p[i] -= lr * gi / denom


@jit
def _sklearn_sgd(p, g, opt, hyper, lo, hi):
    dtype = p.dtype.type
    lr = dtype(hyper.lr)
    momentum = dtype(hyper.momentum)
    nesterov = hyper.nesterov != 0
    velocity = opt.momentum_buffer[lo:hi]
    for i in range(p.size):
        v = momentum * velocity[i] - lr * g[i]
        velocity[i] = v
        p[i] += momentum * v - lr * g[i] if nesterov else v


@jit
def _sklearn_adam(p, g, opt, hyper, lo, hi, t):
    dtype = p.dtype.type
    one = dtype(1.0)
    beta1 = dtype(hyper.beta1)
    beta2 = dtype(hyper.beta2)
    eps = dtype(hyper.eps)
    lr_t = dtype(float(dtype(hyper.lr)) * np.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t))
    m = opt.exp_avg[lo:hi]
    v = opt.exp_avg_sq[lo:hi]
    for i in range(p.size):
        m[i] = beta1 * m[i] + (one - beta1) * g[i]
        v[i] = beta2 * v[i] + (one - beta2) * g[i] * g[i]
        p[i] -= lr_t * m[i] / (np.sqrt(v[i]) + eps)
