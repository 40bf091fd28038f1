"""scikit-learn drop-in: MLPClassifier and MLPRegressor trained by fastbp's compiled kernels.

Change one import line:

    from fastbp.sklearn import MLPClassifier   # instead of sklearn.neural_network

These subclass scikit-learn's own estimators, so parameter validation, label
handling, the random-number sequence (initialization, early-stopping split,
shuffling), the convergence rules, warm_start, partial_fit and every fitted
attribute are scikit-learn's. What fastbp replaces is the numerical work: each
epoch of the sgd and adam solvers runs as one compiled call (forward, backward,
alpha penalty on the weights, and scikit-learn's update rule, fused), lbfgs is
driven by the compiled loss and gradient, and prediction uses the compiled
forward pass. coefs_ and intercepts_ are views into one flat parameter array.

Where the behaviour differs from scikit-learn 1.9 on purpose (the README lists them): a second fit
with warm_start=True and early_stopping=True starts from the best weights the first fit restored
and keeps its own copy of the best ones (scikit-learn's coefs_ are the same arrays as its saved best
weights then, so its second fit mutates that record); warm_start after a change of
hidden_layer_sizes starts afresh; partial_fit is absent with lbfgs on the regressor too.

TabularMLPClassifier and TabularMLPRegressor (fastbp.sklearn_tabular) are the other kind: scikit-learn's
interface to fastbp's tabular recipe (ensembles, schemas for DataFrames with text and missing values).

Written against scikit-learn 1.9; importing this module requires scikit-learn,
importing fastbp does not.
"""
import numbers
import warnings

import numpy as np
import scipy.optimize
import sklearn
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import validate_data

from .engine import full_data
from .engine.engine import Engine
from .engine.model import ACTIVATION_NAMES, build_net, no_regularization, sklearn_hyper, sklearn_optimizer
from .engine.state import TrainingState
from . import sklearn_onnx

if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) < (1, 7):
    raise ImportError(f"fastbp.sklearn needs scikit-learn >= 1.7, found {sklearn.__version__}")

# scikit-learn's names first; fastbp's other activations work too
_ACTIVATION_NAMES = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                     **{name: name for name in ACTIVATION_NAMES if name not in ("identity", "sigmoid")}}
# scikit-learn's loss for each output activation (its definitions: fastbp.core.losses)
_LOSS_OF_OUTPUT = {"softmax": "sklearn_log_loss", "logistic": "sklearn_binary_log_loss", "exp": "sklearn_poisson",
                   "identity": "sklearn_squared_error"}
_NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain large values and need "
               "to be preprocessed.")
_EXTRA_CONSTRAINTS = {
    "activation": [StrOptions(set(_ACTIVATION_NAMES))],
    "n_threads": [Interval(numbers.Integral, 1, None, closed="left"), None],
    "dtype": [StrOptions({"float32", "float64"}), Options(type, {np.float32, np.float64}), None],
}


class _FastbpMixin:
    """The numerical core shared by both estimators (sklearn's MRO calls into it)."""

    # ------------------------------------------------------------------ model plumbing
    def _net(self, layer_units):
        """(Layout, Net, flat parameters) with coefs_ / intercepts_ as views into the flat buffer."""
        hidden = [_ACTIVATION_NAMES[self.activation]] * (len(layer_units) - 2)
        layout, net = build_net(layer_units, hidden, _LOSS_OF_OUTPUT[self.out_activation_], mean_over_outputs=False)
        flat = getattr(self, "_fastbp_flat", None)
        views = layout.views(flat) if flat is not None and flat.dtype == self.coefs_[0].dtype and \
            flat.size == layout.n_params else None
        if views is None or any(W.ctypes.data != c.ctypes.data or b.ctypes.data != i.ctypes.data
                                for (W, b), c, i in zip(views, self.coefs_, self.intercepts_)):
            flat = np.empty(layout.n_params, dtype=self.coefs_[0].dtype)
            views = layout.views(flat)
            for (W, b), coef, intercept in zip(views, self.coefs_, self.intercepts_):
                W[...] = coef
                b[...] = intercept
            self._fastbp_flat = flat
            self.coefs_ = [W for W, _ in views]
            self.intercepts_ = [b for _, b in views]
        return layout, net, flat

    def _layer_units(self):
        """[n_in, hidden..., n_out] of the current coefs_."""
        return [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]

    def _targets(self, y):
        """Targets for the kernel: class indices for softmax, 0/1 columns for logistic, values for identity
        and exp (Poisson: the kernel's outputs are log-rates)."""
        dtype = self.coefs_[0].dtype
        y = np.asarray(y)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if self.out_activation_ == "softmax":
            y = y.argmax(axis=1).reshape(-1, 1)
        return np.ascontiguousarray(y, dtype=dtype)

    @staticmethod
    def _dense(X):
        if hasattr(X, "toarray"):  # sparse input: the compiled kernels need rows in memory
            X = X.toarray()
        return np.ascontiguousarray(X)

    def _weights(self, sample_weight, dtype):
        if sample_weight is None:
            return np.empty(0, dtype=dtype)
        return np.ascontiguousarray(sample_weight, dtype=dtype)

    def _validate_input(self, X, y, incremental, reset):
        """scikit-learn's checks, then X in `dtype` when one is set (a Pipeline's float64 trains in float32)."""
        X, y = super()._validate_input(X, y, incremental, reset)
        if self.dtype is not None:
            X = X.astype(self.dtype, copy=False)
        return X, y

    def _fit(self, X, y, sample_weight=None, incremental=False):
        # warm_start continues from coefs_ only while they fit the asked hidden layers: after a change of
        # hidden_layer_sizes the fit starts afresh (scikit-learn 1.9 keeps the old layers or fails)
        if self.warm_start and not incremental and hasattr(self, "coefs_"):
            sizes = self.hidden_layer_sizes
            sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
            if sizes != [c.shape[1] for c in self.coefs_[:-1]]:
                del self.coefs_
        return super()._fit(X, y, sample_weight=sample_weight, incremental=incremental)

    # ------------------------------------------------------------------ stochastic solvers
    def _fit_stochastic(self, X, y, sample_weight, activations, deltas, coef_grads, intercept_grads,
                        layer_units, incremental):
        from sklearn.base import is_classifier
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer
        from sklearn.utils import shuffle

        layout, net, flat = self._net(layer_units)
        new_optimizer = not incremental or not hasattr(self, "_optimizer")
        if new_optimizer:
            # scikit-learn's optimizer objects keep the learning-rate bookkeeping
            # (invscaling, adaptive, stopping); the updates themselves run compiled.
            if self.solver == "sgd":
                self._optimizer = SGDOptimizer([], self.learning_rate_init, self.learning_rate, self.momentum,
                                               self.nesterovs_momentum, self.power_t)
            else:
                self._optimizer = AdamOptimizer([], self.learning_rate_init, self.beta_1, self.beta_2,
                                                self.epsilon)
            self._fastbp_optimizer = sklearn_optimizer(self.solver, layout.n_params, flat.dtype)

        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping:
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            split = train_test_split(*arrays, random_state=self._random_state, test_size=self.validation_fraction,
                                     stratify=stratify)
            X_train, X_val, y_train, y_val = split[:4]
            sample_weight_train, sample_weight_val = (split[4], split[5]) if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
        else:
            X_train, y_train, sample_weight_train = X, y, sample_weight
            X_val = y_val = sample_weight_val = None

        n_samples = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        Xc = self._dense(X_train)
        Y = self._targets(y_train)
        weights = self._weights(sample_weight_train, flat.dtype)
        # scikit-learn's optimizer objects and this module keep the training state; the engine runs the epochs
        state = TrainingState(flat, self._fastbp_optimizer, None, None, 0, 0)
        engine = Engine(state, net, no_regularization(net, flat.dtype, self.alpha), None, batch_size,
                        n_threads=self.n_threads)
        sample_idx = np.arange(n_samples, dtype=int)
        order = np.empty(n_samples, dtype=np.int64)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = shuffle(sample_idx, random_state=self._random_state)
                lr = getattr(self._optimizer, "learning_rate", self.learning_rate_init) \
                    if self.solver == "sgd" else self.learning_rate_init
                hyper = sklearn_hyper(lr, self.momentum, self.nesterovs_momentum, self.beta_1, self.beta_2,
                                      self.epsilon)
                order[:] = sample_idx
                _, loss = engine.train_rows_here(Xc, Y, weights, order, hyper)
                if not np.isfinite(loss):
                    # the kernel stops updating at the first non-finite batch; scikit-learn's weights turn NaN
                    # there, which early stopping can undo and its final check reports (non-finite weights)
                    flat[...] = np.nan
                self.n_iter_ += 1
                self.loss_ = float(loss)
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(early_stopping, X_val, y_val, sample_weight_val)
                self._optimizer.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    msg = (f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} "
                           "consecutive epochs.")
                    if self._optimizer.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    from sklearn.exceptions import ConvergenceWarning
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                                  "optimization hasn't converged yet.", ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if early_stopping:
            for W, best in zip(self.coefs_, self._best_coefs):
                W[...] = best
            for b, best in zip(self.intercepts_, self._best_intercepts):
                b[...] = best

    # ------------------------------------------------------------------ lbfgs
    def _lbfgs_objective(self, X, y, sample_weight, layer_units):
        return _LbfgsObjective(self, self._dense(X), self._targets(y), sample_weight, layer_units)

    def _fit_lbfgs(self, X, y, sample_weight, activations, deltas, coef_grads, intercept_grads, layer_units):
        objective = self._lbfgs_objective(X, y, sample_weight, layer_units)
        iprint = 1 if self.verbose is True or self.verbose >= 1 else -1
        options = {"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol}
        if tuple(int(p) for p in scipy.__version__.split(".")[:2]) < (1, 15):
            options["iprint"] = iprint
        result = scipy.optimize.minimize(objective, objective.flat.astype(np.float64), method="L-BFGS-B", jac=True,
                                         options=options)
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        self.loss_ = float(result.fun)
        objective.flat[...] = result.x
        if not np.isfinite(self.loss_):
            raise ValueError(f"{_NON_FINITE} (The loss is NaN or infinite.)")

    def _loss_grad_lbfgs(self, packed_coef_inter, X, y, sample_weight, activations, deltas, coef_grads,
                         intercept_grads):
        """scikit-learn's hook: (loss, packed gradient) at these parameters, which are kept, as scikit-learn
        does. The work arrays of scikit-learn's signature are not used."""
        layer_units = self._layer_units()
        return self._lbfgs_objective(X, y, sample_weight, layer_units)(packed_coef_inter)

    # ------------------------------------------------------------------ prediction
    def _forward_pass_fast(self, X, check_input=True):
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        layer_units = self._layer_units()
        layout, net, flat = self._net(layer_units)
        Xc = np.ascontiguousarray(self._dense(X), dtype=flat.dtype)
        out = full_data.forward(flat, net, Xc, self.n_threads)
        if self.out_activation_ in ("softmax", "logistic"):
            full_data.to_probabilities(out, softmax=self.out_activation_ == "softmax")
        elif self.out_activation_ == "exp":
            np.exp(out, out=out)
        return out



class _LbfgsObjective:
    """L-BFGS's objective over the packed parameters: the compiled full-data loss and gradient plus
    scikit-learn's alpha penalty, alpha/2 * |W|^2 / sum of weights, on the weights only."""

    def __init__(self, estimator, X, Y, sample_weight, layer_units):
        layout, net, self.flat = estimator._net(layer_units)
        weights = estimator._weights(sample_weight, self.flat.dtype)
        self.full_gradient = full_data.FullGradient(net, X, Y, weights, estimator.n_threads, self.flat.dtype)
        self.grad = np.empty_like(self.flat)
        self.weight_mask = np.zeros(layout.n_params, dtype=bool)
        for W, _ in layout.views(self.weight_mask):
            W[...] = True
        self.penalty = estimator.alpha / (X.shape[0] if sample_weight is None else float(np.sum(sample_weight)))

    def __call__(self, packed):
        self.flat[...] = packed
        loss = self.full_gradient(self.flat, self.grad)
        W = self.flat[self.weight_mask]
        loss += 0.5 * self.penalty * float(W @ W)
        grad = self.grad.astype(np.float64)
        grad[self.weight_mask] += self.penalty * W
        return loss, grad


class MLPClassifier(_FastbpMixin, _SkMLPClassifier):
    """scikit-learn's MLPClassifier (same parameters, defaults and attributes), trained by fastbp.

    Beyond scikit-learn: more activations (leaky_relu, elu, softplus, gelu), `class_weight`
    ({label: weight} or "balanced", multiplied into sample_weight), and `n_threads`
    (None: every core). Float32 input stays float32 throughout; `dtype` ("float32" or "float64"; None: the
    input's) sets the precision whatever the input, e.g. after a Pipeline's float64 transformers.
    """

    _parameter_constraints = {**_SkMLPClassifier._parameter_constraints, **_EXTRA_CONSTRAINTS,
                              "class_weight": [dict, StrOptions({"balanced"}), None]}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, class_weight=None,
                 n_threads=None, dtype=None):
        super().__init__(hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver, alpha=alpha,
                         batch_size=batch_size, learning_rate=learning_rate, learning_rate_init=learning_rate_init,
                         power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
                         verbose=verbose, warm_start=warm_start, momentum=momentum,
                         nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         n_iter_no_change=n_iter_no_change, max_fun=max_fun)
        self.class_weight = class_weight
        self.n_threads = n_threads
        self.dtype = dtype

    def _with_class_weight(self, y, sample_weight):
        if self.class_weight is None:
            return sample_weight
        y_arr = np.asarray(y)
        if y_arr.ndim > 1 and y_arr.shape[1] > 1:
            raise ValueError("class_weight is not supported for multilabel targets; pass sample_weight instead")
        cw = compute_sample_weight(self.class_weight, y_arr.ravel())
        return cw if sample_weight is None else cw * np.asarray(sample_weight, dtype=np.float64)

    def fit(self, X, y, sample_weight=None):
        return super().fit(X, y, sample_weight=self._with_class_weight(y, sample_weight))

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        return super().partial_fit(X, y, sample_weight=self._with_class_weight(y, sample_weight), classes=classes)

    partial_fit.__doc__ = _SkMLPClassifier.partial_fit.__doc__


class MLPRegressor(_FastbpMixin, _SkMLPRegressor):
    """scikit-learn's MLPRegressor (same parameters, defaults and attributes), trained by fastbp.

    loss: 'squared_error' or 'poisson' (half the Poisson deviance, exp output), as scikit-learn's.
    Extra: more activations, `n_threads` and `dtype` (as the classifier's).
    """

    _parameter_constraints = {**_SkMLPRegressor._parameter_constraints, **_EXTRA_CONSTRAINTS}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, n_threads=None, dtype=None):
        super().__init__(loss=loss, hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
                         alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
                         learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter, shuffle=shuffle,
                         random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
                         momentum=momentum, nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         n_iter_no_change=n_iter_no_change, max_fun=max_fun)
        self.n_threads = n_threads
        self.dtype = dtype

    # scikit-learn 1.9's regressor means to hide partial_fit for lbfgs but tests the method, not its result
    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        return super().partial_fit(X, y, sample_weight=sample_weight)

    partial_fit.__doc__ = _SkMLPRegressor.partial_fit.__doc__


sklearn_onnx.register_when_imported(MLPClassifier, MLPRegressor, _ACTIVATION_NAMES)

from .sklearn_tabular import TabularMLPClassifier, TabularMLPRegressor  # noqa: E402 (the recipe's estimators)

__all__ = ["MLPClassifier", "MLPRegressor", "TabularMLPClassifier", "TabularMLPRegressor"]
