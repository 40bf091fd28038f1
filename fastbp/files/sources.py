"""Tabular files read in chunks: .npy (memory-mapped), .npz, Parquet and CSV (pyarrow).

Every source yields chunks as {column name: 1-D numpy array} in file order or in a
given chunk order, never the whole file. Numeric columns come as float64 with NaN
for missing values; text columns as object arrays with None for missing values.

Measured pitfalls this module avoids (pyarrow 26, this machine): mapped .npy pages
count in RSS until released, so consumed chunks are dropped with madvise(MADV_DONTNEED);
ParquetFile's default pre_buffer=True holds more than the file, so it is turned off,
and row groups are read one at a time.
"""
import mmap
import os

import numpy as np

from ..core.errors import InputError

DEFAULT_CHUNK_ROWS = 65536


class SourceError(InputError):
    """A data file that is missing, unreadable, truncated or not in a supported format."""


def _arrow_errors():
    """What pyarrow raises for files it cannot read (not MemoryError, not bugs)."""
    import pyarrow as pa
    return pa.ArrowException, OSError, ValueError, EOFError


def open_source(path, chunk_rows=DEFAULT_CHUNK_ROWS):
    """A chunked reader for `path`, chosen by extension (.npy, .npz, .parquet/.pq, .csv/.tsv)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no data file at {path!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        return NpySource(path, chunk_rows)
    if ext == ".npz":
        return NpzSource(path, chunk_rows)
    if ext in (".parquet", ".pq"):
        return ParquetSource(path)
    if ext in (".csv", ".tsv", ".txt"):
        return CsvSource(path, chunk_rows, delimiter="\t" if ext == ".tsv" else ",")
    raise SourceError(f"{path!r}: unknown data format {ext!r}; use .npy, .npz, .parquet or .csv")


class _ArraySource:
    """A 2-D numeric array whose columns are named "0", "1", ..."""

    shuffleable = True
    shard_by_chunks = False  # under MPI, "auto" keeps the exact row split (same result as one process)

    def __init__(self, path, array, chunk_rows):
        if array.ndim != 2 or array.dtype.kind not in "biuf":
            raise SourceError(f"{path!r} must hold a 2-D numeric array (rows x columns), got "
                              f"shape {array.shape} dtype {array.dtype}")
        self.path, self.array, self.chunk_rows = path, array, int(chunk_rows)
        self.columns = [str(i) for i in range(array.shape[1])]
        self.n_rows = array.shape[0]
        self.n_chunks = -(-self.n_rows // self.chunk_rows) if self.n_rows else 0
        self.chunk_starts = np.minimum(np.arange(self.n_chunks + 1) * self.chunk_rows, self.n_rows)

    def chunks(self, columns, order=None):
        for start, _, read in self.chunk_readers(columns, order):
            yield start, read(None)

    def chunk_readers(self, columns, order=None):
        """(start, rows, read) per chunk, where read(rows) reads only those rows of the chunk (None: all)."""
        index = [self.columns.index(c) for c in columns]
        for k in (range(self.n_chunks) if order is None else order):
            start = k * self.chunk_rows
            stop = min(self.n_rows, start + self.chunk_rows)

            def read(rows, start=start, stop=stop):
                block = np.asarray(self.array[start:stop] if rows is None else self.array[start + rows])
                return {c: block[:, i].astype(np.float64) for c, i in zip(columns, index)}

            yield start, stop - start, read
            self._release(start, stop)

    def _release(self, start, stop):
        pass


class NpySource(_ArraySource):
    def __init__(self, path, chunk_rows):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise SourceError(f"{path!r} is not a readable .npy file ({exc})") from None
        super().__init__(path, array, chunk_rows)

    def _release(self, start, stop):
        # Give the consumed pages back: a mapped file's pages otherwise stay resident.
        mm = getattr(self.array, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        row_bytes = self.array.strides[0]
        first = self.array.offset + start * row_bytes
        last = self.array.offset + stop * row_bytes
        page = mmap.PAGESIZE
        lo = first // page * page
        if last > lo:
            try:
                mm.madvise(mmap.MADV_DONTNEED, lo, min(last - lo, len(mm) - lo))
            except (OSError, ValueError):
                pass


class NpzSource(_ArraySource):
    """An .npz with one 2-D array (columns "0".."d-1"), or arrays "X" and "y" (columns "0".., "y").

    Zip members cannot be memory-mapped, so the arrays are loaded; use .npy or Parquet
    for files larger than memory.
    """

    def __init__(self, path, chunk_rows):
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                if set(names) >= {"X", "y"}:
                    X, y = z["X"], z["y"]
                    if X.ndim != 2 or y.shape[0] != X.shape[0]:
                        raise SourceError(f"{path!r}: X must be 2-D and y have one entry per row")
                    array = np.column_stack([X, y.reshape(len(y), -1)[:, 0]])
                elif len(names) == 1:
                    array = z[names[0]]
                else:
                    raise SourceError(f"{path!r} must hold one 2-D array or arrays named X and y, has {names}")
        except SourceError:
            raise
        except (ValueError, OSError, EOFError, KeyError) as exc:
            raise SourceError(f"{path!r} is not a readable .npz file ({exc})") from None
        super().__init__(path, array, chunk_rows)
        if set(names) >= {"X", "y"}:
            self.columns[-1] = "y"


def chunk_readers(source, columns, order=None):
    """(start, rows, read) per chunk of any source; read(rows) gives those rows of the chunk (None: all).
    Memory-mapped arrays read only the rows asked for; other formats read the whole chunk first."""
    if hasattr(source, "chunk_readers"):
        yield from source.chunk_readers(columns, order)
        return
    for start, chunk in source.chunks(columns, order):
        yield start, len(chunk[columns[-1]]), (
            lambda rows, chunk=chunk: chunk if rows is None else {c: v[rows] for c, v in chunk.items()})


def _arrow_columns(table, columns):
    """{name: float64 array (NaN = missing)} for numeric columns, object arrays (None = missing) for text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = {}
    for name in columns:
        col = table.column(name)
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type) \
                or pa.types.is_decimal(col.type):
            out[name] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        elif pa.types.is_dictionary(col.type):
            out[name] = np.asarray(pc.cast(col, pa.string()).to_pylist(), dtype=object)
        else:
            out[name] = np.asarray(col.to_pylist(), dtype=object)
    return out


class ParquetSource:
    """Parquet, one row group per chunk (chunk order can be shuffled)."""

    shuffleable = True
    shard_by_chunks = True  # under MPI, "auto" gives each rank its own row groups

    def __init__(self, path):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SourceError("reading Parquet needs pyarrow: pip install pyarrow") from None
        self.path = path
        try:
            self.file = pq.ParquetFile(path, pre_buffer=False)
        except _arrow_errors() as exc:  # empty or truncated files
            raise SourceError(f"{path!r} is not a readable Parquet file ({exc})") from None
        self.columns = list(self.file.schema_arrow.names)
        self.n_rows = self.file.metadata.num_rows
        self.n_chunks = self.file.num_row_groups
        self.chunk_starts = np.concatenate(
            [[0], np.cumsum([self.file.metadata.row_group(i).num_rows for i in range(self.n_chunks)])]).astype(int)

    def chunks(self, columns, order=None):
        for k in (range(self.n_chunks) if order is None else order):
            try:
                table = self.file.read_row_group(int(k), columns=list(columns))
            except _arrow_errors() as exc:
                raise SourceError(f"{self.path!r}: row group {k} cannot be read ({exc})") from None
            yield int(self.chunk_starts[k]), _arrow_columns(table, columns)


class CsvSource:
    """CSV through pyarrow's streaming reader: blocks in file order (no chunk shuffling)."""

    shuffleable = False
    shard_by_chunks = False
    n_chunks = chunk_starts = None

    def __init__(self, path, chunk_rows, delimiter=","):
        try:
            import pyarrow.csv as pcsv
        except ImportError:
            raise SourceError("reading CSV needs pyarrow: pip install pyarrow") from None
        self.path, self._pcsv = path, pcsv
        # ~64 bytes a row is a guess; blocks bound memory, not exact row counts
        self._read = pcsv.ReadOptions(block_size=max(1 << 20, int(chunk_rows) * 64))
        self._parse = pcsv.ParseOptions(delimiter=delimiter)
        try:
            with self._open() as reader:
                self.columns = list(reader.schema.names)
        except _arrow_errors() as exc:
            raise SourceError(f"{path!r} is not a readable CSV file ({exc})") from None
        self.n_rows = None

    def _open(self, columns=None):
        convert = self._pcsv.ConvertOptions(include_columns=list(columns) if columns else None)
        return self._pcsv.open_csv(self.path, read_options=self._read, parse_options=self._parse,
                                   convert_options=convert)

    def chunks(self, columns, order=None):
        import pyarrow as pa

        start = 0
        try:
            with self._open(columns) as reader:
                for batch in reader:
                    data = _arrow_columns(pa.Table.from_batches([batch]), columns)
                    yield start, data
                    start += batch.num_rows
        except SourceError:
            raise
        except _arrow_errors() as exc:  # ragged rows, bad encodings, a type that changes mid-file
            raise SourceError(f"{self.path!r}: cannot parse the CSV after row {start} ({exc})") from None
