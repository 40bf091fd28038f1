"""Trainer: the thin Python class users import. It validates, allocates once, and calls compiled epochs."""
import math
import time
import warnings

import numpy as np

from . import kernels, metrics, passes
from .activations import IDENTITY, activation_code
from .callbacks import Callback, EpochLogger, ProgressBar
from .comm import checksum, make_comm
from .config import resolve_n_threads, thread_limits
from .data import (DTYPES, check_dtype, check_int, check_sample_weight, check_targets, check_X,
                   class_weights_per_sample, validation_indices)
from .layout import INITS, Layout
from .losses import BINARY_CROSS_ENTROPY, CLASSIFICATION_LOSSES, CROSS_ENTROPY, elements_per_row, loss_code
from .modelfile import ModelFileError, read_model, write_model
from .optim import Optimizer
from .schedules import make_schedule, schedule_from_spec, schedule_spec


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite; parameters were restored to the last finite epoch."""


class Trainer:
    """A multilayer perceptron trained by mini-batch backpropagation in compiled code.

    layer_sizes: [n_in, hidden..., n_out]. activation: one name for every hidden layer
    or a list with one per hidden layer; the output layer is linear and the loss applies
    softmax (cross_entropy) or sigmoid (binary_cross_entropy) itself, as PyTorch's losses do.
    Optimizer hyper-parameters left at None take torch.optim's defaults for that optimizer.
    """

    def __init__(self, layer_sizes, activation="relu", loss="cross_entropy", optimizer="sgd", lr=None,
                 momentum=0.0, nesterov=False, weight_decay=None, batch_size=256, epochs=10, shuffle=True,
                 seed=0, dtype="float32", n_threads=None, init="auto", betas=(0.9, 0.999), eps=1e-8,
                 amsgrad=False, alpha=0.99, centered=False, l1=0.0, clip_grad_norm=None, dropout=0.0,
                 huber_delta=1.0, lr_schedule=None, on_divergence="raise", verbose=0, comm=None, sync_every=1):
        self.layout = Layout(layer_sizes)
        self.layer_sizes = [int(s) for s in self.layout.sizes]
        n_hidden = self.layout.n_layers - 1
        hidden = [activation] * n_hidden if isinstance(activation, str) else list(activation)
        if len(hidden) != n_hidden:
            raise ValueError(f"activation lists one name per hidden layer: expected {n_hidden}, got {len(hidden)}")
        self._act_codes = np.array([activation_code(a) for a in hidden] + [IDENTITY], dtype=np.int64)
        self.activation = activation if isinstance(activation, str) else list(activation)
        self.loss = loss
        self._loss_code = loss_code(loss)
        if loss == "cross_entropy" and self.layout.n_out < 2:
            raise ValueError("cross_entropy needs at least 2 outputs (layer_sizes[-1] >= 2); "
                             "for one output use binary_cross_entropy")
        self.huber_delta = float(huber_delta)
        if not (math.isfinite(self.huber_delta) and self.huber_delta > 0):
            raise ValueError(f"huber_delta must be > 0, got {huber_delta!r}")
        self._optimizer = Optimizer(optimizer, lr, momentum, nesterov, weight_decay, betas, eps, amsgrad, alpha,
                                    centered, l1)
        self.optimizer = optimizer
        if clip_grad_norm is not None and not (isinstance(clip_grad_norm, (int, float)) and clip_grad_norm > 0
                                               and math.isfinite(clip_grad_norm)):
            raise ValueError(f"clip_grad_norm must be a positive number or None, got {clip_grad_norm!r}")
        self.clip_grad_norm = None if clip_grad_norm is None else float(clip_grad_norm)
        drops = [dropout] * n_hidden if not hasattr(dropout, "__len__") else list(dropout)
        if len(drops) != n_hidden:
            raise ValueError(f"dropout lists one rate per hidden layer: expected {n_hidden}, got {len(drops)}")
        for p in drops:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise ValueError(f"dropout rates must lie in [0, 1), got {dropout!r}")
        self.dropout = dropout if not hasattr(dropout, "__len__") else [float(p) for p in drops]
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.epochs = check_int("epochs", epochs, 0)
        self.shuffle = bool(shuffle)
        self.seed = None if seed is None else check_int("seed", seed, 0)
        self.dtype = check_dtype(dtype)
        self.n_threads = None if n_threads is None else resolve_n_threads(n_threads)
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid inits: {', '.join(INITS)}")
        self.init = init
        self.lr_schedule = make_schedule(lr_schedule)
        if on_divergence not in ("raise", "warn"):
            raise ValueError(f"on_divergence must be 'raise' or 'warn', got {on_divergence!r}")
        self.on_divergence = on_divergence
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0 (silent), 1 (progress bar) or 2 (a line per epoch), got {verbose!r}")
        self.verbose = verbose

        self.comm = comm
        self._comm = make_comm(comm)
        self.sync_every = check_int("sync_every", sync_every, 1)
        if self._comm.size > 1 and seed is None:  # every rank must draw the same batch order
            seed = int(self._comm.allgather(int(np.random.SeedSequence().entropy % 2 ** 63))[0])
        np_dtype = DTYPES[self.dtype]
        self._dropout = np.array([float(p) for p in drops] + [0.0], dtype=np_dtype)  # per layer, output last
        init_seq, shuffle_seq, dropout_seq, split_seq = np.random.SeedSequence(seed).spawn(4)
        self.params = np.zeros(self.layout.n_params, dtype=np_dtype)
        self.layout.initialize(self.params, init, (hidden or ["identity"])[0], np.random.default_rng(init_seq))
        self._shuffle_rng = np.random.default_rng(shuffle_seq)
        self._dropout_seed = int(dropout_seq.generate_state(1, np.uint32)[0])
        self._split_seed = int(split_seq.generate_state(1, np.uint32)[0])
        self._opt_state = np.zeros((self._optimizer.n_state, self.layout.n_params), dtype=np_dtype)
        self._opt_step = np.zeros(1, dtype=np.int64)
        self._comm.bcast(self.params)  # rank 0's initial parameters everywhere
        self.history = []
        self.stop_training = False
        self.preprocessing = None  # a file's column handling (fastbp.preprocess), saved with the model

    # ------------------------------------------------------------------ public API
    @property
    def lr(self):
        return self._optimizer.lr

    @property
    def layers(self):
        """[(W, b)] live views into params; W has shape (n_in, n_out)."""
        return self.layout.views(self.params)

    @property
    def is_classifier(self):
        return self.loss in CLASSIFICATION_LOSSES

    def fit(self, X, y, sample_weight=None, class_weight=None, validation_data=None, validation_split=0.0,
            callbacks=None, verbose=None, local_data=False):
        """Train the current parameters for `epochs` more epochs; returns self.

        sample_weight: one non-negative weight per row; each batch's loss is the weighted
        mean sum(w_i * loss_i) / sum(w_i). class_weight: {label: weight} or "balanced"
        (scikit-learn's n_samples / (n_classes * count)); multiplies sample_weight.
        validation_data: (X_val, y_val) or (X_val, y_val, w_val); validation_split: the
        fraction of rows held out instead (stratified for single-label classification).
        local_data (MPI only): False - every rank passes the same data and computes its slice of
        each global batch (the result equals one process); True - each rank passes its own rows
        (e.g. its slice of a memory-mapped file) and validation data, step s averages the gradients
        of every rank's s-th batch of ceil(batch_size / ranks) rows (not equal to one process).
        """
        X, Y = self._check_data(X, y)
        weights = self._weights(Y, sample_weight, class_weight)
        X, Y, weights, validation = self._validation(X, Y, weights, validation_data, validation_split)
        if self._comm.size > 1 and local_data:
            from .distributed import local_data_epochs
            return self._fit_loop(local_data_epochs(self, X, Y, weights), validation, callbacks, verbose,
                                  validation_is_local=True)
        if self._comm.size > 1:
            self._check_ranks_share_data(X, Y, weights, validation)
        n = X.shape[0]

        def run_epoch(hyper):
            order = self._shuffle_rng.permutation(n) if self.shuffle else np.arange(n)
            return self._train_rows(X, Y, weights, order, hyper), n

        return self._fit_loop(run_epoch, validation, callbacks, verbose)

    def _train_rows(self, X, Y, weights, order, hyper):
        """Mini-batches over rows `order` of X (a whole epoch, or one streamed buffer); returns the mean loss."""
        if self._comm.size > 1:
            from .distributed import train_rows_distributed
            return train_rows_distributed(self, X, Y, weights, order, hyper)
        return self._train_rows_single(X, Y, weights, order, hyper)

    def _train_rows_single(self, X, Y, weights, order, hyper, dropout_seed=None):
        batch = min(self.batch_size, len(order))
        if getattr(self, "_train_ws", (0,))[0] < batch:
            self._train_ws = (batch, *passes.workspace(self.layout.sizes, self._act_codes, batch, self.params.dtype),
                              np.empty_like(self.params))
        _, acts, zs, deltas, grad = self._train_ws
        n_threads = resolve_n_threads(self.n_threads)
        with thread_limits(n_threads, 1):
            loss, _ = kernels.train_epoch(
                self.params, grad, self._opt_state, self._opt_step, hyper, self._optimizer.code,
                self.clip_grad_norm or 0.0, self.layout.sizes, self.layout.w_offsets, self._act_codes,
                self._loss_code, self.params.dtype.type(self.huber_delta),
                elements_per_row(self._loss_code, self.layout.n_out), acts, zs, deltas, X, Y, weights,
                np.ascontiguousarray(order, dtype=np.int64), batch, n_threads, self._dropout,
                self._dropout_seed if dropout_seed is None else dropout_seed,
                self.params.dtype.type(0.0))
        return loss

    def _fit_loop(self, run_epoch, validation, callbacks, verbose, validation_is_local=False):
        """The epochs of fit: schedule, one compiled run_epoch(hyper) -> (loss, rows), divergence, validation,
        callbacks. validation_is_local: under MPI each rank holds its own validation rows."""
        callbacks = self._callbacks(callbacks, self.verbose if verbose is None else verbose)
        self._epochs_this_fit = self.epochs
        self.lr_schedule.start(self.epochs)
        self.stop_training = False
        for cb in callbacks:
            cb.on_train_begin(self)
        try:
            for _ in range(self.epochs):
                epoch = len(self.history)
                lr = self.lr_schedule.lr(epoch, self._optimizer.lr)
                momentum = self.lr_schedule.momentum(epoch)
                cycles_beta1 = self._optimizer.name in ("adam", "adamw")
                hyper = self._optimizer.hyper(self.params.dtype, lr=lr, momentum=None if cycles_beta1 else momentum,
                                              beta1=momentum if cycles_beta1 else None)
                backup = self._snapshot()
                start = time.perf_counter()
                try:
                    loss, n = run_epoch(hyper)
                except BaseException:  # Ctrl-C or a failing reader mid-epoch: keep the last whole epoch
                    self._restore(backup)
                    raise
                seconds = time.perf_counter() - start
                if not math.isfinite(loss):
                    self._restore(backup)
                    message = (f"training diverged in epoch {epoch + 1}: the loss became NaN or infinite. "
                               f"Parameters are restored to the end of the last finite epoch. Try a lower learning "
                               f"rate (lr={lr:g}), clip_grad_norm, standardized features, or float64.")
                    if self.on_divergence == "raise":
                        raise TrainingDiverged(message)
                    warnings.warn(message, RuntimeWarning, stacklevel=3)
                    break
                logs = {"epoch": epoch + 1, "loss": float(loss), "lr": lr, "seconds": seconds,
                        "samples_per_s": n / seconds if seconds > 0 else float("inf")}
                if validation is not None:
                    logs.update({f"val_{k}": v for k, v in
                                 self._validation_metrics(*validation, is_local=validation_is_local).items()})
                if self._comm.size > 1:
                    self._check_ranks_agree(epoch + 1)
                self.lr_schedule.observe(logs)
                self.history.append(logs)
                for cb in callbacks:
                    cb.on_epoch_end(self, epoch + 1, logs)
                if self.stop_training:
                    break
        finally:
            for cb in callbacks:
                cb.on_train_end(self)
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
        """Class labels for classification losses (shape (n,), or (n, n_out) for multilabel); values otherwise."""
        logits = self.decision_function(X)
        if self._loss_code == CROSS_ENTROPY:
            return logits.argmax(axis=1)
        if self._loss_code == BINARY_CROSS_ENTROPY:
            labels = (logits >= 0).astype(np.int64)  # sigmoid(z) >= 0.5
            return labels[:, 0] if labels.shape[1] == 1 else labels
        return logits[:, 0] if logits.shape[1] == 1 else logits

    def evaluate(self, X, y, sample_weight=None):
        """{"loss": (weighted) mean loss, "accuracy": ...} for classification; {"loss", "r2"} for regression."""
        return metrics.finish(self._metric_part(X, y, sample_weight))

    def _metric_part(self, X, y, sample_weight=None):
        X, Y = self._check_data(X, y)
        w = check_sample_weight(sample_weight, X.shape[0])
        if w is not None and not w.sum() > 0:
            raise ValueError("sample_weight entries sum to zero; nothing to evaluate")
        return metrics.metric_part(self._loss_code, self.params.dtype.type(self.huber_delta), self._logits(X), Y, w)

    def _validation_metrics(self, X, y, sample_weight=None, is_local=False):
        """evaluate() of the validation data; under MPI each rank evaluates a slice (or, is_local, its own
        validation rows) and the parts combine."""
        comm = self._comm
        if comm.size == 1:
            return self.evaluate(X, y, sample_weight)
        lo, hi = (0, len(X)) if is_local else (comm.rank * len(X) // comm.size, (comm.rank + 1) * len(X) // comm.size)
        part = self._metric_part(X[lo:hi], y[lo:hi], None if sample_weight is None else sample_weight[lo:hi]) \
            if hi > lo else None
        return metrics.finish(metrics.combine(comm.allgather(part)))

    def loss_and_grad(self, X, y, sample_weight=None):
        """(mean loss, flat gradient in the params layout) at the current parameters; nothing is updated.

        No dropout, no penalty terms: the gradient of the loss the data defines.
        """
        X, Y = self._check_data(X, y)
        weights = self._weights(Y, sample_weight, None)
        grad = np.empty_like(self.params)
        loss = passes.FullGradient(self.layout.sizes, self.layout.w_offsets, self._act_codes, self._loss_code,
                                   self.params.dtype.type(self.huber_delta),
                                   elements_per_row(self._loss_code, self.layout.n_out), X, Y, weights,
                                   resolve_n_threads(self.n_threads), self.params.dtype)(self.params, grad)
        return float(loss), grad

    def save(self, path):
        """Write the model, optimizer and schedule state, RNG state and history to `path` atomically.

        In distributed training only rank 0 writes (the parameters are the same on every rank).
        """
        if self._comm.rank != 0:
            return
        config = {"fastbp_version": _version(), "init_args": self._init_args(), "history": self.history,
                  "shuffle_rng_state": self._shuffle_rng.bit_generator.state,
                  "lr_schedule": schedule_spec(self.lr_schedule), "preprocessing": self.preprocessing}
        arrays = {"params": self.params, "opt_state": self._opt_state, "opt_step": self._opt_step}
        write_model(path, config, arrays)

    @classmethod
    def load(cls, path, comm=None):
        """Rebuild a Trainer saved with save(); everything round-trips exactly (a custom Schedule becomes constant).

        comm: as in the constructor, to resume distributed training (every rank loads the same file).
        """
        config, arrays = read_model(path)
        try:
            trainer = cls(**config["init_args"], comm=comm)
            for name, target in (("params", trainer.params), ("opt_state", trainer._opt_state),
                                 ("opt_step", trainer._opt_step)):
                if arrays[name].shape != target.shape or arrays[name].dtype != target.dtype:
                    raise ValueError(f"array {name!r} has shape {arrays[name].shape}, expected {target.shape}")
                target[...] = arrays[name]
            trainer._shuffle_rng.bit_generator.state = config["shuffle_rng_state"]
            trainer.history = list(config["history"])
            if config.get("lr_schedule"):
                trainer.lr_schedule = schedule_from_spec(config["lr_schedule"])
            trainer.preprocessing = config.get("preprocessing")
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path!r} does not describe a valid fastbp model: {exc}") from None
        return trainer

    def __repr__(self):
        return (f"Trainer(layer_sizes={self.layer_sizes}, activation={self.activation!r}, loss={self.loss!r}, "
                f"optimizer={self.optimizer!r}, lr={self.lr!r}, batch_size={self.batch_size}, dtype={self.dtype!r})")

    # ------------------------------------------------------------------ internals
    def _init_args(self):
        args = {"layer_sizes": self.layer_sizes, "activation": self.activation, "loss": self.loss,
                "optimizer": self.optimizer, "batch_size": self.batch_size, "epochs": self.epochs,
                "shuffle": self.shuffle, "seed": self.seed, "dtype": self.dtype, "n_threads": self.n_threads,
                "init": self.init, "clip_grad_norm": self.clip_grad_norm, "dropout": self.dropout,
                "huber_delta": self.huber_delta, "on_divergence": self.on_divergence, "verbose": self.verbose,
                "sync_every": self.sync_every}
        args.update(self._optimizer.settings())
        return args

    def _check_data(self, X, y):
        X = check_X(X, self.dtype, self.layout.n_in)
        Y = check_targets(y, self.loss, self.layout.n_out, X.shape[0], self.dtype)
        return X, Y

    def _weights(self, Y, sample_weight, class_weight):
        """Per-row weights as the model dtype, or an empty array when every weight is 1."""
        w = check_sample_weight(sample_weight, Y.shape[0])
        if class_weight is not None:
            if not self.is_classifier:
                raise ValueError(f"class_weight needs a classification loss; this model uses {self.loss!r}")
            cw = class_weights_per_sample(class_weight, Y, self.loss)
            w = cw if w is None else w * cw
        if w is None:
            return np.empty(0, dtype=self.params.dtype)
        if not w.sum() > 0:
            raise ValueError("sample weights sum to zero: at least one row needs a positive weight")
        return np.ascontiguousarray(w, dtype=self.params.dtype)

    def _validation(self, X, Y, weights, validation_data, validation_split):
        """Split off or check validation data; returns (X, Y, weights, (X_val, y_val, w_val) or None)."""
        if validation_data is not None and validation_split:
            raise ValueError("pass validation_data or validation_split, not both")
        if validation_data is not None:
            try:
                Xv, yv, *rest = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be (X_val, y_val) or (X_val, y_val, sample_weight_val)") from None
            if len(rest) > 1:
                raise TypeError("validation_data must be (X_val, y_val) or (X_val, y_val, sample_weight_val)")
            Xv, Yv = self._check_data(Xv, yv)
            return X, Y, weights, (Xv, Yv[:, 0] if self._loss_code == CROSS_ENTROPY else Yv, rest[0] if rest else None)
        if not validation_split:
            return X, Y, weights, None
        labels = Y[:, 0] if self._loss_code == CROSS_ENTROPY or (
            self._loss_code == BINARY_CROSS_ENTROPY and Y.shape[1] == 1) else None
        train, val = validation_indices(X.shape[0], validation_split, labels, self._split_seed)
        w_val = weights[val] if weights.size else None
        Yv = Y[val]
        return (X[train], Y[train], weights[train] if weights.size else weights,
                (X[val], Yv[:, 0] if self._loss_code == CROSS_ENTROPY else Yv, w_val))

    def _callbacks(self, callbacks, verbose):
        callbacks = list(callbacks or [])
        verbose = verbose if self._comm.rank == 0 else 0  # one progress display per job
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be fastbp.callbacks.Callback instances, got {cb!r}")
        if verbose == 1:
            callbacks.append(ProgressBar())
        elif verbose == 2:
            callbacks.append(EpochLogger())
        return callbacks

    def _check_ranks_share_data(self, *arrays):
        """Under MPI every rank must pass the same rows (each computes its slice of every global batch);
        ranks with different data would walk different batch counts and wait on each other forever."""
        def fingerprint(a):
            if a is None or isinstance(a, tuple):
                return None if a is None else tuple(fingerprint(b) for b in a)
            a = np.asarray(a) if not hasattr(a, "shape") else a
            rows = np.unique(np.linspace(0, a.shape[0] - 1, 64).astype(np.int64)) if a.shape[0] else []
            return a.shape, checksum(np.asarray(a[rows]))
        prints = self._comm.allgather(fingerprint(arrays))
        if any(p != prints[0] for p in prints):
            differ = [r for r, p in enumerate(prints) if p != prints[0]]
            raise ValueError(f"MPI ranks {differ} passed different training data than rank 0 (shapes or sampled "
                             "rows differ): every rank must call fit with the same X, y, weights and validation "
                             "data; each rank then computes its own slice of every batch")

    def _check_ranks_agree(self, epoch):
        sums = self._comm.allgather(checksum(self.params))
        if len(set(sums)) > 1:
            raise RuntimeError(f"parameters differ across MPI ranks after epoch {epoch} (checksums {sums}); every "
                               "rank must see the same data, seed and options")

    def _snapshot(self):
        return self.params.copy(), self._opt_state.copy(), self._opt_step.copy()

    def _restore(self, snapshot):
        self.params[...], self._opt_state[...], self._opt_step[...] = snapshot

    def _logits(self, X):
        return passes.forward(self.params, self.layout.sizes, self.layout.w_offsets, self._act_codes, X,
                              resolve_n_threads(self.n_threads))

    def _probabilities(self, logits):
        return passes.to_probabilities(logits, softmax=self._loss_code == CROSS_ENTROPY)

def load(path, comm=None):
    """Load a Trainer saved with Trainer.save (alias of Trainer.load)."""
    return Trainer.load(path, comm=comm)


def _version():
    from . import __version__
    return __version__
