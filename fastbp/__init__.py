"""fastbp: multilayer perceptrons on tabular data, trained by backpropagation in Numba-compiled code."""
__version__ = "0.1.0"

from .core.compile import CompileNotice
from .core.errors import InputError, NotFittedError
from .engine.callbacks import Callback, EarlyStopping, ModelCheckpoint, TerminateOnNaN
from .engine.engine import TrainingDiverged
from .engine.schedules import Schedule
from .files.modelfile import ModelFileError
from .trainer import Trainer, load

__all__ = ["Trainer", "TrainingDiverged", "InputError", "NotFittedError", "CompileNotice", "ModelFileError", "load",
           "Callback", "EarlyStopping", "ModelCheckpoint", "TerminateOnNaN", "Schedule", "__version__"]
