"""The error types users see. InputError means "your input is wrong and you can fix it"; anything
else that escapes fastbp is a bug (the CLI exits 2 for the first and 1, saying so, for the rest)."""


class InputError(ValueError):
    """Bad user input: a value, an array, an option or a file the user can fix."""


class InputTypeError(InputError, TypeError):
    """Bad user input of the wrong type (still an InputError, and a TypeError for callers that expect one)."""


class NotFittedError(InputError, AttributeError):
    """A model used for predictions before it was trained (also an AttributeError, as scikit-learn's)."""
