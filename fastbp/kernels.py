"""Compiled forward / backward / epoch kernels. No Python objects inside.

Every kernel works on one thread's chunk of rows with that chunk's own
workspace row (activations, gelu pre-activations, two ping-pong delta buffers)
and its own gradient slab; the parallel drivers give each thread a chunk and
sum the slabs in a fixed order, so results do not depend on thread timing.

Workspace row layout, for a chunk of at most `capacity` rows: the activations
of layer l (l = 0 is the input, l = L the logits) start at capacity*sum(sizes[:l])
and hold a row-major (rows, sizes[l]) block.

Types are fixed per dtype (sizes, offsets and codes are int64 arrays, scalars
are int64 or the model dtype), so each kernel compiles once per dtype whatever
the layer count or batch size.
"""
import math

import numpy as np
from numba import prange

from .activations import GELU, bias_activate, scale_by_derivative
from .config import jit
from .losses import row_loss_and_delta
from .optim import apply_update


@jit
def _act_offset(sizes, capacity, layer):
    offset = 0
    for l in range(layer):
        offset += sizes[l]
    return capacity * offset


@jit
def _gather_rows(X, order, r0, dst):
    n_in = X.shape[1]
    for i in range(dst.shape[0]):
        src = order[r0 + i]
        for j in range(n_in):
            dst[i, j] = X[src, j]


@jit
def _forward(params, sizes, w_offsets, act_codes, acts, zs, capacity, rows):
    """Forward pass of `rows` rows whose inputs are already in the workspace; logits end at layer L."""
    n_layers = sizes.size - 1
    off_in = 0
    for l in range(n_layers):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        off_out = off_in + capacity * n_in
        a_in = acts[off_in:off_in + rows * n_in].reshape((rows, n_in))
        a_out = acts[off_out:off_out + rows * n_out].reshape((rows, n_out))
        w0 = w_offsets[l]
        W = params[w0:w0 + n_in * n_out].reshape((n_in, n_out))
        b = params[w0 + n_in * n_out:w0 + n_in * n_out + n_out]
        if act_codes[l] == GELU:
            z = zs[off_out:off_out + rows * n_out].reshape((rows, n_out))
            np.dot(a_in, W, z)
            bias_activate(z, b, a_out, GELU)
        else:
            np.dot(a_in, W, a_out)
            bias_activate(a_out, b, a_out, act_codes[l])
        off_in = off_out


@jit
def _backward(params, grad, sizes, w_offsets, act_codes, acts, zs, deltas, capacity, rows):
    """Backward pass from the output delta in deltas[0]; writes every dW and db of `grad`."""
    n_layers = sizes.size - 1
    cur = 0
    for l in range(n_layers - 1, -1, -1):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        off_in = _act_offset(sizes, capacity, l)
        a_in = acts[off_in:off_in + rows * n_in].reshape((rows, n_in))
        d = deltas[cur, :rows * n_out].reshape((rows, n_out))
        w0 = w_offsets[l]
        dW = grad[w0:w0 + n_in * n_out].reshape((n_in, n_out))
        db = grad[w0 + n_in * n_out:w0 + n_in * n_out + n_out]
        np.dot(a_in.T, d, dW)
        db[:] = 0
        for i in range(rows):
            for j in range(n_out):
                db[j] += d[i, j]
        if l > 0:  # the input layer needs no input gradient
            W = params[w0:w0 + n_in * n_out].reshape((n_in, n_out))
            d_prev = deltas[1 - cur, :rows * n_in].reshape((rows, n_in))
            np.dot(d, W.T, d_prev)
            z_in = zs[off_in:off_in + rows * n_in].reshape((rows, n_in)) if zs.size else a_in
            scale_by_derivative(d_prev, a_in, z_in, act_codes[l - 1])
            cur = 1 - cur


@jit
def chunk_gradient(params, grad, sizes, w_offsets, act_codes, loss_code, acts, zs, deltas,
                   capacity, X, Y, order, r0, r1, scale):
    """Gradient of scale * (sum of losses of rows order[r0:r1]) into `grad`; returns that loss sum."""
    rows = r1 - r0
    n_in = sizes[0]
    n_layers = sizes.size - 1
    n_out = sizes[n_layers]
    _gather_rows(X, order, r0, acts[:rows * n_in].reshape((rows, n_in)))
    _forward(params, sizes, w_offsets, act_codes, acts, zs, capacity, rows)
    off_out = _act_offset(sizes, capacity, n_layers)
    logits = acts[off_out:off_out + rows * n_out].reshape((rows, n_out))
    d = deltas[0, :rows * n_out].reshape((rows, n_out))
    loss = 0.0
    for i in range(rows):
        loss += row_loss_and_delta(loss_code, logits[i], Y[order[r0 + i]], d[i], scale)
    _backward(params, grad, sizes, w_offsets, act_codes, acts, zs, deltas, capacity, rows)
    return loss


@jit(parallel=True)
def train_epoch(params, slabs, state, step, hyper, opt_code, sizes, w_offsets, act_codes, loss_code,
                loss_elements, acts, zs, deltas, capacity, X, Y, order, batch_size):
    """One epoch of mini-batch training over rows in `order`, updating params in place.

    Each batch is split into up to slabs.shape[0] chunks of consecutive rows, one per
    thread. Returns the mean loss over the epoch, or NaN as soon as a batch's loss is
    not finite (that batch's update is not applied).
    """
    n = order.size
    n_chunks = slabs.shape[0]
    chunk_loss = np.zeros(n_chunks)
    one = params.dtype.type(1.0)
    total = 0.0
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        active = min(n_chunks, m)
        scale = one / params.dtype.type(m * loss_elements)
        for c in prange(active):
            r0 = start + (c * m) // active
            r1 = start + ((c + 1) * m) // active
            chunk_loss[c] = chunk_gradient(params, slabs[c], sizes, w_offsets, act_codes, loss_code,
                                           acts[c], zs[c], deltas[c], capacity, X, Y, order, r0, r1, scale)
        batch_loss = 0.0
        for c in range(active):
            batch_loss += chunk_loss[c]
        if not math.isfinite(batch_loss):
            return np.nan
        total += batch_loss
        apply_update(opt_code, params, slabs, active, state, step, hyper)
    return total / (n * loss_elements)


@jit(parallel=True)
def loss_and_gradient(params, grad, slabs, sizes, w_offsets, act_codes, loss_code, loss_elements,
                      acts, zs, deltas, capacity, X, Y):
    """Mean loss over all rows of X and its gradient (into `grad`), in blocks of `capacity` rows."""
    n = X.shape[0]
    n_chunks = slabs.shape[0]
    order = np.arange(n)
    scale = params.dtype.type(1.0) / params.dtype.type(n * loss_elements)
    n_blocks = (n + capacity - 1) // capacity
    sums = np.zeros((n_chunks, params.size), dtype=params.dtype)
    chunk_loss = np.zeros(n_chunks)
    for c in prange(n_chunks):
        for blk in range(c, n_blocks, n_chunks):
            r0 = blk * capacity
            r1 = min(n, r0 + capacity)
            chunk_loss[c] += chunk_gradient(params, slabs[c], sizes, w_offsets, act_codes, loss_code,
                                            acts[c], zs[c], deltas[c], capacity, X, Y, order, r0, r1, scale)
            sums[c] += slabs[c]
    grad[:] = sums[0]
    for c in range(1, n_chunks):
        grad += sums[c]
    return chunk_loss.sum() / (n * loss_elements)


@jit(parallel=True)
def forward_all(params, sizes, w_offsets, act_codes, acts, zs, capacity, X, out):
    """Logits of every row of X into `out`, in blocks of `capacity` rows spread over the chunks."""
    n = X.shape[0]
    n_chunks = acts.shape[0]
    n_in = sizes[0]
    n_layers = sizes.size - 1
    n_out = sizes[n_layers]
    off_out = _act_offset(sizes, capacity, n_layers)
    n_blocks = (n + capacity - 1) // capacity
    for c in prange(n_chunks):
        ws = acts[c]
        for blk in range(c, n_blocks, n_chunks):
            r0 = blk * capacity
            rows = min(n, r0 + capacity) - r0
            ws[:rows * n_in] = X[r0:r0 + rows].ravel()
            _forward(params, sizes, w_offsets, act_codes, ws, zs[c], capacity, rows)
            out[r0:r0 + rows] = ws[off_out:off_out + rows * n_out].reshape((rows, n_out))
