"""Sharing a file between MPI ranks (`shard`), wrapping the readers of fastbp.files.

- "rows": every rank walks the same global batches as one process would and
  transforms only its slice of each (fastbp.files.streaming.buffered_epochs with the
  engine's DistributedRows); the parameters equal one process's, but every rank reads
  every chunk (of a memory-mapped .npy, only its rows).
- "chunks": each epoch's shuffled chunk order is dealt out round-robin, so each rank
  reads only its own chunks (.npy slices, Parquet row groups) into its own buffer;
  step s averages the gradients of every rank's s-th local batch. A valid
  data-parallel run, but its batches differ from one process's (not bit-equal).
"auto" picks "chunks" for Parquet and "rows" for the others (arrays keep the result
of one process; ranks on one machine share the mapped pages of a .npy; CSV cannot be
split without reading all of it).
"""
import numpy as np

from ..core.errors import InputError
from ..files.preprocess import holdout_mask
from ..files.streaming import default_buffer_rows, read_training_rows
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


def chunk_sharded_epochs(engine, source, prep, train_rows, buffer_rows, val_split, seed, stats, sync_every,
                         targets):
    """run_epoch for shard="chunks": each rank trains on its own chunks; see the module notes.
    targets: FileTargets, what the model learns from the target column."""
    comm = engine.comm
    ranks = comm.size
    starts = source.chunk_starts
    # training rows per chunk, from the stateless hold-out hash: every rank knows every rank's
    # row count, so all agree on the number of steps without talking
    counts = np.array([int((~holdout_mask(seed, np.arange(a, b), val_split)).sum())
                       for a, b in zip(starts[:-1], starts[1:])])
    if counts.sum() != train_rows:
        raise InputError(f"the file has {counts.sum()} training rows now, but the first pass counted {train_rows}; "
                         "was the file changed during training?")
    local_batch = -(-engine.batch_size // ranks)
    dtype = engine.params.dtype
    if buffer_rows is None:
        buffer_rows = default_buffer_rows(prep.n_inputs, dtype)
    buffer_rows = max(local_batch, int(buffer_rows) // local_batch * local_batch)
    Xbuf = np.empty((min(buffer_rows, train_rows), prep.n_inputs), dtype=dtype)
    Ybuf, Wbuf = targets.buffers(len(Xbuf), dtype)
    columns = prep.features + [prep.target]

    def run_epoch(hyper):
        order = engine.state.shuffle_rng.permutation(source.n_chunks) if engine.shuffle else np.arange(source.n_chunks)
        # rows within a rank's buffer are shuffled by a per-rank generator, so the shared one stays in step
        buffer_rng = np.random.default_rng([int(engine.state.shuffle_rng.integers(2 ** 63)), comm.rank])
        rows_of = [int(counts[order[r::ranks]].sum()) for r in range(ranks)]
        n_steps = max(-(-n // local_batch) for n in rows_of)
        mine = order[comm.rank::ranks]
        stats.chunks_read = [int(k) for k in mine]
        steps = rank_steps(engine, hyper, sync_every)
        step = 0

        def train_buffer(size):
            nonlocal step
            stats.max_buffer_rows = max(stats.max_buffer_rows, size)
            perm = buffer_rng.permutation(size) if engine.shuffle else np.arange(size)
            for s in range(0, size, local_batch):
                m = min(local_batch, size - s)
                if not steps.step(Xbuf, Ybuf, Wbuf, perm, s, m):
                    return False
                step += 1
            return True

        filled, rows = 0, 0
        for _, X, y in read_training_rows(source, prep, columns, mine, val_split, seed, stats, dtype):
            if rows + filled + len(y) > rows_of[comm.rank]:
                raise InputError("the data has more training rows than its first pass counted; "
                                 "was the file changed during training?")
            pos = 0
            while pos < len(y):
                take = min(len(Xbuf) - filled, len(y) - pos)
                Xbuf[filled:filled + take] = X[pos:pos + take]
                Ybuf[filled:filled + take] = targets.rows(y[pos:pos + take])
                if Wbuf.size:
                    Wbuf[filled:filled + take] = targets.weights(y[pos:pos + take])
                filled, pos = filled + take, pos + take
                if filled == len(Xbuf):
                    if not train_buffer(filled):
                        return float("nan"), train_rows
                    rows, filled = rows + filled, 0
        if rows + filled != rows_of[comm.rank]:
            raise InputError(f"read {rows + filled} training rows of this rank's chunks, but the first pass "
                             f"counted {rows_of[comm.rank]}; was the file changed during training?")
        if filled and not train_buffer(filled):
            return float("nan"), train_rows
        while step < n_steps:  # this rank's chunks are used up: it joins the others' remaining steps
            if not steps.step(Xbuf, Ybuf, Wbuf, np.arange(1), 0, 0):
                return float("nan"), train_rows
            step += 1
        stats.rows_per_epoch = train_rows
        return steps.finish(), train_rows

    return run_epoch


