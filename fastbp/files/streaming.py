"""Training from a file in bounded memory: shuffled chunks through a fixed-size row buffer.

Each epoch visits the source's chunks in an order drawn from the training state's shuffle
RNG (row groups / memmap slices; CSV blocks stay in file order), transforms each
chunk, and fills a buffer of `buffer_rows` rows (a whole number of batches). A
full buffer is trained in a random row order by the engine, as in-memory data
is; the last, partial buffer ends the epoch. Memory is the buffer, one chunk, and
the validation sample - never the file. Validation rows (chosen by a stateless hash
of the row number) are skipped here. Under a communicator the engine says which rows
of each buffer this process computes (fastbp.parallel), and only those are transformed.
"""
import numpy as np

from ..core.errors import InputError
from .preprocess import holdout_mask
from .sources import chunk_readers


class StreamStats:
    """What the loader held at most, for tests and reports."""

    def __init__(self):
        self.max_buffer_rows = 0
        self.max_chunk_rows = 0
        self.rows_per_epoch = 0
        self.chunks_read = []  # this rank's chunk numbers in the last epoch


BUFFER_BYTES = 32 << 20  # the default buffer: 262,144 rows, fewer when rows are wide


def default_buffer_rows(n_inputs, dtype):
    """Rows shuffled together by default: as many as fit in BUFFER_BYTES, at most 262,144."""
    return int(max(1, min(262_144, BUFFER_BYTES // (max(1, n_inputs) * np.dtype(dtype).itemsize))))


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


def buffered_epochs(engine, source, prep, train_rows, buffer_rows, val_split, seed, stats, targets):
    """The epoch source of a file: one process, or shard="rows" under MPI (equal to one process).
    targets: FileTargets, what the model learns from the target column."""
    batch = engine.batch_size
    dtype = engine.params.dtype
    if buffer_rows is None:
        buffer_rows = default_buffer_rows(prep.n_inputs, dtype)
    buffer_rows = max(batch, int(buffer_rows) // batch * batch)
    Xbuf = np.empty((min(buffer_rows, max(train_rows, 1)), prep.n_inputs), dtype=dtype)
    Ybuf, Wbuf = targets.buffers(len(Xbuf), dtype)
    columns = prep.features + [prep.target]
    rng = engine.state.shuffle_rng

    def plan(first_row):
        """(size, row order, rows this process needs or None for all) of the buffer starting at this row."""
        n = min(buffer_rows, train_rows - first_row)
        perm = rng.permutation(n) if engine.shuffle else np.arange(n)
        return n, perm, engine.rows_needed(n, perm)

    def run_epoch(hyper):
        order = None
        if source.shuffleable and engine.shuffle and source.n_chunks:
            order = rng.permutation(source.n_chunks)
        total, total_mass, rows, filled = 0.0, 0.0, 0, 0
        size, perm, need = plan(0)
        for start, n, read in chunk_readers(source, columns, prep.kinds(), order):
            stats.max_chunk_rows = max(stats.max_chunk_rows, n)
            kept = np.flatnonzero(~holdout_mask(seed, np.arange(start, start + n), val_split))
            if need is None:  # one process: transform the whole chunk at once
                X, y = prep.transform(read(_rows_or_all(kept, n)), start, dtype=dtype)
            pos = 0
            while pos < len(kept):
                if rows + filled >= train_rows:
                    raise InputError("the data has more training rows than its first pass counted; "
                                     "was the file changed during training?")
                take = min(size - filled, len(kept) - pos)
                if need is None:
                    Xbuf[filled:filled + take] = X[pos:pos + take]
                    Ybuf[filled:filled + take] = targets.rows(y[pos:pos + take])
                    if Wbuf.size:
                        Wbuf[filled:filled + take] = targets.weights(y[pos:pos + take])
                else:
                    here = kept[pos:pos + take]
                    mine = np.flatnonzero(need[filled:filled + take])
                    # only this rank's rows of the chunk: a memory-mapped .npy reads just those
                    Xs, ys = prep.transform(read(here[mine]), start, dtype=dtype)
                    Xbuf[filled + mine] = Xs
                    Ybuf[filled + mine] = targets.rows(ys)
                    if Wbuf.size:  # every rank weighs whole global batches: the labels of all rows
                        labels = prep.encode_target(read(here)[prep.target], start, dtype)
                        Wbuf[filled:filled + take] = targets.weights(labels)
                filled += take
                pos += take
                if filled == size:
                    stats.max_buffer_rows = max(stats.max_buffer_rows, size)
                    weights = Wbuf[:size]
                    loss = engine.train_rows(Xbuf[:size], Ybuf[:size], weights, perm, hyper)
                    if not np.isfinite(loss):
                        return float("nan"), rows
                    mass = weights.sum(dtype=np.float64) if weights.size else size
                    total += loss * mass
                    total_mass += mass
                    rows += size
                    filled = 0
                    if rows < train_rows:
                        size, perm, need = plan(rows)
            del read  # the chunk goes before the next one is read
        if rows != train_rows:
            raise InputError(f"read {rows + filled} training rows, but the first pass counted {train_rows}; "
                             "was the file changed during training?")
        stats.rows_per_epoch = rows
        return total / total_mass if total_mass > 0 else 0.0, rows

    return run_epoch
