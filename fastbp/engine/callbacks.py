"""Callbacks: hooks called between compiled epochs, never per batch.

A callback may set `trainer.stop_training = True` in on_epoch_end to end fit
after that epoch. `logs` holds the epoch's history entry (loss, lr, val_loss,
val_* metrics (fastbp.engine.metrics) when validating, seconds, samples_per_s).
"""
import math
import os
import string
import sys

from ..core.errors import InputError
from .metrics import HIGHER_IS_BETTER


class Callback:
    def check_logs(self, log_keys):
        """Called when fit starts with the keys every epoch's logs will have: refuse now what would fail later."""

    def on_train_begin(self, trainer):
        pass

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_train_end(self, trainer):
        pass


def _monitor_mode(monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise InputError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if monitor.endswith(HIGHER_IS_BETTER) else "min"
    return mode


def _check_monitor(monitor, log_keys):
    if monitor not in log_keys:
        raise InputError(f"cannot monitor {monitor!r}: the epoch logs will have {', '.join(sorted(log_keys))} "
                         "(val_* entries need validation_data or validation_split)")


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than min_delta for `patience` epochs.

    With restore_best_weights (the default) the parameters and optimizer state of
    the best epoch are put back when training stops or ends.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=10, mode="auto", restore_best_weights=True):
        self.monitor, self.min_delta, self.patience = monitor, abs(float(min_delta)), int(patience)
        self.mode = _monitor_mode(monitor, mode)
        self.restore_best_weights = bool(restore_best_weights)
        self._earlier = None

    def continue_from(self, history, best=None, best_epoch=None):
        """Carry on an interrupted run (the CLI's --resume): the next fit starts from what this callback had
        decided over `history` (the epochs already trained); `best` is the state of epoch `best_epoch` as
        TrainingState.snapshot() gives it, kept when that is the best epoch of `history`."""
        self._earlier = None
        self.on_train_begin(None)
        for logs in history:
            self._observe(logs["epoch"], logs[self.monitor])
        snapshot = best if self.restore_best_weights and best_epoch == self.best_epoch else None
        self._earlier = (self.best, self.best_epoch, self.wait, snapshot)
        return self

    @property
    def stopped(self):
        """True when the epochs seen so far (with continue_from's) have run out of patience."""
        return self.wait >= self.patience

    def check_logs(self, log_keys):
        _check_monitor(self.monitor, log_keys)

    def on_train_begin(self, trainer):
        # the next fit carries on continue_from's counts; later fits start afresh, as without it
        self.best, self.best_epoch, self.wait, self._snapshot = self._earlier or (None, None, 0, None)
        self._earlier, self.stopped_epoch = None, None

    def _observe(self, epoch, value):
        """Count one epoch's value; True when it improved on the best."""
        improved = self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta)
        if improved:
            self.best, self.best_epoch, self.wait = value, epoch, 0
        else:
            self.wait += 1
        return improved

    def on_epoch_end(self, trainer, epoch, logs):
        if self._observe(epoch, logs[self.monitor]):
            if self.restore_best_weights:
                self._snapshot = trainer.state.snapshot()
        elif self.stopped:
            trainer.stop_training = True
            self.stopped_epoch = epoch

    def on_train_end(self, trainer):
        if self.restore_best_weights and self._snapshot is not None and self.best_epoch != trainer.history[-1]["epoch"]:
            trainer.state.restore(self._snapshot, weights_only=True)


class ModelCheckpoint(Callback):
    """Save the model (atomically) after epochs: every epoch, or only when `monitor` improves.

    filepath may contain {epoch} and any log key, e.g. "model-{epoch:03d}.fbp".
    """

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto"):
        self.filepath, self.monitor, self.save_best_only = os.fspath(filepath), monitor, bool(save_best_only)
        self.mode = _monitor_mode(monitor, mode)

    def check_logs(self, log_keys):
        if self.save_best_only:
            _check_monitor(self.monitor, log_keys)
        for _, field, _, _ in string.Formatter().parse(self.filepath):
            name = field.split(".")[0].split("[")[0] if field else field
            if name and name not in log_keys:
                raise InputError(f"ModelCheckpoint path {self.filepath!r} names {{{field}}}, which the epoch logs "
                                 f"will not have (they have {', '.join(log_keys)}; val_* entries need validation "
                                 "data)")

    def on_train_begin(self, trainer):
        self.best = None

    def on_epoch_end(self, trainer, epoch, logs):
        if self.save_best_only:
            value = logs[self.monitor]
            if self.best is not None and not (value < self.best if self.mode == "min" else value > self.best):
                return
            self.best = value
        trainer.save(self.filepath.format(**logs))


class TerminateOnNaN(Callback):
    """Stop as soon as the training or validation loss is not finite.

    (A non-finite training loss already stops fit inside the compiled epoch; this
    also catches a diverging validation loss.)
    """

    def on_epoch_end(self, trainer, epoch, logs):
        if any(not math.isfinite(logs[k]) for k in ("loss", "val_loss") if k in logs):
            trainer.stop_training = True


class ProgressBar(Callback):
    """A tqdm bar over epochs showing loss, val loss and samples/s (verbose=1)."""

    def on_train_begin(self, trainer):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.fit_epochs, unit="epoch", file=sys.stderr, leave=True)

    def on_epoch_end(self, trainer, epoch, logs):
        shown = {k: f"{logs[k]:.4g}" for k in ("loss", "val_loss", "val_accuracy", "val_r2") if k in logs}
        shown["samples/s"] = f"{logs['samples_per_s']:,.0f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def on_train_end(self, trainer):
        self.bar.close()


class EpochLogger(Callback):
    """One line per epoch on stdout (verbose=2), or on `file` (verbose=1 where standard error is no terminal, so a
    log gets a line per epoch, not a bar's every refresh)."""

    def __init__(self, file=None):
        self.file = file

    def on_epoch_end(self, trainer, epoch, logs):
        parts = [f"epoch {epoch}"] + [f"{k} {logs[k]:.4g}" for k in ("loss", "val_loss", "val_accuracy", "val_r2", "lr")
                                      if k in logs]
        parts.append(f"{logs['samples_per_s']:,.0f} samples/s")
        print(" - ".join(parts), file=self.file or sys.stdout, flush=True)


def on_terminal(stream):
    """True when `stream` is a terminal (progress bars there; plain lines in logs and pipes)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
