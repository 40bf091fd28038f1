"""Hidden-layer activations: name -> integer code, and compiled f and f'.

Derivatives are taken from the layer's outputs a = f(z) where that is exact
(relu, leaky_relu, tanh, sigmoid, identity, elu, softplus); gelu needs z, which
the forward pass keeps for gelu layers only.
"""
import math

import numpy as np

from .config import jit

IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, ELU, SOFTPLUS, GELU = range(8)

ACTIVATIONS = {
    "identity": IDENTITY,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "tanh": TANH,
    "sigmoid": SIGMOID,
    "elu": ELU,
    "softplus": SOFTPLUS,
    "gelu": GELU,
}
RELU_FAMILY = {"relu", "leaky_relu", "elu"}  # He initialization suits these

LEAKY_SLOPE = 0.01      # torch.nn.LeakyReLU default
SOFTPLUS_THRESHOLD = 20.0  # torch.nn.Softplus: linear above this, as PyTorch does
INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def activation_code(name):
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid activations: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@jit
def bias_activate(z, b, a, code):
    """a = f(z + b) row by row; z and a may be the same array. For gelu, z keeps z + b."""
    rows, n = z.shape
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    if code == IDENTITY:
        for i in range(rows):
            for j in range(n):
                a[i, j] = z[i, j] + b[j]
    elif code == RELU:
        for i in range(rows):
            for j in range(n):
                a[i, j] = max(z[i, j] + b[j], zero)
    elif code == LEAKY_RELU:
        slope = z.dtype.type(LEAKY_SLOPE)
        for i in range(rows):
            for j in range(n):
                v = z[i, j] + b[j]
                a[i, j] = v if v > zero else slope * v
    elif code == TANH:
        for i in range(rows):
            for j in range(n):
                a[i, j] = np.tanh(z[i, j] + b[j])
    elif code == SIGMOID:
        for i in range(rows):
            for j in range(n):
                a[i, j] = sigmoid(z[i, j] + b[j], one)
    elif code == ELU:
        for i in range(rows):
            for j in range(n):
                v = z[i, j] + b[j]
                a[i, j] = v if v > zero else np.expm1(v)
    elif code == SOFTPLUS:
        threshold = z.dtype.type(SOFTPLUS_THRESHOLD)
        for i in range(rows):
            for j in range(n):
                v = z[i, j] + b[j]
                a[i, j] = v if v > threshold else np.log1p(np.exp(v))
    else:  # GELU, exact erf form
        half = z.dtype.type(0.5)
        c = z.dtype.type(INV_SQRT2)
        for i in range(rows):
            for j in range(n):
                v = z[i, j] + b[j]
                z[i, j] = v
                a[i, j] = half * v * (one + math.erf(v * c))


@jit
def sigmoid(v, one):
    """Logistic function; `one` carries the dtype. Two branches so exp never overflows."""
    if v >= 0:
        return one / (one + np.exp(-v))
    e = np.exp(v)
    return e / (one + e)


@jit
def scale_by_derivative(d, a, z, code):
    """d *= f'(z), with f' computed from a = f(z) (or from z for gelu)."""
    rows, n = d.shape
    one = d.dtype.type(1.0)
    zero = d.dtype.type(0.0)
    if code == IDENTITY:
        return
    if code == RELU:
        for i in range(rows):
            for j in range(n):
                if a[i, j] <= zero:
                    d[i, j] = zero
    elif code == LEAKY_RELU:
        slope = d.dtype.type(LEAKY_SLOPE)
        for i in range(rows):
            for j in range(n):
                if a[i, j] <= zero:
                    d[i, j] *= slope
    elif code == TANH:
        for i in range(rows):
            for j in range(n):
                d[i, j] *= one - a[i, j] * a[i, j]
    elif code == SIGMOID:
        for i in range(rows):
            for j in range(n):
                d[i, j] *= a[i, j] * (one - a[i, j])
    elif code == ELU:
        for i in range(rows):
            for j in range(n):
                if a[i, j] <= zero:
                    d[i, j] *= a[i, j] + one
    elif code == SOFTPLUS:
        # softplus'(z) = sigmoid(z) = 1 - exp(-a)
        threshold = d.dtype.type(SOFTPLUS_THRESHOLD)
        for i in range(rows):
            for j in range(n):
                if a[i, j] <= threshold:
                    d[i, j] *= -np.expm1(-a[i, j])
    else:  # GELU: Phi(z) + z * phi(z)
        half = d.dtype.type(0.5)
        c = d.dtype.type(INV_SQRT2)
        k = d.dtype.type(INV_SQRT_2PI)
        for i in range(rows):
            for j in range(n):
                v = z[i, j]
                d[i, j] *= half * (one + math.erf(v * c)) + v * k * np.exp(-half * v * v)
