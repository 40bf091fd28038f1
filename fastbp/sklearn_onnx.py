"""skl2onnx converters for fastbp.sklearn's estimators, registered with skl2onnx (`pip install 'fastbp[onnx]'`)
as soon as both are imported, in either order, so `skl2onnx.to_onnx(model, X[:1])` works on them and on
pipelines holding them. fastbp.sklearn does not import skl2onnx itself (about 1 s): each worker process of a
parallel search unpickles the estimators and would pay it. The graph is fastbp's own (fastbp.files.onnx_export: all of
fastbp's activations, the Poisson regressor's exp), its outputs skl2onnx's conventions: a label
(int64 or string) and probabilities (ZipMap'ed unless options={"zipmap": False}) for the
classifier, "variable" (n, n_outputs) for the regressor.
"""
import importlib.abc
import importlib.util
import sys

import numpy as np

from .files import onnx_export


def register_when_imported(classifier, regressor, activation_names):
    """register() now when skl2onnx is loaded, else right after whatever imports it first."""
    def then():
        register(classifier, regressor, activation_names)

    if "skl2onnx" in sys.modules:
        then()
    else:
        sys.meta_path.insert(0, _AfterImport("skl2onnx", then))


class _AfterImport(importlib.abc.MetaPathFinder):
    """A finder that, the first time `name` is imported, runs its module as usual and then calls `then`."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once, and not while the real finders look for the module below
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            self.then()

        spec.loader.exec_module = exec_module
        return spec


def register(classifier, regressor, activation_names):
    """Register both estimators with skl2onnx; does nothing when skl2onnx is not installed.
    activation_names: {the estimators' activation parameter: fastbp's activation name}."""
    try:
        from skl2onnx import update_registered_converter
        from skl2onnx.common.data_types import Int64TensorType
        from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                      calculate_linear_regressor_output_shapes)
    except ImportError:
        return

    # skl2onnx's linear shapes, widened where an MLP has several outputs
    def classifier_shapes(operator):
        calculate_linear_classifier_output_shapes(operator)
        model = operator.raw_operator
        if model._label_binarizer.y_type_ == "multilabel-indicator":
            operator.outputs[0].type = Int64TensorType([operator.inputs[0].type.shape[0], model.n_outputs_])

    def regressor_shapes(operator):
        calculate_linear_regressor_output_shapes(operator)
        out = operator.outputs[0]
        out.type = out.type.__class__([operator.inputs[0].type.shape[0], operator.raw_operator.n_outputs_])

    # skl2onnx checks a converter's signature: exactly (scope, operator, container)
    def convert_classifier(scope, operator, container):
        _convert_classifier(scope, operator, container, activation_names)

    def convert_regressor(scope, operator, container):
        _convert_regressor(scope, operator, container, activation_names)

    update_registered_converter(classifier, "FastbpMLPClassifier", classifier_shapes,
                                convert_classifier, options={"zipmap": [True, False, "columns"], "nocl": [True, False]})
    update_registered_converter(regressor, "FastbpMLPRegressor", regressor_shapes,
                                convert_regressor)


class _ContainerGraph:
    """onnx_export's graph-building interface over skl2onnx's scope and container."""

    def __init__(self, scope, container):
        self.onnx = onnx_export.require_onnx()
        self.scope, self.container = scope, container

    def name(self, hint):
        return self.scope.get_unique_variable_name(hint)

    def const(self, array, hint="const"):
        name, array = self.name(hint), np.asarray(array)
        if array.dtype == object:  # strings: skl2onnx copies raw data only, so they go as a list
            self.container.add_initializer(name, self.onnx.TensorProto.STRING, list(array.shape),
                                           [str(s).encode("utf-8") for s in array.ravel()])
        else:
            self.container.add_initializer(name, None, None, self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, hint=None, domain="", outputs=None, **attrs):
        outputs = outputs or [self.name(hint or op.lower())]
        self.container.add_node(op, inputs, outputs, op_domain=domain,
                                name=self.scope.get_unique_operator_name(op), **attrs)
        return outputs[0]


def _logits(g, operator, activation_names):
    """The estimator's forward pass on the operator's input, in the input's precision."""
    model = operator.raw_operator
    kind = operator.inputs[0].type.__class__.__name__
    dtype = np.float64 if kind == "DoubleTensorType" else np.float32
    x = operator.inputs[0].full_name
    if kind not in ("DoubleTensorType", "FloatTensorType"):  # integers and booleans: MatMul takes floats only
        x = g.node("Cast", [x], to=g.onnx.TensorProto.FLOAT)
    layers = [(np.asarray(W, dtype=dtype), np.asarray(b, dtype=dtype)) for W, b in zip(model.coefs_, model.intercepts_)]
    activation = activation_names[model.activation]
    return onnx_export.forward(g, x, layers, [activation] * (len(layers) - 1)), dtype


def _convert_classifier(scope, operator, container, activation_names):
    g = _ContainerGraph(scope, container)
    model = operator.raw_operator
    logits, dtype = _logits(g, operator, activation_names)
    label_out, proba_out = operator.outputs[0].full_name, operator.outputs[1].full_name
    if model.out_activation_ == "softmax":
        g.node("Softmax", [logits], outputs=[proba_out], axis=1)
        index = g.node("ArgMax", [logits], axis=1, keepdims=0)
    else:
        p = g.node("Sigmoid", [logits])
        if model._label_binarizer.y_type_ == "multilabel-indicator":  # one 0/1 column per label
            g.node("Identity", [p], outputs=[proba_out])
            g.node("Cast", [g.node("Greater", [p, g.const(np.array(0.5, dtype))])], outputs=[label_out],
                   to=g.onnx.TensorProto.INT64)
            return
        # binary: scikit-learn's two columns, and the positive class where p > 0.5
        g.node("Concat", [g.node("Sub", [g.const(np.array(1, dtype)), p]), p], outputs=[proba_out], axis=1)
        index = g.node("Cast", [g.node("Greater", [p, g.const(np.array(0.5, dtype))])], to=g.onnx.TensorProto.INT64)
        index = g.node("Reshape", [index, g.const(np.array([-1], dtype=np.int64))])
        if len(model.classes_) == 1:  # trained on one class: it is every prediction, as in predict
            index = g.node("Mul", [index, g.const(np.array(0, dtype=np.int64))])
    g.node("Gather", [g.const(_onnx_labels(model.classes_), "classes"), index], outputs=[label_out])


def _onnx_labels(classes):
    """Class labels as skl2onnx types them: strings stay strings, numbers and bools become int64."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "OUS":
        return classes.astype(str).astype(object)
    if classes.dtype.kind == "f" and not np.array_equal(classes, np.round(classes)):
        raise ValueError(f"ONNX labels are int64 or strings; the classes {classes.tolist()} are fractional: "
                         "encode them as integers or strings first")
    return classes.astype(np.int64)


def _convert_regressor(scope, operator, container, activation_names):
    g = _ContainerGraph(scope, container)
    logits, _ = _logits(g, operator, activation_names)
    value = g.node("Exp", [logits]) if operator.raw_operator.out_activation_ == "exp" else logits
    g.node("Identity", [value], outputs=[operator.outputs[0].full_name])
