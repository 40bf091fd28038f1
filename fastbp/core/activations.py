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

# float32 GELU without libm calls. math.erf and np.exp are scalar calls that keep a loop from vectorizing, and
# made a GELU network train at half a ReLU one's speed. Phi(z) - 1/2 and GELU'(z) - 1/2 are odd, so each is
# z * p(z * z) for a polynomial p, evaluated by Horner in float64 (vectorized) within a range beyond which Phi and
# GELU' are 0 or 1 to float32's resolution. Fitted by scripts/fit_gelu.py: max abs error 5.8e-8 (Phi) and
# 3.5e-8 (GELU'), under half a float32 ulp of 1. float64 keeps the exact erf form (PyTorch's to the last bits).
_PHI_LIMIT = 5.3
_PHI_COEFS = (
    2.942094125275571e-20, -6.74427886801011e-18, 7.124821663005116e-16, -4.622204375201905e-14,
    2.074383466785683e-12, -6.896633244311639e-11, 1.781538659414856e-09, -3.7102640725877936e-08,
    6.407948232170585e-07, -9.337021082524729e-06, 0.00011512967458563104, -0.0011868017445391802,
    0.009973077015156318, -0.0664902062215542, 0.39894226991869836,
)
_GELU_DERIVATIVE_LIMIT = 6.0
_GELU_DERIVATIVE_COEFS = (
    8.640065249814918e-26, -3.129003614456878e-23, 5.285256445586938e-21, -5.541345151990837e-19,
    4.051547048890046e-17, -2.2023676779828783e-15, 9.277644796025426e-14, -3.121879775077654e-12,
    8.596604110139794e-11, -1.9765522328095727e-09, 3.855617359153613e-08, -6.445815313919145e-07,
    9.252912996737163e-06, -0.00011310039355246824, 0.0011538210599755167, -0.009497904600821205, 0.05984081672576445,
    -0.26596136780483387, 0.7978845534393446,
)


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
def _horner(s, t, coefs):
    for c in coefs:
        s = s * t + c
    return s


@jit
def _half_plus_odd(v, limit, coefs):
    """1/2 + v * p(v * v) for |v| < limit, 0 below and 1 above (exactly: a GELU of -1e4 is 0, as the erf form
    gives), p's coefficients highest power first. Horner in two loops of at most 10 terms: LLVM unrolls those
    fully, and only then vectorizes the caller's loop (one loop of the GELU derivative's 19 terms stayed a loop, at
    22 ns an element instead of 0.6)."""
    x = min(max(float(v), -limit), limit)
    t = x * x
    inside = 0.5 + x * _horner(_horner(0.0, t, coefs[:10]), t, coefs[10:])
    return 0.0 if v <= -limit else (1.0 if v >= limit else inside)


@jit
def gelu_bias_activate(z, b, a):
    """z += b; a = gelu(z) = z * Phi(z) for one row: the exact erf form in float64, the polynomial in float32."""
    dtype = z.dtype.type
    if z.itemsize == 4:
        for j in range(z.shape[0]):
            v = z[j] + b[j]
            z[j] = v
            a[j] = v * dtype(_half_plus_odd(v, _PHI_LIMIT, _PHI_COEFS))
        return
    one = dtype(1.0)
    half = dtype(0.5)
    c = dtype(INV_SQRT2)
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
def scale_by_derivative(d, a, code, a_scale):
    """d *= f'(z) for one row, with f' computed from a = a_scale * (stored a) (GELU's from z: see
    gelu_scale_by_derivative, kept apart so that its longer loops do not grow the other activations' path).

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
    else:  # GELU keeps z: callers use gelu_scale_by_derivative
        raise ValueError("gelu needs gelu_scale_by_derivative")


@jit
def gelu_scale_by_derivative(d, z):
    """d *= gelu'(z) = Phi(z) + z * phi(z) for one row: the erf form in float64, the polynomial in float32."""
    n = d.shape[0]
    if d.itemsize == 4:
        for j in range(n):
            d[j] *= d.dtype.type(_half_plus_odd(z[j], _GELU_DERIVATIVE_LIMIT, _GELU_DERIVATIVE_COEFS))
    else:
        one = d.dtype.type(1.0)
        half = d.dtype.type(0.5)
        c = d.dtype.type(INV_SQRT2)
        k = d.dtype.type(INV_SQRT_2PI)
        for j in range(n):
            v = z[j]
            d[j] *= half * (one + math.erf(v * c)) + v * k * np.exp(-half * v * v)
