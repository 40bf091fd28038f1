"""Inverted dropout with masks from a counter-based hash: no mask storage, no RNG state.

Unit j of hidden layer l for data row i (its index in the training array or
buffer) at training step t is kept when u(seed, t, l, i, j) >= p, where u is a
splitmix64 hash mapped to [0, 1). The mask depends only on those integers, never
on which thread or MPI rank computes it, so training with dropout is reproducible
for any thread or rank count, and the backward pass recomputes the mask instead
of storing it.
"""
import numpy as np

from .compile import jit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S40 = np.uint64(40)
_INV_2_24 = 1.0 / (1 << 24)


@jit
def _mix(x):
    x = (x ^ (x >> _S30)) * _MIX1
    x = (x ^ (x >> _S27)) * _MIX2
    return x ^ (x >> _S31)


@jit
def row_key(seed, t, layer, row):
    """Hash key of one row of one layer at one step; combine with the unit index in keep()."""
    k = _mix(np.uint64(seed) + _GOLDEN * np.uint64(t))
    k = _mix(k + _GOLDEN * np.uint64(layer + 1))
    return _mix(k + _GOLDEN * np.uint64(row + 1))


@jit
def uniform(key, unit):
    """u in [0, 1) with 24 random bits, for unit `unit` of the row with this key."""
    return np.float64(_mix(key + _GOLDEN * np.uint64(unit + 1)) >> _S40) * _INV_2_24


@jit
def apply_mask(a, p, key):
    """Forward: a_j = a_j / (1 - p) if kept else 0, in place for one row."""
    inv_keep = a.dtype.type(1.0 / (1.0 - p))
    zero = a.dtype.type(0.0)
    for j in range(a.shape[0]):
        a[j] = a[j] * inv_keep if uniform(key, j) >= p else zero


@jit
def mask_delta(d, p, key):
    """Backward: the same mask and scaling on the delta of the dropped activations."""
    apply_mask(d, p, key)
