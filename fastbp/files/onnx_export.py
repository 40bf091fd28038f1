"""ONNX export: a trained MLP as MatMul/Add/activation nodes, its output as the model's predict
gives it, and, for a model trained from a file, the stored column preprocessing as ONNX ops, so
onnxruntime (or any ONNX runtime) predicts as fastbp does. Needs the optional package onnx
(`pip install 'fastbp[onnx]'`); fastbp.sklearn builds its estimators' graphs from the same parts.
"""
import math

import numpy as np

from .columns import category_keys
from .modelfile import atomic_write
from .scan import MISSING
from .streaming import FileTargets

OPSET = 17     # ai.onnx: every op used here (Erf, Softplus, Elu, LeakyRelu, IsNaN, Where) exists there
ML_OPSET = 2   # ai.onnx.ml: LabelEncoder with string keys and a default


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install 'fastbp[onnx]' "
                          "(onnxruntime too, to run the exported model)") from None
    return onnx


class Graph:
    """The nodes and constants of a graph being built; node() returns its output's (fresh) name.
    fastbp.sklearn's converter provides the same three methods over skl2onnx's container."""

    def __init__(self):
        self.onnx = require_onnx()
        self.nodes, self.initializers, self._count = [], [], 0

    def name(self, hint):
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, array, hint="const"):
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, hint=None, domain="", outputs=None, **attrs):
        outputs = outputs or [self.name(hint or op.lower())]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outputs, domain=domain or None, **attrs))
        return outputs[0]


def forward(g, x, layers, activations):
    """The logits of input `x` (a name) through layers [(W, b)] with one activation name per hidden layer."""
    for i, (W, b) in enumerate(layers):
        z = g.node("Add", [g.node("MatMul", [x, g.const(W, "W")]), g.const(b, "b")])
        x = activate(g, activations[i], z, W.dtype) if i < len(layers) - 1 else z
    return x


def ensemble_forward(g, x, layers, activations, adapters, loss, layer_adapters=None):
    """An ensemble's logits (fastbp.core.layout): the (N, n_in) input `x` times each member's adapter row
    (adapters: (members, n_in)) as (N, members, n_in), the shared layers on all of it at once, each member's head
    (the last of `layers`, stacked: (members, n, n_out) and (members, n_out)), the members' predictions averaged
    through the loss's link and turned back into logits, as fastbp.engine.full_data.ensemble_logits does.
    layer_adapters: [(R_l, S_l)] of every shared layer (adapters on every layer; its b are then (members, n_out)):
    each layer's input times R_l (R_0 is `adapters`), its product times S_l."""
    dtype = adapters.dtype
    axis = g.const(np.array([1], dtype=np.int64))
    h = g.node("Mul", [g.node("Unsqueeze", [x, axis]), g.const(adapters, "adapters")])
    for i, (W, b) in enumerate(layers[:-1]):
        if layer_adapters and i > 0:
            h = g.node("Mul", [h, g.const(layer_adapters[i][0], "R")])
        z = g.node("MatMul", [h, g.const(W, "W")])
        if layer_adapters:
            z = g.node("Mul", [z, g.const(layer_adapters[i][1], "S")])
        h = activate(g, activations[i], g.node("Add", [z, g.const(b, "b")]), dtype)
    W, b = layers[-1]
    axis2 = g.const(np.array([2], dtype=np.int64))
    z = g.node("Squeeze", [g.node("MatMul", [g.node("Unsqueeze", [h, axis2]), g.const(W, "heads")]), axis2])
    z = g.node("Add", [z, g.const(b, "head_biases")])
    if loss == "cross_entropy":
        mean = g.node("ReduceMean", [g.node("Softmax", [z], axis=2)], axes=[1], keepdims=0)
        return g.node("Log", [mean])
    if loss == "binary_cross_entropy":
        mean = g.node("ReduceMean", [g.node("Sigmoid", [z])], axes=[1], keepdims=0)
        return g.node("Sub", [g.node("Log", [mean]),
                              g.node("Log", [g.node("Sub", [g.const(np.array(1.0, dtype)), mean])])])
    if loss == "poisson":
        return g.node("Log", [g.node("ReduceMean", [g.node("Exp", [z])], axes=[1], keepdims=0)])
    return g.node("ReduceMean", [z], axes=[1], keepdims=0)


def activate(g, name, z, dtype):
    """fastbp's hidden activations (fastbp.core.activations) as ONNX ops."""
    if name == "identity":
        return z
    if name in ("relu", "tanh", "sigmoid"):
        return g.node({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[name], [z])
    if name == "leaky_relu":
        return g.node("LeakyRelu", [z], alpha=0.01)
    if name == "elu":
        return g.node("Elu", [z], alpha=1.0)
    if name == "softplus":
        return g.node("Softplus", [z])  # PyTorch's linear tail above 20 differs by < 3e-9
    if name == "gelu":  # exact (erf) form: x * (1 + erf(x / sqrt 2)) / 2
        scaled = g.node("Mul", [z, g.const(np.array(1 / math.sqrt(2), dtype))])
        if np.dtype(dtype) == np.float64:  # onnxruntime has Erf for float only: float64 gelu is float-accurate
            erf = g.node("Cast", [g.node("Erf", [g.node("Cast", [scaled], to=g.onnx.TensorProto.FLOAT)])],
                         to=g.onnx.TensorProto.DOUBLE)
        else:
            erf = g.node("Erf", [scaled])
        half_x = g.node("Mul", [z, g.const(np.array(0.5, dtype))])
        return g.node("Mul", [half_x, g.node("Add", [erf, g.const(np.array(1.0, dtype))])])
    raise ValueError(f"no ONNX form for activation {name!r}")


def lookup(g, code, code_dtype, table):
    """The (N, dim) rows of `table` (rows, dim) that an (N, 1) column of category codes (of numpy dtype
    code_dtype) picks, as the kernels pick them: a code outside [0, rows - 1) takes the last (unknown) row, a
    fractional one is truncated."""
    unknown = np.array(len(table) - 1, code_dtype)
    inside = g.node("And", [g.node("GreaterOrEqual", [code, g.const(np.array(0, code_dtype))]),
                            g.node("Less", [code, g.const(unknown)])])
    index = g.node("Where", [inside, code, g.const(unknown)])
    if np.dtype(code_dtype) != np.int64:
        index = g.node("Cast", [index], to=g.onnx.TensorProto.INT64)
    index = g.node("Squeeze", [index, g.const(np.array([1], dtype=np.int64))])
    return g.node("Gather", [g.const(table, "table"), index], axis=0)


def preprocess(g, prep, dtype, tables=()):
    """Graph inputs (one per feature column, shape (N, 1): double for numeric columns, string for
    categorical ones), the name of the model's input matrix, as fastbp.files.preprocess builds it:
    numeric columns standardized or quantile-encoded (missing values filled when trained with --impute),
    categorical ones one-hot over the training categories (an unseen category is all zeros) or, for the
    embedded columns, their row of `tables` (in the schema's order, after the other inputs; an unseen category
    takes the unknown row), and the names of
    (N, 1) booleans that mark rows `fastbp predict` refuses for a reason the matrix does not show: an empty text
    cell is a missing value (as in a CSV), a column that had none in training cannot take one, and an infinite
    number is refused even where a quantile encoding would bound it. prep: a Preprocessor."""
    onnx = g.onnx
    state = prep.state
    inputs, parts, refused, looked_up = [], [], [], []
    embed = state.get("embed") or [None] * len(state["features"])
    for i, (column, cats) in enumerate(zip(state["features"], state["categories"])):
        if cats is None:
            inputs.append(onnx.helper.make_tensor_value_info(column, onnx.TensorProto.DOUBLE, [None, 1]))
            x = column
            if state["impute"] is not None:
                x = g.node("Where", [g.node("IsNaN", [x]), g.const(np.array([state["fill"][i]])), x])
            if state["numeric"] == "standard":
                x = g.node("Div", [g.node("Sub", [x, g.const(np.array([state["mean"][i]]))]),
                                   g.const(np.array([state["scale"][i]]))])
            else:
                x = _quantile_encoding(g, x, state, i)
                refused.append(g.node("IsInf", [column]))  # bounded here, refused by predict
            parts.append(g.node("Cast", [x], to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))))
        else:
            inputs.append(onnx.helper.make_tensor_value_info(column, onnx.TensorProto.STRING, [None, 1]))
            keys = category_keys(cats)
            if "" not in cats:  # an empty cell is missing: its own category, or a refused row
                if MISSING in cats:
                    keys.append(("", cats.index(MISSING)))
                else:
                    empty = g.node("LabelEncoder", [column], domain="ai.onnx.ml", keys_strings=[""],
                                   values_int64s=[1], default_int64=0)  # Equal takes strings from opset 19
                    refused.append(g.node("Cast", [empty], to=onnx.TensorProto.BOOL))
            index = g.node("LabelEncoder", [column], domain="ai.onnx.ml", keys_strings=[k for k, _ in keys],
                           values_int64s=[i for _, i in keys], default_int64=-1)
            if embed[i] is not None:
                looked_up.append(lookup(g, index, np.int64, tables[len(looked_up)]))
                continue
            hot = g.node("Equal", [index, g.const(np.arange(len(cats), dtype=np.int64).reshape(1, -1))])
            parts.append(g.node("Cast", [hot], to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))))
    # in the order of the model's inputs: features in order, each category expanded in place, then the embeddings
    parts += looked_up
    return inputs, g.node("Concat", parts, axis=1) if len(parts) > 1 else parts[0], refused


def _quantile_encoding(g, x, state, i):
    """Feature i's quantile encoding (fastbp.files.preprocess.piecewise_linear, quantile_score) of the (N, 1)
    column x: a ramp per bin, clipped to [0, 1]; the quantile transform weighs them by the levels' steps."""
    edges = np.array(state["edges"][i])
    shifted = g.node("Sub", [x, g.const(edges[:-1].reshape(1, -1))])
    ramps = g.node("Clip", [g.node("Div", [shifted, g.const(np.diff(edges).reshape(1, -1))]),
                            g.const(np.array(0.0)), g.const(np.array(1.0))])
    if state["numeric"] == "ple":
        return ramps
    levels = np.array(state["levels"][i])
    level = g.node("Add", [g.node("MatMul", [ramps, g.const(np.diff(levels).reshape(-1, 1))]),
                           g.const(np.array([[levels[0]]]))])
    return g.node("Mul", [g.node("Sub", [g.node("Mul", [level, g.const(np.array(2.0))]), g.const(np.array(1.0))]),
                          g.const(np.array(np.sqrt(3.0)))])


def valid_rows(g, x, refused, dtype):
    """(N,) booleans: the rows `fastbp predict` accepts. A row is refused when its model input holds NaN or
    infinity (a missing number without --impute, an infinite one, or one that overflows the model's dtype when
    standardized: 0 * x is NaN there and only there) or when one of `refused` ((N, 1) booleans) is true."""
    zero, nan = g.const(np.zeros((1, 1), dtype)), g.const(np.full((1, 1), np.nan, dtype))
    columns = [g.node("Mul", [x, zero])] + [g.node("Where", [flag, nan, zero]) for flag in refused]
    check = g.node("ReduceSum", [g.node("Concat", columns, axis=1) if len(columns) > 1 else columns[0],
                                 g.const(np.array([1], dtype=np.int64))], keepdims=0)
    return g.node("Not", [g.node("IsNaN", [check])])


INPUT_DTYPES = ("float32", "float64", "int64", "int32", "bool")


def trainer_model(layers, activations, loss, dtype, prep=None, classes=None, producer_version="", input_dtype=None,
                  tables=(), adapters=None, layer_adapters=None):
    """The ONNX model of a Trainer: outputs as Trainer.predict / predict_proba give them ("label" and
    "probabilities" for classification losses, "variable" otherwise); a file-trained model
    (`prep`: the Preprocessor of its stored state) takes its columns and gives labels, probabilities
    (one column per class) and values on the target's own scale, as `fastbp predict` does; one that
    learned its classes one-hot with mse, mae or huber gives "label" and "scores". classes: the Trainer's
    classes_ (labels by output). input_dtype: the type of input "X" (the model's dtype by default; other
    numbers and booleans are cast to it first). Every model also gives "is_valid": false for a row that
    predict refuses (see valid_rows), whose probabilities, scores or values are NaN and whose label means
    nothing. tables: the embedding tables (fastbp.core.layout): an array model's X then ends with their category
    codes. adapters: an ensemble's (members, n_in) input adapters; its last layer is then the members' heads,
    (members, n_in, n_out) and (members, n_out); layer_adapters: with adapters on every layer, theirs
    (ensemble_forward)."""
    onnx = require_onnx()
    g = Graph()
    dtype = np.dtype(dtype)
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    n_in, n_out = layers[0][0].shape[-2], layers[-1][0].shape[-1]
    if prep is None:
        given = dtype if input_dtype is None else np.dtype(input_dtype)
        n_dense = n_in - sum(t.shape[1] for t in tables)
        inputs = [onnx.helper.make_tensor_value_info("X", onnx.helper.np_dtype_to_tensor_dtype(given),
                                                     [None, n_dense + len(tables)])]
        x, refused = "X" if given == dtype else g.node("Cast", ["X"], to=elem), []
        if tables:  # the dense inputs, then each code's table row
            columns = [g.node("Slice", [x, g.const(np.array([lo])), g.const(np.array([hi])), g.const(np.array([1]))])
                       for lo, hi in [(0, n_dense)] + [(n_dense + e, n_dense + e + 1) for e in range(len(tables))]]
            x = g.node("Concat", columns[:1] * bool(n_dense) + [lookup(g, code, dtype, table)
                                                               for code, table in zip(columns[1:], tables)], axis=1)
    else:
        inputs, x, refused = preprocess(g, prep, dtype, tables)
    valid = valid_rows(g, x, refused, dtype)
    valid_column = g.node("Unsqueeze", [valid, g.const(np.array([1], dtype=np.int64))])

    def finish(value, name, value_dtype=dtype):  # NaN in the rows predict refuses
        g.node("Where", [valid_column, value, g.const(np.full((1, 1), np.nan, value_dtype))], outputs=[name])

    logits = forward(g, x, layers, activations) if adapters is None else \
        ensemble_forward(g, x, layers, activations, adapters, loss, layer_adapters)
    # a file-trained classifier with one output per class and another loss learned the classes one-hot
    one_hot = prep is not None and prep.task == "classify" and FileTargets(loss, n_out).one_hot
    if loss == "cross_entropy" or one_hot:
        named = logits
        if prep is None and classes is not None and len(classes) < n_out:  # outputs beyond the classes name none
            named = g.node("Slice", [logits, g.const(np.array([0])), g.const(np.array([len(classes)])),
                                     g.const(np.array([1]))])
        label = g.node("ArgMax", [named], axis=1, keepdims=0)
        name = {"cross_entropy": "probabilities", "binary_cross_entropy": "probabilities"}.get(loss, "scores")
        if loss == "cross_entropy":
            finish(g.node("Softmax", [logits], axis=1), name)
        else:  # one-vs-rest probabilities, or mse/mae/huber's raw scores
            finish(g.node("Sigmoid", [logits]) if loss == "binary_cross_entropy" else logits, name)
        outputs = [_labels(g, label, prep, classes, [None]),
                   onnx.helper.make_tensor_value_info(name, elem, [None, n_out])]
    elif loss == "binary_cross_entropy":
        p = g.node("Sigmoid", [logits])
        per_class = prep is not None and n_out == 1  # as `fastbp predict --proba`: one column per class
        if per_class:
            p = g.node("Concat", [g.node("Sub", [g.const(np.ones((1, 1), dtype)), p]), p], axis=1)
        finish(p, "probabilities")
        label = g.node("Cast", [g.node("GreaterOrEqual", [logits, g.const(np.array(0, dtype))])],
                       to=onnx.TensorProto.INT64)
        if n_out == 1:  # predict gives (n,) for one output
            label = g.node("Squeeze", [label, g.const(np.array([1], dtype=np.int64))])
            if prep is None and classes is not None and len(classes) == 1:  # one class seen: always it
                label = g.node("Mul", [label, g.const(np.array(0, dtype=np.int64))])
        outputs = [_labels(g, label, prep, classes if n_out == 1 else None,
                           [None] if n_out == 1 else [None, n_out]),
                   onnx.helper.make_tensor_value_info("probabilities", elem, [None, 2 if per_class else n_out])]
    else:
        value, value_dtype = g.node("Exp", [logits]) if loss == "poisson" else logits, dtype
        if prep is not None:  # back to the target's own scale, in float64 as fastbp predict does
            value = g.node("Add", [g.node("Mul", [g.node("Cast", [value], to=onnx.TensorProto.DOUBLE),
                                                  g.const(np.array(prep.state["target_scale"]))]),
                                   g.const(np.array(prep.state["target_mean"]))])
            elem, value_dtype = onnx.TensorProto.DOUBLE, np.float64
        finish(value, "variable", value_dtype)
        outputs = [onnx.helper.make_tensor_value_info("variable", elem, [None, n_out])]
    g.node("Identity", [valid], outputs=["is_valid"])
    outputs.append(onnx.helper.make_tensor_value_info("is_valid", onnx.TensorProto.BOOL, [None]))
    graph = onnx.helper.make_graph(g.nodes, "fastbp_mlp", inputs, outputs, g.initializers)
    model = onnx.helper.make_model(graph, producer_name="fastbp", producer_version=producer_version,
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET),
                                                  onnx.helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _labels(g, index, prep, classes, shape):
    """The "label" output: the label of each output index, as predict gives it: a file-trained model's
    labels in their own type, else the Trainer's classes_ (multilabel: the 0/1 indices themselves)."""
    onnx = g.onnx
    if prep is not None and prep.classes():
        labels = prep.labels(np.arange(len(prep.classes())))
    elif classes is not None:
        labels = np.asarray(classes)
    else:
        g.node("Identity", [index], outputs=["label"])
        return onnx.helper.make_tensor_value_info("label", onnx.TensorProto.INT64, shape)
    if labels.dtype.kind in "OUS":
        labels, elem = labels.astype(str).astype(object), onnx.TensorProto.STRING
    else:
        elem = onnx.helper.np_dtype_to_tensor_dtype(labels.dtype)
    g.node("Gather", [g.const(labels, "classes"), index], outputs=["label"])
    return onnx.helper.make_tensor_value_info("label", elem, shape)


def save(model, path):
    """Write an ONNX model to `path` atomically."""
    data = model.SerializeToString()
    atomic_write(path, lambda fh: fh.write(data), what="ONNX file")
