"""Tabular files read in chunks: .npy (memory-mapped), .npz, Parquet and CSV (pyarrow).

Every source yields chunks as {column name: column} in file order or in a given chunk
order, never the whole file. A folder or glob of Parquet or CSV parts (fastbp.files.datasets)
reads as one table, Hive partition columns included. A column is a numpy array (.npy/.npz) or a pyarrow Array
(CSV, Parquet) in the file's own type; fastbp.files.columns converts it to the type the
schema fixed. `kinds(columns)` says what the file itself declares: NUMBER or TEXT per
column, or None where only the values can tell (every CSV column).

A CSV is read with every column as text in the first pass (pyarrow would otherwise fix
each column's type from the first block, and a column that turns fractional or is empty
for the first megabytes would fail later); once the schema is known, passes read the
numeric columns as float64 and the categorical ones as text.

Measured pitfalls this module avoids (pyarrow 26, this machine): mapped .npy pages
count in RSS until released, so consumed chunks are dropped with madvise(MADV_DONTNEED);
ParquetFile's default pre_buffer=True holds more than the file, so it is turned off;
a row group read whole costs ~11x its raw size in RSS, so row groups are read in
slices of a bounded number of cells (`slice_rows`).
"""
import codecs
import collections
import mmap
import os
import re
import tempfile
from typing import NamedTuple, Optional

import numpy as np

from ..core.errors import warn
from .columns import BOOLEAN_SPELLINGS, NUMBER, arrow_kind, stored_numbers, take
from .datasets import (COMPRESSIONS, CSV_EXTENSIONS, PARQUET_EXTENSIONS, Partitions, SourceError, data_extension,
                       dataset_parts, is_dataset)

DEFAULT_CHUNK_ROWS = 65536
SLICE_CELLS = 1 << 20  # cells of one Parquet slice: 8 MB as float64, whatever the row group size
MIN_SLICE_ROWS = 512
SPILL_ABOVE = 256 << 20  # a row group that needs more than this to read in slices is spilled (ParquetSource._spilled)
SPILL_GROUP_BYTES = 8 << 20  # columns read at a time while spilling
PAGE_BYTES = 2 << 20  # a decoded data page and a dictionary page, at pyarrow's default page size
_INDEX_NAME = re.compile(r"^(|Unnamed: \d+)$")  # how pandas' to_csv names the index column


class CsvFormat(NamedTuple):
    """How a CSV file is written, as pandas.read_csv says it: encoding (UTF-8 when None), sep (the column
    separator, one character; None: by extension, a tab for .tsv, else a comma) and decimal (the decimal mark of
    its numbers, "." or ",")."""
    encoding: Optional[str] = None
    sep: Optional[str] = None
    decimal: str = "."

    def checked(self):
        """The same format with sep written as one character ("\\t" and "tab" mean a tab), or a SourceError."""
        sep = {"\\t": "\t", "tab": "\t"}.get(self.sep, self.sep)
        if sep is not None and (len(sep) != 1 or sep in "\r\n\""):
            raise SourceError(f"sep must be one character other than a quote or a line break, e.g. ';' or '|', "
                              f"got {self.sep!r}")
        if self.decimal not in (".", ","):
            raise SourceError(f"decimal must be '.' or ',', got {self.decimal!r}")
        if sep is not None and sep == self.decimal:
            raise SourceError(f"sep and decimal are both {sep!r}: a file with decimal commas separates its columns "
                              "with another character, often ';'")
        return self._replace(sep=sep)


def _arrow_errors():
    """What pyarrow raises for files it cannot read (not MemoryError, not bugs)."""
    import pyarrow as pa
    return pa.ArrowException, OSError, ValueError, EOFError


def open_source(path, chunk_rows=DEFAULT_CHUNK_ROWS, csv=CsvFormat()):
    """A chunked reader for `path`, chosen by extension (.npy, .npz, .parquet/.pq, .csv/.tsv/.txt, also
    compressed: .csv.gz, .csv.bz2, .csv.zst, .csv.lz4, streamed).
    csv: how a CSV file is written (CsvFormat); other formats refuse anything but the defaults."""
    path = os.fspath(path)
    chunk_rows = int(chunk_rows)
    if chunk_rows < 1:
        raise SourceError(f"chunk_rows must be >= 1, got {chunk_rows}")
    parts, partitions = None, Partitions()
    if is_dataset(path):
        parts = dataset_parts(path)
        partitions = Partitions(path, parts)
        ext = data_extension(parts[0])
    elif os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise SourceError(f"{path!r} is a pipe or device (a FIFO, or a shell's <(...)), not a file: fastbp reads its "
                          "data more than once (the first pass, then the rows), so save it to a file first, or give - and "
                          "send it to standard input (it is then copied once to TMPDIR)")
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"no data file at {path!r}")
    else:
        ext = data_extension(path)
    given = [name for name, value in csv._asdict().items() if value != CsvFormat._field_defaults[name]]
    if given and ext not in CSV_EXTENSIONS:
        raise SourceError(f"{', '.join('--' + name for name in given)} applies to CSV files only, not to {ext!r}")
    if ext == ".npy":
        return NpySource(path, chunk_rows)
    if ext == ".npz":
        return NpzSource(path, chunk_rows)
    if ext in PARQUET_EXTENSIONS:
        return ParquetSource(path, chunk_rows, parts, partitions)
    if ext in CSV_EXTENSIONS:
        if csv.sep is None:
            csv = csv._replace(sep="\t" if ext == ".tsv" else ",")
        return CsvSource(path, chunk_rows, csv.checked(), parts=parts, partitions=partitions)
    raise SourceError(f"{path!r}: unknown data format {ext!r}; use .npy, .npz, .parquet or .csv "
                      f"(CSV also compressed: {', '.join('.csv' + c for c in COMPRESSIONS)})")


class _ArraySource:
    """A 2-D numeric array whose columns are named "0", "1", ..."""

    shuffleable = True
    shard_by_chunks = False  # under MPI, "auto" keeps the exact row split (same result as one process)
    index_columns = ()

    def __init__(self, path, array, chunk_rows):
        if array.ndim != 2 or array.dtype.kind not in "biuf":
            raise SourceError(f"{path!r} must hold a 2-D numeric array (rows x columns), got "
                              f"shape {array.shape} dtype {array.dtype}")
        self.path, self.array, self.chunk_rows = path, array, int(chunk_rows)
        self.columns = [str(i) for i in range(array.shape[1])]
        self.n_rows = array.shape[0]
        self.n_chunks = -(-self.n_rows // self.chunk_rows) if self.n_rows else 0
        self.chunk_starts = np.minimum(np.arange(self.n_chunks + 1) * self.chunk_rows, self.n_rows)

    def kinds(self, columns):
        return {c: NUMBER for c in columns}

    def chunks(self, columns, kinds=None, order=None):
        for start, _, read in self.chunk_readers(columns, kinds, order):
            yield start, read(None)

    def chunk_readers(self, columns, kinds=None, order=None):
        """(start, rows, read) per chunk, where read(rows) reads only those rows of the chunk (None: all)."""
        index = [self.columns.index(c) for c in columns]
        for k in (range(self.n_chunks) if order is None else order):
            start = k * self.chunk_rows
            stop = min(self.n_rows, start + self.chunk_rows)

            def read(rows, start=start, stop=stop):
                block = np.asarray(self.array[start:stop] if rows is None else self.array[start + rows])
                return {c: block[:, i] for c, i in zip(columns, index)}

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

    A 2-D `y` that is one-hot (one 1 per row) becomes the column of class indices. Zip members
    cannot be memory-mapped, so the arrays are loaded; use .npy or Parquet for files larger than memory.
    """

    def __init__(self, path, chunk_rows):
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                if set(names) >= {"X", "y"}:
                    X, y = z["X"], z["y"]
                    if X.ndim != 2 or y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
                        raise SourceError(f"{path!r}: X must be 2-D and y have one entry per row")
                    array = np.column_stack([X, _target_column(path, y)])
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


def _target_column(path, y):
    if y.ndim == 1 or y.shape[1] == 1:
        return y.reshape(len(y))
    if y.dtype.kind in "biuf" and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all():
        return y.argmax(axis=1)
    raise SourceError(f"{path!r}: y has {y.shape[1]} columns and is not one-hot; the command line trains one "
                      "target column (multi-output models: fastbp.Trainer from Python)")


def chunk_readers(source, columns, kinds=None, order=None):
    """(start, rows, read) per chunk of any source; read(rows) gives those rows of the chunk (None: all).
    Memory-mapped arrays read only the rows asked for; other formats read the whole chunk first."""
    if hasattr(source, "chunk_readers"):
        yield from source.chunk_readers(columns, kinds, order)
        return
    for start, chunk in source.chunks(columns, kinds, order):
        n = len(chunk[columns[-1]])
        yield start, n, (lambda rows, chunk=chunk: chunk if rows is None else {c: take(v, rows)
                                                                              for c, v in chunk.items()})


def _check_same_columns(source, part, schema):
    """Every part of a dataset holds the first part's columns, each of the same kind (number or text)."""
    if list(schema.names) != source.file_columns:
        raise SourceError(f"{part!r} has the columns {list(schema.names)}, the first part {source.file_columns}; the "
                          "parts of a dataset must hold the same columns")
    for name in source.file_columns:
        if arrow_kind(name, schema.field(name).type) != arrow_kind(name, source.types[name]):
            raise SourceError(f"column {name!r} holds {schema.field(name).type} in {part!r} but "
                              f"{source.types[name]} in the first part; the parts must agree")


def _unified_types(source, schemas):
    """{column: type} for the columns whose type differs between parts, all read as one: numbers as float64
    (int64 in one part and float32 in another, as pyarrow's dataset unification promotes them), text as
    large_string (string, large_string or dictionary-encoded)."""
    import pyarrow as pa

    unified = {}
    for name in source.file_columns:
        if len({schema.field(name).type for schema in schemas}) > 1:
            unified[name] = pa.float64() if arrow_kind(name, source.types[name]) == NUMBER else pa.large_string()
    return unified


def _with_partitions(source, file_columns, partitions):
    """The columns of a dataset: its files' and, after them, its Hive partition columns (folder names)."""
    twice = sorted(c for c, n in collections.Counter(file_columns).items() if n > 1)
    if twice:
        raise SourceError(f"{source.path!r}: the column name {twice[0]!r} is used more than once; give every "
                          "column its own name")
    clash = [c for c in partitions.columns if c in file_columns]
    if clash:
        raise SourceError(f"{source.path!r}: column {clash[0]!r} is both in the files and in the partition folder "
                          "names; rename one of them")
    return list(file_columns) + partitions.columns


def _check_columns(source, columns):
    known = set(source.columns)
    missing = [c for c in columns if c not in known]
    if missing:
        raise SourceError(f"{source.path!r} has no column(s) {', '.join(map(repr, missing))}; "
                          f"its columns are: {', '.join(map(repr, source.columns))}")


class ParquetSource:
    """Parquet: one file, or the parts of a dataset (dataset_parts), read as one table. A chunk is a row group
    of one part (the unit of shuffling and of MPI shards), read in slices."""

    shuffleable = True
    shard_by_chunks = True  # under MPI, "auto" gives each rank its own row groups

    def __init__(self, path, chunk_rows=DEFAULT_CHUNK_ROWS, parts=None, partitions=None):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SourceError("reading Parquet needs pyarrow: pip install pyarrow") from None
        self.path, self.chunk_rows = path, int(chunk_rows)
        self.parts = list(parts) if parts is not None else [path]
        self.files = []
        for part in self.parts:
            try:
                # buffer_size: column chunks are streamed, not read whole
                self.files.append(pq.ParquetFile(part, pre_buffer=False, buffer_size=1 << 13))
            except _arrow_errors() as exc:  # empty or truncated files
                raise SourceError(f"{part!r} is not a readable Parquet file ({exc})") from None
        schema = self.files[0].schema_arrow
        self.file_columns = list(schema.names)
        self.partitions = partitions or Partitions()
        self.columns = _with_partitions(self, self.file_columns, self.partitions)
        self.types = {name: schema.field(name).type for name in self.file_columns}
        for part, file in zip(self.parts[1:], self.files[1:]):
            _check_same_columns(self, part, file.schema_arrow)
        self.casts = _unified_types(self, [file.schema_arrow for file in self.files])
        self.types.update(self.casts)
        pandas = schema.pandas_metadata or {}
        # pandas stores its index as columns and names them here (a RangeIndex is stored as a dict, not a column)
        self.index_columns = [c for c in pandas.get("index_columns", []) if isinstance(c, str) and c in self.columns]
        # chunk k is row group group_of[k] of part part_of[k]
        self.part_of = np.array([f for f, file in enumerate(self.files) for _ in range(file.num_row_groups)], int)
        self.group_of = np.array([g for file in self.files for g in range(file.num_row_groups)], int)
        self.n_chunks = len(self.part_of)
        self.n_rows = sum(file.metadata.num_rows for file in self.files)
        self.chunk_starts = np.concatenate(
            [[0], np.cumsum([self._meta(k).num_rows for k in range(self.n_chunks)])]).astype(int)

    def _meta(self, k):
        return self.files[self.part_of[k]].metadata.row_group(int(self.group_of[k]))

    def _where(self, k):
        return self.path if len(self.parts) == 1 else self.parts[self.part_of[k]]

    def kinds(self, columns):
        """NUMBER or TEXT as the files declare them; None for partition columns (text in folder names)."""
        _check_columns(self, columns)
        return {c: arrow_kind(c, self.types[c]) if c in self.types else None for c in columns}

    def read_memory(self, columns):
        """Bytes pyarrow holds to read a slice of the largest row group: it decodes a whole page (up to ~1 MB,
        plus a dictionary page) of every column read, so this grows with the column count, and with the row
        group's size until its column chunks reach a page. Row groups above SPILL_ABOVE are spilled instead."""
        index = self._positions(columns)
        return max((self._group_memory(k, index) for k in range(self.n_chunks)), default=0)

    def spills(self, columns):
        """True when reading these columns spills a row group to a temporary file (see _spilled)."""
        return self.read_memory(columns) > SPILL_ABOVE

    def _positions(self, columns):
        """Where the stored ones of these columns are in the files (partition columns are not stored)."""
        position = {c: i for i, c in enumerate(self.file_columns)}
        return [position[c] for c in columns if c in position]

    def _group_memory(self, k, index):
        group = self._meta(k)
        return sum(min(group.column(i).total_uncompressed_size, PAGE_BYTES) for i in index)

    def slice_rows(self, n_columns):
        """Rows read at a time: --chunk-rows, fewer for wide files, so a slice holds a bounded number of cells."""
        # at least MIN_SLICE_ROWS: below that, per-column work per slice dominates on very wide files
        return max(1, min(self.chunk_rows, max(MIN_SLICE_ROWS, SLICE_CELLS // max(1, n_columns))))

    def chunks(self, columns, kinds=None, order=None):
        _check_columns(self, columns)
        stored = self.partitions.stored(columns, self.file_columns)
        rows = self.slice_rows(len(stored))
        index = self._positions(stored)
        for k in (range(self.n_chunks) if order is None else order):
            for start, chunk in self._stored_chunks(int(k), stored, index, rows):
                yield start, self.partitions.add(chunk, columns, int(self.part_of[k]), kinds)

    def _stored_chunks(self, k, columns, index, rows):
        start = int(self.chunk_starts[k])
        try:
            if self._group_memory(k, index) > SPILL_ABOVE:
                yield from self._spilled(k, columns, index, rows)
                return
            file = self.files[self.part_of[k]]
            for batch in file.iter_batches(batch_size=rows, row_groups=[int(self.group_of[k])],
                                           columns=list(columns), use_threads=False):
                yield start, {c: self._unified(c, batch.column(i)) for i, c in enumerate(columns)}
                start += batch.num_rows
        except _arrow_errors() as exc:
            raise SourceError(f"{self._where(k)!r}: row group {self.group_of[k]} cannot be read ({exc})") from None

    def _unified(self, column, values):
        """A column's values in the type every part's are read as (see _unified_types)."""
        cast = self.casts.get(column)
        return values if cast is None or values.type == cast else values.cast(cast)

    def _spilled(self, k, columns, index, rows):
        """A row group too wide to read in slices (see read_memory): copied once, SPILL_GROUP_BYTES of columns at a
        time, into an unnamed temporary file, a column after the other, then read back in row slices with pread,
        so the page cache holds it, not this process. Text columns stay in memory."""
        meta = self._meta(k)
        start, n = int(self.chunk_starts[k]), meta.num_rows
        file, group_index = self.files[self.part_of[k]], int(self.group_of[k])
        groups, size = [[]], 0
        for c, i in zip(columns, index):
            size += meta.column(i).total_uncompressed_size
            if groups[-1] and size > SPILL_GROUP_BYTES:
                groups.append([])
                size = meta.column(i).total_uncompressed_size
            groups[-1].append(c)
        text, layout, offset = {}, {}, 0
        with tempfile.TemporaryFile(prefix="fastbp-spill-") as spill:
            for group in groups:
                table = file.read_row_group(group_index, columns=group, use_threads=False)
                for c in group:
                    values = self._unified(c, table.column(c).combine_chunks())
                    if arrow_kind(c, values.type) != NUMBER:
                        text[c] = values
                        continue
                    array = np.ascontiguousarray(stored_numbers(c, values))
                    try:
                        spill.write(memoryview(array).cast("B"))
                    except OSError as exc:
                        raise SourceError(f"{self._where(k)!r}: no room to spill row group {group_index} to the "
                                          "temporary folder "
                                          f"({exc.strerror}); set TMPDIR to a larger disk, or rewrite the file "
                                          "with smaller row groups") from None
                    layout[c] = (offset, array.dtype)
                    offset += array.nbytes
                del table
            spill.flush()
            fd = spill.fileno()
            for a in range(0, n, rows):
                b = min(n, a + rows)
                chunk = {}
                for c in columns:
                    if c in text:
                        chunk[c] = text[c].slice(a, b - a)
                    else:
                        at, dtype = layout[c]
                        chunk[c] = np.frombuffer(os.pread(fd, (b - a) * dtype.itemsize, at + a * dtype.itemsize),
                                                 dtype)
                yield start + a, chunk


# the first bytes of formats a misnamed "CSV" may hold, and what to do about each
_MAGIC = ((b"\x1f\x8b", "gzip-compressed data", "name it .csv.gz"),
          (b"BZh", "bzip2-compressed data", "name it .csv.bz2"),
          (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "name it .csv.zst"),
          (b"\x04\x22\x4d\x18", "lz4-compressed data", "name it .csv.lz4"),
          (b"PAR1", "a Parquet file", "name it .parquet"), (b"PK\x03\x04", "a zip archive", "unzip it first"),
          (b"\x93NUMPY", "a NumPy .npy file", "name it .npy"))


def _refuse_binary(part):
    """A file named as plain CSV whose first bytes say it is compressed or another format: named, not printed."""
    if os.path.splitext(os.fspath(part))[1].lower() in COMPRESSIONS or not os.path.isfile(part):
        return
    with open(part, "rb") as file:
        head = file.read(8)
    for magic, what, fix in _MAGIC:
        if head.startswith(magic):
            raise SourceError(f"{part!r} is {what}, not CSV text: {fix}")


def _ends_mid_line(path, encoding="utf-8"):
    """True for an uncompressed, non-empty file whose last character is not a line break (a CSV cut short);
    encoding: a codecs name (UTF-16 and UTF-32 without an order say it with their byte-order mark)."""
    if os.path.splitext(os.fspath(path))[1].lower() in COMPRESSIONS:
        return False  # a compressed stream cut short fails to decompress instead
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return False
        file.seek(0)
        head = file.read(4)
        file.seek(max(0, size - 4))
        tail = file.read(4)
    name = {"utf-8-sig": "utf-8"}.get(encoding, encoding)
    if name in ("utf-16", "utf-32"):  # the byte-order mark says which; without one, little-endian as Python reads
        big = head.startswith(codecs.BOM_UTF16_BE if name == "utf-16" else codecs.BOM_UTF32_BE)
        name += "-be" if big else "-le"
    return not any(tail.endswith(c.encode(name)) for c in "\n\r")


class CsvSource:
    """CSV through pyarrow's streaming reader: blocks in file order (no chunk shuffling). One file, or the
    parts of a dataset (dataset_parts) one after another, their columns matched by name."""

    shuffleable = False
    shard_by_chunks = False
    n_chunks = chunk_starts = None

    def __init__(self, path, chunk_rows, csv=CsvFormat(sep=","), parts=None, partitions=None):
        try:
            import pyarrow.csv as pcsv
        except ImportError:
            raise SourceError("reading CSV needs pyarrow: pip install pyarrow") from None
        encoding = csv.encoding
        if encoding is not None:
            try:
                encoding = codecs.lookup(encoding).name
            except LookupError:
                raise SourceError(f"unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
        self.path, self._pcsv = path, pcsv
        self.parts = list(parts) if parts is not None else [path]
        # ~64 bytes a row is a guess; blocks bound memory, not exact row counts
        self._read = pcsv.ReadOptions(block_size=max(1 << 20, int(chunk_rows) * 64), encoding=encoding or "utf8")
        self._parse = pcsv.ParseOptions(delimiter=csv.sep)
        self._decimal = csv.decimal
        self.file_columns = self._header(self.parts[0])
        # the first part cut short is enough to say
        cut = next((part for part in self.parts if _ends_mid_line(part, encoding or "utf-8")), None)
        if cut is not None:
            warn(f"{cut!r} does not end with a line break: if it was cut short (an interrupted copy or "
                 "download), its last row is incomplete and is read as it stands")
        self.partitions = partitions or Partitions()
        self.columns = _with_partitions(self, self.file_columns, self.partitions)
        self.index_columns = [c for c in self.columns if _INDEX_NAME.match(c)]
        self.n_rows = None

    def kinds(self, columns):
        _check_columns(self, columns)
        return {c: None for c in columns}

    def _header(self, part):
        _refuse_binary(part)
        try:
            with self._open(part, None, None) as reader:
                names = list(reader.schema.names)
        except _arrow_errors() as exc:
            raise SourceError(f"{part!r} is not a readable CSV file ({exc}).{self._separator_hint(part)}") from None
        hint = self._separator_hint(part, names)
        if hint:
            raise SourceError(f"{part!r} has a single column, {names[0]!r}.{hint}")
        return names

    def _separator_hint(self, part, names=None):
        """What to do when the header is one column holding another separator (a ';'-separated export)."""
        if names is None:  # the rows did not parse: look at the header line itself
            import pyarrow as pa
            try:
                with pa.input_stream(part, compression="detect") as stream:
                    header = stream.read(1 << 16).split(b"\n", 1)[0].decode(self._read.encoding)
            except _arrow_errors() + (LookupError,):  # not text in this encoding: no advice on separators
                return ""
            if any(ord(ch) < 32 and ch not in "\t\r" for ch in header):
                return ""
            names = header.split(self._parse.delimiter)
        other = [d for d in (";", "\t", "|") if len(names) == 1 and d in names[0]]
        if not other:
            return ""
        return (f" It seems to separate columns with {other[0]!r}, not {self._parse.delimiter!r}: pass --sep "
                f"{other[0]!r} (sep= in Trainer.fit_file), and --decimal ',' if its numbers are written 2,5")

    def _open(self, part, columns, kinds):
        import pyarrow as pa

        types = None
        if columns:
            types = {c: pa.float64() if (kinds or {}).get(c) == NUMBER else pa.string() for c in columns}
        convert = self._pcsv.ConvertOptions(include_columns=list(columns) if columns else None, column_types=types,
                                            strings_can_be_null=True, decimal_point=self._decimal)
        return self._pcsv.open_csv(part, read_options=self._read, parse_options=self._parse, convert_options=convert)

    def chunks(self, columns, kinds=None, order=None):
        _check_columns(self, columns)
        stored = self.partitions.stored(columns, self.file_columns)
        start = 0
        for i, part in enumerate(self.parts):
            first = start
            try:
                with self._open(part, stored, kinds) as reader:
                    for batch in reader:
                        chunk = {c: self._as_read(batch.column(j)) for j, c in enumerate(stored)}
                        yield start, self.partitions.add(chunk, columns, i, kinds)
                        start += batch.num_rows
            except SourceError:
                raise
            except _arrow_errors() as exc:  # ragged rows, bad encodings, text in a numeric column
                raise SourceError(self._explain(part, stored, str(exc), start - first, kinds)) from None

    def _as_read(self, column):
        """A column as parsed, with decimal commas made points in its text cells that are numbers (decimal=","): the
        first pass reads every column as text and tells numbers by their spelling, later ones read text columns
        as text, and both must see the same values."""
        if self._decimal == "." or not self._is_text_type(column.type):
            return column
        import pyarrow.compute as pc
        return pc.replace_substring_regex(column, pattern=r"^(\s*[+-]?\d*),(\d+(?:[eE][+-]?\d+)?\s*)$",
                                          replacement=r"\1.\2")

    @staticmethod
    def _is_text_type(dtype):
        import pyarrow as pa
        return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)

    def _explain(self, part, columns, message, start, kinds):
        """What went wrong reading these columns of a part (a later part's header is read only now, on the error
        path): a column the part lacks, or pyarrow's column number as a name, and what to do."""
        header = self.file_columns if part == self.parts[0] else self._header(part)
        missing = [c for c in columns if c not in header]
        if missing:
            return (f"{part!r} has no column(s) {', '.join(map(repr, missing))}, which the first part "
                    f"{self.parts[0]!r} has; the parts of a dataset must hold the same columns")
        found = re.search(r"CSV column #(\d+)", message)
        column = header[int(found.group(1))] if found and int(found.group(1)) < len(header) else None
        where = f"{part!r}, in the rows after row {start}"
        if column is not None and "invalid UTF8" in message:
            return (f"{where}: column {column!r} holds text that is not UTF-8; pass the file's encoding "
                    "(e.g. --encoding latin-1) or re-save it as UTF-8")
        if column is not None and "conversion error to double" in message and (kinds or {}).get(column) == NUMBER:
            value = re.search(r"invalid value '(.*)'", message)
            value = value.group(1) if value else ""
            boolean = any(value.strip() in words for words in BOOLEAN_SPELLINGS)
            fix = "write the column's booleans as 1 and 0" if boolean else "fix that cell"
            return (f"{where}: column {column!r} was numeric in training but holds the text {value!r}; {fix} or "
                    "retrain with the column as text")
        return f"{where}: cannot parse the CSV ({message})"
