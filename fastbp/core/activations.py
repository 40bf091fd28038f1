"""Hidden-layer activations: name -> integer code, and compiled f and f'.

Derivatives are taken from the layer's outputs a = f(z) where that is exact
(relu, leaky_relu, tanh, sigmoid, identity, elu, softplus); gelu needs z, which
the forward pass keeps for gelu layers only.
"""
import math

import numpy as np

from .compile import jit
from .errors import InputError

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
        raise InputError(f"unknown activation {name!r}; valid activations: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


@jit
def bias_activate(a, b, code):
    """a = f(a + b) in place, for one row (one array, so the loops vectorize without alias checks)."""
    n = a.shape[0]
    one = a.dtype.type(1.0)
    zero = a.dtype.type(0.0)
    if code == IDENTITY:
        for j in range(n):
            a[j] += b[j]
    elif code == RELU:
        for j in range(n):
            a[j] = max(a[j] + b[j], zero)
    elif code == LEAKY_RELU:
        slope = a.dtype.type(LEAKY_SLOPE)
        for j in range(n):
            v = a[j] + b[j]
            a[j] = v if v > zero else slope * v
    elif code == TANH:
        for j in range(n):
            a[j] = np.tanh(a[j] + b[j])
    elif code == SIGMOID:
        for j in range(n):
            a[j] = sigmoid(a[j] + b[j], one)
    elif code == ELU:
        for j in range(n):
            v = a[j] + b[j]
            a[j] = v if v > zero else np.expm1(v)
    elif code == SOFTPLUS:
        threshold = a.dtype.type(SOFTPLUS_THRESHOLD)
        for j in range(n):
            v = a[j] + b[j]
            a[j] = v if v > threshold else np.log1p(np.exp(v))
    else:  # GELU keeps z: callers use gelu_bias_activate
        raise ValueError("gelu needs gelu_bias_activate")


@jit
def gelu_bias_activate(z, b, a):
    """z += b; a = gelu(z), exact erf form, for one row."""
    one = z.dtype.type(1.0)
    half = z.dtype.type(0.5)
    c = z.dtype.type(INV_SQRT2)
    for j in range(z.shape[0]):
        v = z[j] + b[j]
        z[j] = v
        a[j] = half * v * (one + math.erf(v * c))


@jit
def sigmoid(v, one):
    """Logistic function; `one` carries the dtype. Two branches so exp never overflows."""
    if v >= 0:
        return one / (one + np.exp(-v))
    e = np.exp(v)
    return e / (one + e)


@jit
def scale_by_derivative(d, a, z, code, a_scale):
    """d *= f'(z) for one row, with f' computed from a = a_scale * (stored a) (or from z for gelu).

    a_scale undoes inverted dropout's 1/keep scaling of the stored activations
    (dropped units have d = 0 already); it is 1 without dropout.
    """
    n = d.shape[0]
    one = d.dtype.type(1.0)
    zero = d.dtype.type(0.0)
    if code == IDENTITY:
        return
    if code == RELU:
        for j in range(n):
            d[j] = d[j] if a[j] > zero else zero
    elif code == LEAKY_RELU:
        slope = d.dtype.type(LEAKY_SLOPE)
        for j in range(n):
            d[j] = d[j] if a[j] > zero else d[j] * slope
    elif code == TANH:
        for j in range(n):
            v = a[j] * a_scale
            d[j] *= one - v * v
    elif code == SIGMOID:
        for j in range(n):
            v = a[j] * a_scale
            d[j] *= v * (one - v)
    elif code == ELU:
        for j in range(n):
            d[j] = d[j] if a[j] > zero else d[j] * (a[j] * a_scale + one)
    elif code == SOFTPLUS:
        # softplus'(z) = sigmoid(z) = 1 - exp(-a)
        threshold = d.dtype.type(SOFTPLUS_THRESHOLD)
        for j in range(n):
            v = a[j] * a_scale
            if v <= threshold:
                d[j] *= -np.expm1(-v)
    else:  # GELU: Phi(z) + z * phi(z)
        half = d.dtype.type(0.5)
        c = d.dtype.type(INV_SQRT2)
        k = d.dtype.type(INV_SQRT_2PI)
        for j in range(n):
            v = z[j]
            d[j] *= half * (one + math.erf(v * c)) + v * k * np.exp(-half * v * v)
