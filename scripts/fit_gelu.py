"""Fits the float32 GELU's polynomials in fastbp/core/activations.py and prints them with their errors.

GELU(z) = z * Phi(z). Phi(z) - 1/2 and GELU'(z) - 1/2 = Phi(z) - 1/2 + z * phi(z) are odd functions of z, so each
is z * p(z * z) for a polynomial p, fitted here on |z| <= its range by Chebyshev least squares in z * z and written
in powers of z * z (small coefficients: a Horner evaluation in float64 loses nothing). Beyond the range Phi and
GELU' are 0 or 1 to float32's resolution, and the kernels give exactly that there.
"""
import numpy as np
from numpy.polynomial import chebyshev, polynomial
from scipy.special import erf


def phi_cdf(z):
    return 0.5 * (1.0 + erf(z / np.sqrt(2.0)))


def gelu_derivative(z):
    return phi_cdf(z) + z * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)


def fit(function, limit, degree):
    """Coefficients of p, lowest power first, with function(z) - 1/2 ~ z * p(z * z) on |z| <= limit."""
    t = (1.0 - np.cos(np.linspace(0.0, np.pi, 4001))) / 2.0 * limit * limit  # Chebyshev-spaced in z * z
    z = np.maximum(np.sqrt(t), 1e-6)
    series = chebyshev.chebfit(2.0 * t / (limit * limit) - 1.0, (function(z) - 0.5) / z, degree)
    in_u = chebyshev.cheb2poly(series)  # powers of u = 2 t / limit^2 - 1
    in_t = np.zeros(1)
    for power, c in enumerate(in_u):
        in_t = polynomial.polyadd(in_t, c * polynomial.polypow([-1.0, 2.0 / (limit * limit)], power))
    return in_t


def evaluate(coefs, limit, z):
    """As the kernels do: Horner in float64, 1/2 + z * p(z * z) inside the range, 0 or 1 outside it."""
    x = np.clip(z.astype(np.float64), -limit, limit)
    t = x * x
    s = np.zeros_like(t)
    for c in coefs[::-1]:
        s = s * t + c
    return np.where(x <= -limit, 0.0, np.where(x >= limit, 1.0, 0.5 + x * s))


if __name__ == "__main__":
    z = np.linspace(-10.0, 10.0, 400001).astype(np.float32)
    for name, function, limit, degree in (("PHI", phi_cdf, 5.3, 14), ("GELU_DERIVATIVE", gelu_derivative, 6.0, 18)):
        coefs = fit(function, limit, degree)
        error = np.abs(evaluate(coefs, limit, z) - function(z.astype(np.float64))).max()
        print(f"_{name}_LIMIT = {limit}  # max abs error {error:.1e}")
        print(f"_{name}_COEFS = (  # highest power first")
        print("\n".join(f"    {float(c)!r}," for c in coefs[::-1]))
        print(")")
