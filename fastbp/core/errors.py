"""The error types users see. InputError means "your input is wrong and you can fix it"; anything
else that escapes fastbp is a bug (the CLI exits 2 for the first and 1, saying so, for the rest)."""
import sys
import warnings


class InputError(ValueError):
    """Bad user input: a value, an array, an option or a file the user can fix."""


class InputTypeError(InputError, TypeError):
    """Bad user input of the wrong type (still an InputError, and a TypeError for callers that expect one)."""


class NotFittedError(InputError, AttributeError):
    """A model used for predictions before it was trained (also an AttributeError, as scikit-learn's)."""


def warn(message, category=UserWarning):
    """warnings.warn attributed to the user's line that called into fastbp, however deep inside fastbp (or
    Numba, or a context manager) the warning arises."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(("fastbp.", "numba.",
                                                                                         "contextlib")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
