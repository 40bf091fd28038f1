"""fastbp: multilayer perceptrons on tabular data, trained by backpropagation in Numba-compiled code."""
__version__ = "0.1.0"

from .callbacks import Callback, EarlyStopping, ModelCheckpoint, TerminateOnNaN
from .modelfile import ModelFileError
from .schedules import Schedule
from .trainer import Trainer, TrainingDiverged, load

__all__ = ["Trainer", "TrainingDiverged", "ModelFileError", "load", "Callback", "EarlyStopping",
           "ModelCheckpoint", "TerminateOnNaN", "Schedule", "__version__"]
