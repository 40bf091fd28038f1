"""Sharing a file between MPI ranks (`shard`), wrapping the readers of fastbp.files.

- "rows": every rank reads every chunk into its own copy of the encoded rows, fills the same
  buffers as one process would (fastbp.engine.buffered.buffered_epochs) and computes only its
  slice of each global batch (the engine's DistributedRows); the parameters equal one process's.
- "chunks": the chunks are dealt out round-robin once (rank r owns chunks r, r + ranks, ...), so
  each rank reads only its own chunks (.npy slices, Parquet row groups) into its own buffer
  (and its own encoded rows, fastbp.files.streaming). Every epoch has the global number of
  steps, ceil(training rows / batch_size), and each rank puts its share of its rows into each
  step, so every step's batch comes from all ranks in proportion to their rows, even when a
  rank holds more rows than another. A valid data-parallel run, but its batches differ from
  one process's (not bit-equal).
"auto" picks "chunks" for Parquet and "rows" for the others (arrays keep the result
of one process; ranks on one machine share the mapped pages of a .npy; CSV cannot be
split without reading all of it).
"""
import numpy as np

from ..core.errors import InputError
from ..files.scan import holdout_mask
from ..engine.buffered import buffer_size, fill_buffers
from .distributed import rank_steps

SHARD_MODES = ("auto", "rows", "chunks")


def shard_mode(shard, source, ranks):
    """The mode ("rows" or "chunks") that `shard` means for this source and rank count; errors say why not."""
    if shard not in SHARD_MODES:
        raise InputError(f"shard must be one of {', '.join(SHARD_MODES)}, got {shard!r}")
    if shard == "chunks" and source.chunk_starts is None:
        raise InputError(f"{source.path!r}: a CSV file cannot be split into chunks without reading all of it; "
                         "convert it to Parquet (or .npy) to shard it, or use shard 'rows'")
    if ranks == 1:
        return "rows"
    if shard == "chunks" and source.n_chunks < ranks:
        raise InputError(f"{source.path!r} has {source.n_chunks} chunk(s) for {ranks} ranks; write it in smaller "
                         "row groups (or pass smaller --chunk-rows for .npy), or use shard 'rows'")
    if shard == "auto":
        chunked = source.shard_by_chunks and source.n_chunks >= ranks
        return "chunks" if chunked else "rows"
    return shard


def own_chunks(source, comm):
    """The chunk numbers this rank reads under shard="chunks"."""
    return np.arange(comm.rank, source.n_chunks, comm.size)


def training_rows_of(source, chunks, train_rows, val_split, seed):
    """Training rows in the given chunks, from the stateless hold-out hash (no reading); the whole file's
    must still be the first pass's `train_rows`."""
    starts = source.chunk_starts
    counts = np.array([int((~holdout_mask(seed, np.arange(a, b), val_split)).sum())
                       for a, b in zip(starts[:-1], starts[1:])], dtype=np.int64)
    if counts.sum() != train_rows:
        raise InputError(f"the file has {counts.sum()} training rows now, but the first pass counted {train_rows}; "
                         "was the file changed during training?")
    return int(counts[chunks].sum())


def chunk_sharded_epochs(engine, rows, train_rows, buffer_rows, stats, sync_every):
    """run_epoch for shard="chunks": each rank trains on its own chunks' rows (rows: TrainingRows over
    own_chunks); see the module notes."""
    comm = engine.comm
    # every rank knows train_rows, so all agree on the number of steps without talking
    n_steps = -(-train_rows // engine.batch_size)
    mine = rows.n_rows
    # this rank's rows in each global step: its share, spread evenly over the steps
    step_rows = np.diff(np.arange(n_steps + 1, dtype=np.int64) * mine // n_steps)
    dtype = engine.params.dtype
    local_batch = int(step_rows.max(initial=1))
    buffer_rows = buffer_size(buffer_rows, local_batch, rows.n_columns, dtype)
    Xbuf = np.empty((max(1, min(buffer_rows, mine)), rows.n_columns), dtype=dtype)
    Ybuf, Wbuf = rows.buffers(len(Xbuf), dtype)
    # whole steps per buffer
    buffers = []  # (first step, steps) per buffer
    first, held = 0, 0
    for s, m in enumerate(step_rows):
        if held + m > len(Xbuf):
            buffers.append((first, s - first))
            first, held = s, 0
        held += m
    buffers.append((first, n_steps - first))
    sizes = [int(step_rows[a:a + n].sum()) for a, n in buffers]

    def run_epoch(hyper):
        # rows within a rank's buffer are shuffled by a per-rank generator, so the shared one stays in step
        buffer_rng = np.random.default_rng([int(engine.state.shuffle_rng.integers(2 ** 63)), comm.rank])
        stats.chunks_read = [int(k) for k in rows.chunks]
        steps = rank_steps(engine, hyper, sync_every)
        pieces = rows.pieces(buffer_rng, engine.shuffle, len(Xbuf))
        filled = fill_buffers(pieces, Xbuf, Ybuf, Wbuf, sizes)
        for (first, n), size in zip(buffers, sizes):
            next(filled)
            stats.max_buffer_rows = max(stats.max_buffer_rows, size)
            perm = buffer_rng.permutation(size) if engine.shuffle else np.arange(size)
            at = 0
            for m in step_rows[first:first + n]:
                if not steps.step(Xbuf, Ybuf, Wbuf, perm, at, int(m)):
                    return float("nan"), train_rows
                at += int(m)
        for _ in filled:  # the pieces must be used up exactly
            pass
        stats.rows_per_epoch = train_rows
        return steps.finish(), train_rows

    return run_epoch
