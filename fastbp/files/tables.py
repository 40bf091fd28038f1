"""A table in memory (pandas or polars DataFrame, pyarrow Table, or a dict of columns) read as a source.

The first pass and the schema (fastbp.files.preprocess) read a DataFrame exactly as they read a file: the
same column kinds, categories, statistics and missing-value rules, so a model trained from a DataFrame
predicts a file, and the other way round. Columns become pyarrow arrays once (zero-copy for plain numbers);
chunks are slices of them.
"""
import numpy as np

from ..core.errors import InputError
from .columns import arrow_kind
from .sources import DEFAULT_CHUNK_ROWS

TARGET = "target"  # the target's column name when y comes without one


def column_names(X):
    """The column names of a table, in order."""
    if isinstance(X, dict):
        return list(X)
    return list(X.column_names) if hasattr(X, "column_names") else list(X.columns)


def table_column(X, name):
    """One column of a table, as the table's library holds it."""
    return X.column(name) if hasattr(X, "column_names") else X[name]


def arrow_column(name, values):
    """One column as a pyarrow Array: pandas' missing values (None, NaN, pd.NA, NaT) as nulls; an object
    column of mixed types (numbers and text) as the text of each value, as a CSV would hold it."""
    import pyarrow as pa
    library = type(values).__module__.split(".")[0]
    if library == "polars":
        values = values.to_arrow()
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    if library != "pandas":
        values = np.asarray(values)
        if values.ndim != 1:
            raise InputError(f"column {name!r} must be one value per row, got shape {values.shape}")
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        missing = [v is None or (isinstance(v, float) and v != v) or type(v).__name__ in ("NAType", "NaTType")
                   for v in values]
        return pa.array([None if m else str(v) for v, m in zip(values, missing)], type=pa.string())


class TableSource:
    """A table as fastbp.files.sources' readers give files: `columns`, `n_rows`, `kinds(columns)` and
    `chunks(columns)` of {column: pyarrow Array}, read by the first pass (no chunk_starts: under MPI each rank
    scans its own table, merged by Preprocessor.fit's comm). `target`: the name of the target column, when one was
    added (y given apart from X is stored under y's name, or "target" when it has none or X uses it)."""

    def __init__(self, X, y=None, chunk_rows=DEFAULT_CHUNK_ROWS):
        names = column_names(X)
        if not all(isinstance(c, str) for c in names):
            raise InputError("a table's column names must be strings")
        self.table = {c: arrow_column(c, table_column(X, c)) for c in names}
        self.target = None
        if isinstance(y, str):
            if y not in self.table:
                raise InputError(f"y names the column {y!r}, which X does not have; columns are: {', '.join(names)}")
            self.target = y
        elif y is not None:
            name = getattr(y, "name", None)
            self.target = name if isinstance(name, str) and name and name not in self.table else TARGET
            while self.target in self.table:
                self.target += "_"
            self.table[self.target] = arrow_column("y", y)
        lengths = {len(v) for v in self.table.values()}
        if len(lengths) > 1:
            what = "X's columns and y" if y is not None and not isinstance(y, str) else "X's columns"
            raise InputError(f"{what} differ in length ({', '.join(map(str, sorted(lengths)))} rows); give one value "
                             "per row in each")
        self.columns = list(self.table)
        self.n_rows = lengths.pop() if lengths else 0
        self.chunk_rows = int(chunk_rows)

    def kinds(self, columns):
        return {c: arrow_kind(c, self.table[c].type) for c in columns}

    def chunks(self, columns, kinds=None, order=None):
        n_chunks = -(-self.n_rows // self.chunk_rows)
        for k in (range(n_chunks) if order is None else order):
            start = int(k) * self.chunk_rows
            yield start, {c: self.table[c].slice(start, self.chunk_rows) for c in columns}

    def whole(self, columns):
        """All rows of these columns as one chunk."""
        return {c: self.table[c] for c in columns}
