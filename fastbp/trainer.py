"""Trainer: the thin Python class users import. It validates, allocates once, and calls compiled epochs."""
import math
import operator
import time

import numpy as np

from . import kernels
from .activations import GELU, IDENTITY, activation_code
from .config import resolve_n_threads, thread_limits
from .data import DTYPES, check_dtype, check_targets, check_X
from .layout import INITS, Layout
from .losses import CLASSIFICATION_LOSSES, CROSS_ENTROPY, elements_per_row, loss_code, loss_sum
from .modelfile import read_model, write_model
from .optim import check_hyper, make_hyper, n_state_vectors, optimizer_code

PREDICT_BLOCK_ROWS = 1024   # rows per forward block in predict: keeps the workspace small
GRADIENT_BLOCK_ROWS = 4096  # rows per block in loss_and_grad


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite; parameters were restored to the last finite epoch."""


def _positive_int(name, value, allow_zero=False):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be >= {0 if allow_zero else 1}, got {value}")
    return int(value)


class Trainer:
    """A multilayer perceptron trained by mini-batch backpropagation in compiled code.

    layer_sizes: [n_in, hidden..., n_out]. activation: one name for every hidden layer
    or a list with one per hidden layer; the output layer is linear and the loss applies
    softmax (cross_entropy) or sigmoid (binary_cross_entropy) itself, as PyTorch's losses do.
    """

    def __init__(self, layer_sizes, activation="relu", loss="cross_entropy", optimizer="sgd", lr=0.01,
                 momentum=0.0, nesterov=False, weight_decay=0.0, batch_size=256, epochs=10, shuffle=True,
                 seed=0, dtype="float32", n_threads=None, init="auto"):
        self.layout = Layout(layer_sizes)
        self.layer_sizes = [int(s) for s in self.layout.sizes]
        n_hidden = self.layout.n_layers - 1
        if isinstance(activation, str) or not hasattr(activation, "__len__"):
            hidden = [activation] * n_hidden
        else:
            hidden = list(activation)
            if len(hidden) != n_hidden:
                raise ValueError(f"activation lists one name per hidden layer: expected {n_hidden}, got {len(hidden)}")
        act_names = hidden if hidden else [activation]
        self._act_codes = np.array([activation_code(a) for a in hidden] + [IDENTITY], dtype=np.int64)
        self.activation = activation if isinstance(activation, str) else list(activation)
        self.loss = loss
        self._loss_code = loss_code(loss)
        if loss == "cross_entropy" and self.layout.n_out < 2:
            raise ValueError("cross_entropy needs at least 2 outputs (layer_sizes[-1] >= 2); "
                             "for one output use binary_cross_entropy")
        self.optimizer = optimizer
        self._opt_code = optimizer_code(optimizer)
        self.lr, self.momentum, self.nesterov, self.weight_decay = check_hyper(lr, momentum, nesterov, weight_decay)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.epochs = _positive_int("epochs", epochs, allow_zero=True)
        self.shuffle = bool(shuffle)
        if seed is not None:
            seed = _positive_int("seed", seed, allow_zero=True)
        self.seed = seed
        self.dtype = check_dtype(dtype)
        self.n_threads = None if n_threads is None else resolve_n_threads(n_threads)
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid inits: {', '.join(INITS)}")
        self.init = init

        np_dtype = DTYPES[self.dtype]
        init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
        self.params = np.zeros(self.layout.n_params, dtype=np_dtype)
        self.layout.initialize(self.params, init, act_names[0], np.random.default_rng(init_seq))
        self._shuffle_rng = np.random.default_rng(shuffle_seq)
        n_state = n_state_vectors(self._opt_code, self.momentum)
        self._opt_state = np.zeros((n_state, self.layout.n_params), dtype=np_dtype)
        self._opt_step = np.zeros(1, dtype=np.int64)
        self.history = []

    # ------------------------------------------------------------------ public API
    @property
    def layers(self):
        """[(W, b)] live views into params; W has shape (n_in, n_out)."""
        return self.layout.views(self.params)

    @property
    def is_classifier(self):
        return self.loss in CLASSIFICATION_LOSSES

    def fit(self, X, y):
        """Train the current parameters for `epochs` epochs; returns self."""
        X, Y = self._check_data(X, y)
        n = X.shape[0]
        batch = min(self.batch_size, n)
        n_threads = resolve_n_threads(self.n_threads)
        acts, zs, deltas = self._workspace(batch)
        grad = np.empty_like(self.params)
        hyper = make_hyper(self.params.dtype, self.lr, self.momentum, self.nesterov, self.weight_decay)
        epr = elements_per_row(self._loss_code, self.layout.n_out)
        with thread_limits(n_threads, 1):
            for _ in range(self.epochs):
                order = self._shuffle_rng.permutation(n) if self.shuffle else np.arange(n)
                backup = (self.params.copy(), self._opt_state.copy(), self._opt_step.copy())
                start = time.perf_counter()
                loss = kernels.train_epoch(
                    self.params, grad, self._opt_state, self._opt_step, hyper, self._opt_code,
                    self.layout.sizes, self.layout.w_offsets, self._act_codes, self._loss_code, epr,
                    acts, zs, deltas, X, Y, order, batch, n_threads)
                seconds = time.perf_counter() - start
                if not math.isfinite(loss):
                    self.params[:], self._opt_state[:], self._opt_step[:] = backup
                    raise TrainingDiverged(
                        f"training diverged in epoch {len(self.history) + 1}: the loss became NaN or infinite. "
                        f"Parameters are restored to the end of the last finite epoch. Try a lower learning "
                        f"rate (lr={self.lr:g}), standardized features, or float64.")
                self.history.append({"epoch": len(self.history) + 1, "loss": float(loss), "seconds": seconds,
                                     "samples_per_s": n / seconds if seconds > 0 else float("inf"),
                                     "lr": self.lr})
        return self

    def decision_function(self, X):
        """Raw outputs of the last layer (logits for classification losses), shape (n, n_out)."""
        X = check_X(X, self.dtype, self.layout.n_in)
        return self._logits(X)

    def predict_proba(self, X):
        """Class probabilities: softmax rows for cross_entropy, per-output sigmoid for binary_cross_entropy."""
        if not self.is_classifier:
            raise ValueError(f"predict_proba needs a classification loss; this model uses {self.loss!r}")
        return self._probabilities(self.decision_function(X))

    def predict(self, X):
        """Class labels for classification losses (shape (n,), or (n, n_out) for multilabel); values for mse."""
        logits = self.decision_function(X)
        if self._loss_code == CROSS_ENTROPY:
            return logits.argmax(axis=1)
        if self.loss == "binary_cross_entropy":
            labels = (logits >= 0).astype(np.int64)  # sigmoid(z) >= 0.5
            return labels[:, 0] if labels.shape[1] == 1 else labels
        return logits[:, 0] if logits.shape[1] == 1 else logits

    def evaluate(self, X, y):
        """{"loss": mean loss, "accuracy": ...} for classification; {"loss", "r2"} for mse."""
        X, Y = self._check_data(X, y)
        logits = self._logits(X)
        epr = elements_per_row(self._loss_code, self.layout.n_out)
        result = {"loss": float(loss_sum(self._loss_code, logits, Y)) / (X.shape[0] * epr)}
        if self._loss_code == CROSS_ENTROPY:
            result["accuracy"] = float(np.mean(logits.argmax(axis=1) == Y[:, 0]))
        elif self.loss == "binary_cross_entropy":
            hits = (logits >= 0) == (Y >= 0.5)
            result["accuracy"] = float(np.mean(hits.all(axis=1)))
        else:
            residual = ((Y - logits) ** 2).sum(axis=0, dtype=np.float64)
            spread = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0, dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                r2 = np.where(spread > 0, 1 - residual / spread, 0.0)
            result["r2"] = float(r2.mean())
        return result

    def loss_and_grad(self, X, y):
        """(mean loss, flat gradient in the params layout) at the current parameters; nothing is updated."""
        X, Y = self._check_data(X, y)
        n = X.shape[0]
        n_threads = resolve_n_threads(self.n_threads)
        capacity = min(n, GRADIENT_BLOCK_ROWS)
        acts, zs, deltas = self._workspace(capacity)
        grad = np.empty_like(self.params)
        epr = elements_per_row(self._loss_code, self.layout.n_out)
        with thread_limits(n_threads, 1):
            loss = kernels.loss_and_gradient(self.params, grad, self.layout.sizes, self.layout.w_offsets,
                                             self._act_codes, self._loss_code, epr, acts, zs, deltas, capacity,
                                             X, Y, n_threads)
        return float(loss), grad

    def save(self, path):
        """Write the model, optimizer state and history to `path` atomically (see fastbp.modelfile)."""
        config = {"fastbp_version": _version(), "init_args": self._init_args(), "history": self.history,
                  "shuffle_rng_state": self._shuffle_rng.bit_generator.state}
        arrays = {"params": self.params, "opt_state": self._opt_state, "opt_step": self._opt_step}
        write_model(path, config, arrays)

    @classmethod
    def load(cls, path):
        """Rebuild a Trainer saved with save(); parameters and optimizer state round-trip exactly."""
        from .modelfile import ModelFileError
        config, arrays = read_model(path)
        try:
            trainer = cls(**config["init_args"])
            for name, target in (("params", trainer.params), ("opt_state", trainer._opt_state),
                                 ("opt_step", trainer._opt_step)):
                if arrays[name].shape != target.shape or arrays[name].dtype != target.dtype:
                    raise ValueError(f"array {name!r} has shape {arrays[name].shape}, expected {target.shape}")
                target[...] = arrays[name]
            trainer._shuffle_rng.bit_generator.state = config["shuffle_rng_state"]
            trainer.history = list(config["history"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path!r} does not describe a valid fastbp model: {exc}") from None
        return trainer

    def __repr__(self):
        return (f"Trainer(layer_sizes={self.layer_sizes}, activation={self.activation!r}, loss={self.loss!r}, "
                f"optimizer={self.optimizer!r}, lr={self.lr!r}, batch_size={self.batch_size}, dtype={self.dtype!r})")

    # ------------------------------------------------------------------ internals
    def _init_args(self):
        return {"layer_sizes": self.layer_sizes, "activation": self.activation, "loss": self.loss,
                "optimizer": self.optimizer, "lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size, "epochs": self.epochs,
                "shuffle": self.shuffle, "seed": self.seed, "dtype": self.dtype, "n_threads": self.n_threads,
                "init": self.init}

    def _check_data(self, X, y):
        X = check_X(X, self.dtype, self.layout.n_in)
        Y = check_targets(y, self.loss, self.layout.n_out, X.shape[0], self.dtype)
        return X, Y

    def _workspace(self, capacity):
        """Activations, gelu pre-activations (only when a layer uses gelu) and deltas for `capacity` rows."""
        width = capacity * int(self.layout.sizes.sum())
        dtype = self.params.dtype
        zs = np.empty(width if (self._act_codes == GELU).any() else 0, dtype=dtype)
        return np.empty(width, dtype=dtype), zs, np.empty(width, dtype=dtype)

    def _logits(self, X):
        n = X.shape[0]
        n_threads = resolve_n_threads(self.n_threads)
        capacity = min(n, PREDICT_BLOCK_ROWS)
        acts, zs, _ = self._workspace(capacity)
        out = np.empty((n, self.layout.n_out), dtype=self.params.dtype)
        with thread_limits(n_threads, 1):
            kernels.forward_all(self.params, self.layout.sizes, self.layout.w_offsets, self._act_codes,
                                acts, zs, capacity, X, out, n_threads)
        return out

    def _probabilities(self, logits):
        if self._loss_code == CROSS_ENTROPY:
            shifted = logits - logits.max(axis=1, keepdims=True)
            e = np.exp(shifted)
            return e / e.sum(axis=1, keepdims=True)
        out = np.empty_like(logits)
        pos = logits >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-logits[pos]))
        e = np.exp(logits[~pos])
        out[~pos] = e / (1.0 + e)
        return out


def load(path):
    """Load a Trainer saved with Trainer.save (alias of Trainer.load)."""
    return Trainer.load(path)


def _version():
    from . import __version__
    return __version__
