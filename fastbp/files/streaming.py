"""Training from a file in bounded memory: rows from all over the file through a fixed-size buffer.

By default the training rows are encoded once, before the first epoch, into an unnamed temporary
file (`EncodedRows`: the model's inputs, targets and weights, in the model's dtype, in file order).
Each epoch then gathers them in a new uniform random order (`block_rows`: single rows up to
MAX_BLOCKS rows) into a buffer of `buffer_rows` rows (a whole number of batches), and the engine
trains a full buffer in a random row order, as it does in-memory data. So every buffer is a sample of
the whole file, whatever order the file was written in: a file sorted by its target trains as a
shuffled one does (blocks of 64 consecutive rows still cost 2-4 % of log-loss on a sorted table of
1.3 million rows, measured: single rows are what it takes). Rows are gathered through a memory map
whose pages are let go every GATHER_ROWS rows (sooner where they spread over GATHER_BYTES), so the
file lives in the page cache, not in the process's memory; epochs skip parsing and encoding. The cost
is disk (`spill_bytes`, checked before training) and one extra pass.

Without the spill (`spill=False`), each epoch reads the source's chunks (row groups, memmap slices in
a shuffled order; CSV blocks in file order) and shuffles rows within the buffer only: no disk, but a
sorted file then trains on one region of it per buffer (`Preprocessor.fit` notes a file that looks
sorted). Either way memory is the buffer, one chunk and the validation sample, never the file.
Validation rows (chosen by a stateless hash of the row number) are never training rows. The epochs
themselves (buffers filled from these rows, trained) are fastbp.engine.buffered's.
"""
import mmap
import os
import tempfile

import numpy as np

from ..core.errors import InputError
from .scan import holdout_mask
from .sources import chunk_readers


def _rows_or_all(rows, n):
    """None (read the chunk as it is, no copy) when `rows` are all n rows of the chunk."""
    return None if len(rows) == n else rows


def read_training_rows(source, prep, columns, order, val_split, seed, stats, dtype):
    """(start row, X, y) of the training rows of each chunk, in the given chunk order."""
    for start, n, read in chunk_readers(source, columns, prep.kinds(), order):
        stats.max_chunk_rows = max(stats.max_chunk_rows, n)
        kept = np.flatnonzero(~holdout_mask(seed, np.arange(start, start + n), val_split))
        X, y = prep.transform(read(_rows_or_all(kept, n)), start, dtype=dtype)
        del read  # the chunk goes before the next one is read
        yield start, X, y


class FileTargets:
    """What a model learns from a file's target column (Preprocessor.transform's y): one column (a class
    index, a 0/1 label or a regression value) for cross_entropy or one output; otherwise the classes
    one-hot, one column per output (mse, mae, huber or binary_cross_entropy on classes). With
    class_table (a weight per class index), each row also gets its class's weight."""

    def __init__(self, loss, n_out, class_table=None):
        self.width = 1 if loss == "cross_entropy" else int(n_out)
        self.class_table = class_table

    @property
    def one_hot(self):
        return self.width > 1

    def buffers(self, n, dtype):
        """Empty (targets, weights) buffers for n rows; weights is empty without class weights."""
        return (np.empty((n, self.width), dtype=dtype),
                np.empty(n if self.class_table is not None else 0, dtype=dtype))

    def rows(self, y):
        if self.width == 1:
            return y.reshape(-1, 1)
        return np.eye(self.width, dtype=y.dtype)[y.astype(np.int64)]

    def weights(self, y):
        return self.class_table[y.astype(np.int64)]


MAX_BLOCKS = 1 << 22  # an epoch permutes at most this many blocks of rows: 32 MB of block numbers
GATHER_ROWS = 1024  # rows gathered from the mapped file before its pages are let go ...
GATHER_BYTES = 8 << 20  # ... or fewer, where they spread over more than this many bytes of it
FAULT_AROUND = 64 << 10  # a page fault maps up to this many bytes of cached neighbours (Linux's default)


class EncodedRows:
    """A run's training rows as the model reads them - inputs, targets, weights - in an unnamed temporary
    file (removed by the system when closed, or when the process ends however it ends). Rows are
    written once in file order (`write`) and gathered back by row number into buffers (`gather`)
    through a read-only memory map whose pages are released window by window (GATHER_ROWS, GATHER_BYTES), so
    they stay in the page cache, not in the process's memory."""

    def __init__(self, n_rows, n_columns, targets, dtype, folder=None):
        self.n_rows, self.dtype = int(n_rows), np.dtype(dtype)
        self.widths = (int(n_columns), targets.width, 1 if targets.class_table is not None else 0)
        self.folder = folder if folder is not None else tempfile.gettempdir()
        need = spill_bytes(n_rows, n_columns, targets.width, targets.class_table is not None, dtype)
        try:
            stat = os.statvfs(self.folder)
        except OSError as exc:
            raise InputError(f"cannot use {self.folder!r} for the training rows' temporary file ({exc})") from None
        free = stat.f_bavail * stat.f_frsize
        if need > free:
            raise InputError(f"shuffling the rows across the whole file needs {_size(need)} of disk in "
                             f"{self.folder!r}, which has {_size(free)} free; set TMPDIR to a folder with room, "
                             "or train without it (spill=False, --no-spill: rows are then shuffled within the "
                             "buffer only, which trains badly on a sorted file)")
        self.file = tempfile.TemporaryFile(dir=self.folder)
        self.written = 0
        # where each array begins: all inputs, then all targets, then all weights
        self.offsets = [int(o) for o in np.cumsum([0] + [self.n_rows * w * self.dtype.itemsize
                                                         for w in self.widths[:-1]])]
        self.map, self.arrays = None, None

    def write(self, X, Y, W):
        """Append rows (in order) to the file."""
        n = len(X)
        if self.written + n > self.n_rows:
            raise InputError("the data has more training rows than its first pass counted; "
                             "was the file changed during training?")
        try:
            for array, width, offset in zip((X, Y, W), self.widths, self.offsets):
                if width:
                    _write_all(self.file.fileno(), np.ascontiguousarray(array, dtype=self.dtype),
                               offset + self.written * width * self.dtype.itemsize)
        except OSError as exc:
            raise InputError(f"could not write the training rows to a temporary file in {self.folder!r} "
                             f"({exc.strerror or exc}); set TMPDIR to a folder with room, or train without it "
                             "(spill=False, --no-spill)") from None
        self.written += n

    @property
    def complete(self):
        return self.written == self.n_rows

    def gather(self, X, Y, W, at, rows):
        """The rows numbered `rows` (ascending) into rows at.. of the buffers X, Y, W."""
        if self.map is None:
            self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
            self.arrays = [np.frombuffer(self.map, self.dtype, self.n_rows * w, offset).reshape(self.n_rows, w)
                           if w else None for w, offset in zip(self.widths, self.offsets)]
        # a window ends after GATHER_ROWS rows or where the rows leave GATHER_BYTES of the inputs' span: the pages
        # a window maps (each fault maps up to 64 KiB of cached neighbours) stay bounded either way
        span = max(1, GATHER_BYTES // (self.widths[0] * self.dtype.itemsize))
        ends = np.union1d(np.searchsorted(rows, np.arange((int(rows[0]) // span + 1) * span, int(rows[-1]) + 1, span)),
                          np.arange(GATHER_ROWS, len(rows), GATHER_ROWS))
        for s, e in zip(np.concatenate([[0], ends]), np.concatenate([ends, [len(rows)]])):
            part = rows[s:e]
            for out, stored, width, offset in zip((X, Y, W), self.arrays, self.widths, self.offsets):
                if width:
                    np.take(stored, part, axis=0, out=out[at + s:at + e].reshape(len(part), width))
                    row_bytes = width * self.dtype.itemsize
                    first = max(0, (offset + int(part[0]) * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE - FAULT_AROUND)
                    last = min(len(self.map), offset + (int(part[-1]) + 1) * row_bytes + FAULT_AROUND)
                    self.map.madvise(mmap.MADV_DONTNEED, first, last - first)
        self.map.madvise(mmap.MADV_DONTNEED, 0, len(self.map))  # whatever a larger fault-around mapped

    def close(self):
        self.arrays = None
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:  # an exception's traceback still holds a view (Ctrl-C inside gather): the map
                pass             # closes when the last view goes
            self.map = None
        self.file.close()


def spill_bytes(n_rows, n_columns, target_width, weighted, dtype):
    """Disk that EncodedRows takes for these rows (target_width: FileTargets.width; weighted: class weights)."""
    return int(n_rows) * (n_columns + target_width + int(weighted)) * np.dtype(dtype).itemsize


def _size(n_bytes):
    if n_bytes < 2 ** 20:
        return f"{n_bytes / 2 ** 10:.0f} KiB"
    return f"{n_bytes / 2 ** 30:.2f} GiB" if n_bytes >= 2 ** 30 else f"{n_bytes / 2 ** 20:.1f} MiB"


def _write_all(fd, array, offset):
    view = memoryview(array).cast("B")
    while len(view):
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


class _EncodedRowSet:
    """Rows of EncodedRows, by row number, as a piece of an epoch."""

    def __init__(self, encoded, rows):
        self.encoded, self.rows, self.n = encoded, rows, len(rows)

    def copy_into(self, X, Y, W, at, start, count):
        # ascending row numbers read the map front to back; the buffer is trained in a random order anyway
        self.encoded.gather(X, Y, W, at, np.sort(self.rows[start:start + count]))


class _ChunkRows:
    """A transformed chunk of the file, as a piece of an epoch."""

    def __init__(self, X, Y, W):
        self.X, self.Y, self.W, self.n = X, Y, W, len(X)

    def copy_into(self, X, Y, W, at, start, count):
        X[at:at + count] = self.X[start:start + count]
        Y[at:at + count] = self.Y[start:start + count]
        if W.size:
            W[at:at + count] = self.W[start:start + count]


def block_rows(n_rows):
    """Rows that stay together in an epoch's order: one (a uniform permutation of the rows) up to
    MAX_BLOCKS rows, then as few as keep the permutation within MAX_BLOCKS numbers."""
    return max(1, -(-int(n_rows) // MAX_BLOCKS))


class TrainingRows:
    """Where an epoch's rows come from (one process or one MPI rank): the encoded rows in random blocks
    (`spill`), or the file's chunks (`chunks`: the chunk numbers to read; None: all). pieces(rng) gives an
    epoch's pieces of rows, each with n and copy_into(X, Y, W, at, start, count): the rows protocol of
    fastbp.engine.buffered."""

    def __init__(self, source, prep, targets, dtype, val_split, seed, stats, n_rows, spill=True, folder=None,
                 chunks=None):
        self.source, self.prep, self.targets, self.dtype = source, prep, targets, dtype
        self.val_split, self.seed, self.stats, self.n_rows = val_split, seed, stats, n_rows
        self.chunks = chunks
        self.encoded = EncodedRows(n_rows, prep.n_columns, targets, dtype, folder) if spill and n_rows else None

    @property
    def n_columns(self):
        return self.prep.n_columns

    def buffers(self, n, dtype):
        """Empty (targets, weights) buffers for n rows (fastbp.engine.buffered fills them)."""
        return self.targets.buffers(n, dtype)

    def _transformed(self, order):
        columns = self.prep.features + [self.prep.target]
        for _, X, y in read_training_rows(self.source, self.prep, columns, order, self.val_split, self.seed,
                                          self.stats, self.dtype):
            yield _ChunkRows(X, self.targets.rows(y), self.targets.weights(y) if self.targets.class_table
                             is not None else None)

    def pieces(self, rng, shuffle, buffer_rows):
        if self.encoded is None:
            order = self.chunks
            if shuffle and self.source.shuffleable and self.source.n_chunks:
                order = rng.permutation(self.source.n_chunks if order is None else order)
            return self._transformed(order)
        if not self.encoded.complete:  # the first epoch encodes the rows once
            for piece in self._transformed(self.chunks):
                self.encoded.write(piece.X, piece.Y, piece.W)
            if not self.encoded.complete:
                raise InputError(f"read {self.encoded.written} training rows, but the first pass counted "
                                 f"{self.n_rows}; was the file changed during training?")
        return self._encoded_pieces(rng, shuffle, buffer_rows)

    def _encoded_pieces(self, rng, shuffle, buffer_rows):
        size = block_rows(self.n_rows)
        n_blocks = -(-self.n_rows // size)
        order = np.arange(n_blocks, dtype=np.int32 if n_blocks < 2 ** 31 else np.int64)  # half the memory
        if shuffle:
            rng.shuffle(order)
        per_piece = max(1, buffer_rows // size)
        for first in range(0, n_blocks, per_piece):
            blocks = order[first:first + per_piece]
            if size == 1:  # up to MAX_BLOCKS rows: the block numbers are the row numbers
                yield _EncodedRowSet(self.encoded, blocks)
                continue
            rows = (blocks.astype(np.int64)[:, None] * size + np.arange(size)).ravel()
            yield _EncodedRowSet(self.encoded, rows[rows < self.n_rows])

    def close(self):
        if self.encoded is not None:
            self.encoded.close()


