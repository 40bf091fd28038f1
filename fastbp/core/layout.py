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

With adapters on every layer (TabM, BatchEnsemble: Wen et al., ICLR 2020) each shared layer l but the heads computes,
for member e, ((h * R_l[e]) @ W_l) * S_l[e] + B_l[e]: those layers hold W_l only (no shared bias), and after R_0
come, per shared layer l, its output adapters S_l (k, sizes[l+1]), its members' biases B_l (k, sizes[l+1]) and,
unless the heads read its output, the next layer's input adapters R_{l+1} (k, sizes[l+1]).
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


ADAPTERS = ("first_layer", "every_layer")  # an ensemble's adapters: TabM-mini's, TabM's


def check_adapters(adapters):
    """An ensemble's adapters, one of ADAPTERS."""
    if not isinstance(adapters, str) or adapters not in ADAPTERS:
        raise InputError(f"ensemble_adapters must be one of {', '.join(ADAPTERS)}, got {adapters!r}")
    return adapters


def n_parameters(layer_sizes, embeddings=(), members=1, every_layer=False):
    """The flat vector's length for checked layer sizes, embedding tables (rows, dim) and members (Layout's
    order: layers with a head per member, the members' adapters, the tables), in Python ints: a file's figures
    cannot overflow it before they are compared with what the file holds."""
    sizes = [int(n) for n in layer_sizes]
    every_layer = every_layer and members > 1
    fans = [n_in * n_out + (0 if every_layer else n_out) for n_in, n_out in zip(sizes[:-2], sizes[1:-1])]
    heads = members * (sizes[-2] * sizes[-1] + sizes[-1])
    adapters = members * sizes[0] if members > 1 else 0
    if every_layer:  # S, B and (but before the heads) R per shared layer's outputs
        adapters += sum(members * n * (3 if l < len(sizes) - 3 else 2) for l, n in enumerate(sizes[1:-1]))
    return sum(fans) + heads + adapters + sum(int(rows) * int(dim) for rows, dim in embeddings)


class Layout:
    """Offsets of each layer's W and b, and of each embedding table, in a flat vector."""

    def __init__(self, layer_sizes, embeddings=(), members=1, adapters="first_layer"):
        from .checks import check_int

        self.sizes = np.asarray(check_layer_sizes(layer_sizes), dtype=np.int64)
        self.n_layers = len(self.sizes) - 1
        self.members = check_int("ensemble (the members)", members, 1)
        self.every_layer = check_adapters(adapters) == "every_layer" and self.members > 1
        fan = self.sizes[:-1] * self.sizes[1:] + self.sizes[1:]
        if self.every_layer:
            fan[:-1] -= self.sizes[1:-1]  # the shared layers' biases are the members' own (B_l)
        self.w_offsets = np.concatenate(([0], np.cumsum(fan)[:-1])).astype(np.int64)
        fan[-1] *= self.members  # a head per member
        self.adapter_offset = int(fan.sum())
        # S_l of shared layer l starts at member_offsets[l]; B_l and then R_{l+1} follow it (every_layer only)
        self.member_offsets = np.zeros(self.n_layers - 1, dtype=np.int64)
        at = self.adapter_offset + (self.members * self.n_in if self.members > 1 else 0)
        for l in range(self.n_layers - 1 if self.every_layer else 0):
            self.member_offsets[l] = at
            at += self.members * int(self.sizes[l + 1]) * (3 if l < self.n_layers - 2 else 2)
        self.n_layer_params = at
        self.embeddings = check_embeddings(embeddings, self.n_in)
        self.emb_rows = np.array([r for r, _ in self.embeddings], dtype=np.int64)
        self.emb_dims = np.array([d for _, d in self.embeddings], dtype=np.int64)
        table_sizes = self.emb_rows * self.emb_dims
        self.emb_offsets = (self.n_layer_params + np.concatenate(([0], np.cumsum(table_sizes)[:-1]))).astype(
            np.int64)[:len(self.embeddings)]
        self.n_params = n_parameters(self.sizes, self.embeddings, self.members, self.every_layer)
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
        layer, are W (members, n_in, n_out) and b (members, n_out); with adapters on every layer, the shared layers'
        b are the members' biases B_l (members, n_out)."""
        out = []
        for l in range(self.n_layers):
            n_in, n_out = int(self.sizes[l]), int(self.sizes[l + 1])
            start = int(self.w_offsets[l])
            if self.every_layer and l < self.n_layers - 1:
                W = flat[start:start + n_in * n_out].reshape(n_in, n_out)
                b = self._member_block(flat, l, 1)
            elif l == self.n_layers - 1 and self.members > 1:  # head e's W and b start (W + b) * e further on
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

    def layer_adapters(self, flat):
        """With adapters on every layer, [(R_l, S_l)] of each shared layer l as (members, n_in) and (members, n_out)
        views into `flat` (R_0 is adapters(flat)); None otherwise."""
        if not self.every_layer:
            return None
        return [(self.adapters(flat) if l == 0 else self._member_block(flat, l - 1, 2), self._member_block(flat, l, 0))
                for l in range(self.n_layers - 1)]

    def _member_block(self, flat, l, which):
        """Shared layer l's S_l (which=0), B_l (1) or R_{l+1} (2): a (members, sizes[l+1]) view into `flat`."""
        n = int(self.sizes[l + 1])
        start = int(self.member_offsets[l]) + which * self.members * n
        return flat[start:start + self.members * n].reshape(self.members, n)

    def tables(self, flat):
        """[(rows, dim) table] as views into `flat`."""
        return [flat[o:o + r * d].reshape(r, d) for o, r, d in zip(self.emb_offsets, self.emb_rows, self.emb_dims)]

    def initialize(self, flat, init, hidden_activations, rng):
        """Fill `flat` with a seeded initialization; biases start at zero. "auto" gives each layer He's
        initialization when the activation after it is in the ReLU family and Glorot's otherwise (the output
        layer, followed by the loss's identity, sigmoid or softmax, always Glorot's). Embedding tables start
        N(0, 1), as torch.nn.Embedding's, drawn after the layers (a model without tables draws as before). An
        ensemble's heads are drawn one after another; its input adapters are random signs (TabM's), drawn last; the
        other layers' adapters start at one."""
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
        for l, (R, S) in enumerate(self.layer_adapters(flat) or ()):
            S[...] = 1.0
            if l > 0:
                R[...] = 1.0


def flops_per_row(sizes, backward=True, members=1):
    """Floating-point operations of one row: the forward products, 2*sum(P) over the layers' weight counts P,
    and for training also the weight gradients 2*sum(P) and the deltas 2*sum(P) without the first layer; an
    ensemble's members each take the row."""
    P = [int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:])]
    return members * (2 * sum(P) + (2 * sum(P) + 2 * sum(P[1:]) if backward else 0))
