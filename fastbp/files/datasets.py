"""Datasets of several files: which files a folder or glob names, and Hive partition columns.

Spark, Dask and pandas write a table as a folder of part files (`part-00000-....parquet`),
with bookkeeping files beside them (_SUCCESS, _metadata, .crc). Written with
partitionBy / partition_cols, a column lives in folder names instead (`year=2026/month=1/`):
each part's rows share the values of the `key=value` folders above it. `Partitions` gives
those values back as columns, so the sources read such a folder as one table.
"""
import glob
import os
from urllib.parse import unquote

import numpy as np

from ..core.errors import InputError
from .columns import NUMBER

COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")  # pyarrow's CSV reader decompresses these as it streams
CSV_EXTENSIONS = (".csv", ".tsv", ".txt")
PARQUET_EXTENSIONS = (".parquet", ".pq")
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # how Spark and pyarrow write a missing partition value


class SourceError(InputError):
    """A data file that is missing, unreadable, truncated or not in a supported format."""


def data_extension(path):
    """The format's extension, lower case; a compressed CSV (.csv.gz etc.) counts as its inner extension."""
    root, ext = os.path.splitext(os.fspath(path))
    ext = ext.lower()
    if ext in COMPRESSIONS:
        inner = os.path.splitext(root)[1].lower()
        if inner in CSV_EXTENSIONS:
            return inner
    return ext


def is_dataset(path):
    """True when `path` stands for parts read as one table: a folder, or a glob pattern that is not a file."""
    return os.path.isdir(path) or (not os.path.exists(path) and glob.has_magic(path))


def dataset_parts(path):
    """The files of a dataset, read as one table: a folder as Spark, Dask or pandas write it (its Parquet
    or CSV files, compressed CSV too, in subfolders as well, in name order; names starting with _ or . are
    bookkeeping: _SUCCESS, _metadata, .crc), or a glob pattern of files. All parts have one format."""
    if os.path.isdir(path):
        parts = []
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(("_", ".")))
            parts += [os.path.join(folder, n) for n in sorted(names)
                      if not n.startswith(("_", ".")) and data_extension(n) in PARQUET_EXTENSIONS + CSV_EXTENSIONS]
        what = f"the folder {path!r}"
    else:
        parts = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        what = f"the pattern {path!r}"
        other = [p for p in parts if data_extension(p) not in PARQUET_EXTENSIONS + CSV_EXTENSIONS]
        if other:
            raise SourceError(f"{what} matches {other[0]!r}, which is neither Parquet nor CSV; several files are "
                              "read together as Parquet or CSV parts")
    if not parts:
        raise FileNotFoundError(f"no Parquet or CSV files (.parquet, .pq, .csv, .tsv, .txt, also compressed) in "
                                f"{what}")
    formats = {("Parquet" if data_extension(p) in PARQUET_EXTENSIONS else data_extension(p)): p for p in parts}
    if len(formats) > 1:
        (a, first), (b, second) = list(formats.items())[:2]
        raise SourceError(f"{what} holds {a} ({first!r}) and {b} ({second!r}) files; the parts of a dataset "
                          "must have one format")
    return parts


class Partitions:
    """The Hive partition columns of a dataset folder: {column: its value in each part (text, None if missing)}.
    Empty for a single file, a glob, or a folder without key=value subfolders."""

    def __init__(self, root=None, parts=()):
        self.values = {}
        if root is None or not os.path.isdir(root):
            return
        found = [_key_values(os.path.relpath(os.path.dirname(part), root)) for part in parts]
        keys = [key for key, _ in found[0]] if found else []
        for part, pairs in zip(parts, found):
            if [key for key, _ in pairs] != keys:
                raise SourceError(f"{part!r} sits in the partition folders {[k for k, _ in pairs]}, the first part in "
                                  f"{keys}; every part of a partitioned dataset needs the same partition columns")
        self.values = {key: [pairs[i][1] for pairs in found] for i, key in enumerate(keys)}

    @property
    def columns(self):
        return list(self.values)

    def stored(self, columns, file_columns):
        """The columns to read from the files: those not in folder names (at least one, for the row counts)."""
        return [c for c in columns if c not in self.values] or file_columns[:1]

    def add(self, chunk, columns, part, kinds):
        """A chunk of part `part` (its `stored` columns) with the partition columns among `columns` added, in the
        order of `columns`."""
        if not self.values:
            return chunk
        n = len(next(iter(chunk.values())))
        return {c: chunk[c] if c in chunk else self.column(c, part, n, (kinds or {}).get(c)) for c in columns}

    def column(self, name, part, n, kind):
        """Part `part`'s value of partition column `name` for n rows: float64 when read as NUMBER, else text."""
        value = self.values[name][part]
        if kind == NUMBER:
            try:
                return np.full(n, np.nan if value is None else float(value))
            except ValueError:
                raise SourceError(f"partition column {name!r} is {value!r} in its folder name, but the column was "
                                  "numeric in training") from None
        import pyarrow as pa
        return pa.array([value] * n, type=pa.string())


def _key_values(relative):
    """(key, value) of the key=value folders of a relative folder path, values URL-decoded as Hive writes them."""
    pairs = []
    for segment in ([] if relative == os.curdir else relative.split(os.sep)):
        if "=" in segment:
            key, value = segment.split("=", 1)
            value = unquote(value)
            pairs.append((unquote(key), None if value == HIVE_NULL else value))
    return pairs
