"""Learning-rate schedules, stepped once per epoch (between compiled epochs).

Each schedule maps the 0-based epoch index to that epoch's learning rate (and,
for one_cycle, optionally momentum / Adam's beta1), following the closed forms
of torch.optim.lr_scheduler. ReduceOnPlateau also watches the epoch's logs.
`make_schedule` accepts a name, a (name, options) pair, or a Schedule object.
"""
import math

from ..core.checks import check_int, check_number
from ..core.errors import InputError, InputTypeError


class Schedule:
    """Base class: override `lr(epoch, base_lr)`; `observe(logs)` sees each finished epoch."""

    total_epochs = None

    def start(self, total_epochs, first_epoch=0):
        """Called when fit starts, with the number of epochs fit will run this call and the index of its first."""
        if self.total_epochs is None:
            self.total_epochs = total_epochs

    def lr(self, epoch, base_lr):
        raise NotImplementedError

    def momentum(self, epoch):
        """Momentum (or beta1) for this epoch, or None to keep the optimizer's."""
        return None

    def observe(self, logs):
        pass

    def state(self):
        """JSON-serializable state, so a saved model resumes the schedule where it was."""
        return {k: v for k, v in vars(self).items() if isinstance(v, (int, float, str, bool, type(None)))}

    def load_state(self, state):
        vars(self).update(state)


class Constant(Schedule):
    def lr(self, epoch, base_lr):
        return base_lr


class Step(Schedule):
    """lr * gamma ** (epoch // step_size), as StepLR."""

    def __init__(self, step_size=10, gamma=0.1):
        self.step_size = check_int("step schedule's step_size", step_size, 1)
        self.gamma = check_number("step schedule's gamma", gamma, low=0.0, low_open=True)

    def lr(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)


class Exponential(Schedule):
    """lr * gamma ** epoch, as ExponentialLR."""

    def __init__(self, gamma=0.9):
        self.gamma = check_number("exponential schedule's gamma", gamma, low=0.0, low_open=True)

    def lr(self, epoch, base_lr):
        return base_lr * self.gamma ** epoch


class Cosine(Schedule):
    """Optional linear warm-up to lr over warmup_epochs, then CosineAnnealingLR down to eta_min. A fit that starts
    after the cycle ended (continued training) runs a new cycle over its own epochs, a warm restart (SGDR), where
    the ended cycle would hold lr at eta_min."""

    first_epoch = 0  # (class default: schedules saved before restarts have none)

    def __init__(self, T_max=None, eta_min=0.0, warmup_epochs=0):
        self.warmup_epochs = check_int("cosine schedule's warmup_epochs", warmup_epochs, 0)
        self.total_epochs = None if T_max is None else check_int("cosine schedule's T_max", T_max, 1) + \
            self.warmup_epochs
        self.eta_min = check_number("cosine schedule's eta_min", eta_min, low=0.0)
        self.first_epoch = 0  # where the current cycle began

    def start(self, total_epochs, first_epoch=0):
        if self.total_epochs is None or first_epoch >= self.first_epoch + self.total_epochs:
            self.total_epochs, self.first_epoch = total_epochs, first_epoch

    def lr(self, epoch, base_lr):
        epoch -= self.first_epoch
        if epoch < self.warmup_epochs:
            return base_lr * (epoch + 1) / self.warmup_epochs
        span = max(1, self.total_epochs - self.warmup_epochs)
        progress = min(epoch - self.warmup_epochs, span) / span
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * progress)) / 2


class InverseScaling(Schedule):
    """lr / t ** power_t with t the 1-based epoch (scikit-learn's 'invscaling', per epoch)."""

    def __init__(self, power_t=0.5):
        self.power_t = check_number("invscaling schedule's power_t", power_t, low=0.0)

    def lr(self, epoch, base_lr):
        return base_lr / (epoch + 1) ** self.power_t


class OneCycle(Schedule):
    """OneCycleLR (cosine, two phases) over the epochs; lr starts at max_lr/div_factor.

    max_lr defaults to the optimizer's lr. cycle_momentum=True also cycles momentum
    (SGD, RMSprop) or beta1 (Adam) between base_momentum and max_momentum, as torch does.
    """

    def __init__(self, max_lr=None, total_epochs=None, pct_start=0.3, div_factor=25.0, final_div_factor=1e4,
                 cycle_momentum=False, base_momentum=0.85, max_momentum=0.95):
        self.max_lr = None if max_lr is None else check_number("one_cycle's max_lr", max_lr, low=0.0, low_open=True)
        self.total_epochs = None if total_epochs is None else check_int("one_cycle's total_epochs", total_epochs, 1)
        self.pct_start = check_number("one_cycle's pct_start", pct_start, low=0.0, high=1.0)
        self.div_factor = check_number("one_cycle's div_factor", div_factor, low=0.0, low_open=True)
        self.final_div_factor = check_number("one_cycle's final_div_factor", final_div_factor, low=0.0, low_open=True)
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum = check_number("one_cycle's base_momentum", base_momentum, low=0.0, high=1.0)
        self.max_momentum = check_number("one_cycle's max_momentum", max_momentum, low=0.0, high=1.0)

    @staticmethod
    def _anneal(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def _phase(self, epoch):
        up_end = float(self.pct_start * self.total_epochs) - 1
        down_end = float(self.total_epochs - 1)
        step = min(epoch, self.total_epochs - 1)
        if step <= up_end:
            return True, step / up_end if up_end > 0 else 1.0
        return False, (step - up_end) / (down_end - up_end) if down_end > up_end else 1.0

    def lr(self, epoch, base_lr):
        top = self.max_lr if self.max_lr is not None else base_lr
        initial = top / self.div_factor
        rising, pct = self._phase(epoch)
        if rising:
            return self._anneal(initial, top, pct)
        return self._anneal(top, initial / self.final_div_factor, pct)

    def momentum(self, epoch):
        if not self.cycle_momentum:
            return None
        rising, pct = self._phase(epoch)
        if rising:
            return self._anneal(self.max_momentum, self.base_momentum, pct)
        return self._anneal(self.base_momentum, self.max_momentum, pct)


class ReduceOnPlateau(Schedule):
    """Multiply lr by `factor` when `monitor` has not improved for `patience` epochs (ReduceLROnPlateau).

    monitor defaults to 'val_loss' when validation data is given, else 'loss'.
    """

    def __init__(self, monitor=None, factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 mode="min", cooldown=0, min_lr=0.0):
        if not 0 < check_number("reduce_on_plateau's factor", factor) < 1:
            raise InputError(f"reduce_on_plateau needs 0 < factor < 1, got {factor!r}")
        check_number("reduce_on_plateau's min_lr", min_lr, low=0.0)
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise InputError("reduce_on_plateau: mode is 'min' or 'max', threshold_mode 'rel' or 'abs'")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.threshold, self.threshold_mode, self.mode = float(threshold), threshold_mode, mode
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self.scale = 1.0
        self.best = None
        self.bad_epochs = 0
        self.cooldown_left = 0

    def lr(self, epoch, base_lr):
        return max(base_lr * self.scale, self.min_lr)

    def _better(self, value):
        if self.best is None:
            return True
        sign = 1.0 if self.mode == "min" else -1.0
        margin = self.threshold * abs(self.best) if self.threshold_mode == "rel" else self.threshold
        return sign * (self.best - value) > margin

    def observe(self, logs):
        key = self.monitor or ("val_loss" if "val_loss" in logs else "loss")
        if key not in logs:
            raise InputError(f"reduce_on_plateau monitors {key!r}, which the epoch logs lack "
                             f"(they have {', '.join(sorted(logs))})")
        value = logs[key]
        if self._better(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            self.scale *= self.factor
            self.cooldown_left, self.bad_epochs = self.cooldown, 0


SCHEDULES = {"constant": Constant, "step": Step, "exponential": Exponential, "cosine": Cosine,
             "invscaling": InverseScaling, "one_cycle": OneCycle, "reduce_on_plateau": ReduceOnPlateau}


def make_schedule(spec):
    """A Schedule from a name, a (name, options) pair, a Schedule, or None (constant)."""
    if spec is None:
        return Constant()
    if isinstance(spec, Schedule):
        return spec
    name, options = (spec, {}) if isinstance(spec, str) else (None, None)
    if name is None:
        try:
            name, options = spec
            options = dict(options)
        except (TypeError, ValueError):
            raise InputTypeError(f"lr_schedule must be a name, a (name, options) pair or a Schedule, "
                                 f"got {spec!r}") from None
    if name not in SCHEDULES:
        raise InputError(f"unknown lr_schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}")
    try:
        return SCHEDULES[name](**options)
    except TypeError as exc:
        raise InputTypeError(f"bad options for lr_schedule {name!r}: {exc}") from None


def schedule_spec(schedule):
    """(name, state) for saving, or None for a custom Schedule subclass that cannot be rebuilt by name."""
    for name, cls in SCHEDULES.items():
        if type(schedule) is cls:
            return [name, schedule.state()]
    return None


def schedule_from_spec(spec):
    """The schedule schedule_spec saved; its state may only set the attributes that schedule has, to
    plain values (a model file is untrusted input)."""
    name, state = spec
    if name not in SCHEDULES or not isinstance(state, dict):
        raise InputError(f"unknown saved lr_schedule {name!r}")
    known = set(vars(SCHEDULES[name]())) | {"total_epochs"}
    for key, value in state.items():
        if key not in known or not isinstance(value, (int, float, str, bool, type(None))):
            raise InputError(f"saved lr_schedule {name!r} has an unknown or malformed entry {key!r}")
    schedule = SCHEDULES[name].__new__(SCHEDULES[name])
    schedule.load_state(state)
    return schedule


__all__ = ["Schedule", "make_schedule", *[c.__name__ for c in SCHEDULES.values()]]
