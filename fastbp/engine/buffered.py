"""Epoch sources that train through a fixed-size buffer: rows arrive in pieces (from a file's chunks or its
encoded spill, fastbp.files.streaming; a rank's own chunks, fastbp.parallel.file_shards), one loop copies
them into the buffer (fill_buffers), and the engine trains each full buffer in a random row order.

The rows protocol: `n_columns`; `buffers(n, dtype)` -> empty (targets, weights) buffers for n rows (weights
empty when there are none); `pieces(rng, shuffle, buffer_rows)` -> an epoch's pieces, each with `n` and
`copy_into(X, Y, W, at, start, count)`.
"""
import numpy as np

from ..core.errors import InputError


class StreamStats:
    """What the loader held at most, for tests and reports."""

    def __init__(self):
        self.max_buffer_rows = 0
        self.max_chunk_rows = 0
        self.rows_per_epoch = 0
        self.chunks_read = []  # this rank's chunk numbers in the last epoch


BUFFER_BYTES = 32 << 20  # the default buffer: 262,144 rows, fewer when rows are wide


def default_buffer_rows(n_columns, dtype):
    """Rows shuffled together by default: as many as fit in BUFFER_BYTES, at most 262,144."""
    return int(max(1, min(262_144, BUFFER_BYTES // (max(1, n_columns) * np.dtype(dtype).itemsize))))


def fill_buffers(pieces, X, Y, W, sizes):
    """Copies the pieces' rows into the buffers X, Y, W (W empty: no weights), `sizes[i]` rows the i-th
    time, and yields each size once its rows are in. The pieces must give exactly sum(sizes) rows."""
    total, rows = sum(sizes), 0
    pieces = iter(pieces)
    piece, pos = None, 0
    for size in sizes:
        filled = 0
        while filled < size:
            if piece is None or pos == piece.n:
                piece, pos = next(pieces, None), 0
                if piece is None:
                    raise InputError(f"read {rows + filled} training rows, but the first pass counted {total}; "
                                     "was the file changed during training?")
                continue
            take = min(size - filled, piece.n - pos)
            piece.copy_into(X, Y, W, filled, pos, take)
            filled, pos = filled + take, pos + take
        yield size
        rows += size
    if (piece is not None and pos < piece.n) or any(p.n for p in pieces):
        raise InputError("the data has more training rows than its first pass counted; "
                         "was the file changed during training?")


def buffer_size(buffer_rows, batch, n_columns, dtype):
    """The rows of a buffer: buffer_rows (default_buffer_rows when None) in whole batches."""
    if buffer_rows is None:
        buffer_rows = default_buffer_rows(n_columns, dtype)
    return max(batch, int(buffer_rows) // batch * batch)


def buffered_epochs(engine, rows, train_rows, buffer_rows, stats):
    """The epoch source of a file: one process, or shard="rows" under MPI (every rank fills the same
    buffers and trains its slice of each global batch: equal to one process). rows: the rows protocol above
    (fastbp.files.streaming.TrainingRows)."""
    dtype = engine.params.dtype
    buffer_rows = buffer_size(buffer_rows, engine.batch_size, rows.n_columns, dtype)
    Xbuf = np.empty((min(buffer_rows, max(train_rows, 1)), rows.n_columns), dtype=dtype)
    Ybuf, Wbuf = rows.buffers(len(Xbuf), dtype)
    rng = engine.state.shuffle_rng
    sizes = [len(Xbuf)] * (train_rows // len(Xbuf)) + ([train_rows % len(Xbuf)] if train_rows % len(Xbuf) else [])

    def run_epoch(hyper):
        total, total_mass, done = 0.0, 0.0, 0
        pieces = rows.pieces(rng, engine.shuffle, len(Xbuf))
        for size in fill_buffers(pieces, Xbuf, Ybuf, Wbuf, sizes):
            stats.max_buffer_rows = max(stats.max_buffer_rows, size)
            perm = rng.permutation(size) if engine.shuffle else np.arange(size)
            weights = Wbuf[:size]
            loss = engine.train_rows(Xbuf[:size], Ybuf[:size], weights, perm, hyper)
            if not np.isfinite(loss):
                return float("nan"), done
            mass = weights.sum(dtype=np.float64) if weights.size else size
            total += loss * mass
            total_mass += mass
            done += size
        stats.rows_per_epoch = done
        return total / total_mass if total_mass > 0 else 0.0, done

    return run_epoch
