"""Layout: layer sizes -> offsets into one flat parameter vector, views and init.

Layer l owns params[w_offsets[l] : w_offsets[l] + n_in*n_out] as a row-major
(n_in, n_out) weight matrix W_l, followed by its n_out biases b_l. Gradients
and optimizer state are flat vectors with the same layout.

Categorical embeddings: each table (rows, dim) follows every layer's parameters, a
row-major (rows, dim) block; its last row stands for a category not seen in training.
X then holds n_dense = n_in - sum(dims) inputs and, after them, a category code per
table (n_columns in all); the first layer reads the dense inputs and the looked-up rows.

An ensemble of k members (TabM-mini: Gorishniy et al., ICLR 2025) shares every layer but the last: the last
layer is k heads, head e's (W, b) at w_offsets[-1] + e * (n_in*n_out + n_out); after the heads come the members'
input adapters, a row-major (k, sizes[0]) block R. Member e computes the shared network on x * R[e] (the dense
inputs and the looked-up rows alike) and its own head; its prediction is averaged with the others'.
"""
import math

import numpy as np

from .errors import InputError, InputTypeError

INITS = ("auto", "he_uniform", "he_normal", "glorot_uniform", "glorot_normal")


def check_layer_sizes(layer_sizes):
    try:
        sizes = list(layer_sizes)
    except TypeError:
        raise InputTypeError(f"layer_sizes must be a list of positive integers, got {layer_sizes!r}") from None
    if len(sizes) < 2:
        raise InputError(
            f"layer_sizes needs at least two entries [n_in, n_out] (hidden sizes in between), got {sizes!r}")
    from .checks import check_int

    return [check_int(f"every layer size (in {sizes!r})", s, 1) for s in sizes]


def check_embeddings(embeddings, n_in=None):
    """[(rows, dim)] per table: rows >= 2 (a category and the unknown row), dim >= 1; their dims fit in n_in."""
    from .checks import check_int

    try:
        tables = [tuple(t) for t in embeddings]
        if not all(len(t) == 2 for t in tables):
            raise TypeError
    except TypeError:
        raise InputTypeError(f"embeddings must be a list of (rows, dim) pairs, got {embeddings!r}") from None
    tables = [(check_int("an embedding's rows", r, 2), check_int("an embedding's dim", d, 1)) for r, d in tables]
    if n_in is not None and sum(d for _, d in tables) > n_in:
        raise InputError(f"the embeddings' dims add up to {sum(d for _, d in tables)}, more than layer_sizes[0] = "
                         f"{n_in}: the first layer reads the dense inputs and every table's dim")
    return tables


def n_parameters(layer_sizes, embeddings=(), members=1):
    """The flat vector's length for checked layer sizes, embedding tables (rows, dim) and members (Layout's
    order: layers with a head per member, the members' adapters, the tables), in Python ints: a file's figures
    cannot overflow it before they are compared with what the file holds."""
    sizes = [int(n) for n in layer_sizes]
    fans = [n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    adapters = members * sizes[0] if members > 1 else 0
    return sum(fans[:-1]) + members * fans[-1] + adapters + sum(int(rows) * int(dim) for rows, dim in embeddings)


class Layout:
    """Offsets of each layer's W and b, and of each embedding table, in a flat vector."""

    def __init__(self, layer_sizes, embeddings=(), members=1):
        from .checks import check_int

        self.sizes = np.asarray(check_layer_sizes(layer_sizes), dtype=np.int64)
        self.n_layers = len(self.sizes) - 1
        self.members = check_int("ensemble (the members)", members, 1)
        fan = self.sizes[:-1] * self.sizes[1:] + self.sizes[1:]
        self.w_offsets = np.concatenate(([0], np.cumsum(fan)[:-1])).astype(np.int64)
        fan[-1] *= self.members  # a head per member
        self.adapter_offset = int(fan.sum())
        self.n_layer_params = self.adapter_offset + (self.members * self.n_in if self.members > 1 else 0)
        self.embeddings = check_embeddings(embeddings, self.n_in)
        self.emb_rows = np.array([r for r, _ in self.embeddings], dtype=np.int64)
        self.emb_dims = np.array([d for _, d in self.embeddings], dtype=np.int64)
        table_sizes = self.emb_rows * self.emb_dims
        self.emb_offsets = (self.n_layer_params + np.concatenate(([0], np.cumsum(table_sizes)[:-1]))).astype(
            np.int64)[:len(self.embeddings)]
        self.n_params = n_parameters(self.sizes, self.embeddings, self.members)
        self.n_dense = self.n_in - int(self.emb_dims.sum())
        self.n_columns = self.n_dense + len(self.embeddings)  # the width of X

    @property
    def n_in(self):
        return int(self.sizes[0])

    @property
    def n_out(self):
        return int(self.sizes[-1])

    def views(self, flat):
        """[(W_l, b_l)] as views into `flat` (writing into them writes into `flat`); an ensemble's heads, the last
        layer, are W (members, n_in, n_out) and b (members, n_out)."""
        out = []
        for l in range(self.n_layers):
            n_in, n_out = int(self.sizes[l]), int(self.sizes[l + 1])
            start = int(self.w_offsets[l])
            if l == self.n_layers - 1 and self.members > 1:  # head e's W and b start (W + b) * e further on
                head, item = (n_in * n_out + n_out) * flat.itemsize, flat.itemsize
                W = np.lib.stride_tricks.as_strided(flat[start:], (self.members, n_in, n_out),
                                                    (head, n_out * item, item))
                b = np.lib.stride_tricks.as_strided(flat[start + n_in * n_out:], (self.members, n_out), (head, item))
            else:
                W = flat[start:start + n_in * n_out].reshape(n_in, n_out)
                b = flat[start + n_in * n_out:start + n_in * n_out + n_out]
            out.append((W, b))
        return out

    def adapters(self, flat):
        """An ensemble's input adapters: the (members, n_in) view into `flat`; None for one model."""
        if self.members == 1:
            return None
        return flat[self.adapter_offset:self.adapter_offset + self.members * self.n_in].reshape(self.members, -1)

    def tables(self, flat):
        """[(rows, dim) table] as views into `flat`."""
        return [flat[o:o + r * d].reshape(r, d) for o, r, d in zip(self.emb_offsets, self.emb_rows, self.emb_dims)]

    def initialize(self, flat, init, hidden_activations, rng):
        """Fill `flat` with a seeded initialization; biases start at zero. "auto" gives each layer He's
        initialization when the activation after it is in the ReLU family and Glorot's otherwise (the output
        layer, followed by the loss's identity, sigmoid or softmax, always Glorot's). Embedding tables start
        N(0, 1), as torch.nn.Embedding's, drawn after the layers (a model without tables draws as before). An
        ensemble's heads are drawn one after another; its adapters are random signs (TabM's), drawn last."""
        if init not in INITS:
            raise InputError(f"unknown init {init!r}; valid inits: {', '.join(INITS)}")
        from .activations import RELU_FAMILY

        layers = [(l, W, b) for l, (Ws, bs) in enumerate(self.views(flat))
                  for W, b in (zip(Ws, bs) if Ws.ndim == 3 else [(Ws, bs)])]  # an ensemble's heads one by one
        for l, W, b in layers:
            layer_init = init
            if init == "auto":
                after = hidden_activations[l] if l < len(hidden_activations) else "output"
                layer_init = "he_uniform" if after in RELU_FAMILY else "glorot_uniform"
            fan_in, fan_out = W.shape
            if layer_init.startswith("he"):
                std = math.sqrt(2.0 / fan_in)
            else:
                std = math.sqrt(2.0 / (fan_in + fan_out))
            if layer_init.endswith("uniform"):
                bound = math.sqrt(3.0) * std  # U(-bound, bound) has this std
                W[...] = rng.uniform(-bound, bound, size=W.shape)
            else:
                W[...] = rng.normal(0.0, std, size=W.shape)
            b[...] = 0.0
        for table in self.tables(flat):
            table[...] = rng.normal(0.0, 1.0, size=table.shape)
        if self.members > 1:
            self.adapters(flat)[...] = rng.choice([-1.0, 1.0], size=(self.members, self.n_in))


def flops_per_row(sizes, backward=True, members=1):
    """Floating-point operations of one row: the forward products, 2*sum(P) over the layers' weight counts P,
    and for training also the weight gradients 2*sum(P) and the deltas 2*sum(P) without the first layer
    (with it for an ensemble, whose adapters need the input deltas); an ensemble's members each take the row."""
    P = [int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:])]
    deltas = 2 * sum(P) if members > 1 else 2 * sum(P[1:])
    return members * (2 * sum(P) + (2 * sum(P) + deltas if backward else 0))
