"""Validation of user arrays at the boundary: user arrays in, contiguous arrays of the model dtype out.

Every check raises ValueError or TypeError with a message that names the
problem and the fix; compiled code only ever sees arrays it can handle.
Inputs are never modified: conversions copy when they must, and only then.
"""
import collections

import numpy as np

from .core.checks import DTYPES
from .core.errors import InputError, InputTypeError, warn


def _numeric_array(a, what):
    if np.ma.isMaskedArray(a):
        masked = int(np.ma.count_masked(a))
        if masked:
            raise InputError(f"{what} is a masked array with {masked} masked entries, which fastbp would otherwise "
                             f"read as numbers; fill them ({what}.filled(value)) or drop those rows first")
        a = np.ma.getdata(a)
    if hasattr(a, "nnz") and hasattr(a, "toarray"):  # scipy.sparse
        n_bytes = int(np.prod(a.shape)) * 4
        raise InputTypeError(f"{what} is a scipy sparse matrix {a.shape}; fastbp's kernels take dense rows: pass "
                             f"{what}.toarray() if it fits in memory ({n_bytes / 2**20:,.0f} MiB as float32), "
                             "or use fastbp.sklearn's estimators, which densify it")
    if isinstance(a, np.ndarray):
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError) as exc:  # ragged lists and the like
            raise InputError(f"{what} could not be turned into an array: {exc}") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise InputTypeError(f"{what} is complex ({arr.dtype}); pass real numbers (e.g. the real part or magnitude)")
    if kind in "USV":
        raise InputTypeError(f"{what} holds strings/bytes ({arr.dtype}); encode them as numbers first")
    if kind in "mM":
        raise InputTypeError(f"{what} holds dates/times ({arr.dtype}); convert them to numbers first")
    if kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise InputTypeError(f"{what} has dtype object with non-numeric entries; pass a numeric array") from None
    return arr


def check_X(X, dtype, n_features=None, fitted=True, n_tables=0):
    """2-D, non-empty, finite, numeric -> C-contiguous array of `dtype` (no copy when already so).
    fitted: whether the model has been trained (it changes the advice for a wrong width); n_tables: how many of
    the n_features columns are category codes of embedding tables (for the message)."""
    arr = _numeric_array(X, "X")
    if arr.ndim != 2:
        hint = (" Reshape with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single sample."
                if arr.ndim == 1 else "")
        raise InputError(f"X must be 2-D (n_samples, n_features), got shape {arr.shape}.{hint}")
    if arr.shape[0] == 0:
        raise InputError(f"X is empty: it has 0 samples (shape {arr.shape}); pass at least one row")
    if arr.shape[1] == 0:
        raise InputError(f"X has 0 features (shape {arr.shape}); pass at least one column")
    if n_features is not None and arr.shape[1] != n_features:
        fix = "pass the same columns as at training" if fitted else \
            f"build the Trainer with layer_sizes[0] = {arr.shape[1]} for this X"
        layout = f"{n_features - n_tables} inputs and {n_tables} category code(s)" if n_tables else \
            f"layer_sizes[0] = {n_features}"
        raise InputError(f"X has {arr.shape[1]} features but the model expects {n_features} ({layout}); {fix}")
    return _finite_as(arr, dtype, "X")


# ---------------------------------------------------------------------------- tables
def table_columns(X):
    """The column names of a pandas or polars DataFrame, a pyarrow Table or a dict of columns; None for anything
    else, and (as scikit-learn has it) when no name is a string: the columns then go by position, with a warning
    unless they are pandas' default 0..n-1. Names of mixed types are refused."""
    library = type(X).__module__.split(".")[0]
    if library in ("pandas", "polars") and hasattr(X, "columns") and hasattr(X, "shape") and len(X.shape) == 2:
        names = list(X.columns)
    elif library == "pyarrow" and hasattr(X, "column_names"):
        names = list(X.column_names)
    elif isinstance(X, dict) and library != "scipy":  # scipy's dok_matrix is a dict of (row, column) keys
        names = list(X)
    else:
        return None
    strings = [isinstance(c, str) for c in names]
    if not all(strings):
        if any(strings):
            kinds = sorted({type(c).__name__ for c in names})
            raise InputTypeError(f"X's column names mix types ({', '.join(kinds)}): names are used only when all "
                                 "are strings. Convert them, e.g. X.columns = X.columns.astype(str), or drop them "
                                 "(pass X.to_numpy()) to go by position")
        if names != list(range(len(names))):
            shown = ", ".join(map(repr, names[:4])) + (", ..." if len(names) > 4 else "")
            warn(f"X's column names are not strings ({shown}): they are ignored and the columns go by position, "
                 "as in scikit-learn; X.columns = X.columns.astype(str) keeps them")
        return None
    twice = [c for c, n in collections.Counter(names).items() if n > 1]
    if twice:
        raise InputError(f"X uses the column name {twice[0]!r} more than once; give every column its own name")
    return names


def table_array(X, columns, dtype):
    """The `columns` of table X, in that order, as a 2-D array of `dtype` (missing values as NaN).
    Non-numeric columns are refused, each named."""
    library = type(X).__module__.split(".")[0]
    if library == "pandas":
        import pandas.api.types as types
        kinds = {c: X[c].dtype for c in columns}
        numeric = {c: types.is_bool_dtype(t) or (types.is_numeric_dtype(t) and not types.is_complex_dtype(t))
                   for c, t in kinds.items()}
    elif library == "polars":
        kinds = {c: X.schema[c] for c in columns}
        numeric = {c: t.is_numeric() or str(t) == "Boolean" for c, t in kinds.items()}
    else:
        import pyarrow as pa
        kinds = {c: X.schema.field(c).type for c in columns}
        numeric = {c: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                   for c, t in kinds.items()}
    text = [f"{c!r} ({kinds[c]})" for c in columns if not numeric[c]]
    if text:
        raise InputTypeError(
            f"X has non-numeric column(s) {', '.join(text)}; the Trainer takes numbers only. Encode them first: "
            "fastbp.sklearn's estimators in a scikit-learn Pipeline with a ColumnTransformer (e.g. OneHotEncoder), "
            "or train from a file (fastbp train, or fastbp.files.preprocess.Preprocessor), which one-hot "
            "encodes text columns")
    with np.errstate(over="ignore"):
        if library == "pandas":
            out = X[columns].to_numpy(dtype=dtype, na_value=np.nan)
        elif library == "polars":
            out = X.select(columns).to_numpy().astype(dtype, copy=False)
        else:
            out = np.column_stack([X.column(c).to_numpy().astype(dtype, copy=False) for c in columns])
    if np.isinf(out).any():  # infinite after the cast: an overflow where the table's value is finite
        r, j = (int(i) for i in np.argwhere(np.isinf(out))[0])
        column = X.column(columns[j]) if library == "pyarrow" else X[columns[j]]
        value = column.iloc[r] if library == "pandas" else column[r].as_py() if library == "pyarrow" else column[r]
        if np.isfinite(value):
            raise _overflow(f"X's column {columns[j]!r}", value, f"row {r}", np.dtype(dtype).name)
    return out


# ---------------------------------------------------------------------------- class labels
def index_classes(loss, n_out):
    """The classes when labels are output indices: 0..n_out-1 (cross_entropy), 0/1 (one binary output),
    None for multilabel 0/1 columns."""
    if loss == "binary_cross_entropy":
        return np.arange(2) if n_out == 1 else None
    return np.arange(n_out)


def learn_classes(y, loss, n_out):
    """The classes of classification targets, sorted: 0..n_out-1 when y holds integers in that range
    (a label is its output's index, as PyTorch has it), else the distinct labels (strings, bools, other
    numbers), which must fit the outputs. None for multilabel 0/1 columns (used as given)."""
    arr = label_column(y)
    by_index = index_classes(loss, n_out)
    if by_index is None:
        return None
    if arr.ndim != 1:
        return by_index  # check_targets explains the shape
    n_classes = len(by_index)
    if arr.dtype.kind in "fO":  # None or NaN among labels (pandas' missing values) is missing, not another type
        missing = np.isnan(arr) if arr.dtype.kind == "f" else (arr != arr) | np.equal(arr, None)
        if missing.any():
            raise InputError(f"y has a missing label ({arr[missing.argmax()]}) at row {missing.argmax()}; drop "
                             "those rows or give them a label")
    if arr.dtype.kind in "iuf":
        values = arr.astype(np.float64)
        _check_finite(values, "y")
        whole = values.size and np.array_equal(values, np.round(values))
        if loss == "binary_cross_entropy" and values.size and values.min() >= 0 and values.max() <= 1 \
                and not whole:
            return by_index  # probabilities, used as given
        if whole and values.min() >= 0 and values.max() < n_classes:
            return by_index.astype(arr.dtype)  # a label is its output's index, in y's own type (0.0, 1.0, ...)
    try:
        classes = np.unique(arr)
    except TypeError:
        raise InputTypeError("y mixes label types (e.g. numbers and strings); use one type for every label") from None
    if len(classes) > n_classes:
        fix = "layer_sizes[-1] = " + str(len(classes)) if loss == "cross_entropy" else "loss='cross_entropy'"
        raise InputError(f"y has {len(classes)} classes ({_some(classes)}) but the model can tell {n_classes} "
                         f"apart; use {fix}")
    return classes


def encode_labels(y, classes):
    """y with each label replaced by its index in `classes` (from learn_classes); numbers pass through
    unchanged where the classes are 0..K-1 (check_targets checks them). Unknown labels are refused."""
    flat = label_column(y)
    if classes is None or (classes.dtype.kind in "iuf" and np.array_equal(classes, np.arange(len(classes)))
                           and flat.dtype.kind in "iuf"):
        return y
    if flat.ndim != 1:
        raise InputError(f"y must hold one label per row, got shape {flat.shape}")
    try:
        index = np.minimum(np.searchsorted(classes, flat), len(classes) - 1)
        unknown = flat[classes[index] != flat]
    except TypeError:
        raise InputTypeError(f"y's labels are not of the type of the classes learned in training "
                             f"({_some(classes)})") from None
    if unknown.size:
        raise InputError(f"y has label(s) not seen in training: {_some(np.unique(unknown))}; "
                         f"the classes are {_some(classes)}")
    return index


def class_index(classes, label):
    """The index of one label among `classes` (class_weight keys), or an InputError listing them."""
    for i, c in enumerate(classes.tolist()):
        if type(c) is not str and type(label) is not str or type(c) is type(label):
            if c == label:
                return i
    raise InputError(f"class_weight has the key {label!r}, which is not a class; the classes are {_some(classes)}")


def classes_from_list(values, n_out, loss):
    """classes_ as a model file stores them (a JSON list), checked: it is untrusted input."""
    if values is None:
        return None
    kinds = {type(v) for v in values} if isinstance(values, list) else set()
    if not values or len(kinds) != 1 or not kinds <= {int, float, bool, str} or \
            len(values) > (2 if loss == "binary_cross_entropy" else n_out):
        raise InputError("its classes are not a list of labels of one type that fits the outputs")
    classes = label_column(np.array(values))
    if len(np.unique(classes)) != len(classes) or (np.sort(classes) != classes).any():
        raise InputError("its classes are not distinct and sorted")
    return classes


def label_column(y):
    """Labels as an array: one column squeezed to 1-D (several columns stay 2-D), strings as objects, which
    compare and index alike whatever their width."""
    arr = np.asarray(y)
    if arr.dtype.kind in "US":
        arr = arr.astype(object)
    return arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr


def _some(values, limit=10):
    shown = ", ".join(repr(v) for v in np.asarray(values).tolist()[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def _check_finite(arr, what):
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        where = f"row {bad[0]}" + (f", column {bad[1]}" if arr.ndim > 1 else "")
        raise InputError(f"{what} contains NaN or infinity (first at {where}, value {arr[tuple(bad)]}); "
                         "impute or drop those entries first")


def _finite_as(arr, dtype, what):
    """`arr` as a C-contiguous array of `dtype`, checked finite; a finite number that the cast makes infinite
    (1e300 in float32) is named as an overflow, not as infinity in the data."""
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=DTYPES[dtype])
    finite = np.isfinite(out)
    if finite.all():
        return out
    bad = tuple(np.argwhere(~finite)[0])
    if np.isfinite(arr[bad]):
        raise _overflow(what, arr[bad], f"row {bad[0]}" + (f", column {bad[1]}" if arr.ndim > 1 else ""), dtype)
    _check_finite(out, what)  # NaN or infinity in the data itself: its own message


def _overflow(what, value, where, dtype):
    return InputError(f"{what} has the value {value:g} at {where}, beyond {dtype}'s range "
                      f"(±{np.finfo(DTYPES[dtype]).max:.3g}): it would overflow to infinity. Rescale it, "
                      "or use dtype='float64'")


def check_targets(y, loss, n_out, n_samples, dtype):
    """Targets as a C-contiguous (n_samples, k) array of `dtype` for the compiled loss.

    cross_entropy: integer class labels 0..n_out-1, shape (n,) or (n, 1) -> k = 1.
    binary_cross_entropy: values in [0, 1], shape (n,) when n_out == 1, else (n, n_out).
    mse, mae, huber, poisson: shape (n,) when n_out == 1, else (n, n_out); poisson's values >= 0.
    """
    arr = _numeric_array(y, "y")
    if arr.ndim == 0:
        raise InputError("y must be an array with one entry per sample, got a scalar")
    if arr.shape[0] != n_samples:
        raise InputError(f"y has {arr.shape[0]} entries but X has {n_samples} samples; they must match")
    if loss == "cross_entropy":
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise InputError(f"cross_entropy needs y as class labels of shape (n_samples,), got shape {arr.shape}; "
                             "for one-hot targets pass y.argmax(axis=1)")
        labels = arr.astype(np.float64)
        _check_finite(labels, "y")
        if not np.array_equal(labels, np.round(labels)):
            raise InputError("cross_entropy needs integer class labels 0..K-1, but y has non-integer values; "
                             "encode labels with e.g. numpy.unique(y, return_inverse=True)")
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi > n_out - 1:
            raise InputError(f"cross_entropy labels must lie in 0..{n_out - 1} (the model has {n_out} outputs), "
                             f"but y ranges over {lo:g}..{hi:g}; remap the labels or change layer_sizes[-1]")
        return np.ascontiguousarray(labels.reshape(-1, 1), dtype=DTYPES[dtype])
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_out:
        raise InputError(f"{loss} needs y of shape ({n_samples},{' ' + str(n_out) if n_out > 1 else ''}) "
                         f"to match the model's {n_out} output(s), got shape {np.shape(y)}")
    out = _finite_as(arr, dtype, "y")
    if loss == "binary_cross_entropy" and (out.min() < 0 or out.max() > 1):
        raise InputError(f"binary_cross_entropy targets must lie in [0, 1], but y ranges over "
                         f"{out.min():g}..{out.max():g}; use 0/1 labels or probabilities")
    if loss == "poisson" and out.min() < 0:
        raise InputError(f"poisson targets are counts or rates and must be >= 0, but y has the value {out.min():g}")
    return out


def check_sample_weight(sample_weight, n_samples):
    """None, or a float64 array of n_samples finite non-negative weights."""
    if sample_weight is None:
        return None
    w = _numeric_array(sample_weight, "sample_weight")
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise InputError(f"sample_weight must have shape ({n_samples},) (one weight per row), got {w.shape}")
    w = w.astype(np.float64)
    _check_finite(w, "sample_weight")
    if (w < 0).any():
        raise InputError("sample_weight has negative entries; weights must be >= 0")
    return w


def class_weights_per_sample(class_weight, Y, loss):
    """Each row's class weight (class_weight_table of the rows' class indices in Y)."""
    if loss == "binary_cross_entropy" and Y.shape[1] != 1:
        raise InputError("class_weight works with one target column; for multilabel targets pass sample_weight")
    labels = Y[:, 0]
    if loss == "binary_cross_entropy" and not np.isin(labels, (0, 1)).all():
        raise InputError("class_weight needs 0/1 targets for binary_cross_entropy, not probabilities")
    labels = labels.astype(np.int64)
    return class_weight_table(class_weight, np.bincount(labels))[labels]


def class_weight_table(class_weight, counts):
    """Each class's weight from its row count: {class index: weight}, or "balanced", scikit-learn's
    n_samples / (n_classes * count) over the classes that have rows. Classes not named weigh 1."""
    counts = np.asarray(counts, dtype=np.int64)
    table = np.ones(len(counts))
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise InputError(f"class_weight must be a dict or 'balanced', got {class_weight!r}")
        present = counts > 0
        table[present] = counts.sum() / (present.sum() * counts[present])
    elif isinstance(class_weight, dict):
        for index, weight in class_weight.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(weight) or weight < 0:
                raise InputError(f"class_weight[{index!r}] must be a finite number >= 0, got {weight!r}")
            if 0 <= int(index) < len(table):
                table[int(index)] = float(weight)
    else:
        raise InputTypeError(f"class_weight must be a dict or 'balanced', got {class_weight!r}")
    return table


def validation_indices(n_samples, fraction, labels, seed):
    """(train, validation) row indices; stratified by `labels` when given (None: a plain random split)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise InputError(f"validation_split must be a fraction in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    if labels is None:
        groups = [rng.permutation(n_samples)]
    else:
        groups = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    val = np.concatenate([g[:int(round(fraction * len(g)))] for g in groups])
    if len(val) == 0 or len(val) == n_samples:
        raise InputError(f"validation_split={fraction} leaves {len(val)} of {n_samples} rows for validation; "
                         "it needs at least one row on each side")
    mask = np.zeros(n_samples, dtype=bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def row_weights(w, dtype):
    """Per-row weights for the kernels: an empty array when there are none, else scaled by a power of
    two so the largest is about 1 (batch losses are ratios sum(w l) / sum(w), so the scale changes no
    bit of training, but weights like 1e308 or 1e-45 would overflow or flush to zero in float32)."""
    if w is None:
        return np.empty(0, dtype=dtype)
    top = float(w.max()) if w.size else 0.0
    if not top > 0:
        raise InputError("sample weights sum to zero: at least one row needs a positive weight")
    scaled = w * 2.0 ** -np.frexp(top)[1]
    lightest = float(w[w > 0].min())
    if lightest / top < np.finfo(dtype).tiny * 2:
        raise InputError(f"sample weights span too wide a range for {np.dtype(dtype).name}: the smallest positive "
                         f"weight ({lightest:g}) is {lightest / top:.1e} of the largest ({top:g}), so it would "
                         "count as 0. Drop those rows, clip the weights, or train with dtype='float64'")
    return np.ascontiguousarray(scaled, dtype=dtype)
