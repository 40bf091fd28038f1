"""fastbp command line: train, predict, evaluate, info, demo, compile, bench.

Exit codes: 0 success; 2 bad usage or bad input (one line on stderr, no traceback);
1 an internal error, i.e. a bug (one line; the traceback with --debug or FASTBP_DEBUG=1);
130 interrupted (after saving a checkpoint).
"""
import argparse
import contextlib
import difflib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np

from .core.errors import InputError
from .engine.callbacks import Callback, on_terminal
from .presets import HIDDEN, PRESETS, label_smoothing, lr_schedule

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141
ARROW_FORMATS = (".csv", ".tsv", ".txt", ".parquet", ".pq")  # the files pyarrow reads


class UsageError(InputError):
    """Bad input detected by the CLI itself."""


# ---------------------------------------------------------------------------- demo
def synthetic_classification(n_samples, n_features, n_classes, seed):
    """A non-linear tabular problem: the class is the arg-max of random quadratic scores."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features)).astype(np.float32)
    A = rng.normal(size=(n_features, n_classes)) / np.sqrt(n_features)
    B = rng.normal(size=(n_features, n_classes)) / n_features
    scores = X @ A + (X ** 2) @ B + 0.1 * rng.normal(size=(n_samples, n_classes))
    return X, scores.argmax(axis=1)


def demo(args):
    from . import Trainer

    X, y = synthetic_classification(args.rows, 20, 3, args.seed)
    n_train = int(0.8 * len(X))
    trainer = Trainer([20, *_sizes(args.hidden), 3], activation="relu", loss="cross_entropy", lr=0.05, momentum=0.9,
                      batch_size=128, epochs=args.epochs, seed=args.seed, n_threads=args.threads)
    print(f"fastbp demo: {len(X)} synthetic rows x 20 features, 3 classes; MLP {trainer.layer_sizes}, "
          f"SGD lr=0.05 momentum=0.9, batch 128")
    start = time.perf_counter()
    trainer.fit(X[:n_train], y[:n_train])
    for h in trainer.history:
        print(f"  epoch {h['epoch']:3d}  loss {h['loss']:.4f}  {h['samples_per_s']:>12,.0f} samples/s")
    print(f"trained in {time.perf_counter() - start:.2f} s (including compilation on a first run)")
    scores = trainer.evaluate(X[n_train:], y[n_train:])
    print(f"held-out: loss {scores['loss']:.4f}, accuracy {scores['accuracy']:.3f}")
    if args.out:
        trainer.save(args.out)
        print(f"model saved to {args.out}")
    return EXIT_OK


# ---------------------------------------------------------------------------- train
def _sizes(text):
    """--hidden: comma-separated sizes, or "none" for no hidden layer (an empty size is a typo, not a layer)."""
    if text.strip().lower() == "none":
        return []
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise UsageError(f"--hidden takes comma-separated layer sizes like 256,256 (or none for no hidden layer), "
                         f"got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise UsageError(f"--hidden sizes must be >= 1, got {text!r}")
    return sizes


class _JsonLog(Callback):
    """One JSON line of metrics per epoch."""

    def __init__(self, path):
        self.path = path
        open(path, "a").close()  # fail now, not after the first epoch

    def on_epoch_end(self, trainer, epoch, logs):
        with open(self.path, "a") as fh:
            fh.write(json.dumps(logs) + "\n")


class _Checkpoints(Callback):
    """--checkpoint-dir: save the checkpoint every n-th epoch and, with early stopping (`stopper`), the model of
    each new best epoch beside it (what --resume needs to keep the best weights of epochs before the
    interruption). A write that fails (a full disk) is a warning, not the end of the run: training goes on and
    the next checkpoint tries again; `failed` says why."""

    def __init__(self, path, n, stopper=None):
        if n < 1:
            raise UsageError(f"--checkpoint-every must be >= 1, got {n}")
        self.path, self.n, self.stopper = path, n, stopper
        self.failed = None

    def on_epoch_end(self, trainer, epoch, logs):
        if self.stopper is not None and self.stopper.best_epoch == epoch:  # the stopper runs first
            self.save(trainer, epoch, _best_path(self.path))
        if epoch % self.n == 0:
            self.save(trainer, epoch)

    def save(self, trainer, epoch, path=None):
        path = path or self.path
        try:
            trainer.save(path)
            self.failed = None
        except OSError as exc:
            self.failed = exc.strerror or str(exc)
            print(f"fastbp: warning: could not write the checkpoint {path!r} after epoch {epoch} "
                  f"({self.failed}); training goes on", file=sys.stderr)


def _best_path(checkpoint):
    """Where the checkpoint's best epoch (early stopping) is kept: best.fbp beside it."""
    return os.path.join(os.path.dirname(checkpoint), "best.fbp")


def _resumed_stopper(stopper, trainer, checkpoint):
    """Early stopping as the interrupted run had it: its counts over the epochs trained, and its best epoch's
    state from best.fbp beside the checkpoint (when there)."""
    from .trainer import load
    best, best_epoch = None, None
    if os.path.exists(_best_path(checkpoint)):
        kept = load(_best_path(checkpoint))
        best, best_epoch = kept.state.snapshot(), len(kept.history)
    return stopper.continue_from(trainer.history, best, best_epoch)


def _checkpoint_path(args):
    return os.path.join(args.checkpoint_dir, "checkpoint.fbp") if args.checkpoint_dir else None


# Options that change what training computes: --resume refuses a checkpoint trained with others.
# (--epochs is the total to reach; --threads changes only rounding; output options change nothing.)
RESULT_OPTIONS = ("target", "features", "exclude", "encoding", "sep", "decimal", "task", "hidden", "activation",
                  "loss", "optimizer", "lr", "batch_size", "val_split", "seed", "dtype", "impute", "max_categories",
                  "chunk_rows", "buffer_rows", "shard", "sync_every", "dropout", "weight_decay", "early_stopping",
                  "patience", "class_weight", "no_spill", "val_max_rows", "monitor", "numeric", "numeric_bins",
                  "categorical", "onehot_max", "embedding_dim", "label_smoothing", "lr_schedule", "warmup_epochs",
                  "ensemble", "min_steps", "ensemble_adapters")
# options added after checkpoints existed: one without them was trained with these values
LATER_OPTIONS = {"dropout": 0.0, "weight_decay": None, "early_stopping": False, "patience": 10,
                 "class_weight": None, "no_spill": True, "val_max_rows": 200_000, "monitor": "val_loss",
                 "numeric": "standard", "numeric_bins": 16, "categorical": "onehot", "onehot_max": 128,
                 "embedding_dim": None, "label_smoothing": 0.0, "lr_schedule": "constant", "warmup_epochs": 0,
                 "ensemble": 1, "min_steps": 0, "ensemble_adapters": "first_layer", "sep": None, "decimal": "."}


def _result_options(args, ranks, shard):
    options = {name: getattr(args, name) for name in RESULT_OPTIONS}
    options["shard"] = shard
    options["ranks"] = ranks if shard == "chunks" else None  # chunk shards depend on the rank count
    return options


def _check_resume_options(checkpoint, saved, now):
    saved = {**LATER_OPTIONS, **saved}
    differ = [f"--{name.replace('_', '-')} {saved.get(name)!r} -> {now[name]!r}" if name != "ranks" else
              f"MPI ranks {saved.get(name)} -> {now[name]}" for name in now if saved.get(name) != now[name]]
    if differ:
        raise UsageError(f"{checkpoint!r} was trained with other options than this command: {'; '.join(differ)}. "
                         "Resume with the checkpoint's options, or start without --resume")


def _check_loss_fits_task(loss, task):
    """Classes train with any loss but poisson (cross_entropy on class indices; binary_cross_entropy on two
    classes with one output; mse, mae, huber and binary_cross_entropy on more with one-hot targets);
    regression with mse, mae or huber."""
    from .core.losses import CLASSIFICATION_LOSSES

    if task == "regress" and loss in CLASSIFICATION_LOSSES:
        raise UsageError(f"--loss {loss} is a classification loss, but the target is regressed: use --loss mse, mae "
                         "or huber, or --task classify")


def _class_weight_option(text):
    """--class-weight: "balanced", or {label text: weight} from LABEL=WEIGHT pairs; None without it."""
    if text is None or text == "balanced":
        return text
    weights = {}
    for pair in text.split(","):
        label, sep, weight = pair.rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = None
        if not sep or not label.strip() or value is None or not (np.isfinite(value) and value >= 0):
            raise UsageError(f"--class-weight takes 'balanced' or LABEL=WEIGHT pairs with weights >= 0, e.g. "
                             f"yes=3,no=1; {pair!r} is not one")
        weights[label.strip()] = value
    return weights


def _class_weight_for(weights, prep):
    """--class-weight pairs keyed by the classes themselves (a label written as the CLI shows it)."""
    if not isinstance(weights, dict):
        return weights
    labels = prep.labels(slice(None)).tolist()
    by_text = {str(label): label for label in labels}
    unknown = [text for text in weights if text not in by_text]
    if unknown:
        raise UsageError(f"--class-weight names {', '.join(map(repr, unknown))}, not a class of "
                         f"{prep.target!r}; its classes are: {', '.join(map(str, labels[:30]))}")
    return {by_text[text]: weight for text, weight in weights.items()}


def _check_class_weight(option, loss, task):
    """--class-weight weighs classes in a classification loss (loss/task None: not known yet)."""
    from .core.losses import CLASSIFICATION_LOSSES

    if option is None:
        return
    _class_weight_option(option)
    if task == "regress":
        raise UsageError("--class-weight weighs the classes of a classified target, not a regressed one")
    if loss is not None and loss not in CLASSIFICATION_LOSSES:
        raise UsageError(f"--class-weight weighs a classification loss; --loss {loss} learns the classes as "
                         "one-hot scores: use cross_entropy or binary_cross_entropy, or leave out --class-weight")


# --preset fills the training options a command line leaves out from fastbp.presets (an option given always
# wins). Without early stopping every row trains (--val-split 0); with it 10 % are held out unless --val-split says
# otherwise.
def _by_preset(name):
    """The help text's note of an option's default under each preset."""
    return "default: " + "; ".join(f"{preset} {values[name]}" for preset, values in PRESETS.items())


def _apply_preset(args):
    """Fill the options left out (None) from --preset; --val-split defaults to 0.1 with early stopping, else 0,
    --val-split 0 turns off the preset's early stopping (nothing to watch), and --epochs the preset's min_steps."""
    if args.early_stopping is None and args.val_split == 0:
        args.early_stopping = False
    if args.epochs is not None and args.min_steps is None:
        args.min_steps = 0  # --epochs given are the epochs: the preset's min_steps adds epochs only to its own
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None and name != "label_smoothing":  # that one once the loss is known
            setattr(args, name, value)
    if args.val_split is None:
        args.val_split = 0.1 if args.early_stopping else 0.0


def _check_training_options(args):
    _check_class_weight(args.class_weight, args.loss, args.task)
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.weight_decay is not None and not args.weight_decay >= 0:
        raise UsageError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    _sizes(args.hidden)  # a typo in the sizes stops the run before the first pass, not after it
    if args.warmup_epochs and args.lr_schedule != "cosine":
        raise UsageError("--warmup-epochs needs --lr-schedule cosine (a linear warm-up, then cosine annealing)")
    if args.warmup_epochs < 0 or not 0 <= (args.label_smoothing or 0) < 1:
        raise UsageError("--warmup-epochs must be >= 0 and --label-smoothing in [0, 1)")
    if args.ensemble < 1:
        raise UsageError(f"--ensemble is a count of members, at least 1 (1: one model), got {args.ensemble}")
    if args.patience < 1:
        raise UsageError(f"--patience must be >= 1, got {args.patience}")
    from .engine.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS
    monitors = [f"val_{m}" for m in dict.fromkeys(CLASSIFICATION_METRICS + REGRESSION_METRICS)]
    if args.monitor not in monitors:
        raise UsageError(f"--monitor {args.monitor!r} is not a validation metric; choose one of {', '.join(monitors)}")
    if args.early_stopping and not args.val_split > 0:
        raise UsageError(f"--early-stopping watches {args.monitor} on the held-out rows: give --val-split > 0")


def train(args):
    from .engine.callbacks import EarlyStopping
    from .files.file_data import FileData
    from .files.preprocess import categorical_encoding
    from .engine.buffered import StreamStats
    from .files.streaming import spill_bytes
    from .parallel.file_shards import shard_mode
    from .trainer import Trainer, load

    from .parallel.comm import make_comm
    comm = make_comm("mpi") if _launched_by_mpi() else None
    rank = comm.rank if comm else 0
    if rank != 0:
        args.quiet = True  # one voice per job: rank 0 prints and writes files
    _apply_preset(args)
    _check_positive(args, "epochs", "chunk_rows", "buffer_rows", "batch_size", "val_max_rows", "max_categories")
    if args.min_steps < 0:
        raise UsageError(f"--min-steps must be >= 0, got {args.min_steps}")
    if not 0 <= args.val_split < 1:
        raise UsageError(f"--val-split must be in [0, 1), got {args.val_split}")
    if args.task is not None and args.loss is not None:
        _check_loss_fits_task(args.loss, args.task)
    _check_training_options(args)
    categorical = categorical_encoding(args.categorical, args.onehot_max, args.embedding_dim)
    data = FileData(args.data, args.chunk_rows, _csv_format(args))
    # checked before the first pass, which can take long on a big file
    shard = shard_mode(args.shard, data.source, comm.size if comm else 1)
    checkpoint = _checkpoint_path(args)
    if args.resume and not checkpoint:
        raise UsageError("--resume needs --checkpoint-dir (where the checkpoint was written)")
    if rank == 0:
        _check_outputs(args)
    exclude = _names(args.exclude)
    features = data.feature_columns(args.target, _names(args.features), exclude)
    skipped = [c for c in getattr(data.source, "index_columns", ()) if c not in features and not args.features]
    if skipped:
        named = ", ".join(repr(c) if c else "the unnamed first column" for c in skipped)
        _say(args, f"note: {named} look(s) like a pandas index and is not used as a feature (name it in --features "
                   "to use it)")
    if getattr(data.source, "spills", lambda columns: False)(features + [args.target]):
        _say(args, f"note: {args.data!r} has row groups too wide to read in slices; each is copied to an unnamed "
                   "temporary file (TMPDIR, the row group's size) and read back from there")
    progress = _rows_progress("reading (first pass)", data.source.n_rows, args.quiet)
    try:
        data.scan(args.target, features, task=args.task, impute=args.impute, max_categories=args.max_categories,
                  val_split=args.val_split, val_max_rows=args.val_max_rows, seed=args.seed, progress=progress,
                  comm=comm, numeric=args.numeric, bins=args.numeric_bins,
                  categorical=categorical)
    finally:
        progress(None)
    prep, n_rows = data.prep, data.n_rows
    loss = args.loss or ("cross_entropy" if prep.task == "classify" else "mse")
    if args.label_smoothing is None:
        args.label_smoothing = label_smoothing(args.preset, loss)
    _check_loss_fits_task(loss, prep.task)
    _check_class_weight(args.class_weight, loss, prep.task)
    class_weight = _class_weight_for(_class_weight_option(args.class_weight), prep)
    options = _result_options(args, comm.size if comm else 1, shard)
    if args.resume and os.path.exists(checkpoint):
        trainer = load(checkpoint, comm=comm, n_threads=args.threads)
        _check_resume_options(checkpoint, trainer.metadata.get("cli_options", {}), options)
        done = len(trainer.history)
        # the run's total as its start had it (min_steps may have added epochs to --epochs), less those done
        trainer.epochs, trainer.min_steps = args.epochs, args.min_steps
        trainer.epochs, trainer.min_steps = max(0, trainer.epochs_for(n_rows, steps_done=0) - done), 0
        _say(args, f"resuming from {checkpoint} after epoch {done}; {trainer.epochs} epoch(s) to go")
    else:
        trainer = Trainer([prep.n_inputs, *_sizes(args.hidden), prep.outputs(loss)], activation=args.activation,
                          loss=loss, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                          dropout=args.dropout, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                          n_threads=args.threads, dtype=args.dtype, comm=comm, sync_every=args.sync_every,
                          impute=args.impute, max_categories=args.max_categories, numeric=args.numeric,
                          numeric_bins=args.numeric_bins, embeddings=prep.embeddings() or None,
                          categorical=args.categorical, onehot_max=args.onehot_max, embedding_dim=args.embedding_dim,
                          label_smoothing=args.label_smoothing,
                          lr_schedule=lr_schedule(args.lr_schedule, args.warmup_epochs), ensemble=args.ensemble,
                          ensemble_adapters=args.ensemble_adapters, min_steps=args.min_steps)
        trainer.metadata["cli_options"] = options
    _say(args, f"{prep.task}: {n_rows} training rows, {len(prep.features)} columns -> {prep.n_inputs} inputs, "
               f"MLP {trainer.layer_sizes}, loss {trainer.loss}")
    _say(args, "features: " + _column_list(prep))
    if trainer.epochs_for(n_rows) > trainer.epochs:
        _say(args, f"{trainer.epochs} epochs would take {trainer.epochs * -(-n_rows // trainer.batch_size):,} "
                   f"optimizer steps here: training {trainer.epochs_for(n_rows)} epochs, toward at least "
                   f"{trainer.min_steps:,} (--min-steps; --epochs N trains exactly N)")
    if prep.task == "regress":
        _say(args, f"target {prep.target!r} is standardized for training (mean {prep.state['target_mean']:.6g}, "
                   f"scale {prep.state['target_scale']:.6g}); predictions are on its own scale")
    stopper = EarlyStopping(args.monitor, patience=args.patience) if args.early_stopping else None
    if stopper is not None and args.resume and trainer.history:
        _resumed_stopper(stopper, trainer, checkpoint)
        if stopper.stopped:  # the interrupted run had stopped early: only its best weights are left to restore
            trainer.epochs = 0
    callbacks = [stopper] if stopper is not None else []
    checkpoints = _Checkpoints(checkpoint, args.checkpoint_every, stopper) if checkpoint and rank == 0 else None
    if checkpoints:
        callbacks.append(checkpoints)
    if args.log_file and rank == 0:
        callbacks.append(_JsonLog(args.log_file))
    stats = StreamStats()
    if not args.no_spill and trainer.epochs_for(n_rows):
        size = spill_bytes(n_rows, prep.n_columns, _targets(trainer).width, class_weight is not None,
                           trainer.params.dtype)
        _say(args, f"shuffling across the whole file: the training rows are encoded once into an unnamed temporary "
                   f"file ({size / 2 ** 20:,.1f} MiB in {tempfile.gettempdir()}; --no-spill to skip)")
    try:
        with _sigint_as_keyboard_interrupt():
            trainer.fit_file(data, resume=args.resume, buffer_rows=args.buffer_rows, callbacks=callbacks,
                             verbose=0 if args.quiet else 1, stats=stats, shard=args.shard, class_weight=class_weight,
                             spill=not args.no_spill)
    except KeyboardInterrupt:
        target = checkpoint or args.out + ".interrupted.fbp"
        target = _save_model(trainer, target)
        print(f"fastbp: interrupted after epoch {len(trainer.history)}; saved {target}. Resume with the same "
              f"command plus --resume{'' if checkpoint else ' --checkpoint-dir DIR (move the file to DIR/checkpoint.fbp)'}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if rank != 0:
        return EXIT_OK
    saved = _save_model(trainer, args.out)
    if checkpoints:
        checkpoints.save(trainer, len(trainer.history))
    last = trainer.history[-1] if trainer.history else {}
    shown = ("loss", "val_loss", "val_accuracy", "val_r2") + ((args.monitor,) if args.early_stopping else ())
    best = stopper.best_epoch if stopper is not None else None  # the epoch whose weights were kept
    if best is not None and best != last.get("epoch"):
        last = trainer.history[best - 1]
    kept = f"best epoch {best} of {len(trainer.history)}: " if best is not None else ""
    print("done: " + kept + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k in shown)  # also --quiet
          + f"; model saved to {saved}", flush=True)
    if args.plot:
        _plot(trainer.history, args.plot)
    if checkpoints and checkpoints.failed:
        print(f"fastbp: error: the model was saved to {saved}, but the checkpoint {checkpoint!r} could not be "
              f"written ({checkpoints.failed}); --resume would start from an older one or none", file=sys.stderr)
    return EXIT_OK if saved == args.out and not (checkpoints and checkpoints.failed) else EXIT_BAD_INPUT


def _names(text):
    return [c for c in text.split(",") if c] if text else []


def _column_list(prep, limit=30):
    described = [f"{c} ({len(cats)} categories)" if cats else c
                 for c, cats in zip(prep.features, prep.state["categories"])]
    more = len(described) - limit
    return ", ".join(described[:limit]) + (f", ... ({more} more)" if more > 0 else "")


def _check_positive(args, *names):
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _check_outputs(args):
    """Every file training will write can be written, before any work (a failure after training loses it)."""
    _check_writable(args.out, "--out", [args.data])
    if args.log_file:
        _check_writable(args.log_file, "--log-file", [args.data, args.out], keep=True)
    if args.checkpoint_dir:
        try:
            os.makedirs(args.checkpoint_dir, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--checkpoint-dir {args.checkpoint_dir!r} cannot be created ({exc.strerror})") from None
        _check_writable(_checkpoint_path(args), "--checkpoint-dir", [args.data])
    if args.plot:
        _check_writable(args.plot, "--plot", [args.data, args.out])
        _matplotlib()


def _files_read(paths):
    """The files the paths stand for: a folder or glob of parts is each of its parts (device and inode
    are compared, so another spelling of the same file is found too)."""
    from .files.datasets import SourceError, dataset_parts, is_dataset
    for path in paths:
        if is_dataset(path):
            try:
                yield from dataset_parts(path)
            except SourceError:
                continue
        else:
            yield path


def _check_writable(path, option, reads, keep=False):
    """`path` can be created or replaced: its folder exists and takes a new file (tried, then removed), and it
    is none of the files the command reads (`reads`: data and model paths), which writing it would destroy."""
    from .files.modelfile import check_replaceable

    folder = os.path.dirname(os.path.abspath(path))
    try:  # a folder, device, FIFO or socket
        check_replaceable(path, option)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    for read in _files_read(reads):
        if os.path.isfile(path) and os.path.isfile(read) and os.path.samefile(path, read):
            raise UsageError(f"{option} {path!r} is the file this command reads ({read!r}); writing it would "
                             "destroy it: give another file name")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: the folder {folder!r} does not exist")
    try:
        if keep:
            open(path, "a").close()
        else:
            fd, probe = tempfile.mkstemp(prefix=".fastbp-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{option} {path!r} cannot be written ({exc.strerror})") from None


def _save_model(trainer, path):
    """Save to `path`; when that fails after training, save next to it (or in the working or temporary folder)
    and say where, so the trained model is never lost. Returns the path written."""
    try:
        trainer.save(path)
        return path
    except OSError as exc:
        reason = exc.strerror or str(exc)
    stem = os.path.splitext(os.path.basename(path))[0] or "model"
    for folder in (os.path.dirname(os.path.abspath(path)), os.getcwd(), tempfile.gettempdir()):
        fallback = os.path.join(folder, f"{stem}.recovered-{os.getpid()}.fbp")
        try:
            trainer.save(fallback)
        except OSError:
            continue
        print(f"fastbp: error: could not write {path!r} ({reason}); the trained model was saved to {fallback!r}",
              file=sys.stderr)
        return fallback
    raise UsageError(f"could not write {path!r} ({reason}), nor a copy in its folder, the working folder or "
                     f"{tempfile.gettempdir()!r}; the trained model is lost")


class _sigint_as_keyboard_interrupt:
    """Make sure Ctrl-C raises KeyboardInterrupt in the main thread (it is checked between compiled calls)."""

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


_MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")


def _launched_by_mpi():
    """True under mpiexec/srun with more than one rank (mpi4py is imported only then)."""
    return any(int(os.environ.get(v, "1") or 1) > 1 for v in _MPI_SIZE_VARIABLES[:3]) or (
        "SLURM_NTASKS" in os.environ and "PMI_RANK" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1)


def _rows_progress(what, total, quiet):
    """A bar of rows read, on a terminal only, erased when it closes (a pass that fails leaves nothing)."""
    if quiet or not on_terminal(sys.stderr):
        return lambda n: None
    from tqdm.auto import tqdm
    bar = tqdm(total=total, unit="rows", desc=what, file=sys.stderr, unit_scale=True, leave=False)

    def update(n):
        if n is None:
            bar.close()
        else:
            bar.update(n)
    return update


def _matplotlib():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def _plot(history, path):
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], label="loss")
    if history and "val_loss" in history[0]:
        ax.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------------------- predict / evaluate / info
def _load_with_prep(args):
    from .files.preprocess import Preprocessor
    from .files.sources import open_source
    from .trainer import load

    trainer = load(args.model)
    if trainer.preprocessing is None:
        raise UsageError(f"{args.model!r} was not trained from a file (no column information); "
                         "use the Python API to predict with it")
    prep = Preprocessor(trainer.preprocessing, on_unknown=args.on_unknown)
    return trainer, prep, open_source(args.data, args.chunk_rows, _csv_format(args))


def _report_unknown(prep):
    """Rows whose category the model never saw (encoded as all zeros, or its table's unknown row): how many."""
    for column, rows in prep.unknown.items():
        print(f"fastbp: warning: column {column!r}: {rows} row(s) hold categories not seen in training (encoded "
              f"as {prep.unseen_encoding(column)}; --on-unknown error stops at the first)", file=sys.stderr)


def _targets(trainer):
    """What the model learned from the target column (a one-hot model: mse, mae, huber, or binary_cross_entropy
    on 3+ classes)."""
    from .files.streaming import FileTargets
    return FileTargets(trainer.loss, trainer.layer_sizes[-1])


def predict(args):
    trainer, prep, source = _load_with_prep(args)
    if args.proba and prep.task != "classify":
        raise UsageError("--proba needs a classification model")
    if args.proba and not trainer.is_classifier:
        raise UsageError(f"--proba: this model learned the classes with --loss {trainer.loss}, which gives scores, "
                         "not probabilities; train with cross_entropy (or binary_cross_entropy) for probabilities")
    names = [f"proba_{c}" for c in prep.classes()] if args.proba else ["prediction"]
    n = 0
    with _TableWriter(args.out, names, [args.data, args.model]) as writer:
        for start, chunk in source.chunks(prep.features, prep.kinds(with_target=False)):
            X, _ = prep.transform(chunk, start, with_target=False, dtype=trainer.params.dtype)
            if args.proba:
                values = trainer.predict_proba(X, encoded=True)
                if values.shape[1] == 1:  # binary_cross_entropy: one output, the second class's probability
                    values = np.column_stack([1 - values[:, 0], values[:, 0]])
            else:  # labels in the target's own type, values on its own scale
                values = trainer.predict(X, encoded=True)
            writer.write(values)
            n += len(X)
        if n == 0:
            writer.write(_no_predictions(trainer, prep, len(names), args.proba))
    _report_unknown(prep)
    # the result line, also with --quiet; on standard error when the predictions go to standard output
    print(f"wrote {n} predictions to {'standard output' if writer.to_stdout else args.out}",
          file=sys.stderr if writer.to_stdout else sys.stdout, flush=True)
    return EXIT_OK


def _no_predictions(trainer, prep, width, proba):
    """0 rows of what predict writes, in the same types: an empty input gives a file with its header."""
    if proba:
        return np.empty((0, width), trainer.params.dtype)
    if prep.task == "classify":
        return prep.labels(np.empty(0, np.intp))
    return prep.target_values(np.empty(0))


class _TableWriter:
    """Predictions written chunk by chunk to .csv, .parquet or .npy, under a temporary name until complete."""

    def __init__(self, path, names, reads):
        self.to_stdout = path in (None, "-")  # CSV on standard output
        self.path, self.names, self.reads = path, names, reads
        self.ext = ".csv" if self.to_stdout else os.path.splitext(path)[1].lower()
        if self.ext not in (".csv", ".parquet", ".npy"):
            raise UsageError(f"--out must end in .csv, .parquet or .npy (or be - for CSV on standard output), "
                             f"got {path!r}")

    def __enter__(self):
        from .files.modelfile import atomic_file

        if self.to_stdout:
            self.file, self.fh = contextlib.nullcontext(), sys.stdout.buffer
        else:
            _check_writable(self.path, "--out", self.reads)
            self.file = atomic_file(self.path, "predictions file")
            self.fh = self.file.__enter__()
        self.writer, self.rows, self.dtype, self.width = None, 0, None, ()
        if self.ext == ".npy":  # the header needs the row count: rows wait in an unnamed file beside the output
            self.raw = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(self.path)))
        return self

    def write(self, values):
        """One chunk of predictions; every chunk has the same dtype (labels: the classes' own type and width).
        A first chunk of 0 rows still fixes the columns' types, so an empty input gives a file with a header."""
        if self.ext == ".npy":
            if self.dtype is None:
                self.dtype, self.width = values.dtype, values.shape[1:]
            self.raw.write(np.ascontiguousarray(values.astype(self.dtype)).tobytes())
            self.rows += len(values)
            return
        import pyarrow as pa
        cols = values.T if values.ndim == 2 else [values]
        table = pa.table(dict(zip(self.names, cols)))
        if self.writer is None:
            if self.ext == ".csv":
                import pyarrow.csv as pcsv
                self.writer = pcsv.CSVWriter(self.fh, table.schema)
            else:
                import pyarrow.parquet as pq
                self.writer = pq.ParquetWriter(self.fh, table.schema)
        self.writer.write_table(table)

    def __exit__(self, kind, exc, tb):
        try:
            if self.ext == ".npy":
                if kind is None:
                    self._assemble_npy()
                self.raw.close()
            elif self.writer is not None:
                self.writer.close()
        except BaseException:
            self.file.__exit__(*sys.exc_info())
            raise
        return self.file.__exit__(kind, exc, tb)

    def _assemble_npy(self):
        """Header now that the row count is known, then the raw rows copied in blocks."""
        np.lib.format.write_array_header_1_0(self.fh, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                       "fortran_order": False, "shape": (self.rows, *self.width)})
        self.raw.seek(0)
        shutil.copyfileobj(self.raw, self.fh, 1 << 24)


def evaluate(args):
    from .engine import metrics

    trainer, prep, source = _load_with_prep(args)
    if args.target is not None and args.target != prep.target:
        raise UsageError(f"--target {args.target!r}: {args.model!r} was trained to predict {prep.target!r} (evaluate "
                         "needs no --target: it reads the model's)")
    targets = _targets(trainer)
    one_hot = targets.one_hot
    available = ("loss", "accuracy") if one_hot else metrics.names(trainer.net.loss_code, trainer.layout.n_out)
    wanted = [m.strip() for m in args.metric.split(",")] if args.metric else list(available)
    unknown = [m for m in wanted if m not in available]
    if unknown or not wanted:
        raise UsageError(f"--metric {args.metric!r}: this model gives {', '.join(available)}")
    parts, n, correct = [], 0, 0
    for start, chunk in source.chunks(prep.features + [prep.target], prep.kinds()):
        X, y = prep.transform(chunk, start, dtype=trainer.params.dtype)
        # the target as the file holds it (the model encodes it); combined exactly over the file, not chunk means
        parts.append(trainer.metric_part(X, chunk[prep.target], encoded=True, roc_auc="roc_auc" in wanted))
        if one_hot:  # the largest output is the predicted class
            correct += int((trainer.decision_function(X, encoded=True).argmax(axis=1) == y).sum())
        n += len(X)
    if n == 0:
        raise UsageError(f"{args.data!r} has no rows")
    result = trainer.finish_metrics(parts)  # a regression's errors on the target's own scale
    if one_hot:  # accuracy of the predicted classes, not a fit to the one-hot columns
        result = {"loss": result["loss"], "accuracy": correct / n}
    result = {m: result[m] for m in wanted}
    result["rows"] = n
    _report_unknown(prep)
    print(json.dumps(result))
    return EXIT_OK


def info(args):
    from .files.modelfile import ModelFileError, read_model

    config, arrays = read_model(args.model)
    try:
        summary = _summary(config, arrays)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ModelFileError(f"{args.model!r} does not describe a valid fastbp model: missing or malformed "
                             f"{exc}") from None
    print(json.dumps(summary, indent=1))
    return EXIT_OK


def export(args):
    from .trainer import load

    _check_writable(args.out, "the output", [args.model])
    trainer = load(args.model)
    try:
        model = trainer.to_onnx(args.out)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    inputs = ", ".join(trainer.preprocessing["features"]) if trainer.preprocessing else \
        f"X ({trainer.layer_sizes[0]} columns)"
    outputs = ", ".join(output.name for output in model.graph.output)
    print(f"wrote {args.out}: inputs {inputs}; outputs {outputs}")
    return EXIT_OK


def _summary(config, arrays):
    init = config["init_args"]
    prep = config.get("preprocessing") or {}
    return {"fastbp_version": config.get("fastbp_version"), "layer_sizes": init["layer_sizes"],
            "ensemble": init.get("ensemble", 1), "ensemble_adapters": init.get("ensemble_adapters", "first_layer"),
            "activation": init["activation"], "loss": init["loss"], "optimizer": init["optimizer"],
            "dtype": init["dtype"], "parameters": int(arrays["params"].size), "epochs_trained": len(config["history"]),
            "last_epoch": config["history"][-1] if config["history"] else None,
            "target": prep.get("target"), "task": prep.get("task"), "features": prep.get("features"),
            "classes": prep.get("classes")}


# ---------------------------------------------------------------------------- plumbing
def _say(args, message):
    if not getattr(args, "quiet", False):
        print(message, flush=True)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help line (unless none, or the help says it); epilogs printed as written."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


_EXAMPLES = {
    "train": """examples:
  fastbp train data.parquet --target label
  fastbp train data.csv --target price --task regress --hidden 128,64 --epochs 30 --out price.fbp
  fastbp train data.parquet --target churn --impute median --dropout 0.2 --early-stopping --patience 5
  fastbp train data.parquet --target fraud --class-weight balanced        # rare classes weigh more
  fastbp train data.parquet --target label --checkpoint-dir ckpt --resume     # continue after a stop
  fastbp train data.parquet --target price --numeric ple                   # piecewise-linear numeric inputs
  mpiexec -n 4 python -m mpi4py -m fastbp train big.parquet --target label   # data-parallel over 4 ranks""",
    "predict": """examples:
  fastbp predict model.fbp new.csv --out preds.csv
  fastbp predict model.fbp new.parquet --out proba.parquet --proba""",
    "evaluate": """examples:
  fastbp evaluate model.fbp test.csv      # {"loss": ..., "accuracy": ..., "rows": ...}""",
    "info": """examples:
  fastbp info model.fbp""",
    "export": """examples:
  fastbp export model.fbp model.onnx      # run it with onnxruntime.InferenceSession("model.onnx")""",
    "demo": """examples:
  fastbp demo --rows 200000 --hidden 256,256""",
    "compile": """examples:
  fastbp compile                          # in a Dockerfile, after pip install
  fastbp compile --dtype float32""",
}


def _parser():
    from .core.activations import ACTIVATIONS
    from .core.layout import ADAPTERS
    from .core.losses import LOSSES
    from .core.optim import OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="fastbp", formatter_class=_HelpFormatter,
        description="Train and use MLPs on tabular files (.csv, .csv.gz, .parquet, .npy, .npz).",
        epilog="--debug (anywhere) shows the traceback of an internal error. "
               "`fastbp COMMAND --help` lists each command's options.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parser.commands = {}  # by name, for errors in their own usage

    def command(name, help, run):
        p = commands.add_parser(name, help=help, description=help, epilog=_EXAMPLES.get(name),
                                formatter_class=_HelpFormatter)
        p.set_defaults(run=run)
        parser.commands[name] = p
        return p

    p = command("train", "train a model from a .csv, .parquet, .npy or .npz file", train)
    p.add_argument("data", help="the training file (- : CSV from standard input)")
    p.add_argument("--target", required=True, help="target column name (column index for .npy/.npz)")
    p.add_argument("--features", help="comma-separated feature columns (default: all but the target and a pandas "
                                      "index)")
    p.add_argument("--exclude", help="comma-separated columns to leave out of the features")
    _csv_format_options(p)
    p.add_argument("--task", choices=["classify", "regress"], help="default: guessed from the target column")
    p.add_argument("--hidden", default=",".join(map(str, HIDDEN)),
                   help="hidden layer sizes, comma-separated; none for no hidden layer")
    p.add_argument("--activation", default=None, choices=list(ACTIVATIONS),
                   help=f"of every hidden layer ({_by_preset('activation')})")
    p.add_argument("--loss", choices=[name for name in LOSSES if name != "poisson"],
                   help="default: cross_entropy to classify (binary_cross_entropy: two classes, one output), mse "
                        "to regress (or mae, huber). mse, mae, huber, or binary_cross_entropy on 3+ classes, learn "
                        "classes one-hot, one output each (the largest is the prediction). poisson is Python-only: "
                        "the command line standardizes regression targets")
    p.add_argument("--preset", default="recipe", choices=list(PRESETS),
                   help="defaults of the training options left out: recipe (the default: an ensemble of 4 GELU "
                        "members, AdamW at lr 3e-3, 30 epochs of a cosine lr after a warm-up on every row, at least "
                        "720 steps, label smoothing 0.1, --numeric auto; docs/cli.md), or plain (10 epochs of Adam "
                        "on every row: fastbp before presets)")
    p.add_argument("--optimizer", default=None, choices=list(OPTIMIZERS),
                   help=f"as torch.optim defines it ({_by_preset('optimizer')})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate ({_by_preset('lr')}; None: torch's for the optimizer)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="L2 decay as torch.optim applies it (default: torch's, 0.01 for adamw, else 0)")
    p.add_argument("--lr-schedule", default=None, choices=["constant", "cosine", "one_cycle"],
                   help="the learning rate over the epochs: constant; cosine annealing to 0 over --epochs (after "
                        "--warmup-epochs of linear warm-up); one_cycle (torch's OneCycleLR, per epoch; "
                        f"{_by_preset('lr_schedule')})")
    p.add_argument("--warmup-epochs", type=int, default=None, help="linear warm-up epochs of --lr-schedule cosine "
                   f"({_by_preset('warmup_epochs')})")
    p.add_argument("--label-smoothing", type=float, default=None,
                   help="cross_entropy's label smoothing, in [0, 1) (torch's: (1 - eps) on the class, eps spread; "
                        f"{_by_preset('label_smoothing')}, when classifying with cross_entropy)")
    p.add_argument("--ensemble", type=int, default=None, metavar="K",
                   help="train K members together (TabM-mini: shared hidden layers, an input adapter and an output "
                        f"layer each) and predict their mean; costs up to K times an epoch ({_by_preset('ensemble')})")
    p.add_argument("--ensemble-adapters", default=None, choices=list(ADAPTERS),
                   help="first_layer (TabM-mini: one input adapter per member) or every_layer (TabM: each shared "
                        f"layer scales its inputs and outputs per member and has the members' own biases; "
                        f"{_by_preset('ensemble_adapters')})")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout rate of every hidden layer, in [0, 1)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per gradient step")
    p.add_argument("--epochs", type=int, default=None,
                   help="passes over the training rows (at most, with early stopping; the total, with --resume; "
                        f"{_by_preset('epochs')})")
    p.add_argument("--min-steps", type=int, default=None,
                   help="train more epochs, up to 4x --epochs, where --epochs would take fewer optimizer steps "
                        f"than this (small tables; {_by_preset('min_steps')}; 0 with --epochs given)")
    p.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None,
                   help="stop when the --monitor metric has not improved for --patience epochs and keep the best "
                        f"epoch's weights (needs --val-split > 0; {_by_preset('early_stopping')})")
    p.add_argument("--patience", type=int, default=None,
                   help=f"epochs without improvement before --early-stopping stops ({_by_preset('patience')})")
    p.add_argument("--monitor", default="val_loss",
                   help="what --early-stopping watches: val_loss, val_accuracy, val_log_loss, val_f1, val_roc_auc "
                        "(classification), val_r2, val_rmse, val_mae (regression); larger is better for accuracy, "
                        "f1, roc_auc and r2")
    p.add_argument("--class-weight", metavar="balanced|LABEL=W,...",
                   help="weigh each class's rows in the loss: 'balanced' (n_rows / (n_classes * rows of the class), "
                        "as scikit-learn) or weights per label, e.g. yes=3,no=1 (others 1)")
    p.add_argument("--val-split", type=float, default=None,
                   help="fraction of rows held out for validation, in [0, 1) (default: 0.1 with early stopping, "
                        "else 0)")
    p.add_argument("--val-max-rows", type=int, default=200_000, help="validation rows kept in memory at most")
    p.add_argument("--seed", type=int, default=0, help="initial weights, shuffling, validation rows")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: every core allowed)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="of parameters and compute")
    p.add_argument("--impute", choices=["mean", "median"], help="fill missing values (default: they are errors)")
    p.add_argument("--max-categories", type=int, default=1000, help="categories kept per text column")
    p.add_argument("--numeric", choices=["standard", "quantile", "ple", "auto"], default=None,
                   help="numeric columns as inputs: standardized; quantile (their rank in the training sample, "
                        "unit variance); ple (piecewise-linear over --numeric-bins quantile bins, an input per bin); "
                        "auto (ple where the training rows number 100 per input the bins make, else standardized; "
                        f"{_by_preset('numeric')})")
    p.add_argument("--numeric-bins", type=int, default=16, help="bins per numeric column for --numeric ple")
    p.add_argument("--categorical", choices=["auto", "onehot", "embed"], default="auto",
                   help="text columns as inputs: one per category (onehot), a learned embedding (embed), or one-hot "
                        "up to --onehot-max categories and an embedding above (auto)")
    p.add_argument("--onehot-max", type=int, default=128, help="most categories one-hot encoded by --categorical auto")
    p.add_argument("--embedding-dim", type=int, default=None,
                   help="width of every embedding (default: by cardinality, 1.6 n^0.56 capped at 32)")
    p.add_argument("--chunk-rows", type=int, default=65536, help="rows read at a time (.npy/.npz; CSV approx.)")
    p.add_argument("--buffer-rows", type=int, default=None,
                   help="rows shuffled together in memory (default: 262144, fewer for wide data: 32 MB at most)")
    p.add_argument("--no-spill", action="store_true",
                   help="do not write the encoded training rows to a temporary file (TMPDIR) to draw each epoch's "
                        "rows from the whole file: no disk, but rows are shuffled within --buffer-rows only, so a "
                        "file sorted by its target (or by anything that predicts it) trains badly")
    p.add_argument("--shard", choices=["auto", "rows", "chunks"], default="auto",
                   help="under mpiexec: 'rows' = every rank reads every chunk, result equal to one process; "
                        "'chunks' = each rank reads only its own chunks (not bit-equal); auto: chunks for Parquet")
    p.add_argument("--sync-every", type=int, default=1,
                   help="under mpiexec: average parameters every K batches (local SGD, approximate) "
                        "instead of averaging gradients every batch")
    p.add_argument("--out", default="model.fbp", help="where to save the trained model")
    p.add_argument("--checkpoint-dir", help="write DIR/checkpoint.fbp during training")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir/checkpoint.fbp")
    p.add_argument("--log-file", help="append one JSON line of metrics per epoch")
    p.add_argument("--plot", help="draw loss / val loss curves to this image (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")

    p = command("predict", "predict with a model trained by `fastbp train`", predict)
    p.add_argument("model", help="a .fbp model file")
    p.add_argument("data", help="the rows to predict (the training columns, by name; the target is not needed; "
                                "- : CSV from standard input)")
    p.add_argument("--out", help="preds.csv, preds.parquet or preds.npy; - or none: CSV on standard output")
    p.add_argument("--proba", action="store_true", help="class probabilities instead of labels")
    _reading_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")

    p = command("evaluate", "a model's metrics on a labelled file (JSON): loss, accuracy, log_loss, f1 and roc_auc "
                            "for classes; loss, r2, rmse and mae (on the target's own scale) for values", evaluate)
    p.add_argument("model", help="a .fbp model file")
    p.add_argument("data", help="a file with the training columns and the target (- : CSV from standard input)")
    p.add_argument("--metric", help="the metrics to give, comma-separated (default: all of the model's)")
    p.add_argument("--target", help="not needed (the model knows its target); when given, checked against it")
    _reading_options(p)

    p = command("info", "describe a model file (JSON)", info)
    p.add_argument("model", help="a .fbp model file")

    p = command("export", "write a model file as ONNX (needs: pip install 'fastbp[onnx]')", export)
    p.add_argument("model", help="a .fbp model file")
    p.add_argument("out", help="the .onnx file to write")

    p = command("demo", "train on a built-in synthetic dataset and report", demo)
    p.add_argument("--rows", type=int, default=50_000, help="rows of synthetic data")
    p.add_argument("--hidden", default="128,128", help="hidden layer sizes, comma-separated; none for no hidden layer")
    p.add_argument("--epochs", type=int, default=10, help="passes over the data")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: every core allowed)")
    p.add_argument("--seed", type=int, default=0, help="data and initial weights")
    p.add_argument("--out", default=None, help="save the trained model to this .fbp file")

    p = command("compile", "compile the kernels for float32 and float64 into fastbp's kernel cache, so later "
                           "processes start fast (run it once when building an image)", compile_command)
    p.add_argument("--dtype", choices=["float32", "float64"], action="append",
                   help="only this dtype (repeatable; default: both)")

    # `fastbp bench ...` is dispatched in main() straight to fastbp.bench; listed here for --help
    commands.add_parser("bench", help="fastbp vs PyTorch, JAX and scikit-learn (options: fastbp bench --help)")
    return parser


def compile_command(args):
    from .precompile import DTYPES, compile_kernels

    compile_kernels(args.dtype or DTYPES, progress=lambda line: print(f"fastbp compile: {line}"))
    return 0


def _csv_format_options(p):
    p.add_argument("--encoding", help="text encoding of a CSV file, e.g. latin-1 (default: UTF-8)")
    p.add_argument("--sep", help="column separator of a CSV file, e.g. ';' or '|' (default: a comma; a tab in .tsv)")
    p.add_argument("--decimal", choices=[".", ","], default=".", help="decimal mark of a CSV file's numbers")


def _csv_format(args):
    from .files.sources import CsvFormat
    return CsvFormat(args.encoding, args.sep, args.decimal)


def _reading_options(p):
    p.add_argument("--chunk-rows", type=int, default=65536, help="rows read at a time (.npy/.npz; CSV approx.)")
    _csv_format_options(p)
    p.add_argument("--on-unknown", choices=["ignore", "error"], default="ignore",
                   help="a category not seen in training: encode it as all zeros (or its embedding's unknown row) "
                        "and count it (ignore), or stop")


def _arrow_memory_pool():
    """Read files through pyarrow's jemalloc pool, unless the user chose one (ARROW_DEFAULT_MEMORY_POOL):
    it hands freed pages back sooner than the default mimalloc (peak RSS 383 vs 401 MiB streaming a
    1.4 GB Parquet file). Builds without jemalloc keep their default."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    try:
        import pyarrow as pa
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (ImportError, NotImplementedError):
        pass


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line of the command's own voice, without the source line they came from; above a
    progress bar (tqdm.write), not inside its line."""
    from tqdm.auto import tqdm

    from .core.compile import CompileNotice
    kind = "note" if issubclass(category, CompileNotice) else "warning"
    tqdm.write(f"fastbp: {kind}: {message}", file=file or sys.stderr)


# what other tools (PyTorch scripts, Keras, scikit-learn) call some options
_OTHER_NAMES = {"--learning-rate": "--lr", "--learningrate": "--lr", "--batch": "--batch-size", "--epoch": "--epochs",
                "--n-epochs": "--epochs", "--max-iter": "--epochs", "--layers": "--hidden",
                "--hidden-layers": "--hidden", "--hidden-layer-sizes": "--hidden", "--label": "--target",
                "--y": "--target", "--output": "--out", "--model": "--out", "--n-threads": "--threads",
                "--n-jobs": "--threads", "--jobs": "--threads", "--silent": "--quiet",
                "--validation-split": "--val-split", "--random-state": "--seed", "--probabilities": "--proba",
                "--predict-proba": "--proba"}


@contextlib.contextmanager
def _stdin_as_file(args):
    """Data "-": standard input copied once into an unnamed-after-use CSV in TMPDIR, which every pass then reads."""
    if getattr(args, "data", None) != "-":
        yield
        return
    with tempfile.NamedTemporaryFile(prefix="fastbp-stdin-", suffix=".csv") as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
        spool.flush()
        args.data = spool.name
        try:
            yield
        except InputError as exc:  # the message names the copy; the user gave standard input
            exc.args = tuple(a.replace(repr(spool.name), "standard input").replace(spool.name, "standard input")
                             if isinstance(a, str) else a for a in exc.args)
            raise


def _parse(argv):
    """The parsed command line; an unknown option is reported with the command's usage and the closest option."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = parser.commands[args.command]
        options = re.findall(r"--[a-z][a-z0-9-]*", command.format_help())
        given = extra[0].split("=")[0].replace("_", "-")
        close = [_OTHER_NAMES[given]] if _OTHER_NAMES.get(given) in options else \
            difflib.get_close_matches(given, options, n=1, cutoff=0.6)
        command.error(f"unrecognized arguments: {' '.join(extra)}" + (f" (did you mean {close[0]}?)" if close else ""))
    return args


def main(argv=None):
    from .files.datasets import data_extension

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options belong to compare_peers, not to this parser
        from .bench import main as bench_main
        return bench_main(argv[1:])
    debug = "--debug" in argv or os.environ.get("FASTBP_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = _parse(argv)  # exits with 2 on bad usage
    warnings.showwarning = _show_warning
    from .engine.engine import TrainingDiverged
    if args.command in ("train", "predict", "evaluate") and (data_extension(args.data) in ARROW_FORMATS or
                                                             not os.path.isfile(args.data)):  # a dataset folder
        _arrow_memory_pool()
    try:
        with _stdin_as_file(args):
            return args.run(args)
    except (InputError, TrainingDiverged, FileNotFoundError, PermissionError, IsADirectoryError,
            NotADirectoryError) as exc:
        print(f"fastbp: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("fastbp: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # whoever read our output stopped (`fastbp info m.fbp | head`): end as shell tools do,
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # without a second error at exit's flush
        return EXIT_BROKEN_PIPE
    except MemoryError:
        print("fastbp: out of memory; try smaller --buffer-rows / --chunk-rows or a smaller network",
              file=sys.stderr)
        return EXIT_UNEXPECTED
    except Exception as exc:  # anything else is a bug in fastbp: say so, never "bad input"
        if debug:
            traceback.print_exc()
        print(f"fastbp: internal error (a bug in fastbp, please report it): {type(exc).__name__}: {exc}"
              + ("" if debug else "; rerun with --debug (or FASTBP_DEBUG=1) for the traceback"), file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
