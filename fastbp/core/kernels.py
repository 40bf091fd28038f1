"""Compiled forward / backward / epoch kernels. No Python objects inside.

One mini-batch gradient takes two parallel regions. The first always splits
rows: each thread takes a contiguous slice of the batch's rows and runs forward
through every layer, the fused output delta, and the deltas back down every
layer. The second depends on which data is smaller to move between cores:

- slabs (when the parameters, times threads - 1, are fewer than the batch's
  activation values: narrow and typical tabular nets): in the first region each
  thread also computes the whole gradient of its own rows (thread 0 into grad,
  the others into private slabs); the second region sums the slabs range by
  range of parameters and steps the optimizer on each block while it is in L1.
- weight slices (few rows, many parameters, e.g. 32-row batches of a 256-wide
  net): each thread takes a contiguous slice of every layer's dW rows and
  computes it over the whole batch in one GEMM, dW[k0:k1] = a_in[:, k0:k1]^T @
  delta, plus a slice of db, and steps the optimizer on that slice at once.

Either way each thread writes only memory no other thread touches (two threads
writing interleaved column blocks of the same rows measured no faster than one),
the summation order is fixed for a given thread count, and results are
deterministic. The parts (n_parts) are row groups, not threads: with fewer Numba threads
than parts, a thread runs several parts and the results are the same bits (threads.ThreadChooser
relies on this beside busy processes). It still runs them part by part: one full-height product
would be faster (small_batch 0.96 of a one-part run instead of 0.82), but OpenBLAS's float32 GEMM
gives a row different bits in products of different heights (measured; its float64 GEMM does not).
Clipping needs the whole gradient, so it steps after the batch. All GEMMs call BLAS
single-threaded (fastbp.blas); the threads are ours.

Workspace (one per fit): for up to `capacity` rows, the activations of every
layer (acts: layer l, l = 0 the input and l = L the logits, is a row-major
(capacity, sizes[l]) block at capacity*sum(sizes[:l])), the gelu pre-activations
at the same offsets (zs, empty when no layer uses gelu), and the deltas of
every layer's outputs at the same offsets (deltas; the input block is unused).
An ensemble with adapters on every layer (fastbp.core.layout) keeps three sections in zs, each laid out as
acts: the pre-activations, the unit outputs, and each shared layer's product before its output adapter; acts
then holds what each layer reads, the unit outputs times its input adapter. The gradients of those adapters and
of the members' biases are added up per part in the row pass (_adapted_deltas), since the deltas buffer keeps
only the products' deltas, and summed with the slabs or in the second region (_member_gradients).

Embedding tables (Net.tables) sit after the layers in params. The gather copies
each row's category codes' table rows into the input block; the backward pass
computes those inputs' deltas (one GEMM on W_0's embedded rows); then, serially,
each looked-up row's gradient is zeroed, summed and marked (TableMarks), and the
optimizer steps the marked rows only, so a batch costs the same whatever a
table's size. The dense regions run over the layers' parameters only.

Kernels take the typed bundles of fastbp.core.bundles (Net, Regularization,
Optimizer, Workspace, TableMarks, Batch), outputs first, so each compiles once per dtype
whatever the layer count or batch size. Options that are off cost nothing
measurable: sample weights are an empty array, dropout a vector of zeros,
clipping 0.
"""
import math

import numpy as np
from numba import prange

from .activations import (GELU, bias_activate, gelu_bias_activate, gelu_scale_by_derivative,
                          scale_by_derivative)
from .blas import gemm
from .bundles import Batch
from .compile import jit
from .dropout import apply_mask, mask_delta, row_key
from .fpmode import flush_denormals, restore_fp_mode
from .losses import row_loss_and_delta
from .optim import update_range

_ALIGN = 16  # split points fall on multiples of 16 elements: whole cache lines per thread
_STEP_BLOCK = 1024  # parameters summed and stepped together (grad, slabs, params, state blocks stay in L1)


def extras_of(net):
    """The kernels' `extras` argument: the net again for an ensemble or embedding tables, None for a single dense
    model. Numba drops a branch on an argument typed None before typing it, so a single model's kernels are built
    without the ensemble and table code (a cold first fit 0.7x as long); the others get a build of
    their own."""
    return net if net.members > 1 or net.tables.shape[0] > 0 else None


def build_name(net):
    """The build that runs `net` (extras_of), as compile notices name it."""
    return "single-model" if extras_of(net) is None else "ensemble and embedding"


@jit
def uses_slabs(n_params, sizes, rows, n_parts):
    """True when batch_gradient sums per-thread gradient slabs, False when threads split the weights:
    slabs move (n_parts - 1) * n_params values between cores, weight slices the batch's activations."""
    width = 0
    for size in sizes:
        width += size
    return n_parts > 1 and (n_parts - 1) * n_params <= rows * width


@jit
def _offset(sizes, capacity, layer):
    """Start of layer `layer`'s block in a workspace buffer."""
    offset = 0
    for l in range(layer):
        offset += sizes[l]
    return capacity * offset


@jit
def _split(n, part, n_parts):
    """[lo, hi) of part `part` when n items are divided into n_parts aligned slices."""
    units = (n + _ALIGN - 1) // _ALIGN
    lo = min(n, (part * units // n_parts) * _ALIGN)
    hi = min(n, ((part + 1) * units // n_parts) * _ALIGN)
    return lo, hi


@jit
def _gather(params, net, extras, X, order, start, row0, rows, m, acts, zs):
    """Workspace rows [row0, row0+rows) of a batch of m rows order[start:start+m] of X into the input block (acts'):
    _gather_rows, or for an ensemble _gather_member_rows."""
    if extras is not None and net.members > 1:
        _gather_member_rows(params, net, X, order, start, row0, rows, m, acts, zs)
    else:
        _gather_rows(params, net, extras, X, order, start, row0, rows, acts)


@jit
def _gather_member_rows(params, net, X, order, start, row0, rows, m, acts, zs):
    """An ensemble's member e takes workspace rows [e*m, (e+1)*m): the batch's inputs (_gather_row) go into zs's
    input block, and times the member's adapter into acts'."""
    n_in = net.sizes[0]
    adapters = _adapter_offset(net)
    for i in range(row0, row0 + rows):
        e = i // m
        _gather_row(params, net, X, order[start + i - e * m], zs, i * n_in)
        for j in range(n_in):
            acts[i * n_in + j] = zs[i * n_in + j] * params[adapters + e * n_in + j]


@jit
def _gather_rows(params, net, extras, X, order, start, row0, rows, acts):
    """Rows order[start+row0 : start+row0+rows] of X into the input block: the dense inputs, then for each
    embedding table the row its category code picks."""
    n_in = net.sizes[0]
    if extras is None or net.n_dense == n_in:  # no tables: X's rows as they are (the loop vectorizes best)
        for i in range(row0, row0 + rows):
            src = order[start + i]
            for j in range(n_in):
                acts[i * n_in + j] = X[src, j]
        return
    for i in range(row0, row0 + rows):
        _gather_row(params, net, X, order[start + i], acts, i * n_in)


@jit
def _gather_row(params, net, X, src, out, at):
    """X's row src into out[at:]: its dense inputs, then each embedding table's row for its category code."""
    n_dense = net.n_dense
    for j in range(n_dense):
        out[at + j] = X[src, j]
    at += n_dense
    for e in range(net.tables.shape[0]):
        n_rows, d, offset = net.tables[e, 0], net.tables[e, 1], net.tables[e, 2]
        t0 = offset + _code(X[src, n_dense + e], n_rows) * d
        for k in range(d):
            out[at + k] = params[t0 + k]
        at += d


@jit
def _adapter_offset(net):
    """Where an ensemble's input adapters (members x sizes[0]) start: after the heads."""
    sizes = net.sizes
    n_in, n_out = sizes[sizes.size - 2], sizes[sizes.size - 1]
    return net.w_offsets[sizes.size - 2] + net.members * (n_in * n_out + n_out)


@jit
def every_layer(net):
    """True for an ensemble with adapters on every shared layer (TabM): their S, B and R follow R_0."""
    return net.members > 1 and net.n_layer_params > _adapter_offset(net) + net.members * net.sizes[0]


@jit
def _member_offset(net, l):
    """Where shared layer l's output adapters S_l (members x sizes[l+1]) start, followed by its members' biases
    B_l and, unless the heads come next, R_{l+1} (fastbp.core.layout)."""
    at = _adapter_offset(net) + net.members * net.sizes[0]
    for j in range(l):
        at += net.members * net.sizes[j + 1] * (3 if j < net.sizes.size - 3 else 2)
    return at


@jit
def _n_blocks(net, l):
    """Parameter blocks of layer l: a head per member for an ensemble's last layer, else one."""
    return net.members if l == net.sizes.size - 2 else 1


@jit
def _block(net, l, e, m, row0, rows):
    """Layer l's parameter block e (_n_blocks): the workspace rows of [row0, row0+rows) it acts on, [lo, hi)
    (member e's of a batch of m rows, for a head), and the start of its W (_w_start)."""
    if l == net.sizes.size - 2 and net.members > 1:
        return max(row0, e * m), min(row0 + rows, (e + 1) * m), _w_start(net, l, e)
    return row0, row0 + rows, net.w_offsets[l]


@jit
def _w_start(net, l, e):
    """Where layer l's parameter block e (_n_blocks) starts: its W, then its b (but a shared layer's of an ensemble
    with adapters on every layer, whose biases are the members')."""
    if l == net.sizes.size - 2 and net.members > 1:
        n_in, n_out = net.sizes[l], net.sizes[l + 1]
        return net.w_offsets[l] + e * (n_in * n_out + n_out)
    return net.w_offsets[l]


@jit
def _code(value, n_rows):
    """The table row of a category code: the code, or the last (unknown) row for anything else (a code not
    seen in training, NaN, a negative or fractional-overflowing value): no code can index outside the table."""
    if value >= 0 and value < n_rows - 1:
        return np.int64(value)
    return n_rows - 1


@jit
def _lookups(net, marks, X, order, start, rows, m):
    """For workspace rows [0, rows) (of a batch of m rows) and each table, into marks.lookups: the row's mark index
    in marks.touched (the tables' rows in order) and the start of the table row it looks up in the flat
    parameters."""
    for i in range(rows):
        src = order[start + i % m]
        base = 0
        for e in range(net.tables.shape[0]):
            n_rows, d, offset = net.tables[e, 0], net.tables[e, 1], net.tables[e, 2]
            code = _code(X[src, net.n_dense + e], n_rows)
            marks.lookups[i, e, 0] = base + code
            marks.lookups[i, e, 1] = offset + code * d
            base += n_rows


@jit
def _table_gradients(grad, params, net, ws, marks, rows, m, zero_rows):
    """Add the input deltas of each embedded column of workspace rows [0, rows) (of a batch of m rows) into the
    gradient row of the category it looked up (_lookups), through an ensemble member's adapter, and mark that row
    in marks.touched. zero_rows: zero the marked gradient rows first (a training step, which touches those rows
    only); otherwise add to the gradient as it is (blocks of a whole-data gradient, or a distributed step, whose
    table gradients start zeroed)."""
    n_in = net.sizes[0]
    n_tables = net.tables.shape[0]
    for i in range(rows):
        for e in range(n_tables):
            mark, g0 = marks.lookups[i, e, 0], marks.lookups[i, e, 1]
            if zero_rows and marks.touched[mark] == 0:
                grad[g0:g0 + net.tables[e, 1]] = 0
            marks.touched[mark] = 1
    adapters = _adapter_offset(net)
    for i in range(rows):
        at = i * n_in + net.n_dense  # the input block starts the deltas buffer
        adapter = adapters + (i // m) * n_in - i * n_in  # + at: the adapter entry of the delta at `at`
        for e in range(n_tables):
            d = net.tables[e, 1]
            g0 = marks.lookups[i, e, 1]
            if net.members > 1:
                for k in range(d):
                    grad[g0 + k] += ws.deltas[at + k] * params[adapter + at + k]
            else:
                for k in range(d):
                    grad[g0 + k] += ws.deltas[at + k]
            at += d


@jit
def _touched_table_rows(opt, hyper, params, grad, grad_scale, net, marks, rows, measure):
    """Each table row marked in marks.touched by workspace rows [0, rows), once: with `measure` the sum of its
    gradient's squares is returned (marks become 2), otherwise the optimizer steps it (marks back to 0)."""
    squares = 0.0
    for i in range(rows):
        for e in range(net.tables.shape[0]):
            mark, g0, d = marks.lookups[i, e, 0], marks.lookups[i, e, 1], net.tables[e, 1]
            if measure and marks.touched[mark] == 1:
                squares += _sum_squares(grad, g0, g0 + d)
                marks.touched[mark] = 2
            elif not measure and marks.touched[mark] != 0:
                update_range(opt, hyper, params, grad, grad_scale, g0, g0 + d)
                marks.touched[mark] = 0
    return squares


@jit
def _forward_rows(params, net, extras, ws, dropout, dropout_seed, t, order, start, row0, rows, m):
    """Forward pass of workspace rows [row0, row0+rows) of a batch of m rows through every layer:
    a = f(a_in @ W + b), an ensemble member's rows through its own head.

    dropout[l] > 0 drops units of hidden layer l (training only; predict passes zeros). Masks are
    keyed by the data row order[start + i] (and the member), not the workspace row, so they do not
    depend on how a batch is split over threads or MPI ranks.
    """
    one = params.dtype.type(1.0)
    zero = params.dtype.type(0.0)
    sizes = net.sizes
    acts = ws.acts
    zs = ws.zs
    n_layers = sizes.size - 1
    adapted = every_layer(net)
    for l in range(n_layers):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        code = net.act_codes[l]
        z = zs if code == GELU else acts
        p = dropout[l]
        if extras is not None and adapted and l < n_layers - 1:
            _adapted_forward(params, net, ws, l, p, dropout_seed, t, order, start, row0, rows, m)
            continue
        for e in range(_n_blocks(net, l)):
            lo, hi, w0 = _block(net, l, e, m, row0, rows)
            if hi <= lo:
                continue
            off_in = _offset(sizes, ws.capacity, l) + lo * n_in
            off_out = _offset(sizes, ws.capacity, l + 1) + lo * n_out
            b = params[w0 + n_in * n_out:w0 + n_in * n_out + n_out]
            gemm(False, False, hi - lo, n_out, n_in, one, acts, off_in, n_in, params, w0, n_out, zero, z, off_out,
                 n_out)
            for i in range(hi - lo):
                r = off_out + i * n_out
                if code == GELU:
                    gelu_bias_activate(zs[r:r + n_out], b, acts[r:r + n_out])
                else:
                    bias_activate(acts[r:r + n_out], b, code)
                if p > 0:
                    apply_mask(acts[r:r + n_out], p, row_key(dropout_seed, t, l, _mask_row(net, order, start, lo + i,
                                                                                           m)))


@jit
def _adapted_forward(params, net, ws, l, p, dropout_seed, t, order, start, row0, rows, m):
    """Shared layer l of an ensemble with adapters on every layer, for workspace rows [row0, row0+rows): the product
    u = (h * R_l) @ W_l (its input in acts, as adapted by the layer before) into the product section of zs, the unit
    outputs a = f(u * S_l + B_l) (dropped out) into the unit section, the pre-activations z into the first section
    (gelu), and what the next layer reads, a * R_{l+1} (a itself for the heads), into acts."""
    one = params.dtype.type(1.0)
    zero = params.dtype.type(0.0)
    sizes = net.sizes
    acts = ws.acts
    zs = ws.zs
    section = acts.size  # zs: pre-activations, unit outputs, products, each laid out as acts
    k = net.members
    n_in, n_out = sizes[l], sizes[l + 1]
    code = net.act_codes[l]
    adapted_next = l < sizes.size - 3
    off_in = _offset(sizes, ws.capacity, l) + row0 * n_in
    off_out = _offset(sizes, ws.capacity, l + 1) + row0 * n_out
    gemm(False, False, rows, n_out, n_in, one, acts, off_in, n_in, params, net.w_offsets[l], n_out, zero, zs,
         2 * section + off_out, n_out)
    s0 = _member_offset(net, l)
    for i in range(rows):
        e = (row0 + i) // m
        r = off_out + i * n_out
        scale = params[s0 + e * n_out:s0 + (e + 1) * n_out]
        bias = params[s0 + (k + e) * n_out:s0 + (k + e + 1) * n_out]
        u = zs[2 * section + r:2 * section + r + n_out]
        a = zs[section + r:section + r + n_out]
        if code == GELU:
            z = zs[r:r + n_out]
            for j in range(n_out):
                z[j] = u[j] * scale[j]
            gelu_bias_activate(z, bias, a)
        else:
            for j in range(n_out):
                a[j] = u[j] * scale[j]
            bias_activate(a, bias, code)
        if p > 0:
            apply_mask(a, p, row_key(dropout_seed, t, l, _mask_row(net, order, start, row0 + i, m)))
        h = acts[r:r + n_out]
        if adapted_next:
            adapter = params[s0 + (2 * k + e) * n_out:s0 + (2 * k + e + 1) * n_out]
            for j in range(n_out):
                h[j] = a[j] * adapter[j]
        else:
            for j in range(n_out):
                h[j] = a[j]


@jit
def _adapted_deltas(params, net, ws, reg, t, order, start, l, row0, rows, m, acc):
    """For an ensemble with adapters on every layer: turn the deltas of shared layer l's outputs for workspace
    rows [row0, row0+rows), as the layer above left them (with respect to what it read, a * R_{l+1}), into the
    deltas of its product u (what dW_l and the layer's input deltas need), adding the gradients of R_{l+1}, S_l
    and B_l of these rows into acc (laid out as the parameters from _member_offset(net, 0) on)."""
    sizes = net.sizes
    zs = ws.zs
    section = ws.acts.size
    k = net.members
    n = sizes[l + 1]
    code = net.act_codes[l]
    p = reg.dropout[l]
    keep = params.dtype.type(1.0) - p
    adapted_next = l < sizes.size - 3
    s0 = _member_offset(net, l)
    a0 = s0 - _member_offset(net, 0)  # the same entries in acc
    off = _offset(sizes, ws.capacity, l + 1) + row0 * n
    for i in range(rows):
        e = (row0 + i) // m
        r = off + i * n
        d = ws.deltas[r:r + n]
        a = zs[section + r:section + r + n]
        if adapted_next:  # d(a * R) -> dR += a * d, d(a) = d * R
            adapter = params[s0 + (2 * k + e) * n:s0 + (2 * k + e + 1) * n]
            g = acc[a0 + (2 * k + e) * n:a0 + (2 * k + e + 1) * n]
            for j in range(n):
                g[j] += a[j] * d[j]
                d[j] *= adapter[j]
        if p > 0:
            mask_delta(d, p, row_key(reg.dropout_seed, t, l, _mask_row(net, order, start, row0 + i, m)))
        if code == GELU:
            gelu_scale_by_derivative(d, zs[r:r + n])
        else:
            scale_by_derivative(d, a, code, keep)
        # d(u * S + B) -> dS += u * d, dB += d, d(u) = d * S
        u = zs[2 * section + r:2 * section + r + n]
        scale = params[s0 + e * n:s0 + (e + 1) * n]
        g_scale = acc[a0 + e * n:a0 + (e + 1) * n]
        g_bias = acc[a0 + (k + e) * n:a0 + (k + e + 1) * n]
        for j in range(n):
            g_scale[j] += u[j] * d[j]
            g_bias[j] += d[j]
            d[j] *= scale[j]


@jit
def _mask_row(net, order, start, i, m):
    """The dropout masks' key of workspace row i of a batch of m rows: its data row, and its ensemble member."""
    return order[start + i % m] * net.members + i // m


@jit
def _backward_rows(params, net, extras, ws, reg, t, batch, start, row0, rows, m, scale, acc):
    """Output delta and the deltas of every hidden layer for workspace rows [row0, row0+rows) of a batch of m rows;
    returns their loss sum. With adapters on every layer, these rows' gradients of the adapters after R_0 and of
    the members' biases are added into acc (_adapted_deltas).

    With sample weights, row i's loss and delta count weights[i] times.
    """
    one = params.dtype.type(1.0)
    sizes = net.sizes
    acts = ws.acts
    deltas = ws.deltas
    order = batch.order
    weights = batch.weights
    huber_delta = params.dtype.type(net.huber_delta)
    n_layers = sizes.size - 1
    n_out = sizes[n_layers]
    off = _offset(sizes, ws.capacity, n_layers) + row0 * n_out
    loss = 0.0
    first = row0 % m
    for i in range(rows):
        r = off + i * n_out
        j = first + i
        if j >= m:  # an ensemble member's rows: the batch's rows again (a branch, not a division, per row)
            j %= m
        src = order[start + j]
        w = weights[src] if weights.size else one
        loss += w * row_loss_and_delta(net.loss_code, huber_delta, acts[r:r + n_out], batch.Y[src],
                                       deltas[r:r + n_out], scale * w, reg.label_smoothing)
    adapted = every_layer(net)
    no_column = np.int64(0)  # typed: a literal 0 in either call compiled _input_deltas once more
    for l in range(n_layers - 1, 0, -1):  # the input layer needs no delta
        n_in = sizes[l]
        n_out = sizes[l + 1]
        din_off = _offset(sizes, ws.capacity, l) + row0 * n_in
        _input_deltas(params, net, ws, l, row0, rows, m, no_column, n_in)  # d_in = d @ W^T
        if extras is not None and adapted:
            _adapted_deltas(params, net, ws, reg, t, order, start, l - 1, row0, rows, m, acc)
            continue
        code = net.act_codes[l - 1]
        p = reg.dropout[l - 1]
        keep = one - p
        for i in range(rows):
            r = din_off + i * n_in
            if p > 0:
                mask_delta(deltas[r:r + n_in], p, row_key(reg.dropout_seed, t, l - 1,
                                                          _mask_row(net, order, start, row0 + i, m)))
            if code == GELU:
                gelu_scale_by_derivative(deltas[r:r + n_in], ws.zs[r:r + n_in])
            else:
                scale_by_derivative(deltas[r:r + n_in], acts[r:r + n_in], code, keep)
    # the embedded columns' input deltas (the looked-up rows' gradients); an ensemble's input adapters take theirs
    # from the input layer's weight gradient (_input_layer_member_gradients)
    if extras is not None and net.n_dense < sizes[0]:
        _input_deltas(params, net, ws, no_column, row0, rows, m, net.n_dense, sizes[0])  # layer 0
    return loss


@jit
def _input_deltas(params, net, ws, l, row0, rows, m, j0, j1):
    """Columns [j0, j1) of layer l's input deltas, d_in = d_out @ W_l^T, over workspace rows [row0, row0+rows)
    (each ensemble member's through its own head)."""
    one = params.dtype.type(1.0)
    zero = params.dtype.type(0.0)
    sizes = net.sizes
    n_in, n_out = sizes[l], sizes[l + 1]
    for e in range(_n_blocks(net, l)):
        lo, hi, w0 = _block(net, l, e, m, row0, rows)
        if hi > lo:
            d_off = _offset(sizes, ws.capacity, l + 1) + lo * n_out
            din_off = _offset(sizes, ws.capacity, l) + lo * n_in + j0
            gemm(False, True, hi - lo, j1 - j0, n_out, one, ws.deltas, d_off, n_out, params, w0 + j0 * n_out, n_out,
                 zero, ws.deltas, din_off, n_in)


@jit
def _forward_backward_rows(params, net, extras, ws, reg, t, batch, start, row0, rows, m, scale, acc):
    """Workspace rows [row0, row0+rows) of the batch order[start:start+m]: gathered, forward, output delta and
    hidden deltas; their loss sum (acc: _backward_rows)."""
    _gather(params, net, extras, batch.X, batch.order, start, row0, rows, m, ws.acts, ws.zs)
    _forward_rows(params, net, extras, ws, reg.dropout, reg.dropout_seed, t, batch.order, start, row0, rows, m)
    return _backward_rows(params, net, extras, ws, reg, t, batch, start, row0, rows, m, scale, acc)


@jit
def _weight_gradients(grad, params, net, extras, ws, opt, hyper, row0, rows, m, part, n_parts, beta, weight_l2,
                      update, measure):
    """This part's slice of every layer's dW rows and db entries, over workspace rows [row0, row0+rows) of a batch
    of m rows (an ensemble's heads over their members' rows, then its adapters' slice).

    beta = 0 overwrites the gradient; beta = 1 adds to it (accumulating over blocks).
    weight_l2 > 0 adds weight_l2 * W to dW (scikit-learn's penalty: weights only, per
    batch). With `update`, each slice is also stepped by the optimizer right away, while it
    is in cache. Returns the slice's sum of W**2 before the step (for the penalty's loss) and,
    with `measure`, the sum of its gradient's squares (for clipping).
    """
    one = grad.dtype.type(1.0)
    squares = 0.0
    grad_squares = 0.0
    sizes = net.sizes
    n_layers = sizes.size - 1
    adapted = every_layer(net)
    for l in range(n_layers):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        k0, k1 = _split(n_in, part, n_parts)
        c0, c1 = _split(n_out, part, n_parts)
        if adapted and l < n_layers - 1:
            c1 = c0  # the members' own biases (B_l): their gradients come from _adapted_deltas
        member_inputs = l == 0 and net.members > 1
        if extras is not None and member_inputs:  # dW with the input adapters' gradients
            _input_layer_member_gradients(grad, params, net, ws, row0, rows, m, k0, k1, beta)
        for e in range(_n_blocks(net, l)):
            lo, hi, w0 = _block(net, l, e, m, row0, rows)
            if hi <= lo:  # a head whose member has no rows here
                if beta == 0:
                    if not member_inputs:
                        grad[w0 + k0 * n_out:w0 + k1 * n_out] = 0
                    if c1 > c0:
                        grad[w0 + n_in * n_out + c0:w0 + n_in * n_out + c1] = 0
                lo = hi
            off_in = _offset(sizes, ws.capacity, l) + lo * n_in
            d_off = _offset(sizes, ws.capacity, l + 1) + lo * n_out
            # dW[k0:k1] = a_in[:, k0:k1]^T @ d
            if k1 > k0:
                if hi > lo and not member_inputs:
                    gemm(True, False, k1 - k0, n_out, hi - lo, one, ws.acts, off_in + k0, n_in, ws.deltas, d_off,
                         n_out, beta, grad, w0 + k0 * n_out, n_out)
                if weight_l2 > 0:
                    w = params[w0 + k0 * n_out:w0 + k1 * n_out]
                    dw = grad[w0 + k0 * n_out:w0 + k1 * n_out]
                    for i in range(w.size):
                        dw[i] += weight_l2 * w[i]
                        squares += float(w[i]) * float(w[i])
                if measure:
                    grad_squares += _sum_squares(grad, w0 + k0 * n_out, w0 + k1 * n_out)
                if update:
                    update_range(opt, hyper, params, grad, one, w0 + k0 * n_out, w0 + k1 * n_out)
            if c1 == c0:
                continue
            db = grad[w0 + n_in * n_out + c0:w0 + n_in * n_out + c1]
            if beta == 0:
                db[:] = 0
            for i in range(hi - lo):
                r = d_off + i * n_out
                d_row = ws.deltas[r + c0:r + c1]
                for j in range(c1 - c0):
                    db[j] += d_row[j]
            if measure:
                grad_squares += _sum_squares(grad, w0 + n_in * n_out + c0, w0 + n_in * n_out + c1)
            if update:
                update_range(opt, hyper, params, grad, one, w0 + n_in * n_out + c0, w0 + n_in * n_out + c1)
    if net.members > 1:  # the input adapters' slice, complete since layer 0
        k0, k1 = _split(sizes[0], part, n_parts)
        for e in range(net.members):
            a0 = _adapter_offset(net) + e * sizes[0]
            if measure:
                grad_squares += _sum_squares(grad, a0 + k0, a0 + k1)
            if update:
                update_range(opt, hyper, params, grad, one, a0 + k0, a0 + k1)
    return squares, grad_squares


@jit
def _input_layer_member_gradients(grad, params, net, ws, row0, rows, m, k0, k1, beta):
    """An ensemble's input layer (shared, or the heads when there is no hidden layer): rows [k0, k1) of dW over
    workspace rows [row0, row0+rows), and the same slice of each member's input adapter's gradient. Per member e,
    M = x[:, k0:k1]^T @ d over its rows, x the inputs before the adapter (zs's input block); then dW += R_e * M
    (row j times R_e[j]) and dR_e[j] = sum_c W[j, c] * M[j, c]. The products cost what dW's one GEMM on the adapted
    inputs did, and spare the input deltas d @ W^T, a GEMM as large, that dR_e = sum over rows of x * (d @ W^T)
    would need. beta as _weight_gradients's."""
    one = grad.dtype.type(1.0)
    zero = grad.dtype.type(0.0)
    n_in, n_out = net.sizes[0], net.sizes[1]
    heads = net.sizes.size == 2
    d_off = _offset(net.sizes, ws.capacity, 1)
    product = np.empty((k1 - k0) * n_out, dtype=grad.dtype)
    for e in range(net.members):
        w0 = _w_start(net, 0, e) + k0 * n_out
        a0 = _adapter_offset(net) + e * n_in + k0
        dW = grad[w0:w0 + (k1 - k0) * n_out]
        dR = grad[a0:a0 + k1 - k0]
        if beta == 0:
            dR[:] = 0
            if e == 0 or heads:
                dW[:] = 0
        lo, hi = max(row0, e * m), min(row0 + rows, (e + 1) * m)
        if hi <= lo or k1 <= k0:
            continue
        gemm(True, False, k1 - k0, n_out, hi - lo, one, ws.zs, lo * n_in + k0, n_in, ws.deltas, d_off + lo * n_out,
             n_out, zero, product, 0, n_out)
        W = params[w0:w0 + (k1 - k0) * n_out]
        R = params[a0:a0 + k1 - k0]
        for j in range(k1 - k0):
            r = R[j]
            total = zero
            for c in range(j * n_out, (j + 1) * n_out):
                dW[c] += r * product[c]
                total += W[c] * product[c]
            dR[j] += total


@jit
def _member_gradients(grad, params, acc, net, opt, hyper, part, n_parts, beta, update, measure):
    """This part's slice of the gradients _adapted_deltas added up per part (acc: n_parts blocks laid out as the
    parameters from _member_offset(net, 0) on), summed into grad in a fixed order and stepped as _weight_gradients
    steps; the slice's sum of gradient squares with `measure`."""
    first = _member_offset(net, 0)
    size = net.n_layer_params - first
    lo, hi = _split(size, part, n_parts)
    g = grad[first + lo:first + hi]
    if beta == 0:
        g[:] = 0
    for q in range(acc.size // size):
        block = acc[q * size + lo:q * size + hi]
        for j in range(hi - lo):
            g[j] += block[j]
    grad_squares = _sum_squares(grad, first + lo, first + hi) if measure else 0.0
    if update:
        update_range(opt, hyper, params, grad, grad.dtype.type(1.0), first + lo, first + hi)
    return grad_squares


@jit
def _sum_squares(v, lo, hi):
    total = 0.0
    for i in range(lo, hi):
        total += float(v[i]) * float(v[i])
    return total


@jit(parallel=True)
def batch_gradient(params, net, extras, ws, marks, reg, opt, hyper, batch, start, rows, scale, n_parts, beta,
                   update):
    """Gradient of scale * (loss sum of rows batch.order[start:start+rows]) into ws.grad (times beta plus it).

    The step taken is opt.step[0] + 1 (it also keys the dropout masks). reg.weight_penalty > 0 adds
    scikit-learn's penalty weight_penalty/2 * sum(W**2) (weights only) to the loss sum. With
    `update` the optimizer takes that step from the gradient, unless the loss is not finite: fused,
    block by block, or, when reg.clip_norm > 0 rescales the gradient to at most that global L2 norm
    (torch.nn.utils.clip_grad_norm_), in two more regions once the whole gradient is known. The
    caller advances opt.step. Returns the loss sum of those rows (plus the penalty).
    Region 1 splits rows; region 2 sums per-thread slabs or splits the weights (module notes).
    An ensemble's members each take the rows (members x rows workspace rows, member-major); the loss is the mean
    of the members' (each trains on its own loss, as TabM's).
    extras: the net again for an ensemble or embedding tables, None otherwise (extras_of): with None, Numba compiles
    none of their code.
    """
    grad = ws.grad
    P = net.n_layer_params  # the layers' parameters; embedding tables follow them (only touched rows change)
    t = opt.step[0] + 1
    m = rows
    rows = m * net.members  # workspace rows from here on
    scale = scale / params.dtype.type(net.members)
    slabs_path = beta == 0 and uses_slabs(P, net.sizes, rows, n_parts)
    slabs = np.empty((n_parts - 1) * P if slabs_path else 0, dtype=grad.dtype)
    # per part, the gradients the row pass adds up (adapters on every layer: _adapted_deltas), from member0 on
    member0 = _member_offset(net, np.int64(0)) if every_layer(net) else P
    acc = np.zeros(n_parts * (P - member0), dtype=grad.dtype)
    zero = grad.dtype.type(0.0)
    # typed, not literal, arguments for _weight_gradients: Numba compiles a callee anew for each
    # combination of literal and non-literal arguments (~3.5 s each when cold)
    no = rows < 0
    first, one_part = np.int64(0), np.int64(1)
    part_loss = np.zeros(n_parts)
    for part in prange(n_parts):
        fp_mode = flush_denormals()
        r0 = (part * rows) // n_parts
        r1 = ((part + 1) * rows) // n_parts
        part_acc = acc[part * (P - member0):(part + 1) * (P - member0)]
        if r1 > r0:
            part_loss[part] = _forward_backward_rows(params, net, extras, ws, reg, t, batch, start, r0, r1 - r0, m,
                                                     scale, part_acc)
        if slabs_path:  # this thread's rows' whole gradient: thread 0 into grad, the others into a slab
            target = grad if part == 0 else slabs[(part - 1) * P:part * P]
            if r1 > r0:
                _weight_gradients(target, params, net, extras, ws, opt, hyper, r0, r1 - r0, m, first, one_part, zero,
                                  0.0, no, no)
                for j in range(part_acc.size):
                    target[member0 + j] = part_acc[j]
            else:
                target[:] = 0
        restore_fp_mode(fp_mode)
    loss = 0.0
    for part in range(n_parts):
        loss += part_loss[part]
    loss /= net.members
    if not math.isfinite(loss):
        return loss
    tables = net.tables.shape[0] > 0
    if extras is not None and tables:
        if not update and beta == 0:
            grad[P:] = 0
        _lookups(net, marks, batch.X, batch.order, start, rows, m)
        _table_gradients(grad, params, net, ws, marks, rows, m, update)
    penalty = reg.weight_penalty * scale
    clip = update and reg.clip_norm > 0
    fused = update and not clip
    squares = np.zeros(n_parts)
    grad_squares = np.zeros(n_parts)
    for part in prange(n_parts):
        fp_mode = flush_denormals()
        if slabs_path:
            lo, hi = _split(P, part, n_parts)
            squares[part], grad_squares[part] = _sum_slabs_and_step(grad, params, slabs, net, opt, hyper, penalty,
                                                                    fused, clip, lo, hi)
        else:
            squares[part], grad_squares[part] = _weight_gradients(grad, params, net, extras, ws, opt, hyper, first,
                                                                  rows, m, np.int64(part), n_parts, beta, penalty,
                                                                  fused, clip)
            if extras is not None and acc.size:
                grad_squares[part] += _member_gradients(grad, params, acc, net, opt, hyper, np.int64(part), n_parts,
                                                        beta, fused, clip)
        restore_fp_mode(fp_mode)
    if reg.weight_penalty > 0:
        for part in range(n_parts):
            loss += 0.5 * reg.weight_penalty * squares[part]
    coef = grad.dtype.type(1.0)
    if clip:
        total = 0.0
        for part in range(n_parts):
            total += grad_squares[part]
        if extras is not None and tables:
            total += _touched_table_rows(opt, hyper, params, grad, coef, net, marks, rows, update)
        coef = grad.dtype.type(min(1.0, reg.clip_norm / (math.sqrt(total) + 1e-6)))
        for part in prange(n_parts):
            fp_mode = flush_denormals()
            lo, hi = _split(P, part, n_parts)
            update_range(opt, hyper, params, grad, coef, lo, hi)
            restore_fp_mode(fp_mode)
    if extras is not None and tables and update:
        _touched_table_rows(opt, hyper, params, grad, coef, net, marks, rows, no)
    return loss


@jit
def _sum_slabs_and_step(grad, params, slabs, net, opt, hyper, weight_l2, update, measure, lo, hi):
    """grad[lo:hi] += every slab's [lo:hi], plus the weight penalty, then the optimizer step on that range,
    block by block while each block is in L1; returns the range's sum(W**2) when weight_l2 > 0 and,
    with `measure`, the sum of its gradient's squares."""
    P = net.n_layer_params
    squares = 0.0
    grad_squares = 0.0
    for b0 in range(lo, hi, _STEP_BLOCK):
        b1 = min(hi, b0 + _STEP_BLOCK)
        g = grad[b0:b1]
        for q in range(slabs.size // P):
            slab = slabs[q * P + b0:q * P + b1]
            for i in range(b1 - b0):
                g[i] += slab[i]
        if weight_l2 > 0:
            squares += _add_weight_penalty(grad, params, net, weight_l2, b0, b1)
        if measure:
            grad_squares += _sum_squares(grad, b0, b1)
        if update:
            update_range(opt, hyper, params, grad, grad.dtype.type(1.0), b0, b1)
    return squares, grad_squares


@jit
def _add_weight_penalty(grad, params, net, weight_l2, lo, hi):
    """grad_W += weight_l2 * W for the weights (not biases) within [lo, hi); returns their sum(W**2)."""
    squares = 0.0
    sizes = net.sizes
    for l in range(sizes.size - 1):
        for e in range(_n_blocks(net, l)):
            w0 = _w_start(net, l, e)
            for i in range(max(lo, w0), min(hi, w0 + sizes[l] * sizes[l + 1])):
                grad[i] += weight_l2 * params[i]
                squares += float(params[i]) * float(params[i])
    return squares


@jit
def train_epoch(totals, params, net, extras, ws, marks, reg, opt, hyper, batch, batch_size, n_parts):
    """Mini-batch training over the rows in batch.order, updating params and opt in place.

    Each batch's loss is a mean (weighted by batch.weights when given: sum w_i loss_i / sum w_i).
    reg.clip_norm > 0 rescales each batch gradient to at most that global L2 norm first
    (torch.nn.utils.clip_grad_norm_). Adds to totals (float64, 3), so that an epoch trained in
    segments sums exactly as in one call: the loss sum, the weight sum, and the sum over batches
    of batch loss sum / batch weight x batch rows (scikit-learn's epoch loss), all before dividing
    by net.loss_elements. totals[0] becomes NaN, and training stops, as soon as a batch's loss is
    not finite (that batch's update is not applied). n_parts: the row groups a batch is split
    into, whichever threads run them. batch_size x net.members must not exceed ws.capacity.
    """
    order = batch.order
    weights = batch.weights
    n = order.size
    zero = params.dtype.type(0.0)
    update = n > 0  # True, as a run-time bool: a literal would compile batch_gradient once more (see below)
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        batch_weight = float(m)
        if weights.size:
            batch_weight = 0.0
            for i in range(start, start + m):
                batch_weight += weights[order[i]]
            if batch_weight <= 0:
                continue  # nothing to learn from an all-zero-weight batch
        scale = params.dtype.type(1.0) / params.dtype.type(batch_weight * net.loss_elements)
        batch_loss = batch_gradient(params, net, extras, ws, marks, reg, opt, hyper, batch, start, m, scale,
                                    min(n_parts, m), zero, update)
        if not math.isfinite(batch_loss):
            totals[0] = np.nan
            return
        opt.step[0] += 1
        totals[0] += batch_loss
        totals[1] += batch_weight
        totals[2] += batch_loss / batch_weight * m


@jit
def loss_and_gradient(params, net, extras, ws, marks, reg, opt, hyper, X, Y, weights, n_parts):
    """Mean (or weighted mean) loss over all rows of X and its gradient (into ws.grad), ws.capacity rows
    at a time. reg should carry no dropout or penalty; opt and hyper are not used (no step is taken)."""
    n = X.shape[0]
    batch = Batch(X, Y, weights, np.arange(n))
    total_weight = float(n)
    if weights.size:
        total_weight = 0.0
        for i in range(n):
            total_weight += weights[i]
    scale = params.dtype.type(1.0) / params.dtype.type(total_weight * net.loss_elements)
    # False as a run-time bool, not a literal: Numba compiles a parallel function anew for each literal
    # argument, and batch_gradient is the costliest compile (~15 s); this shares train_epoch's build.
    update = n < 0
    total = 0.0
    block = ws.capacity // net.members
    for start in range(0, n, block):
        rows = min(block, n - start)
        beta = params.dtype.type(0.0 if start == 0 else 1.0)
        total += batch_gradient(params, net, extras, ws, marks, reg, opt, hyper, batch, start, rows, scale,
                                min(n_parts, rows), beta, update)
    return total / (total_weight * net.loss_elements)


@jit(parallel=True)
def forward_all(out, params, net, extras, ws, X, n_parts):
    """Logits of every row of X into `out`, ws.capacity rows at a time, rows split over n_parts threads; an
    ensemble's member e's logits into out's columns [e*n_out, (e+1)*n_out)."""
    n = X.shape[0]
    sizes = net.sizes
    n_layers = sizes.size - 1
    n_out = sizes[n_layers]
    capacity = ws.capacity
    block = capacity // net.members
    off_out = _offset(sizes, capacity, n_layers)
    order = np.arange(n)
    no_dropout = np.zeros(n_layers, dtype=params.dtype)
    unused = np.int64(0)  # no dropout seed or step: typed, so training's build of _forward_rows serves here too
    acts = ws.acts  # loaded once: read inside the parallel loop, Numba warned it might be written there
    zs = ws.zs
    for start in range(0, n, block):
        m = min(block, n - start)
        rows = m * net.members
        parts = min(n_parts, rows)
        for part in prange(parts):
            fp_mode = flush_denormals()
            r0 = (part * rows) // parts
            r1 = ((part + 1) * rows) // parts
            _gather(params, net, extras, X, order, start, r0, r1 - r0, m, acts, zs)
            _forward_rows(params, net, extras, ws, no_dropout, unused, unused, order, start, r0, r1 - r0, m)
            restore_fp_mode(fp_mode)
        # element by element: an array slice assignment would compile Numba's shape-mismatch message
        # formatting (~5 s when cold)
        for i in range(rows):
            at = start + i % m
            column = (i // m) * n_out
            for j in range(n_out):
                out[at, column + j] = acts[off_out + i * n_out + j]
