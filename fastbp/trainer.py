"""Trainer: the public face. It validates user input, builds the model and its training state,
and runs the engine (fastbp.engine) over in-memory rows, files or MPI data."""
import copy
import functools
import inspect

import numpy as np

from .core.checks import DTYPES, check_bool, check_dtype, check_int, check_number
from .core.errors import InputError, InputTypeError, NotFittedError, warn
from .core.layout import INITS, check_adapters, check_embeddings, check_layer_sizes, n_parameters
from .core.losses import BINARY_CROSS_ENTROPY, CLASSIFICATION_LOSSES, CROSS_ENTROPY, POISSON
from .core.bundles import make_optimizer, make_regularization, writable_copies
from .core.threads import resolve_n_threads
from .attributes import Fixed, OptimizerSetting, RunSetting
from .core.optim import OptimizerSettings
from .engine import buffered, metrics
from .engine.engine import Engine, ModelLock, TrainingDiverged
from .engine.full_data import to_probabilities
from .engine.model import build_net
from .engine.schedules import make_schedule, schedule_from_spec, schedule_spec
from .engine.state import TrainingState
from .files.modelfile import ModelFileError, read_model, write_model
from .inputs import (check_sample_weight, check_targets, check_X, class_index, class_weight_table,
                     class_weights_per_sample, classes_from_list, encode_labels, index_classes, label_column,
                     learn_classes, row_weights, table_array, table_columns, validation_indices)
from .parallel import distributed, file_shards
from .parallel.comm import make_comm

__all__ = ["Trainer", "TrainingDiverged", "load"]

# min_steps raises a fit's epochs this many times at most: on digits and breast_cancer, 4x the recipe's 30 epochs
# reached the accuracy that 8x and 12x did (docs/performance.md)
MAX_EPOCHS_FACTOR = 4


class Trainer:
    """A multilayer perceptron trained by mini-batch backpropagation in compiled code.

    layer_sizes: [n_in, hidden..., n_out]. activation: one name for every hidden layer
    or a list with one per hidden layer; the output layer is linear and the loss applies
    softmax (cross_entropy), sigmoid (binary_cross_entropy) or exp (poisson: the outputs are
    log-rates, as PyTorch's PoissonNLLLoss(log_input=True) takes them) itself, as PyTorch's losses do.
    Optimizer hyper-parameters left at None take torch.optim's defaults for that optimizer.
    n_threads is a run setting, not part of the model: a saved model loads under any thread count.
    ensemble=k > 1 trains k members together on the same batches (TabM-mini, Gorishniy et al. 2025): every layer
    but the last is shared, each member reads the inputs through its own adapter (a vector of random signs to
    start) and has its own output layer; each member trains on its own loss (the loss reported is their mean)
    and predictions are the mean of the members' probabilities or values. ensemble_adapters="every_layer" gives
    every shared layer per-member adapters and biases (TabM, BatchEnsemble): member e computes
    ((h * R_l[e]) @ W_l) * S_l[e] + B_l[e] at each shared layer l (R_0 random signs, the other adapters ones to start).
    min_steps: a fit runs `epochs` epochs, or more (up to 4 x epochs) where those would take fewer optimizer steps
    than min_steps in all (counting the steps of earlier fits), so that small tables get enough updates: the
    recipe's 30 epochs and 720 steps are 120 epochs on 1,500 rows or fewer, 30 on 6,000 or more. The epochs a fit
    runs are in fit_epochs once it starts.
    """

    # defined at construction (fastbp.attributes): assigning one later is refused
    layer_sizes = Fixed()
    embeddings = Fixed()
    ensemble = Fixed()
    ensemble_adapters = Fixed()
    activation = Fixed()
    loss = Fixed()
    huber_delta = Fixed()
    dtype = Fixed()
    init = Fixed()
    seed = Fixed()
    comm = Fixed()
    # validated whenever set, used by the next fit
    epochs = RunSetting(lambda tr, v: check_int("epochs", v, 0))
    min_steps = RunSetting(lambda tr, v: check_int("min_steps", v, 0))
    batch_size = RunSetting(lambda tr, v: check_int("batch_size", v, 1))
    shuffle = RunSetting(lambda tr, v: check_bool("shuffle", v))
    n_threads = RunSetting(lambda tr, v: None if v is None else resolve_n_threads(v))
    clip_grad_norm = RunSetting(lambda tr, v: None if v is None else check_number("clip_grad_norm", v, low=0.0,
                                                                                   low_open=True))
    dropout = RunSetting(lambda tr, v: _checked_dropout(v, tr._n_hidden))
    label_smoothing = RunSetting(lambda tr, v: check_number("label_smoothing", v, low=0.0, high=1.0))
    on_divergence = RunSetting(lambda tr, v: _checked_on_divergence(v))
    verbose = RunSetting(lambda tr, v: _checked_verbose(v))
    sync_every = RunSetting(lambda tr, v: check_int("sync_every", v, 1))
    # how the first fit on a table learns its schema (fastbp.files.preprocess): missing values, categories
    impute = RunSetting(lambda tr, v: _checked_impute(v))
    max_categories = RunSetting(lambda tr, v: check_int("max_categories", v, 1))
    numeric = RunSetting(lambda tr, v: _checked_numeric(v))
    numeric_bins = RunSetting(lambda tr, v: _checked_bins(v))
    categorical = RunSetting(lambda tr, v: _checked_categorical(mode=v))
    onehot_max = RunSetting(lambda tr, v: _checked_categorical(onehot_max=v))
    embedding_dim = RunSetting(lambda tr, v: _checked_categorical(dim=v))
    # the optimizer's arguments, as given (None: torch's default for the optimizer), read back as in use
    optimizer = OptimizerSetting("name")
    lr = OptimizerSetting()
    momentum = OptimizerSetting()
    nesterov = OptimizerSetting()
    weight_decay = OptimizerSetting()
    betas = OptimizerSetting()
    eps = OptimizerSetting()
    amsgrad = OptimizerSetting()
    alpha = OptimizerSetting()
    centered = OptimizerSetting()
    l1 = OptimizerSetting()

    def __init__(self, layer_sizes=None, activation="relu", loss="cross_entropy", optimizer="sgd", lr=None,
                 momentum=0.0, nesterov=False, weight_decay=None, batch_size=256, epochs=10, shuffle=True,
                 seed=0, dtype="float32", n_threads=None, init="auto", betas=(0.9, 0.999), eps=1e-8,
                 amsgrad=False, alpha=0.99, centered=False, l1=0.0, clip_grad_norm=None, dropout=0.0,
                 huber_delta=1.0, lr_schedule=None, on_divergence="raise", verbose=0, comm=None, sync_every=1,
                 impute=None, max_categories=1000, numeric="standard", numeric_bins=16, hidden=None,
                 embeddings=None, categorical="auto", onehot_max=128, embedding_dim=None, label_smoothing=0.0,
                 ensemble=1, min_steps=0, ensemble_adapters="first_layer"):
        if (layer_sizes is None) == (hidden is None):
            raise InputError("give layer_sizes=[n_in, hidden..., n_out], or hidden=(widths...) to take n_in and n_out "
                             "from the first fit's data" + ("" if layer_sizes is None else ", not both"))
        if layer_sizes is not None:
            layer_sizes = check_layer_sizes(layer_sizes)
        self.ensemble = check_int("ensemble", ensemble, 1)
        self.ensemble_adapters = check_adapters(ensemble_adapters)
        # tables for an array's category codes (a table's categorical columns bring their own at the first fit)
        self._given_embeddings = None if embeddings is None else check_embeddings(
            embeddings, layer_sizes[0] if layer_sizes is not None else None)
        if hidden is not None:
            if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
                raise InputTypeError(f"hidden must be a list of widths, e.g. (256, 256), got {hidden!r}")
            hidden = [check_int(f"every hidden width (in {hidden!r})", h, 1) for h in hidden]
        n_hidden = len(layer_sizes) - 2 if layer_sizes is not None else len(hidden)
        activations = [activation] * n_hidden if isinstance(activation, str) else list(activation)
        if len(activations) != n_hidden:
            raise InputError(f"activation lists one name per hidden layer: expected {n_hidden}, "
                             f"got {len(activations)}")
        self.hidden = hidden  # the hidden widths when the others come from the data (None with layer_sizes)
        self._n_hidden = n_hidden
        self.huber_delta = check_number("huber_delta", huber_delta, low=0.0, low_open=True)
        build_net([1] * (n_hidden + 2), activations, loss, self.huber_delta)  # names checked now, not at fit
        self.activation = activation if isinstance(activation, str) else list(activation)
        self.loss = loss
        self._optimizer_args = dict(name=optimizer, lr=lr, momentum=momentum, nesterov=nesterov,
                                    weight_decay=weight_decay, betas=betas, eps=eps, amsgrad=amsgrad, alpha=alpha,
                                    centered=centered, l1=l1)
        self._optimizer_settings = OptimizerSettings(**self._optimizer_args)
        self.clip_grad_norm = clip_grad_norm
        self.dropout = dropout
        self.label_smoothing = label_smoothing
        self.batch_size = batch_size
        self.epochs = epochs
        self.min_steps = min_steps
        self.fit_epochs = None  # set when a fit starts: epochs, or more under min_steps
        self.shuffle = shuffle
        self.dtype = check_dtype(dtype)
        self.n_threads = n_threads
        if init not in INITS:
            raise InputError(f"unknown init {init!r}; valid inits: {', '.join(INITS)}")
        self.init = init
        self.on_divergence = on_divergence
        self.verbose = verbose
        self.comm = comm
        self._comm = make_comm(comm)
        self.sync_every = sync_every
        self.impute = impute
        self.max_categories = max_categories
        self.numeric = numeric
        self.numeric_bins = numeric_bins
        self.categorical = categorical
        self.onehot_max = onehot_max
        self.embedding_dim = embedding_dim
        # the seed actually used: drawn once when None (shared by every MPI rank) and saved with the model,
        # so dropout masks and validation splits continue the same after loading
        self.seed = check_int("seed", seed, 0) if seed is not None else int(
            self._comm.allgather(int(np.random.SeedSequence().entropy % 2 ** 63))[0])

        self._schedule = make_schedule(lr_schedule)
        self.state = None  # parameters and training state: built with the layer sizes (_build)
        self.stop_training = False
        self.classes_ = None           # classification: the labels, in output order (learned by the first fit)
        self.feature_names_in_ = None  # the column names of a DataFrame/Table X at the first fit
        self._fitted = False
        self._schema = None  # the column handling of a table or file (fastbp.files.preprocess), saved with the model
        self.metadata = {}         # free-form JSON saved with the model (the CLI records its options here)
        self._lock = ModelLock()
        if layer_sizes is not None:
            self._build(layer_sizes)

    def _build(self, layer_sizes, embeddings=None):
        """The network, its seeded initial parameters and the training state, once the layer sizes (and the
        embedding tables of a table's categorical columns) are known."""
        layer_sizes = check_layer_sizes(layer_sizes)
        activations = [self.activation] * self._n_hidden if isinstance(self.activation, str) else self.activation
        embeddings = self._given_embeddings if embeddings is None else embeddings
        layout, net = build_net(layer_sizes, activations, self.loss, self.huber_delta, embeddings=embeddings or (),
                                members=self.ensemble, adapters=self.ensemble_adapters)
        self.embeddings = [list(t) for t in layout.embeddings] if layout.embeddings else None
        if self.loss == "cross_entropy" and layout.n_out < 2:
            raise InputError("cross_entropy needs at least 2 outputs (layer_sizes[-1] >= 2); "
                             "for one output use binary_cross_entropy")
        self.layout, self.net = layout, net
        self.layer_sizes = [int(s) for s in layout.sizes]
        init_seq, shuffle_seq, dropout_seq, split_seq = np.random.SeedSequence(self.seed).spawn(4)
        params = np.zeros(layout.n_params, dtype=DTYPES[self.dtype])
        layout.initialize(params, self.init, activations, np.random.default_rng(init_seq))
        self._comm.bcast(params)  # rank 0's initial parameters everywhere
        self.state = TrainingState(
            params, self._fresh_optimizer_state(), np.random.default_rng(shuffle_seq), self._schedule,
            dropout_seq.generate_state(1, np.uint32)[0], split_seq.generate_state(1, np.uint32)[0])

    def _require_built(self, what):
        if self.state is None:
            raise NotFittedError(f"{what} needs the layer sizes, which come from the first fit's data (hidden=): "
                                 "call fit first, or build the Trainer with layer_sizes")

    # ------------------------------------------------------------------ public API
    @property
    def optimizer_settings(self):
        """The optimizer's validated settings (immutable: change them with configure_optimizer or by setting
        tr.lr, tr.amsgrad, ...)."""
        return self._optimizer_settings

    def configure_optimizer(self, **changes):
        """Change optimizer arguments (optimizer= for the optimizer itself, lr, momentum, nesterov, weight_decay,
        betas, eps, amsgrad, alpha, centered, l1), all validated together before any is applied; used from the
        next fit. Arguments left at None (lr, weight_decay) keep following the optimizer's default. A new
        optimizer starts with fresh state (moments, momentum buffer, step count), as a new torch.optim optimizer
        over the same parameters does; other changes keep the state."""
        args = dict(self._optimizer_args)
        for key, value in changes.items():
            key = "name" if key == "optimizer" else key
            if key not in args:
                raise InputError(f"{key!r} is not an optimizer argument; they are: optimizer, "
                                 f"{', '.join(k for k in args if k != 'name')}")
            args[key] = value
        settings = OptimizerSettings(**args)
        with self._lock.reading():  # not in the middle of a fit's epoch
            new_optimizer = settings.name != self._optimizer_settings.name
            self._optimizer_args, self._optimizer_settings = args, settings
            if new_optimizer and self.state is not None:
                self.state.optimizer = self._fresh_optimizer_state()
        return self

    def _fresh_optimizer_state(self):
        settings = self._optimizer_settings
        return make_optimizer(settings.code, self.layout.n_params, DTYPES[self.dtype], settings.state_names())

    @property
    def params(self):
        """The live flat parameter array."""
        self._require_built("params")
        return self.state.params

    @property
    def history(self):
        return self.state.history if self.state is not None else []

    @history.setter
    def history(self, value):
        self._require_built("history")
        self.state.history[:] = list(value)

    @property
    def lr_schedule(self):
        return self._schedule

    @lr_schedule.setter
    def lr_schedule(self, spec):
        self._schedule = make_schedule(spec)
        if self.state is not None:
            self.state.schedule = self._schedule

    @property
    def layers(self):
        """[(W, b)] live views into params; W has shape (n_in, n_out). An ensemble's last layer, its heads, has W
        (members, n_in, n_out) and b (members, n_out) (its input adapters: layout.adapters(params)); with adapters on
        every layer each shared layer's b is the members' biases, (members, n_out) (its adapters:
        layout.layer_adapters(params))."""
        return self.layout.views(self.params)

    @property
    def is_classifier(self):
        return self.loss in CLASSIFICATION_LOSSES

    @property
    def preprocessing(self):
        """The schema (JSON state of fastbp.files.preprocess.Preprocessor) learned by the first fit on a table
        or by `fastbp train`; None for a model trained on arrays. With one, tables (DataFrames, pyarrow Tables,
        dicts of columns) are read through it by column name, 2-D arrays by position (a column per feature), and
        encoded=True takes what Preprocessor.transform gives."""
        return None if self._schema is None else self._schema.state

    @preprocessing.setter
    def preprocessing(self, state):
        from .files.preprocess import Preprocessor
        self._schema = None if not state else Preprocessor(state)  # checked now: a model file is untrusted

    def engine(self):
        """An Engine for a run of this model with its current settings (fastbp.engine)."""
        n_hidden = self.layout.n_layers - 1
        drops = list(self.dropout) if hasattr(self.dropout, "__len__") else [self.dropout] * n_hidden
        if self.label_smoothing and self.loss != "cross_entropy":
            raise InputError(f"label_smoothing needs loss='cross_entropy' (as torch.nn.CrossEntropyLoss), not "
                             f"{self.loss!r}")
        regularization = make_regularization(drops + [0.0], self.params.dtype, self.state.dropout_seed, 0.0,
                                             self.clip_grad_norm or 0.0, self.label_smoothing)
        self.state.ensure_state(self.optimizer_settings.state_names())  # settings changed since construction
        return Engine(self.state, self.net, regularization, self.optimizer_settings, self.batch_size,
                      self.shuffle, self.n_threads, self._comm,
                      functools.partial(distributed.DistributedRows, sync_every=self.sync_every), self._target_scale())

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
        with self._lock.training():
            X, Y = self._check_data(X, y, learn=True, local=bool(local_data) and self._comm.size > 1)
            weights = self._weights(Y, sample_weight, class_weight)
            X, Y, weights, validation = self._validation(X, Y, weights, validation_data, validation_split)
            engine = self.engine()
            distributed_run = self._comm.size > 1
            if distributed_run and local_data:
                run_epoch = distributed.local_data_epochs(engine, X, Y, weights, self.sync_every)
            else:
                if distributed_run:
                    distributed.check_ranks_share_data(self._comm, X, Y, weights, validation)
                run_epoch = engine.in_memory_epochs(X, Y, weights)
            rows = sum(self._comm.allgather(len(X))) if distributed_run and local_data else len(X)
            self._run(engine, run_epoch, rows, validation, callbacks, verbose,
                      validation_is_local=bool(local_data))
            self._fitted = True
        return self

    def fit_source(self, source, prep, train_rows, buffer_rows=None, val_split=0.0, seed=0, validation=None,
                   callbacks=None, verbose=None, stats=None, shard="auto", class_weight=None, spill=True,
                   spill_dir=None):
        """Train for `epochs` epochs on a file (fastbp.files.sources) in bounded memory, its columns mapped by
        the fitted Preprocessor `prep`; train_rows: the training rows per epoch (from Preprocessor.fit).
        spill: encode the training rows once into an unnamed temporary file (in spill_dir, else TMPDIR) and
        draw every epoch's rows from all over it, so the file's row order does not matter (costs the rows'
        size in disk, checked first); spill=False shuffles within the buffer only (warns when the first pass
        found the file sorted by its target).
        Under MPI, `shard` says how ranks split the file: "rows" (equal to one process), "chunks"
        (each rank reads its own chunks) or "auto" (chunks for Parquet). validation: (X, y, w) or None.
        class_weight: {label: weight} or "balanced" (from the class counts of the Preprocessor.fit that
        made `prep`), as in fit; validation rows without weights are weighted by class too, as fit's
        validation_split rows are. A loss other than cross_entropy with one output per class (mse, or
        binary_cross_entropy one-vs-rest) learns the classes one-hot (streaming.FileTargets); validation
        targets are given as prep.transform gives them."""
        from .files import streaming
        with self._lock.training():
            if self.state is None:
                self._build([prep.n_inputs, *self.hidden, prep.outputs(self.loss)], prep.embeddings())
            engine = self.engine()
            if train_rows < 1:
                raise InputError("no training rows were read from the data")
            class_table = None if class_weight is None else self._file_class_weights(class_weight, prep)
            targets = streaming.FileTargets(self.loss, self.layout.n_out, class_table)
            if targets.one_hot and (prep.task != "classify" or targets.width != len(prep.classes())):
                what = f"{len(prep.classes())} classes" if prep.task == "classify" else "one regression target"
                raise InputError(f"the model has {targets.width} outputs with loss {self.loss!r}, but the data has "
                                 f"{what}: give a classifier one output per class (or cross_entropy), a regressor "
                                 "one output")
            if validation is not None:
                Xv = check_X(validation[0], self.dtype, self.layout.n_columns)  # encoded, as prep.transform gives
                Yv = check_targets(targets.rows(np.asarray(validation[1])), self.loss, self.layout.n_out, len(Xv),
                                   self.dtype)
                wv = check_sample_weight(validation[2] if len(validation) > 2 else None, len(Xv))
                if wv is None and class_table is not None:
                    wv = targets.weights(np.asarray(validation[1]))
                validation = (Xv, Yv, wv)
            if not spill and prep.looks_sorted and self.shuffle:
                warn(f"{prep.looks_sorted}; with spill=False (--no-spill) rows are shuffled only within the "
                     "buffer, so the model will fit the end of each epoch best: train with the spill, or shuffle the "
                     "file first")
            stats = stats if stats is not None else buffered.StreamStats()
            chunks, n_rows = None, train_rows
            if file_shards.shard_mode(shard, source, self._comm.size) == "chunks":
                chunks = file_shards.own_chunks(source, self._comm)
                n_rows = file_shards.training_rows_of(source, chunks, train_rows, val_split, seed)
            rows = streaming.TrainingRows(source, prep, targets, self.params.dtype, val_split, seed, stats, n_rows,
                                          spill, spill_dir, chunks)
            try:
                if chunks is not None:
                    run_epoch = file_shards.chunk_sharded_epochs(engine, rows, train_rows, buffer_rows, stats,
                                                                 self.sync_every)
                else:
                    run_epoch = buffered.buffered_epochs(engine, rows, train_rows, buffer_rows, stats)
                if not self.is_fitted:  # the model keeps the schema: predict reads tables through it
                    self._check_schema_fits(prep)
                    self._schema = prep
                    self.classes_ = self._schema_classes()
                    self.feature_names_in_ = np.array(prep.features, dtype=object)
                self._run(engine, run_epoch, train_rows, validation, callbacks, verbose)
            finally:
                rows.close()
            self._fitted = True
        return self

    def fit_file(self, data, target=None, *, features=None, exclude=(), task=None, val_split=0.0,
                 val_max_rows=200_000, chunk_rows=None, encoding=None, sep=None, decimal=".", resume=False,
                 **options):
        """Train for `epochs` epochs on a data file as `fastbp train` does: the first pass learns the schema
        (kinds, categories, statistics, the target's classes or scale; impute and max_categories as set on
        this Trainer), `val_split` of the rows is held out and validated on (up to val_max_rows), and the
        training rows stream in bounded memory (fit_source; `options` are its buffer_rows, callbacks, verbose,
        stats, shard, class_weight, spill, spill_dir). Returns self.

        data: a path (.csv, also compressed, .parquet, .npy, .npz, a folder or glob of parts; target: the column
        to predict, features/exclude: the columns to use or leave out, task: "classify" or "regress", else
        inferred) or a fastbp.files.file_data.FileData already scanned (the first pass's options were its
        scan's). encoding, sep, decimal: how a CSV is written, as in pandas.read_csv (UTF-8, a comma or a tab for
        .tsv, and "."). A model that is already trained keeps its schema: the file must prepare the same way.
        resume: continue an interrupted fit of this same file (checks it holds the same training rows in the
        same order, as far as the first pass tells: their count, and how often the target changes value).
        """
        from .files.file_data import FileData
        from .files.preprocess import Preprocessor
        from .files.sources import DEFAULT_CHUNK_ROWS, CsvFormat
        if not isinstance(data, FileData):
            if target is None:
                raise InputError("fit_file needs target=, the name of the column to predict")
            data = FileData(data, chunk_rows or DEFAULT_CHUNK_ROWS, CsvFormat(encoding, sep, decimal)).scan(
                target, features, exclude, task, self.impute, self.max_categories, val_split, val_max_rows,
                self.seed, comm=self._comm if self._comm.size > 1 else None, scale_target=self.loss != "poisson",
                numeric=self.numeric, bins=self.numeric_bins, categorical=self.categorical_encoding())
        elif data.prep is None:
            raise InputError("fit_file takes a FileData after its scan() (the first pass)")
        prep = data.prep
        if self.is_fitted and self._schema is None:
            raise InputError("this model was trained on arrays, not on a table's or file's columns: fit_file continues "
                             "a model trained from a table or file, or trains a new one")
        if self.is_fitted:  # continued training: the model's own schema
            if not prep.matches(self.preprocessing):
                raise InputError(f"this model was trained on differently prepared data than {data.path!r} gives "
                                 "(other columns, categories, classes or statistics); continue it with the same "
                                 "data and first-pass options, or train a new model")
            rows = self.metadata.get("training_rows")
            if resume and rows is not None and not _same_rows(rows, prep.rows_signature):
                raise InputError(f"the model was trained on {rows.get('training_rows')} rows whose target changes "
                                 f"value {rows.get('target_changes')} times in file order; {data.path!r} has "
                                 f"{prep.rows_signature['training_rows']} and {prep.rows_signature['target_changes']}"
                                 ": not the same rows in the same order. Resume with the data it was trained on")
            counts, looks_sorted = prep.class_counts, prep.looks_sorted  # this pass's: a model file has neither
            prep = Preprocessor(self.preprocessing)  # transform exactly as the model was trained
            prep.class_counts, prep.looks_sorted = counts, looks_sorted
        else:
            self.metadata["training_rows"] = prep.rows_signature
        validation = None
        if data.held is not None:
            Xv, yv = prep.transform(data.held, 0, dtype=DTYPES[self.dtype])
            validation = (Xv, yv, None)
        return self.fit_source(data.source, prep, data.n_rows, val_split=data.val_split, seed=data.seed,
                               validation=validation, **options)

    def _run(self, engine, run_epoch, rows, validation, callbacks, verbose, validation_is_local=False):
        """Train this fit's epochs (fit_epochs) of run_epoch over `rows` training rows in all."""
        after_epoch = None
        if self._comm.size > 1:
            after_epoch = functools.partial(distributed.check_ranks_agree, self._comm, self.params)
        self.fit_epochs = self.epochs_for(rows)
        engine.run(run_epoch, self.fit_epochs, self, validation, callbacks,
                   self.verbose if verbose is None else verbose, self.on_divergence, validation_is_local, after_epoch,
                   self._lock.between_epochs)

    def epochs_for(self, rows, steps_done=None):
        """The epochs a fit on `rows` training rows runs now: `epochs`, or more, up to 4 x epochs, where those
        would leave the optimizer short of min_steps steps in all (ceil(rows / batch_size) steps an epoch).
        steps_done: the steps taken before (default: this model's)."""
        if steps_done is None:
            steps_done = int(self.state.optimizer.step[0])
        steps_left = self.min_steps - steps_done
        steps_per_epoch = -(-rows // self.batch_size)
        if steps_left <= 0 or steps_per_epoch == 0:
            return self.epochs
        return max(self.epochs, min(MAX_EPOCHS_FACTOR * self.epochs, -(-steps_left // steps_per_epoch)))

    @property
    def is_fitted(self):
        """True once fit or fit_source has run, or has finished an epoch (a model read from another thread
        during its first fit), or the model was loaded from a file."""
        return self._fitted or bool(self.history)

    def decision_function(self, X, *, encoded=False):
        """Raw outputs of the last layer (logits for classification losses, log-rates for poisson), shape
        (n, n_out), at the current parameters: also before any fit (the seeded initial weights)."""
        self._require_built("decision_function")
        X = self._features(X, encoded=encoded)
        with self._lock.reading():
            return self.engine().logits(X)

    def predict_proba(self, X, *, encoded=False):
        """Class probabilities: softmax rows for cross_entropy (columns in the order of classes_),
        per-output sigmoid for binary_cross_entropy."""
        if not self.is_classifier:
            raise InputError(f"predict_proba needs a classification loss; this model uses {self.loss!r}")
        self._require_fitted("predict_proba")
        return to_probabilities(self.decision_function(X, encoded=encoded), softmax=self.net.loss_code == CROSS_ENTROPY)

    def predict(self, X, *, encoded=False):
        """Class labels for classification losses, in the type y had (shape (n,), or (n, n_out) 0/1 for
        multilabel); values otherwise (for poisson the predicted rate, exp of the log-rate)."""
        self._require_fitted("predict")
        logits = self.decision_function(X, encoded=encoded)
        prep = self._schema
        if prep is not None and prep.task == "classify" and self.classes_ is None:  # classes learned one-hot
            return prep.labels(logits[:, :len(prep.classes())].argmax(axis=1))
        if prep is not None and prep.task == "regress":  # on the target's own scale
            return prep.target_values((np.exp(logits) if self.net.loss_code == POISSON else logits)[:, 0])
        if self.net.loss_code == CROSS_ENTROPY:  # outputs beyond the classes (more outputs than labels) name none
            return self.classes_[logits[:, :len(self.classes_)].argmax(axis=1)]
        if self.net.loss_code == BINARY_CROSS_ENTROPY:
            labels = (logits >= 0).astype(np.int64)  # sigmoid(z) >= 0.5
            if labels.shape[1] > 1:
                return labels
            return self.classes_[np.minimum(labels[:, 0], len(self.classes_) - 1)]  # one class seen: always it
        if self.net.loss_code == POISSON:
            logits = np.exp(logits)
        return logits[:, 0] if logits.shape[1] == 1 else logits

    def evaluate(self, X, y, sample_weight=None, *, encoded=False):
        """{"loss", "accuracy", "log_loss", "f1", "roc_auc"} for classification; {"loss", "r2", "rmse", "mae"} for
        regression. encoded (a model with a schema): X is Preprocessor.transform's output, y the labels or values
        as the data holds them."""
        return self.finish_metrics([self.metric_part(X, y, sample_weight, encoded=encoded)])

    def finish_metrics(self, parts):
        """evaluate()'s result from the metric_part summaries of several pieces of data (a file's chunks). A
        regression target the schema standardized has its errors (rmse, mae) on its own scale."""
        return metrics.finish(metrics.combine(parts), self._target_scale())

    def _target_scale(self):
        """The scale of a regression target the schema standardized (1 otherwise)."""
        prep = self._schema
        return prep.state["target_scale"] if prep is not None and prep.task == "regress" else 1.0

    def metric_part(self, X, y, sample_weight=None, *, encoded=False, roc_auc=True):
        """evaluate()'s combinable summary of these rows (fastbp.engine.metrics.combine merges parts exactly).
        roc_auc=False leaves ROC AUC out and keeps no per-row scores (about 17 bytes a row otherwise)."""
        self._require_fitted("evaluate")
        X, Y = self._check_data(X, y, encoded=encoded)
        w = check_sample_weight(sample_weight, X.shape[0])
        if w is not None and not w.sum() > 0:
            raise InputError("sample_weight entries sum to zero; nothing to evaluate")
        with self._lock.reading():
            return self.engine().metric_part(X, Y, w, roc_auc)

    def loss_and_grad(self, X, y, sample_weight=None):
        """(mean loss, flat gradient in the params layout) at the current parameters; nothing is updated.

        No dropout, no penalty terms: the gradient of the loss the data defines.
        """
        from .engine.full_data import FullGradient
        X, Y = self._check_data(X, y)
        weights = self._weights(Y, sample_weight, None)
        grad = np.empty_like(self.params)
        with self._lock.reading():
            loss = FullGradient(self.net, X, Y, weights, self.n_threads, self.params.dtype)(self.params, grad)
        return float(loss), grad

    def save(self, path):
        """Write the model, optimizer and schedule state, RNG state and history to `path` atomically.

        In distributed training only rank 0 writes (the parameters are the same on every rank).
        """
        if self._comm.rank != 0:
            return
        with self._lock.reading():  # copies of one epoch's end; the file is written after, while fit goes on
            config = copy.deepcopy({
                "fastbp_version": _version(), "init_args": self._init_args(), "history": self.history,
                "shuffle_rng_state": self.state.shuffle_rng.bit_generator.state,
                "lr_schedule": schedule_spec(self.lr_schedule), "preprocessing": self.preprocessing,
                "metadata": self.metadata, "fitted": self.is_fitted,
                "classes": None if self.classes_ is None else self.classes_.tolist(),
                "feature_names": None if self.feature_names_in_ is None else list(self.feature_names_in_)})
            arrays = {"params": self.params.copy(), "opt_step": self.state.optimizer.step.copy(),
                      **{f"opt_{name}": v.copy() for name, v in self.state.state_arrays().items()}}
        write_model(path, config, arrays)

    @classmethod
    def from_preset(cls, name="recipe", **settings):
        """A Trainer with a named preset's settings, the settings given winning: "recipe" (`fastbp train`'s
        default: hidden (256, 256), an ensemble of 4 members, AdamW, 30 epochs of a cosine learning rate after 2
        of warm-up, numeric="auto"; chosen by measurement, docs/performance.md) or "plain" (10 epochs of Adam,
        one model). layer_sizes given replaces the preset's hidden widths; epochs given are the epochs (the preset's
        min_steps, which adds epochs on small tables, then applies only if given too)."""
        from .presets import trainer_settings

        preset = trainer_settings(name, settings.get("loss", "cross_entropy"))
        if "layer_sizes" in settings:
            del preset["hidden"]
        if "epochs" in settings:
            preset["min_steps"] = 0
        return cls(**{**preset, **settings})

    @classmethod
    def load(cls, path, comm=None, n_threads=None):
        """Rebuild a Trainer saved with save(); everything round-trips exactly (a custom Schedule becomes constant).

        comm: as in the constructor, to resume distributed training (every rank loads the same file).
        n_threads: this process's thread count (not part of the model; None: every core).
        """
        config, arrays = read_model(path)
        try:
            unknown = set(config) - _CONFIG_KEYS
            if unknown:
                raise InputError(f"unknown entries {sorted(unknown)}")
            history = config["history"]
            if not isinstance(history, list) or not all(
                    isinstance(h, dict) and all(isinstance(v, (int, float)) for v in h.values()) for h in history):
                raise InputError("its history is not a list of epoch records")
            if not isinstance(config.get("metadata") or {}, dict) or \
                    not isinstance(config.get("preprocessing") or {}, dict):
                raise InputError("its metadata or preprocessing is not a mapping")
            init_args = dict(config["init_args"])
            newer = sorted(set(init_args) - _INIT_PARAMETERS)
            if newer:
                raise InputError(f"it was written by fastbp {config.get('fastbp_version')!r} with settings this "
                                 f"fastbp ({_version()}) does not know: {', '.join(map(str, newer))}; load it with "
                                 "that version or a newer one")
            # the parameter count the arguments imply, checked against the array read (bounded) before
            # anything that size is allocated
            sizes = check_layer_sizes(init_args.get("layer_sizes"))
            tables = check_embeddings(init_args.get("embeddings") or (), sizes[0])
            members = check_int("ensemble", init_args.get("ensemble", 1), 1)
            adapters = check_adapters(init_args.get("ensemble_adapters", "first_layer"))
            n_params = n_parameters(sizes, tables, members, adapters == "every_layer")
            if arrays["params"].shape != (n_params,):
                raise InputError(f"layer_sizes {init_args.get('layer_sizes')}, embeddings {tables} and ensemble "
                                 f"{members} ({adapters}) need {n_params} parameters, the file holds "
                                 f"{arrays['params'].shape}")
            init_args.pop("n_threads", None)  # files from before n_threads became a run setting
            trainer = cls(**init_args, comm=comm, n_threads=n_threads)
            state = {name[4:]: a for name, a in arrays.items() if name.startswith("opt_") and name != "opt_step"}
            legacy = state.pop("state", None)  # files from before the optimizer state was named
            if legacy is not None:
                state.update(zip(trainer.optimizer_settings.legacy_state_order(), legacy))
            for name, a in [("params", arrays["params"]), *state.items()]:
                if a.shape != trainer.params.shape or a.dtype != trainer.params.dtype:
                    raise InputError(f"array {name!r} has shape {a.shape}, expected {trainer.params.shape}")
            trainer.state.load_arrays(arrays["params"], int(arrays["opt_step"][0]), state)
            trainer.state.shuffle_rng.bit_generator.state = config["shuffle_rng_state"]
            trainer.history = config["history"]
            if config.get("lr_schedule"):
                trainer.lr_schedule = schedule_from_spec(config["lr_schedule"])
            trainer.preprocessing = config.get("preprocessing")  # untrusted: every field checked now
            trainer.metadata = dict(config.get("metadata") or {})
            trainer._fitted = bool(config.get("fitted", True))  # files from before the flag: saved after fitting
            trainer.classes_ = classes_from_list(config.get("classes"), trainer.layout.n_out, trainer.loss)
            if trainer.classes_ is None and trainer._fitted and trainer.is_classifier:  # files from before classes
                trainer.classes_ = index_classes(trainer.loss, trainer.layout.n_out)
            names = config.get("feature_names")
            if trainer._schema is not None:  # the schema's labels (files from before stored class indices)
                trainer._check_schema_fits(trainer._schema)
                trainer.classes_ = trainer._schema_classes()
                if names is not None and names != trainer._schema.features:
                    raise InputError("its feature_names are not the columns of its preprocessing")
                names = trainer._schema.features
            if names is not None:
                width = len(trainer._schema.features) if trainer._schema is not None else trainer.layout.n_in
                if not isinstance(names, list) or len(names) != width or \
                        not all(isinstance(c, str) for c in names) or len(set(names)) != len(names):
                    raise InputError("its feature_names are not one distinct name per input column")
                trainer.feature_names_in_ = np.array(names, dtype=object)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
            raise ModelFileError(f"{path!r} does not describe a valid fastbp model: {exc}") from None
        return trainer

    def to_onnx(self, path=None, input_dtype=None):
        """The model as an ONNX ModelProto, written atomically to `path` when given (needs fastbp[onnx]).

        Outputs as predict and predict_proba give them: "label" (classes_, strings as strings; 0/1 per
        output for multilabel) and "probabilities" for classification losses, "variable" (n, n_out)
        otherwise (poisson: rates), and "is_valid" (n,): false for a row predict refuses (NaN or infinity,
        or a value the model's dtype cannot hold), where the probabilities or values are NaN and the label
        means nothing. Input "X" (n, n_in) of the model's dtype, or of `input_dtype` ("float32", "float64",
        "int64", "int32" or "bool", cast to the model's dtype first). A model trained from a file (`fastbp
        train`) instead takes one (n, 1) input per feature column, numbers as double and categories as
        strings (an empty string is a missing value), applies the stored preprocessing and gives labels and
        values as `fastbp predict` does.
        """
        from .files import onnx_export
        from .files.preprocess import Preprocessor
        if input_dtype is not None:
            if self.preprocessing:
                raise InputError("input_dtype is for models trained on arrays: a model trained from a file takes "
                                 "its columns as they were (numbers as double, categories as strings)")
            if str(np.dtype(input_dtype) if isinstance(input_dtype, type) else input_dtype) \
                    not in onnx_export.INPUT_DTYPES:
                raise InputError(f"input_dtype must be one of {', '.join(onnx_export.INPUT_DTYPES)}, "
                                 f"got {input_dtype!r}")
        n_hidden = len(self.layer_sizes) - 2
        hidden = [self.activation] * n_hidden if isinstance(self.activation, str) else list(self.activation)
        prep = Preprocessor(self.preprocessing) if self.preprocessing else None
        with self._lock.reading():  # one epoch's end, while fit may run in another thread
            params = self.params.copy()
        model = onnx_export.trainer_model(self.layout.views(params), hidden, self.loss, self.params.dtype, prep,
                                          self.classes_, _version(), input_dtype, self.layout.tables(params),
                                          self.layout.adapters(params), self.layout.layer_adapters(params))
        if path is not None:
            onnx_export.save(model, path)
        return model

    def summary(self):
        """A readable description: layers and parameter counts, loss, optimizer, dtype, threads, and what
        training learned (classes, feature names, epochs)."""
        from .core.threads import default_threads
        if self.state is None:
            return (f"Trainer: MLP with hidden layers {list(self.hidden)}, {self.dtype}; the input and output widths "
                    "come from the first fit's data\nnot trained yet (predict needs fit)")
        with self._lock.reading():  # one epoch's end, while fit may run in another thread
            n_hidden = len(self.layer_sizes) - 2
            hidden = [self.activation] * n_hidden if isinstance(self.activation, str) else list(self.activation)
            output = {"cross_entropy": "softmax in the loss", "binary_cross_entropy": "sigmoid in the loss",
                      "poisson": "exp in the loss"}.get(self.loss, "linear")
            rows = [("layer", "shape", "activation", "parameters")]
            for i, ((W, b), act) in enumerate(zip(self.layers, hidden + [output])):
                heads = f" x {W.shape[0]} heads" if W.ndim == 3 else ""  # an ensemble's last layer
                rows.append((str(i + 1), f"{W.shape[-2]} -> {W.shape[-1]}{heads}", act, f"{W.size + b.size:,}"))
            widths = [max(len(r[k]) for r in rows) for k in range(4)]
            lines = [f"Trainer: MLP {self.layer_sizes}, {self.layout.n_params:,} parameters, {self.dtype}"]
            lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
            if self.ensemble > 1 and self.layout.every_layer:
                adapters = sum(R.size + S.size for R, S in self.layout.layer_adapters(self.params))
                lines.append(f"an ensemble of {self.ensemble} members: each shared layer scales its inputs and "
                             f"outputs by each member's adapters ({adapters:,} parameters) and adds the member's own "
                             "biases (counted above), the heads are the members' own; predictions are their mean")
            elif self.ensemble > 1:
                lines.append(f"an ensemble of {self.ensemble} members: layer 1 reads each member's input adapter "
                             f"({self.ensemble} x {self.layer_sizes[0]} parameters), the other layers are shared, "
                             "the heads are the members' own; predictions are their mean")
            if self.embeddings:
                lines.append("embedding tables (rows, dim) read by layer 1: " + ", ".join(
                    f"{r} x {d}" for r, d in self.embeddings))
            settings = self.optimizer_settings.described()
            lines.append(f"loss {self.loss}; optimizer {self.optimizer} "
                         f"({', '.join(f'{k} {v}' for k, v in settings.items())}); batch {self.batch_size}, "
                         f"{self.epochs} epoch(s) per fit; threads "
                         f"{self.n_threads if self.n_threads is not None else f'{default_threads()} (default)'}")
            if self.classes_ is not None:
                lines.append(f"classes {self.classes_.tolist()}")
            if self.feature_names_in_ is not None:
                lines.append(f"features {list(self.feature_names_in_)}")
            last = self.history[-1] if self.history else None
            lines.append(f"trained {len(self.history)} epoch(s)" + (f", last loss {last['loss']:.4g}" if last else "")
                         if self.is_fitted else "not trained yet (predict needs fit)")
            return "\n".join(lines)

    def __getstate__(self):
        # a copy of one epoch's end (pickle reads the arrays after this returns, while fit may go on); a
        # communicator belongs to its processes: an unpickled Trainer runs as one process (as Trainer.load(path)
        # without comm does)
        with self._lock.reading():
            state = copy.deepcopy({k: v for k, v in self.__dict__.items() if k not in ("comm", "_comm", "_lock")})
        state["comm"], state["_lock"] = None, ModelLock()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._comm = make_comm(None)
        if getattr(self, "net", None) is not None:  # params and the optimizer's arrays: TrainingState's own
            self.net = writable_copies(self.net)

    def __repr__(self):
        sizes = f"layer_sizes={self.layer_sizes}" if self.state is not None else f"hidden={tuple(self.hidden)}"
        return (f"Trainer({sizes}, activation={self.activation!r}, loss={self.loss!r}, "
                f"optimizer={self.optimizer!r}, lr={self.lr!r}, batch_size={self.batch_size}, dtype={self.dtype!r})")

    # ------------------------------------------------------------------ internals
    def _init_args(self):
        args = {"layer_sizes": self.layer_sizes, "activation": self.activation, "loss": self.loss,
                "optimizer": self.optimizer, "batch_size": self.batch_size, "epochs": self.epochs,
                "shuffle": self.shuffle, "seed": self.seed, "dtype": self.dtype, "init": self.init,
                "clip_grad_norm": self.clip_grad_norm, "dropout": self.dropout, "huber_delta": self.huber_delta,
                "on_divergence": self.on_divergence, "verbose": self.verbose, "sync_every": self.sync_every,
                "impute": self.impute, "max_categories": self.max_categories, "numeric": self.numeric,
                "numeric_bins": self.numeric_bins, "embeddings": self.embeddings, "categorical": self.categorical,
                "onehot_max": self.onehot_max, "embedding_dim": self.embedding_dim,
                "label_smoothing": self.label_smoothing, "ensemble": self.ensemble, "min_steps": self.min_steps,
                "ensemble_adapters": self.ensemble_adapters}
        args.update(self.optimizer_settings.settings())
        return args

    def categorical_encoding(self):
        """How the first fit on a table encodes its categorical columns (fastbp.files.preprocess.Categorical)."""
        from .files.preprocess import categorical_encoding
        return categorical_encoding(self.categorical, self.onehot_max, self.embedding_dim)

    def _check_data(self, X, y, learn=False, local=False, encoded=False):
        """(X, Y) for the kernels. learn (fit): an untrained model takes its feature names and classes
        from this data, and from a table with named columns its schema (local: each MPI rank has its own rows)."""
        learn = learn and not self.is_fitted
        if learn and table_columns(X) is not None:
            source = self._learn_schema(X, y, local)
            # the columns the first pass read, encoded once (not read from the table again)
            X, y = self._encode(source.whole(self._schema.features + [source.target]), with_target=True)
            Y = self._target_rows(y)
            self._warn_unused_outputs(Y)
            return X, Y
        if self.state is None:
            self._require_built("this call") if not learn else self._build_for(X, y, local)
        if self._schema is not None:
            X, Y = self._schema_inputs(X, encoded), self._schema_targets(X, y)
            if len(Y) != len(X):
                raise InputError(f"X has {len(X)} rows but y has {len(Y)}; give one label or value per row")
            if learn:
                self._warn_unused_outputs(Y)
            return X, Y
        X = self._features(X, learn)
        classes = self.classes_
        if self.is_classifier and (classes is None or learn):
            seen = y
            if learn and self._comm.size > 1:  # every rank numbers the labels of all ranks' rows alike
                seen = distributed.labels_of_all_ranks(self._comm, label_column(y))
            classes = learn_classes(seen, self.loss, self.layout.n_out)
        Y = check_targets(encode_labels(y, classes), self.loss, self.layout.n_out, X.shape[0], self.dtype)
        if learn:
            self.classes_ = classes
            self._warn_unused_outputs(Y)
        return X, Y

    def _features(self, X, learn=False, encoded=False):
        """X as a C-contiguous array; a DataFrame or Table by column name (its names kept when learning)."""
        if self._schema is not None:
            return self._schema_inputs(X, encoded)
        names = table_columns(X)
        if names is not None:
            if self.feature_names_in_ is not None:
                known = list(self.feature_names_in_)
                missing = [c for c in known if c not in names]
                extra = [c for c in names if c not in set(known)]
                if missing or extra:
                    raise InputError(f"X's columns differ from training's: missing {missing or 'none'}, "
                                     f"not seen in training {extra or 'none'}; pass the columns {known}")
                X = table_array(X, known, DTYPES[self.dtype])
            else:
                X = table_array(X, names, DTYPES[self.dtype])
        X = check_X(X, self.dtype, self.layout.n_columns, self.is_fitted, len(self.layout.embeddings))
        if learn and names is not None and all(isinstance(c, str) for c in names):
            self.feature_names_in_ = np.array(names, dtype=object)
        return X

    # ------------------------------------------------------------------ tables, through the schema
    def _learn_schema(self, X, y, local):
        """The first fit on a table: its schema, as `fastbp train` learns one from a file (column kinds,
        categories, statistics, missing values; the target's classes, or its mean and scale). Returns the
        table as the first pass read it (fastbp.files.tables.TableSource)."""
        from .files.preprocess import Preprocessor
        from .files.tables import TableSource
        if y is None:
            raise InputError("fit needs y: the labels or values, or the name of X's target column")
        source = TableSource(X, y)
        distributed = self._comm.size > 1 and local
        prep, _, _ = Preprocessor.fit(source, source.target, task="classify" if self.is_classifier else "regress",
                                      impute=self.impute, max_categories=self.max_categories,
                                      comm=self._comm if distributed else None, local=distributed,
                                      scale_target=self.loss != "poisson", numeric=self.numeric,
                                      bins=self.numeric_bins, categorical=self.categorical_encoding())
        if self.state is None:
            if self._given_embeddings:
                raise InputError("embeddings= gives tables for an array's category codes; a table's categorical "
                                 "columns get theirs from its schema (categorical=, onehot_max=, embedding_dim=)")
            self._build([prep.n_inputs, *self.hidden, prep.outputs(self.loss)], prep.embeddings())
        self._check_schema_fits(prep)
        self._schema = prep
        self.classes_ = self._schema_classes()
        self.feature_names_in_ = np.array(prep.features, dtype=object)
        return source

    def _build_for(self, X, y, local):
        """The layer sizes of a Trainer built with hidden=, from the first fit's arrays: an input per column;
        an output per class (cross_entropy), one for two classes (binary_cross_entropy) or per multilabel column,
        one per target column otherwise."""
        shape = getattr(X, "shape", None) or np.shape(X)
        if len(shape) != 2 or 0 in shape:
            check_X(X, self.dtype)  # says what is wrong with X
        # X itself is checked once, by _features; an array's category codes (embeddings=) read their tables' rows
        tables = self._given_embeddings or []
        width = shape[1] - len(tables) + sum(d for _, d in tables)
        labels = label_column(y)
        if self._comm.size > 1 and local:  # every rank counts the labels of all ranks' rows alike
            labels = distributed.labels_of_all_ranks(self._comm, labels)
        if self.loss == "cross_entropy" and labels.ndim == 1:
            try:
                n_out = max(2, len(np.unique(labels)))
            except TypeError:  # labels of mixed types: learn_classes explains
                n_out = 2
        else:
            n_out = 1 if labels.ndim == 1 else labels.shape[1]
        self._build([width, *self.hidden, n_out])

    def _check_schema_fits(self, prep):
        """The network's inputs and outputs are those the schema gives: its encoded width, and one output per
        class (cross_entropy: at least; binary_cross_entropy: one for two classes) or one for a value."""
        n_in, n_out = self.layout.n_in, self.layout.n_out
        if prep.n_inputs != n_in:
            raise InputError(f"X's {len(prep.features)} columns encode to {prep.n_inputs} inputs "
                             f"({_encoded_columns(prep)}) but layer_sizes[0] = {n_in}; build the Trainer with "
                             f"layer_sizes[0] = {prep.n_inputs}")
        if [tuple(t) for t in prep.embeddings()] != self.layout.embeddings:
            raise InputError(f"X's categorical columns take embedding tables {prep.embeddings()} (rows, dim), but "
                             f"the model has {self.layout.embeddings}; build the Trainer with "
                             f"embeddings={prep.embeddings()}, or with hidden= to take them from the data")
        if prep.task == "classify":
            n_classes = len(prep.classes())
            fits = n_classes <= n_out if self.loss == "cross_entropy" else \
                n_classes == 2 if n_out == 1 else n_classes == n_out
            if not fits:
                fix = f"layer_sizes[-1] = {n_classes}" + (" or loss='cross_entropy'" if n_out == 1 else "")
                raise InputError(f"y has {n_classes} classes ({', '.join(map(str, prep.classes()[:10]))}) but the "
                                 f"model has {n_out} output(s) with loss {self.loss!r}; use {fix}")
        elif n_out != 1:
            raise InputError(f"y is one column of values but the model has {n_out} outputs; use layer_sizes[-1] = 1 "
                             "(for several targets pass arrays)")
        if prep.task == "regress" and self.is_classifier:
            raise InputError(f"y holds values to regress, but loss {self.loss!r} classifies; use mse, mae or huber")

    def _schema_classes(self):
        """classes_ of a model with a schema: the target's labels by output (None where the classes are learned
        one-hot, with several outputs and another loss than cross_entropy)."""
        from .files.streaming import FileTargets
        prep = self._schema
        if not self.is_classifier or prep.task != "classify" or FileTargets(self.loss, self.layout.n_out).one_hot:
            return None
        return prep.labels(np.arange(len(prep.classes())))

    def _schema_inputs(self, X, encoded=False):
        """The inputs the network reads, through the schema: from a table by column name, from a 2-D array by
        position (one column per feature, as in training; as scikit-learn reads an array after a DataFrame);
        encoded: X is already what Preprocessor.transform gives."""
        from .files.tables import arrow_column, table_column
        if encoded:
            return check_X(X, self.dtype, self.layout.n_columns, self.is_fitted, len(self.layout.embeddings))
        prep = self._schema
        names = table_columns(X)
        if names is None:
            X = np.asarray(X)
            if X.ndim != 2 or X.shape[1] != len(prep.features):
                raise InputError(f"X has shape {X.shape}, but the model reads {len(prep.features)} columns "
                                 f"({', '.join(prep.features[:10])}{', ...' if len(prep.features) > 10 else ''}): "
                                 "pass a table with those columns, or an array with one column per feature in "
                                 "that order")
            X = {c: X[:, j] for j, c in enumerate(prep.features)}
            names = prep.features
        present = set(names)
        return self._encode({c: arrow_column(c, table_column(X, c)) for c in prep.features if c in present})[0]

    def _encode(self, chunk, with_target=False):
        """(X, y) of columns {name: pyarrow Array} through the schema (y None without the target); a category
        not seen in training is all zeros (its table's unknown row when embedded), with a warning."""
        prep = self._schema
        prep.unknown = {}
        X, y = prep.transform(chunk, with_target=with_target, dtype=DTYPES[self.dtype])
        for column, rows in prep.unknown.items():
            warn(f"column {column!r}: {rows} row(s) hold categories not seen in training; they are encoded as "
                 f"{prep.unseen_encoding(column)}")
        if not len(X):
            raise InputError("X is empty: it has 0 rows; pass at least one row")
        return X, y

    def _schema_targets(self, X, y):
        """y (labels or values, or the name of X's target column) as the network learns it: class indices or
        the one-hot classes, or the standardized value."""
        from .files.tables import arrow_column, table_column
        if isinstance(y, str) and table_columns(X) is not None:
            y = table_column(X, y)
        return self._target_rows(self._schema.encode_target(arrow_column("y", y), 0, DTYPES[self.dtype]))

    def _target_rows(self, y):
        """Encoded targets (Preprocessor.encode_target) as the network's target rows."""
        from .files.streaming import FileTargets
        return FileTargets(self.loss, self.layout.n_out).rows(y)

    def _warn_unused_outputs(self, Y):
        if self.net.loss_code != CROSS_ENTROPY:
            return
        n_out, n_present = self.layout.n_out, np.unique(Y[:, 0]).size
        if n_out >= 2 * n_present and n_out - n_present >= 2:
            warn(f"the model has {n_out} outputs (layer_sizes[-1]) but y has {n_present} classes: "
                 f"{n_out - n_present} outputs are never the right answer; use layer_sizes[-1] = "
                 f"{n_present} unless later data brings the other classes")

    def _require_fitted(self, what):
        if not self.is_fitted:
            raise NotFittedError(f"{what} needs a trained model: call fit (or fit_source) first, or load a saved "
                                 "model. (decision_function gives the outputs of the current parameters at any "
                                 "time.)")

    def _weights(self, Y, sample_weight, class_weight):
        """Per-row weights as the model dtype, or an empty array when every weight is 1."""
        w = check_sample_weight(sample_weight, Y.shape[0])
        if class_weight is not None:
            if not self.is_classifier:
                raise InputError(f"class_weight needs a classification loss; this model uses {self.loss!r}")
            if isinstance(class_weight, dict) and self.classes_ is not None:
                class_weight = {class_index(self.classes_, label): weight for label, weight in class_weight.items()}
            cw = class_weights_per_sample(class_weight, Y, self.loss)
            w = cw if w is None else w * cw
        return row_weights(w, self.params.dtype)

    def _file_class_weights(self, class_weight, prep):
        """fit_source's class weights: one per class index of `prep`, as the model dtype."""
        if not self.is_classifier or prep.task != "classify":
            raise InputError(f"class_weight needs a classification loss and target; this model uses {self.loss!r} "
                             f"on a {prep.task!r} target")
        if prep.class_counts is None:
            raise InputError("class_weight needs the class counts of the first pass: pass the Preprocessor that "
                             "Preprocessor.fit returned for this data")
        if isinstance(class_weight, dict):
            labels = prep.labels(slice(None))
            class_weight = {class_index(labels, label): weight for label, weight in class_weight.items()}
        return class_weight_table(class_weight, prep.class_counts).astype(self.params.dtype)

    def _validation(self, X, Y, weights, validation_data, validation_split):
        """Split off or check validation data; returns (X, Y, weights, (X_val, y_val, w_val) or None)."""
        if validation_data is not None and validation_split:
            raise InputError("pass validation_data or validation_split, not both")
        if validation_data is not None:
            try:
                Xv, yv, *rest = validation_data
            except (TypeError, ValueError):
                rest = [None, None]
            if len(rest) > 1:
                raise InputError("validation_data must be (X_val, y_val) or (X_val, y_val, sample_weight_val)")
            Xv, Yv = self._check_data(Xv, yv)
            wv = check_sample_weight(rest[0], Xv.shape[0]) if rest else None
            return X, Y, weights, (Xv, Yv, wv)
        if not validation_split:
            return X, Y, weights, None
        labels = Y[:, 0] if self.net.loss_code == CROSS_ENTROPY or (
            self.net.loss_code == BINARY_CROSS_ENTROPY and Y.shape[1] == 1) else None
        train, val = validation_indices(X.shape[0], validation_split, labels, self.state.split_seed)
        w_val = weights[val] if weights.size else None
        return (X[train], Y[train], weights[train] if weights.size else weights, (X[val], Y[val], w_val))


_CONFIG_KEYS = {"fastbp_version", "init_args", "history", "shuffle_rng_state", "lr_schedule", "preprocessing",
                "metadata", "fitted", "classes", "feature_names"}


_INIT_PARAMETERS = set(inspect.signature(Trainer.__init__).parameters) - {"self"}


def load(path, comm=None, n_threads=None):
    """Load a Trainer saved with Trainer.save (alias of Trainer.load)."""
    return Trainer.load(path, comm=comm, n_threads=n_threads)


def _version():
    from . import __version__
    return __version__


def _checked_dropout(dropout, n_hidden):
    """One rate for every hidden layer, or a list with one per hidden layer, each in [0, 1)."""
    rates = list(dropout) if hasattr(dropout, "__len__") else [dropout]
    if hasattr(dropout, "__len__") and len(rates) != n_hidden:
        raise InputError(f"dropout lists one rate per hidden layer: expected {n_hidden}, got {len(rates)}")
    for p in rates:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)) \
                or not 0 <= p < 1:
            raise InputError(f"dropout rates must lie in [0, 1), got {dropout!r}")
    return [float(p) for p in rates] if hasattr(dropout, "__len__") else float(dropout)


def _same_rows(saved, now):
    """The same training rows in the same order, as far as two first passes tell: as many rows, and (where both
    read them in file order in one process) the target changing value between consecutive rows as often."""
    if saved.get("training_rows") != now["training_rows"]:
        return False
    changes = saved.get("target_changes"), now["target_changes"]
    return None in changes or changes[0] == changes[1]


def _checked_numeric(value):
    from .files.preprocess import NUMERIC_ENCODINGS
    if value not in NUMERIC_ENCODINGS:
        raise InputError(f"numeric must be one of {', '.join(map(repr, NUMERIC_ENCODINGS))}, got {value!r}")
    return value


def _checked_bins(value):
    value = check_int("numeric_bins", value, 1)
    if value > 1024:
        raise InputError(f"numeric_bins must be at most 1024, got {value}")
    return value


def _checked_categorical(**setting):
    """One of the categorical settings (mode, onehot_max, dim), checked by fastbp.files.preprocess."""
    from .files.preprocess import categorical_encoding
    value = categorical_encoding(**setting)
    return getattr(value, next(iter(setting)))


def _checked_impute(value):
    if value not in (None, "mean", "median"):
        raise InputError(f"impute must be None (a missing value is an error), 'mean' or 'median', got {value!r}")
    return value


def _encoded_columns(prep):
    """Which columns take more than one input (one per category, or an embedding's width), for messages."""
    embed = prep.state.get("embed") or [None] * len(prep.features)
    wide = [f"{c!r} one per category: {len(cats)}" if d is None else f"{c!r} an embedding {d} wide"
            for c, cats, d in zip(prep.features, prep.state["categories"], embed) if cats is not None]
    return "; ".join(wide[:5]) + ("; ..." if len(wide) > 5 else "") if wide else "one per column"


def _checked_on_divergence(value):
    if value not in ("raise", "warn"):
        raise InputError(f"on_divergence must be 'raise' or 'warn', got {value!r}")
    return value


def _checked_verbose(value):
    """0, 1 or 2 (numpy integers too); True and False as scikit-learn users pass them, for 1 and 0."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if not isinstance(value, (int, np.integer)) or value not in (0, 1, 2):
        raise InputError(f"verbose must be 0 (silent), 1 (progress bar) or 2 (a line per epoch), got {value!r}")
    return int(value)
