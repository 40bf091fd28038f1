"""How a Trainer's settings behave after construction: every public one is either honoured exactly or refused.

- Fixed: what shapes the parameters or defines the model (layer_sizes, activation, loss, dtype, init, seed,
  huber_delta, comm). Set once by the constructor; assigning it later raises AttributeError saying to build a
  new Trainer.
- RunSetting: validated by the same check as the constructor's whenever it is set, read by the next fit
  (epochs, batch_size, shuffle, n_threads, dropout, ...).
- OptimizerSetting: the optimizer's arguments are kept as given; setting one rebuilds the (immutable)
  OptimizerSettings from them, validated, and the optimizer state the next fit needs is allocated there.
  Changing the optimizer itself starts its state afresh, as a new torch.optim optimizer over the same
  parameters does.
"""


class _Stored:
    """A setting kept in the instance's __dict__ under its own name (pickles and copies as plain state)."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


class Fixed(_Stored):
    """A setting fixed at construction."""

    def __set__(self, obj, value):
        if self.name in obj.__dict__:
            raise AttributeError(f"{self.name} is fixed when a Trainer is built (it defines the model and its "
                                 f"parameters); build a new Trainer with {self.name}={value!r} instead")
        obj.__dict__[self.name] = value


class RunSetting(_Stored):
    """A setting validated when set, by check(trainer, value), and read by the next fit."""

    def __init__(self, check):
        self.check = check

    def __set__(self, obj, value):
        obj.__dict__[self.name] = self.check(obj, value)


class OptimizerSetting:
    """One of the optimizer's arguments: reads give the value in use (defaults resolved: lr=None reads as the
    optimizer's default), writes go through trainer.configure_optimizer."""

    def __init__(self, field=None):
        self.field = field  # the OptimizerSettings attribute, when it differs from the argument's name

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(obj.optimizer_settings, self.field or self.name)

    def __set__(self, obj, value):
        obj.configure_optimizer(**{self.name: value})
