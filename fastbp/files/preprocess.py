"""Column handling for files: the schema learned in the first pass, applied to every later chunk.

`Preprocessor.fit` runs the first pass (fastbp.files.scan) and fixes the schema: each
feature column is numeric (mean, scale, fill value) or categorical (its categories, as
text; one-hot, or a code into a learned embedding table), the target is numeric or text,
with its classes and their type (classification) or its mean and scale (regression: the
model learns the standardized target; predictions and reported metrics are on the original
scale). `transform` coerces each column of a
chunk to that type, whatever type the chunk's file gives it, so a predict file read by
another reader or with other values converts exactly as training did. The state is
plain JSON, stored in the model file.
"""
from typing import NamedTuple

import numpy as np

from ..core.errors import InputError
from .columns import NUMBER, TEXT, codes, to_numbers, where
from .scan import MISSING, NUMBER_GROUP, FirstPass, Holdout, first_pass, number_block

TASKS = ("classify", "regress")
# how numeric columns become inputs: standardized (one input); their rank in the training sample, as a value of
# unit variance (one input: a quantile transform); or piecewise-linear over quantile bins (one input per bin,
# Gorishniy et al. 2022: 0 below the bin, 1 above it, linear within)
NUMERIC_ENCODINGS = ("standard", "quantile", "ple", "auto")
# "auto" resolves to "ple" where the training rows number at least this many per input the bins make, else to
# "standard": bins need data (measured on the quality panel: flights AUC 0.915 -> 0.929 and diamonds RMSE 569 -> 556
# with bins; digits, 1,434 rows for ~500 binned inputs, accuracy 0.98 -> 0.95)
AUTO_PLE_ROWS_PER_INPUT = 100
QUANTILE_LEVELS = 256  # the quantile transform's interpolation points per column
LABEL_TYPES = {"int": np.int64, "float": np.float64, "bool": np.bool_, "str": str}
# how categorical columns become inputs: an input per category (one-hot), or a category code that picks a row of a
# learned embedding table (fastbp.core.layout); "auto": one-hot up to `onehot_max` categories, an embedding above
CATEGORICAL_MODES = ("auto", "onehot", "embed")
MAX_EMBEDDING_DIM = 1024


class Categorical(NamedTuple):
    """How the first pass encodes categorical columns. dim: an embedding's width, None for the rule by
    cardinality (dim_for), an int for every table, or {column: int} (the rule for the others)."""
    mode: str = "onehot"
    onehot_max: int = 128
    dim: object = None

    def dim_for(self, column, n_categories):
        """The embedding width of a column with n_categories categories, or None for one-hot. The rule: fastai's
        1.6 * n^0.56, rounded, capped at 32 (our cap, not measured against wider ones)."""
        if self.mode == "onehot" or (self.mode == "auto" and n_categories <= self.onehot_max):
            return None
        dims = self.dim if isinstance(self.dim, dict) else {}
        if column in dims:
            return dims[column]
        if isinstance(self.dim, int):
            return self.dim
        return int(min(32, max(2, round(1.6 * n_categories ** 0.56))))


def categorical_encoding(mode="auto", onehot_max=128, dim=None):
    """A checked Categorical from settings a user gives."""
    if mode not in CATEGORICAL_MODES:
        raise InputError(f"categorical must be one of {', '.join(map(repr, CATEGORICAL_MODES))}, got {mode!r}")
    if isinstance(onehot_max, bool) or not isinstance(onehot_max, (int, np.integer)) or onehot_max < 1:
        raise InputError(f"onehot_max must be a positive integer, got {onehot_max!r}")
    dims = dim.values() if isinstance(dim, dict) else [] if dim is None else [dim]
    if not all(not isinstance(d, bool) and isinstance(d, (int, np.integer)) and 1 <= d <= MAX_EMBEDDING_DIM
               for d in dims) or (isinstance(dim, dict) and not all(isinstance(c, str) for c in dim)):
        raise InputError(f"embedding_dim must be None (a width by cardinality), an integer from 1 to "
                         f"{MAX_EMBEDDING_DIM}, or {{column name: integer}}, got {dim!r}")
    dim = {c: int(d) for c, d in dim.items()} if isinstance(dim, dict) else None if dim is None else int(dim)
    return Categorical(mode, int(onehot_max), dim)
VAL_MAX_CELLS = 1 << 22  # validation sample: at most this many cells (32 MB as float64) whatever the width


class Preprocessor:
    """A fitted schema. `state` comes from `fit` or from a model file (checked: it is untrusted input)."""

    def __init__(self, state, on_unknown="ignore"):
        self.state = _checked_state(state)
        self.features = self.state["features"]
        self.target = self.state["target"]
        self.task = self.state["task"]
        self.numeric = self.state["numeric"]
        edges = self.state.get("edges") or [None] * len(self.features)
        embed = self.state.get("embed") or [None] * len(self.features)
        widths = [0 if d is not None else len(cats) if cats is not None else len(e) - 1 if self.numeric == "ple"
                  else 1 for cats, e, d in zip(self.state["categories"], edges, embed)]
        n_dense = int(sum(widths))
        # X: the dense inputs (numeric, one-hot), then a category code per embedded column; the network reads the
        # dense inputs and each code's table row (n_inputs in all)
        embedded = [(c, cats, int(d)) for c, cats, d in zip(self.features, self.state["categories"], embed)
                    if d is not None]
        self._embedded = [(c, cats, n_dense + k) for k, (c, cats, _) in enumerate(embedded)]
        self._embeddings = [(len(cats) + 1, d) for _, cats, d in embedded]
        self.n_columns = n_dense + len(self._embedded)
        self.n_inputs = n_dense + sum(d for _, d in self._embeddings)
        if on_unknown not in ("ignore", "error"):
            raise InputError(f"on_unknown must be 'ignore' or 'error', got {on_unknown!r}")
        self.on_unknown = on_unknown
        self.class_counts = None  # training rows per class, known after fit (not stored in model files)
        self.looks_sorted = None  # after fit: a sentence when the target's order says the file is sorted
        # after fit: what says which rows trained, in which order (the CLI's --resume compares it)
        self.rows_signature = None
        self.unknown = {}  # column -> rows whose category was not seen in training (transform counts them)
        # where each feature goes in X: numeric columns one input each, categorical ones an input per category
        self._numeric, numeric_at, self._categorical, at = [], [], [], 0
        for c, cats, width in zip(self.features, self.state["categories"], widths):
            if cats is None:
                self._numeric.append(c), numeric_at.append(at)
            elif width:
                self._categorical.append((c, cats, at))
            at += width
        self._numeric_at = np.array(numeric_at, dtype=np.int64)
        numeric = np.array([cats is None for cats in self.state["categories"]])
        self._mean, self._scale, self._fill = (np.array(self.state[key], dtype=np.float64)[numeric]
                                               for key in ("mean", "scale", "fill"))
        self._edges = [np.array(e) for e, n in zip(edges, numeric) if n] if self.numeric != "standard" else None
        levels = self.state.get("levels") or [None] * len(self.features)
        self._levels = [np.array(v) for v, n in zip(levels, numeric) if n] if self.numeric == "quantile" else None
        classes = self.state.get("classes") or []
        self.label_type = self.state.get("label_type") or _label_type_of(classes)
        self._label_array = np.array(classes, dtype=LABEL_TYPES[self.label_type]) if classes else None
        self._numeric_classes = np.array(classes, dtype=np.float64) if classes and self.label_type != "str" else None

    # ------------------------------------------------------------------ learning
    @classmethod
    def fit(cls, source, target, features=None, task=None, impute=None, max_categories=1000, val_split=0.0,
            val_max_rows=200_000, seed=0, progress=None, comm=None, exclude=(), local=False,
            scale_target=True, numeric="standard", bins=16, categorical=Categorical()):
        """One pass over `source`: the schema of the training rows and a sample of validation rows.
        Returns (Preprocessor, validation columns or None, training rows); a classifier's Preprocessor
        also holds `class_counts`, the training rows of each class.

        scale_target: a regression target is standardized (False keeps its own scale: a Poisson target).
        numeric: how numeric columns become inputs (NUMERIC_ENCODINGS); bins: piecewise-linear bins per column
        (at most: fewer where the column has fewer distinct quantiles). categorical: a Categorical (one-hot or
        embedding per categorical column; categorical_encoding checks a user's settings).
        features: the feature columns (default: all but the target, the pandas index columns the
        source names and `exclude`). With an MPI communicator (size > 1) and a source in chunks
        (.npy, Parquet), each rank scans only every size-th chunk and the parts are merged, identically
        on every rank; with local=True each rank scans all of its own source (its own rows) and the parts
        are merged likewise.
        """
        features = cls.feature_columns(source, target, features, exclude)
        if impute not in (None, "mean", "median"):
            raise InputError(f"impute must be 'mean' or 'median', got {impute!r}")
        if task not in (None, *TASKS):
            raise InputError(f"task must be 'classify' or 'regress', got {task!r}")
        if numeric not in NUMERIC_ENCODINGS:
            raise InputError(f"numeric must be one of {', '.join(NUMERIC_ENCODINGS)}, got {numeric!r}")
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= 1024:
            raise InputError(f"bins must be an integer from 1 to 1024, got {bins!r}")
        # the validation sample is bounded in cells, so a wide file keeps fewer rows
        val_max_rows = max(1, min(int(val_max_rows), VAL_MAX_CELLS // (len(features) + 1)))
        sharded = comm is not None and comm.size > 1 and (local or getattr(source, "chunk_starts", None) is not None)
        chunks = range(comm.rank, source.n_chunks, comm.size) if sharded and not local else None

        holdout = Holdout(seed, val_split)
        part = first_pass(source, target, features, impute, max_categories, holdout,
                          max(1, val_max_rows // comm.size) if sharded else val_max_rows, seed, progress, chunks,
                          quantiles=numeric != "standard")
        if sharded:
            part = FirstPass.combine(comm.allgather(part), np.random.default_rng(seed))
        prep = cls(_schema(part, task, impute, scale_target, numeric, int(bins), categorical))
        if prep.task == "classify":
            prep.class_counts = part.target.class_counts(prep.classes())
        prep.looks_sorted = part.target.looks_sorted(part.n_rows, prep.classes() if prep.task == "classify" else [])
        # target changes between consecutive rows: only where one process read the rows in file order (ranks
        # scanning every size-th chunk count within their own chunks, so the count would depend on the rank count)
        prep.rows_signature = {"training_rows": int(part.n_rows),
                               "target_changes": None if sharded else int(part.target.changes)}
        return prep, part.held_columns(holdout, val_max_rows), part.n_rows

    @staticmethod
    def feature_columns(source, target, features=None, exclude=()):
        """The feature columns fit() uses, checked against the source's columns."""
        columns = source.columns
        if target not in columns:
            raise InputError(f"target column {target!r} is not in the data; columns are: {', '.join(columns)}")
        unknown = [c for c in [*(features or []), *exclude] if c not in columns]
        if unknown:
            raise InputError(f"column(s) {', '.join(map(repr, unknown))} not in the data; "
                             f"columns are: {', '.join(columns)}")
        if features:
            features = [c for c in features if c not in exclude]
        else:
            skip = {target, *getattr(source, "index_columns", ()), *exclude}
            features = [c for c in columns if c not in skip]
        if target in features:
            raise InputError(f"the target column {target!r} is also listed as a feature")
        if not features:
            raise InputError("no feature columns: the data has only the target column")
        return list(features)

    def matches(self, state):
        """True when `state` prepares data the same way: same columns, categories, classes and task, and
        statistics equal to rounding (a first pass split over a different number of MPI ranks sums in
        another order)."""
        mine = self.state
        if set(mine) != set(state):
            return False
        for key, value in mine.items():
            if key in ("mean", "scale", "fill"):
                if len(value) != len(state[key]) or not np.allclose(value, state[key], rtol=1e-9, atol=1e-12):
                    return False
            elif key in ("target_mean", "target_scale"):
                if not np.isclose(value, state[key], rtol=1e-9, atol=1e-12):
                    return False
            elif value != state[key]:
                return False
        return True

    # ------------------------------------------------------------------ applying
    def embeddings(self):
        """(rows, dim) of each embedded column's table, in X's order: its categories and an unknown row."""
        return list(self._embeddings)

    def unseen_encoding(self, column):
        """How a category of `column` not seen in training is encoded, for messages."""
        return "its embedding's unknown row" if any(c == column for c, _, _ in self._embedded) else "all zeros"

    def kinds(self, with_target=True):
        """{column: NUMBER or TEXT}: how a reader should read each column this schema uses."""
        kinds = {c: NUMBER if cats is None else TEXT for c, cats in zip(self.features, self.state["categories"])}
        if with_target:
            kinds[self.target] = TEXT if self.task == "classify" and self.label_type == "str" else NUMBER
        return kinds

    def transform(self, chunk, start=0, with_target=True, dtype=np.float32):
        """(X, y) for one chunk {column: values} (numpy or pyarrow arrays, any type that converts to the
        schema's); y is None without the target. Rows are numbered from `start` in messages."""
        missing = [c for c in self.features + ([self.target] if with_target else []) if c not in chunk]
        if missing:
            raise InputError(f"column(s) {', '.join(map(repr, missing))}, used in training, not in the data")
        n = len(chunk[self.features[0]])
        X = np.zeros((n, self.n_columns), dtype=dtype)
        numbers = self._numeric
        for g in range(0, len(numbers), NUMBER_GROUP):  # numeric columns a block at a time
            columns, part = numbers[g:g + NUMBER_GROUP], slice(g, g + NUMBER_GROUP)
            block = self._numbers(columns, chunk, start, part)
            if self.numeric == "standard":
                at = self._numeric_at[part]
                # the block is this call's own: standardized in place (fresh pages cost more than the arithmetic)
                z = _standardized(block, self._mean[part], self._scale[part], columns, start, dtype, in_place=True)
                columns_at = slice(at[0], at[-1] + 1) if at[-1] - at[0] == len(at) - 1 else at  # a slice: faster
                X[:, columns_at] = z
                continue
            for j in range(len(columns)):
                k, at = g + j, self._numeric_at[g + j]
                ramps = piecewise_linear(block[:, j], self._edges[k])
                if self.numeric == "ple":
                    X[:, at:at + ramps.shape[1]] = ramps
                else:
                    X[:, at] = quantile_score(ramps, self._levels[k])
        for c, cats, at in self._categorical:
            index = self._category_index(c, chunk[c], start, cats)
            rows = np.flatnonzero(index >= 0)
            X[:, at:at + len(cats)][rows, index[rows]] = 1  # an unseen category is all zeros
        for c, cats, at in self._embedded:
            index = self._category_index(c, chunk[c], start, cats)
            X[:, at] = np.where(index >= 0, index, len(cats))  # an unseen category: the table's unknown row
        return X, (self.encode_target(chunk[self.target], start, dtype) if with_target else None)

    def _numbers(self, columns, chunk, start, part):
        """The values of these numeric columns (missing ones filled), rows x columns; infinity refused."""
        block = number_block(columns, chunk, start)
        nan = np.isnan(block)
        if nan.any():
            if self.state["impute"] is None:
                r, j = np.argwhere(nan)[0]
                raise InputError(f"column {columns[j]!r} has a missing value at {where(start, r)}; "
                                 "the model was trained without impute (--impute)")
            block = np.where(nan, self._fill[part], block)
        inf = np.isinf(block)
        if inf.any():
            r, j = np.argwhere(inf)[0]
            raise InputError(f"column {columns[j]!r} has the value {block[r, j]} at {where(start, r)}; "
                             "replace infinite values (or drop those rows) first")
        return block

    def _category_index(self, column, values, start, cats):
        """Each value's position in `cats` (a missing value: the missing category's), -1 for a category not seen
        in training (counted in self.unknown, or refused with on_unknown="error")."""
        index, text = codes(column, values, cats, start)
        nulls = text.is_null().to_numpy(zero_copy_only=False)
        if "" not in cats:  # an empty cell is missing, whether the file stores it as null (CSV) or as "" (Parquet)
            import pyarrow.compute as pc
            nulls |= pc.fill_null(pc.equal(text, ""), False).to_numpy(zero_copy_only=False)
        if nulls.any():
            if MISSING not in cats:
                raise InputError(f"column {column!r} has a missing value at {where(start, np.flatnonzero(nulls)[0])}; "
                                 "it had none in training")
            index[nulls] = cats.index(MISSING)
        unseen = np.flatnonzero(index < 0)
        if unseen.size:
            if self.on_unknown == "error":
                raise InputError(f"column {column!r} has the category {text[int(unseen[0])].as_py()!r} at "
                                 f"{where(start, unseen[0])}, not seen in training")
            self.unknown[column] = self.unknown.get(column, 0) + int(unseen.size)
        return index

    def encode_target(self, values, start=0, dtype=np.float32):
        """The target column as the model learns it: class indices, or the standardized regression target."""
        if self.task == "regress":
            y = to_numbers(self.target, values, start)
            bad = np.flatnonzero(~np.isfinite(y))
            if bad.size:
                raise InputError(f"target column {self.target!r} has the value {y[bad[0]]} at {where(start, bad[0])}"
                                 "; regression needs a finite number in every row")
            return _standardized(y, self.state["target_mean"], self.state["target_scale"], [self.target], start,
                                 dtype).astype(dtype)
        if self._numeric_classes is not None:
            y = to_numbers(self.target, values, start)
            known = self._numeric_classes
            index = np.minimum(np.searchsorted(known, y), len(known) - 1)
            unseen = np.flatnonzero(known[index] != y)
            label = lambda i: y[i].item()  # noqa: E731
        else:
            index, text = codes(self.target, values, self.state["classes"], start)
            unseen = np.flatnonzero(index < 0)
            label = lambda i: text[int(i)].as_py()  # noqa: E731
        if unseen.size:
            i = unseen[0]
            raise InputError(f"target value {label(i)!r} at {where(start, i)} was not seen in training; "
                             f"known classes: {self.state['classes'][:20]}")
        return index.astype(dtype)

    def classes(self):
        return self.state.get("classes")

    def outputs(self, loss):
        """The outputs a model of this target has: one per class (binary_cross_entropy: one for two classes), one
        for a value."""
        if self.task != "classify":
            return 1
        n_classes = len(self.classes())
        return 1 if loss == "binary_cross_entropy" and n_classes == 2 else n_classes

    def labels(self, index):
        """The class labels, in the target's own type (int, float, bool or str), of class indices."""
        return self._label_array[index]

    def target_values(self, outputs):
        """Regression outputs on the target's original scale (float64)."""
        return np.asarray(outputs, dtype=np.float64) * self.state["target_scale"] + self.state["target_mean"]


def piecewise_linear(x, edges):
    """(rows, bins): for bin t between edges[t] and edges[t + 1], 0 below it, 1 above it, linear within."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.clip((x[:, None] - edges[:-1]) / np.diff(edges), 0.0, 1.0)


def quantile_score(ramps, levels):
    """The quantile level of each value (interpolated between the training sample's quantiles, held at 0 and 1
    beyond them) as a value of mean 0 and variance 1 over the training rows: uniform on [-sqrt 3, sqrt 3]."""
    level = levels[0] + ramps @ np.diff(levels)
    return (2 * level - 1) * np.sqrt(3.0)


def _standardized(values, mean, scale, columns, start, dtype, in_place=False):
    """(values - mean) / scale (finite values; in_place: into `values`), refused where it overflows the model's
    dtype (a value far outside the range the statistics came from) with a message naming the column, the row and
    the range."""
    with np.errstate(over="ignore"):
        z = np.subtract(values, mean, out=values if in_place else None)
        z /= scale
    limit = np.finfo(dtype).max
    if z.size and (z.max() > limit or z.min() < -limit):  # two reductions, no temporary the size of the block
        at = np.argwhere(~(np.abs(z) <= limit))[0]  # (row,) or (row, column)
        j = int(at[1]) if len(at) > 1 else 0
        column = columns[j]
        value = z[tuple(at)] * np.ravel(scale)[j] + np.ravel(mean)[j]  # the value, from its standardized form
        center, spread = np.ravel(mean)[j], np.ravel(scale)[j]
        raise InputError(f"column {column!r} has the value {value:g} at {where(start, at[0])}, which overflows "
                         f"{np.dtype(dtype).name} when standardized (mean {center:g}, standard deviation {spread:g} "
                         f"in training: beyond ±{limit:.3g} standard deviations); rescale the column or drop "
                         "those rows")
    return z


def _label_type_of(classes):
    """The label type of a model saved before label types were stored."""
    if any(isinstance(c, str) for c in classes):
        return "str"
    if all(isinstance(c, bool) for c in classes) and classes:
        return "bool"
    return "int" if all(isinstance(c, int) or float(c).is_integer() for c in classes) else "float"


def _schema(part, task, impute, scale_target=True, numeric="standard", bins=16, categorical=Categorical()):
    """The Preprocessor state from a (merged) first pass."""
    if part.n_rows == 0:
        raise InputError("the data has no training rows")
    target = part.target
    kind, labels, label_type, integral = target.finish()
    if task is None:
        small = kind == NUMBER and integral and 0 < len(labels) <= 50
        task = "classify" if kind == TEXT or small else "regress"
    if task == "regress" and kind == TEXT:
        raise InputError(f"target column {target.name!r} holds text; regression needs numbers (classify it: "
                         "--task classify, or a classification loss)")
    if task == "classify" and not labels:
        raise InputError(f"target column {target.name!r} has over 10000 distinct values; is it a regression target?")
    if task == "classify" and len(labels) < 2:
        raise InputError(f"target column {target.name!r} has {len(labels)} distinct value(s); classification needs 2+")
    state = {"features": list(part.columns), "target": target.name, "task": task, "impute": impute,
             "categories": [], "mean": [], "scale": [], "fill": [], "numeric": numeric}
    if numeric != "standard":
        state["edges"], state["levels"] = [], []
    levels = np.linspace(0, 1, QUANTILE_LEVELS if numeric == "quantile" else bins + 1)
    for scan in part.columns.values():
        if scan.kind() == TEXT:
            state["categories"].append(scan.categories())
            state["mean"].append(0.0), state["scale"].append(1.0), state["fill"].append(0.0)
            if numeric != "standard":
                state["edges"].append(None), state["levels"].append(None)
            continue
        if numeric != "standard":
            edges, at = scan.quantiles(levels)
            state["edges"].append(edges), state["levels"].append(at if numeric == "quantile" else None)
        std = scan.std()
        fill = scan.median() if impute == "median" else scan.mean
        state["categories"].append(None)
        state["mean"].append(scan.mean), state["scale"].append(std if std > 1e-12 else 1.0)
        state["fill"].append(fill)
    if numeric == "auto":  # bins where the rows can fill them
        binned = sum(len(e) - 1 for e in state["edges"] if e is not None)
        state["numeric"] = "ple" if part.n_rows >= AUTO_PLE_ROWS_PER_INPUT * binned else "standard"
        if state["numeric"] == "standard":
            del state["edges"], state["levels"]
    embed = [None if cats is None else categorical.dim_for(c, len(cats))
             for c, cats in zip(state["features"], state["categories"])]
    if any(d is not None for d in embed):  # only then: a one-hot model's state is as before embeddings
        state["embed"] = embed
    if task == "classify":
        state["classes"], state["label_type"] = labels, label_type
    else:
        std = target.std()
        state["target_mean"], state["target_scale"] = (target.mean, std if std > 1e-12 else 1.0) if scale_target \
            else (0.0, 1.0)
    return state


def _checked_state(state):
    """The state of a model file is untrusted: every entry has the type and length the code relies on."""
    def fail(what):
        raise InputError(f"the model's column preparation is malformed: {what}")

    if not isinstance(state, dict):
        fail("not a mapping")
    features = state.get("features")
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        fail("'features' must be a non-empty list of column names")
    if not isinstance(state.get("target"), str) or state.get("task") not in TASKS:
        fail("'target' must be a column name and 'task' one of " + ", ".join(TASKS))
    if state.get("impute") not in (None, "mean", "median"):
        fail("'impute' must be null, 'mean' or 'median'")
    cats = state.get("categories")
    if not isinstance(cats, list) or len(cats) != len(features) or not all(
            c is None or (isinstance(c, list) and c and all(isinstance(v, str) for v in c)) for c in cats):
        fail("'categories' must hold, per feature, null or a non-empty list of strings")
    for key in ("mean", "scale", "fill"):
        values = state.get(key)
        if not isinstance(values, list) or len(values) != len(features) or not all(
                _finite(v) for v in values):
            fail(f"{key!r} must hold one finite number per feature")
    if any(s == 0 for s in state["scale"]):
        fail("a scale is zero")
    embed = state.get("embed")
    if embed is not None and (not isinstance(embed, list) or len(embed) != len(features) or not all(
            d is None if c is None else d is None or (_finite(d) and d == int(d) and 1 <= d <= MAX_EMBEDDING_DIM)
            for c, d in zip(cats, embed))):
        fail(f"'embed' must hold, per feature, null or (categorical features only) a width from 1 to "
             f"{MAX_EMBEDDING_DIM}")
    state = {"numeric": "standard", **state}  # files from before numeric encodings
    if state["numeric"] not in NUMERIC_ENCODINGS or state["numeric"] == "auto":  # a schema holds what auto chose
        fail(f"'numeric' must be one of {', '.join(e for e in NUMERIC_ENCODINGS if e != 'auto')}")
    if state["numeric"] != "standard":
        _check_quantiles(state, fail)
    if state["task"] == "classify":
        classes = state.get("classes")
        if not isinstance(classes, list) or len(classes) < 2 or not all(
                isinstance(c, (str, bool)) or _finite(c) for c in classes):
            fail("'classes' must be a list of 2 or more labels")
    label_type = state.get("label_type")
    if label_type is not None and (not isinstance(label_type, str) or label_type not in LABEL_TYPES):
        fail(f"'label_type' must be one of {', '.join(LABEL_TYPES)}")
    if state["task"] != "classify":
        state = {"target_mean": 0.0, "target_scale": 1.0, **state}  # files from before targets were scaled
        if not _finite(state["target_mean"]) or not _finite(state["target_scale"]) or state["target_scale"] == 0:
            fail("'target_mean' and 'target_scale' must be finite numbers, the scale not zero")
    return state


def _check_quantiles(state, fail):
    """edges (and for the quantile transform levels): per numeric feature, 2+ increasing finite numbers."""
    for key in ("edges", "levels") if state["numeric"] == "quantile" else ("edges",):
        values = state.get(key)
        if not isinstance(values, list) or len(values) != len(state["features"]):
            fail(f"{key!r} must hold an entry per feature")
        for v, cats, edges in zip(values, state["categories"], state["edges"]):
            if cats is not None:
                if v is not None:
                    fail(f"{key!r} must be null for a categorical feature")
                continue
            if not isinstance(v, list) or len(v) < 2 or len(v) > 4096 or not all(_finite(x) for x in v) or \
                    not all(a < b for a, b in zip(v, v[1:])) or (key == "levels" and (
                        len(v) != len(edges) or v[0] < 0 or v[-1] > 1)):
                fail(f"{key!r} must hold, per numeric feature, 2 or more increasing finite numbers"
                     + (" in [0, 1], one per edge" if key == "levels" else ""))


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
