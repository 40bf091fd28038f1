"""The typed bundles compiled kernels take, instead of long lists of positional scalars.

Each bundle is a module-level NamedTuple (cacheable by Numba, unlike a jitclass) built by
one constructor that fixes every field's type: integers are int64, settings float64,
arrays C-contiguous of the model dtype (int64 for sizes and orders). A swapped argument
then fails to compile instead of running silently, and no call recompiles a kernel.
"""
from typing import NamedTuple

import numpy as np


class Net(NamedTuple):
    """What the model computes: layer sizes, offsets into the flat parameters, activations, loss."""
    sizes: np.ndarray        # int64 (n_layers + 1,)
    w_offsets: np.ndarray    # int64 (n_layers,): start of W_l; b_l follows it
    act_codes: np.ndarray    # int64 (n_layers,): hidden activations, identity last
    loss_code: int
    huber_delta: float       # huber's threshold (unused by the other losses)
    loss_elements: int       # terms one row adds to the mean (1 for cross_entropy, n_out otherwise)
    # categorical embeddings (fastbp.core.layout): X holds n_dense inputs, then one category code per table;
    # tables[e] = (rows, dim, offset): table e's rows (its last for unknown codes) of dim values start at offset in
    # params, after every layer's parameters (the first n_layer_params). One array, not three: with three here and
    # two more in the Workspace, narrow's epochs ran 18 % slower; one array each brought that to 6 %, and the
    # gather without tables as before (kernels._gather_rows) the rest
    n_dense: int
    tables: np.ndarray       # int64 (n_tables, 3)
    n_layer_params: int
    # an ensemble of `members` (fastbp.core.layout): every layer but the last shared, a head per member, and the
    # members' input adapters (members x sizes[0]) ending the layers' parameters; 1: one model
    members: int


TABLE_ROWS, TABLE_DIM, TABLE_OFFSET = range(3)  # the columns of Net.tables


def make_net(sizes, w_offsets, act_codes, loss_code, huber_delta, loss_elements, n_dense, tables, n_layer_params,
             members):
    """From a fastbp.core.layout.Layout's figures; tables: (rows, dim, offset) per embedding table (maybe none)."""
    tables = np.ascontiguousarray(tables, dtype=np.int64).reshape(-1, 3)
    return Net(np.ascontiguousarray(sizes, dtype=np.int64), np.ascontiguousarray(w_offsets, dtype=np.int64),
               np.ascontiguousarray(act_codes, dtype=np.int64), int(loss_code), float(huber_delta), int(loss_elements),
               int(n_dense), tables, int(n_layer_params), int(members))


class Regularization(NamedTuple):
    """Training-only terms: dropout per layer (output last, always 0), its hash seed, scikit-learn's
    L2 penalty on the weights, the gradient-norm clip (0: off) and cross-entropy's label smoothing (0: off)."""
    dropout: np.ndarray      # model dtype (n_layers,)
    dropout_seed: int
    weight_penalty: float
    clip_norm: float
    label_smoothing: float


def make_regularization(dropout, dtype, dropout_seed=0, weight_penalty=0.0, clip_norm=0.0, label_smoothing=0.0):
    return Regularization(np.ascontiguousarray(dropout, dtype=dtype), int(dropout_seed), float(weight_penalty),
                          float(clip_norm), float(label_smoothing))


class Hyper(NamedTuple):
    """Optimizer hyper-parameters for one epoch (a schedule may change lr, momentum, beta1), float64."""
    lr: float
    momentum: float
    nesterov: float
    weight_decay: float
    beta1: float
    beta2: float
    eps: float
    amsgrad: float
    square_avg_decay: float  # RMSprop's alpha
    centered: float
    l1: float


def make_hyper(lr, momentum=0.0, nesterov=False, weight_decay=0.0, beta1=0.9, beta2=0.999, eps=1e-8,
               amsgrad=False, square_avg_decay=0.99, centered=False, l1=0.0):
    return Hyper(float(lr), float(momentum), float(bool(nesterov)), float(weight_decay), float(beta1), float(beta2),
                 float(eps), float(bool(amsgrad)), float(square_avg_decay), float(bool(centered)), float(l1))


# Named optimizer state, each a flat vector in the parameter layout, or empty when unused.
STATE_NAMES = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "grad_avg")


class Optimizer(NamedTuple):
    """An optimizer's code, its step counter (step[0], updated in place) and its state vectors, named
    as torch.optim names them (RMSprop's square average is exp_avg_sq). The hyper-parameters travel
    beside it (a schedule changes them per epoch; a parallel loop cannot capture nested tuples)."""
    code: int
    step: np.ndarray         # int64 (1,)
    momentum_buffer: np.ndarray
    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    max_exp_avg_sq: np.ndarray
    grad_avg: np.ndarray


def make_optimizer(code, n_params, dtype, state_names, step=0):
    """Zeroed state for `state_names` (the others empty), the step counter at `step`."""
    empty = np.empty(0, dtype=dtype)
    state = {name: np.zeros(n_params, dtype=dtype) if name in state_names else empty for name in STATE_NAMES}
    return Optimizer(int(code), np.array([step], dtype=np.int64), **state)


class Workspace(NamedTuple):
    """Buffers for up to `capacity` rows (see fastbp.core.kernels) and one gradient vector. An ensemble's
    members each take a batch's rows: its capacity is members x the batch rows."""
    acts: np.ndarray
    zs: np.ndarray
    deltas: np.ndarray
    grad: np.ndarray
    capacity: int


def make_workspace(sizes, zs_sections, capacity, n_params, dtype, grad=None):
    """Activations, deltas, a gradient and zs_sections buffers as large as the activations in zs: 1 for
    pre-activations (a layer uses gelu, whose derivative needs them, or an ensemble, whose input block keeps the
    inputs before the members' adapters), 3 with adapters on every layer (fastbp.core.kernels), else 0."""
    width = int(capacity) * int(np.sum(sizes))
    return Workspace(np.empty(width, dtype=dtype), np.empty(width * int(zs_sections), dtype=dtype),
                     np.empty(width, dtype=dtype), np.empty(n_params, dtype=dtype) if grad is None else grad,
                     int(capacity))


class TableMarks(NamedTuple):
    """The embedding tables' bookkeeping of a batch, apart from the Workspace, which every row-parallel region
    takes, because those regions never read it: a mark per table row (zero between
    batches; a batch marks the rows it looked up) and, per workspace row and table, the mark's index and the
    parameter offset of the table row looked up."""
    touched: np.ndarray      # model dtype (rows of every table)
    lookups: np.ndarray      # int64 (capacity, n_tables, 2)


def make_table_marks(n_table_rows, n_tables, capacity, dtype, touched=None):
    """touched: an array of the model dtype to mark in (a distributed step's Allreduce buffer), else zeros."""
    return TableMarks(np.zeros(int(n_table_rows), dtype=dtype) if touched is None else touched,
                      np.empty((int(capacity) if n_tables else 0, int(n_tables), 2), dtype=np.int64))


class Batch(NamedTuple):
    """Rows to train on: X and targets Y (C-contiguous, model dtype), per-row weights (empty: all 1)
    and the order in which rows are visited (int64)."""
    X: np.ndarray
    Y: np.ndarray
    weights: np.ndarray
    order: np.ndarray


def make_batch(X, Y, weights, order):
    dtype = X.dtype
    return Batch(kernel_input(np.ascontiguousarray(X)), kernel_input(np.ascontiguousarray(Y, dtype=dtype)),
                 kernel_input(np.ascontiguousarray(weights, dtype=dtype)), np.ascontiguousarray(order, dtype=np.int64))


class _WritableAlias:
    """The array interface of a read-only array with its read-only flag cleared (it keeps the array alive)."""

    def __init__(self, array):
        self.array = array
        self.__array_interface__ = dict(array.__array_interface__, data=(array.__array_interface__["data"][0], False))


def kernel_input(array):
    """An array the kernels only read, as Numba's kernels are compiled for: writable. Numba types a read-only
    array (a read-only memory map, pandas' and Arrow's zero-copy views, ...) apart and compiled every kernel a second
    time for it (22 s here); this alias shares the memory without a copy. The kernels never write their inputs
    (a write through it into a read-only map would fault, not change the user's data)."""
    if array.flags.writeable:
        return array
    return np.asarray(_WritableAlias(array))


def writable_copies(bundle):
    """`bundle` with each read-only array replaced by a writable copy: what unpickling left read-only (joblib gives
    its workers large arrays as read-only memory maps) and the kernels write, or would compile again for."""
    return bundle._replace(**{name: np.array(value) for name, value in bundle._asdict().items()
                              if isinstance(value, np.ndarray) and not value.flags.writeable})


def _typed_as_tuples(*classes):
    """Numba finds a value's type by its class through functools.singledispatch, which for a class with no entry of
    its own walks the class's bases against every registered type (abc checks included): ~11 ms per bundle class,
    the first time in each process, 0.09 s of a warm worker's first fit. An entry per bundle (tuple's, which types
    a NamedTuple by its fields) skips the walk; the types, and so the cached kernels, are the same."""
    from numba.extending import typeof_impl

    as_tuple = typeof_impl.dispatch(tuple)
    for cls in classes:
        typeof_impl.register(cls)(as_tuple)


_typed_as_tuples(Net, Regularization, Hyper, Optimizer, Workspace, TableMarks, Batch)
