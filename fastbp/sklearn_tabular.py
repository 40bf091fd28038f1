"""scikit-learn estimators for fastbp's tabular recipe: TabularMLPClassifier and TabularMLPRegressor.

Where fastbp.sklearn.MLPClassifier reproduces scikit-learn's MLP exactly, these give scikit-learn's interface
(fit / predict / predict_proba / score, get_params / set_params, clone, pipelines, grid searches, pickling) to
what `fastbp train` fits by default: `Trainer.from_preset`, with the table read through a learned schema (text
columns as categories, numeric encodings, a standardized regression target) whatever form X has. Arrays and
frames without string column names are read as columns by position.

Settings left at None take the preset's (fastbp.presets); the others are passed to the Trainer under the
Trainer's names, except n_members (the ensemble's size), hidden_layer_sizes and random_state (scikit-learn's
names for the Trainer's `ensemble`, `hidden` and `seed`).
"""
import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .inputs import table_columns
from .trainer import Trainer

# estimator parameter -> Trainer argument, for the parameters whose None means "the preset's"
_PRESET_SETTINGS = {"hidden_layer_sizes": "hidden", "n_members": "ensemble", "ensemble_adapters": "ensemble_adapters",
                    "epochs": "epochs",
                    "min_steps": "min_steps", "lr": "lr", "weight_decay": "weight_decay",
                    "label_smoothing": "label_smoothing", "numeric": "numeric"}


def _as_columns(X):
    """A 2-D array or a pandas frame as a dict of columns x0, x1, ... (each column keeps its own dtype), so that
    the first fit learns a schema from it as from a named table."""
    if hasattr(X, "iloc"):
        return {f"x{j}": X.iloc[:, j].to_numpy() for j in range(X.shape[1])}
    return {f"x{j}": X[:, j] for j in range(X.shape[1])}


class _TabularMLP(BaseEstimator):
    """What both estimators share: the Trainer built from the preset and the estimator's parameters."""

    _loss = None  # the classifier's; the regressor has a `loss` parameter

    def _trainer(self):
        given = {arg: getattr(self, param, None) for param, arg in _PRESET_SETTINGS.items()}
        given = {arg: value for arg, value in given.items() if value is not None}
        seed = self.random_state
        if not isinstance(seed, numbers.Integral):  # None or a RandomState: drawn, as scikit-learn's estimators do
            seed = int(check_random_state(seed).randint(np.iinfo(np.int32).max))
        loss = self._loss or self.loss
        return Trainer.from_preset(self.preset, loss=loss, batch_size=self.batch_size, dropout=self.dropout,
                                   impute=self.impute, seed=int(seed), n_threads=self.n_threads, dtype=self.dtype,
                                   verbose=self.verbose, **given)

    def _fit(self, X, y, sample_weight, class_weight=None):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        X = self._inputs(X, reset=True)
        y = column_or_1d(y, warn=True)
        self._check_targets(y)
        trainer = self._trainer()
        trainer.fit(X, y, sample_weight=sample_weight, class_weight=class_weight)
        self.trainer_ = trainer
        self.loss_curve_ = [epoch["loss"] for epoch in trainer.history]
        return self

    def _check_targets(self, y):
        """The classifier's labels are checked here; a regression target by the Trainer."""

    def _inputs(self, X, reset=False):
        """X for the Trainer, checked as scikit-learn checks it (fit learns the features: reset). A table with
        string column names is read by name (in predict, where fit had names too); a pandas frame with positional
        names becomes columns x0, x1, ... keeping each column's dtype; anything else goes through scikit-learn's
        checks (the number of features, their names, NaN where impute is None) and is read by position."""
        if not reset:
            check_is_fitted(self, "trainer_")
        names = table_columns(X)
        if names is not None and (reset or hasattr(self, "feature_names_in_")):
            if reset:
                self.n_features_in_ = len(names)
                self.feature_names_in_ = np.asarray(names, dtype=object)
            return X
        if reset and hasattr(X, "iloc"):
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):  # from an earlier fit on a named table
                del self.feature_names_in_
            return _as_columns(X)
        X = validate_data(self, X, reset=reset, dtype=None, ensure_min_features=1, accept_sparse=True,
                          ensure_all_finite="allow-nan" if self.impute is not None else True)
        if hasattr(X, "toarray"):  # the kernels take dense rows (as fastbp.sklearn's MLPs do)
            X = X.toarray()
        return _as_columns(X) if reset else X

    def predict(self, X):
        """Class labels (the classifier, in y's type) or values (the regressor, on y's scale)."""
        X = self._inputs(X)
        return self.trainer_.predict(X)

    def to_onnx(self, path=None, input_dtype=None):
        """The fitted model and its schema as ONNX (fastbp.Trainer.to_onnx): one (n, 1) input per column, named as
        the table's (x0, x1, ... for an array), numbers as double and text as string."""
        check_is_fitted(self, "trainer_")
        return self.trainer_.to_onnx(path, input_dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        tags.input_tags.allow_nan = self.impute is not None
        return tags


class TabularMLPClassifier(ClassifierMixin, _TabularMLP):
    """fastbp's tabular recipe as a scikit-learn classifier (cross-entropy; binary and multi-class labels of any
    type). Parameters at None take the preset's: hidden_layer_sizes (256, 256), n_members 4, ensemble_adapters
    "first_layer" (TabM-mini; "every_layer": TabM's adapters on every shared layer), epochs 30 (or more on
    small tables: min_steps 720), lr 3e-3 (AdamW; weight_decay torch's 0.01), label_smoothing 0.1, numeric "auto"
    (docs/api.md, "Presets"). impute "mean" or "median" fills missing numbers (None refuses them); class_weight as
    Trainer.fit's ({label: weight} or "balanced"). After fit: trainer_ (the fastbp.Trainer: save, summary,
    to_onnx), classes_, n_features_in_, feature_names_in_ (named tables), loss_curve_ (training loss per epoch).
    """

    _loss = "cross_entropy"

    def __init__(self, preset="recipe", *, hidden_layer_sizes=None, n_members=None, ensemble_adapters=None,
                 epochs=None, min_steps=None, lr=None, weight_decay=None, label_smoothing=None, numeric=None,
                 batch_size=256, dropout=0.0, impute=None, class_weight=None, random_state=None, n_threads=None,
                 dtype="float32", verbose=0):
        self.preset = preset
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_members = n_members
        self.ensemble_adapters = ensemble_adapters
        self.epochs = epochs
        self.min_steps = min_steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.numeric = numeric
        self.batch_size = batch_size
        self.dropout = dropout
        self.impute = impute
        self.class_weight = class_weight
        self.random_state = random_state
        self.n_threads = n_threads
        self.dtype = dtype
        self.verbose = verbose

    def fit(self, X, y, sample_weight=None):
        self._fit(X, y, sample_weight, self.class_weight)
        self.classes_ = np.asarray(self.trainer_.classes_)
        return self

    def predict_proba(self, X):
        """Class probabilities, one column per class in the order of classes_: the mean of the members'."""
        X = self._inputs(X)
        return self.trainer_.predict_proba(X)

    def _check_targets(self, y):
        check_classification_targets(y)
        if len(np.unique(y)) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; the data has one class: "
                             f"{y[0]!r}")


class TabularMLPRegressor(RegressorMixin, _TabularMLP):
    """fastbp's tabular recipe as a scikit-learn regressor (one target, standardized for training and predicted on
    its own scale). loss: "mse", "huber", "mae" or "poisson". The other parameters and attributes as
    TabularMLPClassifier's (label_smoothing does not apply: the preset gives a regression none)."""

    def __init__(self, preset="recipe", *, loss="mse", hidden_layer_sizes=None, n_members=None,
                 ensemble_adapters=None, epochs=None, min_steps=None, lr=None, weight_decay=None, numeric=None,
                 batch_size=256, dropout=0.0, impute=None, random_state=None, n_threads=None, dtype="float32",
                 verbose=0):
        self.preset = preset
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_members = n_members
        self.ensemble_adapters = ensemble_adapters
        self.epochs = epochs
        self.min_steps = min_steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.numeric = numeric
        self.batch_size = batch_size
        self.dropout = dropout
        self.impute = impute
        self.random_state = random_state
        self.n_threads = n_threads
        self.dtype = dtype
        self.verbose = verbose

    def fit(self, X, y, sample_weight=None):
        return self._fit(X, y, sample_weight)
