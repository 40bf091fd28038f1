"""fastbp: multilayer perceptrons on tabular data, trained by backpropagation in Numba-compiled code."""
__version__ = "0.1.0"

from .modelfile import ModelFileError
from .trainer import Trainer, TrainingDiverged, load

__all__ = ["Trainer", "TrainingDiverged", "ModelFileError", "load", "__version__"]
