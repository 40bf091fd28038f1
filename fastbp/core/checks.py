"""Checks of scalar settings at the boundary (hyper-parameters, sizes, dtypes)."""
import math
import operator

import numpy as np

from .errors import InputError, InputTypeError

DTYPES = {"float32": np.float32, "float64": np.float64}


def check_int(name, value, minimum, hint=""):
    """An int >= minimum (numpy integers accepted; bools and floats refused: they are usually mistakes)."""
    if isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise InputTypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}{hint}, got {value}")
    return int(value)


def check_bool(name, value):
    """A bool (numpy bools accepted; "no", 0, 1.5 refused: a truthy string would silently mean True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_number(name, value, low=None, high=None, low_open=False):
    """A finite float within [low, high) (or (low, high) with low_open); numpy scalars accepted."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise InputError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and value >= high:
        raise InputError(f"{name} must be < {high:g}, got {value!r}")
    return value


def check_dtype(dtype):
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise InputError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name
