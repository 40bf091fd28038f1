"""Plain NumPy reference of the MLP, written for clarity, not speed.

Derivatives here are taken from the pre-activations z (the textbook form), so they
check the compiled kernels' derivative-from-outputs shortcuts independently.
"""
import math

import numpy as np
from scipy.special import erf, expit, log_softmax, softmax


def activate(name, z):
    if name == "identity":
        return z.copy()
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return expit(z)
    if name == "elu":
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))
    if name == "softplus":
        return np.where(z > 20, z, np.log1p(np.exp(np.minimum(z, 20))))
    if name == "gelu":
        return 0.5 * z * (1 + erf(z / math.sqrt(2)))
    raise ValueError(name)


def derivative(name, z):
    if name == "identity":
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, 0.01).astype(z.dtype)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = expit(z)
        return s * (1 - s)
    if name == "elu":
        return np.where(z > 0, 1.0, np.exp(np.minimum(z, 0))).astype(z.dtype)
    if name == "softplus":
        return np.where(z > 20, 1.0, expit(z)).astype(z.dtype)
    if name == "gelu":
        pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return 0.5 * (1 + erf(z / math.sqrt(2))) + z * pdf
    raise ValueError(name)


def forward(layers, activations, X):
    """Return (zs, acts): acts[0] = X, acts[l+1] = f_l(zs[l]); the last layer is linear."""
    acts, zs = [X], []
    for l, (W, b) in enumerate(layers):
        z = acts[-1] @ W + b
        zs.append(z)
        last = l == len(layers) - 1
        acts.append(z if last else activate(activations[l], z))
    return zs, acts


def loss_and_dlogits(loss, logits, y):
    """Mean loss (PyTorch's reductions) and its gradient with respect to the logits."""
    n, k = logits.shape
    if loss == "cross_entropy":
        labels = np.asarray(y).astype(int).ravel()
        value = -log_softmax(logits, axis=1)[np.arange(n), labels].mean()
        d = softmax(logits, axis=1)
        d[np.arange(n), labels] -= 1
        return value, d / n
    Y = np.asarray(y, dtype=logits.dtype).reshape(n, k)
    if loss == "binary_cross_entropy":
        value = (np.logaddexp(0, logits) - logits * Y).mean()
        return value, (expit(logits) - Y) / (n * k)
    if loss == "mse":
        return ((logits - Y) ** 2).mean(), 2 * (logits - Y) / (n * k)
    if loss == "poisson":  # logits are log-rates
        return (np.exp(logits) - Y * logits).mean(), (np.exp(logits) - Y) / (n * k)
    raise ValueError(loss)


def loss_and_grad(layers, activations, loss, X, y):
    """Mean loss and [(dW, db)] by the chain rule, output to input."""
    zs, acts = forward(layers, activations, X)
    value, d = loss_and_dlogits(loss, acts[-1], y)
    grads = [None] * len(layers)
    for l in range(len(layers) - 1, -1, -1):
        grads[l] = (acts[l].T @ d, d.sum(axis=0))
        if l > 0:
            d = (d @ layers[l][0].T) * derivative(activations[l - 1], zs[l - 1])
    return value, grads


def sgd_epoch(layers, activations, loss, X, y, order, batch_size, lr, momentum=0.0, nesterov=False,
              weight_decay=0.0, buffers=None, step=0):
    """One epoch of torch.optim.SGD over `order`; updates layers in place, returns (buffers, step)."""
    if buffers is None:
        buffers = [[np.zeros_like(W), np.zeros_like(b)] for W, b in layers]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        _, grads = loss_and_grad(layers, activations, loss, X[rows], np.asarray(y)[rows])
        step += 1
        for (param_pair, grad_pair, buf_pair) in zip(layers, grads, buffers):
            for i in range(2):
                p, g = param_pair[i], grad_pair[i] + weight_decay * param_pair[i]
                if momentum:
                    buf_pair[i] = g.copy() if step == 1 else momentum * buf_pair[i] + g
                    g = g + momentum * buf_pair[i] if nesterov else buf_pair[i]
                p -= lr * g
    return buffers, step


def flatten(pairs):
    return np.concatenate([np.concatenate([W.ravel(), b.ravel()]) for W, b in pairs])


def numeric_gradient(trainer, X, y, eps=1e-6):
    """Central differences of trainer.loss_and_grad's loss, one parameter at a time."""
    numeric = np.empty_like(trainer.params)
    for i in range(trainer.params.size):
        saved = trainer.params[i]
        trainer.params[i] = saved + eps
        up, _ = trainer.loss_and_grad(X, y)
        trainer.params[i] = saved - eps
        down, _ = trainer.loss_and_grad(X, y)
        trainer.params[i] = saved
        numeric[i] = (up - down) / (2 * eps)
    return numeric
