"""Evaluation metrics that can be computed in parts and combined: over the chunks of a file,
or over the slices that MPI ranks evaluate, with the same result as all rows at once.

A part holds the total weight and weighted means (loss, accuracy; per-output mean, squared-deviation
sum (M2), mean squared and absolute residuals for regression), per-class weighted true positives,
false positives and false negatives (F1), and the rows' ranking scores with their truth and weights
(ROC AUC is a statistic of the whole ranking, so its rows travel with the part: 8-16 bytes a row and
class). Means and M2 combine with the parallel update of Chan et al., which stays accurate when
targets have a large mean (unlike sum(y^2) - sum(y)^2 / n).

The metrics are scikit-learn's definitions, weighted as its `sample_weight` weighs them:
- classification: loss (the training loss), accuracy, log_loss (single-label: the cross-entropy of
  the predicted probabilities), f1 (the positive class, output 1, for two classes; the macro average
  over the classes present in truth or prediction for more; macro over outputs for multilabel),
  roc_auc (binary; macro one-vs-rest over the classes with positives and negatives for more; macro
  over outputs for multilabel; NaN when undefined, as for one class only);
- regression: loss, r2 (averaged over outputs, 0 for a constant target), rmse and mae (each averaged
  over outputs).
"""
import numpy as np

from ..core.errors import InputError
from ..core.losses import BINARY_CROSS_ENTROPY, CROSS_ENTROPY, POISSON, elements_per_row, row_losses

CLASSIFICATION_CODES = (CROSS_ENTROPY, BINARY_CROSS_ENTROPY)
CLASSIFICATION_METRICS = ("loss", "accuracy", "log_loss", "f1", "roc_auc")
MULTILABEL_METRICS = ("loss", "accuracy", "f1", "roc_auc")
REGRESSION_METRICS = ("loss", "r2", "rmse", "mae")
# larger is better for these; smaller for the others (EarlyStopping's mode="auto")
HIGHER_IS_BETTER = ("accuracy", "f1", "roc_auc", "r2")


def names(loss_code, n_out):
    """The metrics finish() gives for a model with this loss and this many outputs."""
    if loss_code == BINARY_CROSS_ENTROPY and n_out > 1:
        return MULTILABEL_METRICS
    return CLASSIFICATION_METRICS if loss_code in CLASSIFICATION_CODES else REGRESSION_METRICS


def metric_part(loss_code, huber_delta, logits, Y, weights=None, roc_auc=True):
    """The combinable summary of these rows (weights: None or one non-negative weight per row). roc_auc=False
    keeps no per-row scores (finish() then gives no roc_auc): a part's size no longer grows with its rows."""
    w = np.ones(len(Y)) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    if total <= 0:
        return None
    losses = row_losses(loss_code, huber_delta, logits, Y) / elements_per_row(loss_code, logits.shape[1])
    part = {"weight": total, "loss": float(w @ losses) / total}
    if loss_code in CLASSIFICATION_CODES:
        part.update(_classification(loss_code, logits, Y, w, total, roc_auc))
    else:
        Y64 = Y.astype(np.float64)
        predictions = np.exp(logits.astype(np.float64)) if loss_code == POISSON else logits  # rates, not log-rates
        mean = w @ Y64 / total
        part["mean"] = mean
        part["m2"] = w @ (Y64 - mean) ** 2
        part["residual"] = w @ (Y64 - predictions) ** 2 / total
        part["absolute"] = w @ np.abs(Y64 - predictions) / total
    return part


def _classification(loss_code, logits, Y, w, total, roc_auc=True):
    """Accuracy, the weighted confusion counts per class (or output), and the ranking rows for ROC AUC."""
    z = logits.astype(np.float64)
    if loss_code == CROSS_ENTROPY:
        truth_index, predicted = Y[:, 0].astype(np.int64), z.argmax(axis=1)
        k = z.shape[1]
        truth = np.zeros((len(z), k), bool)
        truth[np.arange(len(z)), truth_index] = True
        hit = np.zeros((len(z), k), bool)
        hit[np.arange(len(z)), predicted] = True
        z = z - z.max(axis=1, keepdims=True)
        log_proba = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        part = {"accuracy": float(w @ (predicted == truth_index)) / total,
                "log_loss": float(-(w @ log_proba[np.arange(len(z)), truth_index])) / total}
        # the ranking scores: z1 - z0 for two classes (as the probability of class 1), probabilities for more
        scores = (z[:, 1] - z[:, 0])[:, None] if k == 2 else np.exp(log_proba)
        ranked = truth[:, 1:] if k == 2 else truth
    else:
        truth, hit = Y >= 0.5, z >= 0
        part = {"accuracy": float(w @ (hit == truth).all(axis=1)) / total}
        if z.shape[1] == 1:  # -log sigmoid(z) for class 1, -log sigmoid(-z) for class 0
            signed = np.where(truth[:, 0], z[:, 0], -z[:, 0])
            part["log_loss"] = float(w @ np.logaddexp(0.0, -signed)) / total
        scores, ranked = z, truth
    part["tp"] = w @ (hit & truth)
    part["fp"] = w @ (hit & ~truth)
    part["fn"] = w @ (~hit & truth)
    part["binary"] = loss_code == CROSS_ENTROPY and z.shape[1] == 2 or \
        loss_code == BINARY_CROSS_ENTROPY and z.shape[1] == 1
    if roc_auc:
        part["ranking"] = (scores, ranked, w)
    return part


def combine(parts):
    """One part from several (None entries, for rows of zero weight, are skipped)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    out = dict(parts[0])
    for p in parts[1:]:
        a, b = out["weight"], p["weight"]
        n = a + b
        merged = dict(out, weight=n)
        for key in ("loss", "accuracy", "log_loss", "residual", "absolute"):
            if key in out:
                merged[key] = (a * out[key] + b * p[key]) / n
        for key in ("tp", "fp", "fn"):
            if key in out:
                merged[key] = out[key] + p[key]
        if "mean" in out:
            delta = p["mean"] - out["mean"]
            merged["mean"] = out["mean"] + delta * (b / n)
            merged["m2"] = out["m2"] + p["m2"] + delta ** 2 * (a * b / n)
        out = merged
    if "ranking" in out:  # one concatenation of all the parts' rows
        out["ranking"] = tuple(np.concatenate(pieces) for pieces in zip(*(p["ranking"] for p in parts)))
    return out


def finish(part, target_scale=1.0):
    """{metric: value} of a part, the metrics of names(). target_scale: the errors (rmse, mae) of a target learned
    standardized, on its own scale."""
    if part is None:
        raise InputError("no rows with a positive weight to evaluate")
    result = {"loss": part["loss"]}
    if "accuracy" in part:
        result["accuracy"] = part["accuracy"]
        if "log_loss" in part:
            result["log_loss"] = part["log_loss"]
        result["f1"] = _f1(part["tp"], part["fp"], part["fn"], part["binary"])
        if "ranking" in part:
            result["roc_auc"] = _mean_auc(*part["ranking"])
    if "mean" in part:
        spread = part["m2"] / part["weight"]
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(spread > 0, 1 - part["residual"] / spread, 0.0)
        result["r2"] = float(r2.mean())
        result["rmse"] = float(np.mean(np.sqrt(part["residual"]))) * target_scale
        result["mae"] = float(np.mean(part["absolute"])) * target_scale
    return result


def _f1(tp, fp, fn, binary):
    """F1 of the positive class (the last of two), or the macro mean over the classes present."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    if binary:
        return float(f1[-1])
    present = (tp + fp + fn) > 0
    return float(f1[present].mean()) if present.any() else 0.0


def _mean_auc(scores, truth, w):
    """Mean ROC AUC over the columns that have both positive and negative rows (NaN when none)."""
    aucs = [auc(scores[:, j], truth[:, j], w) for j in range(scores.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def auc(scores, positive, w):
    """Weighted ROC AUC: the weighted share of (positive, negative) pairs that the scores order rightly,
    ties counting one half (the area under scikit-learn's weighted ROC curve). NaN without both kinds."""
    values, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse, weights=w * positive, minlength=len(values))
    neg = np.bincount(inverse, weights=w * ~positive, minlength=len(values))
    total_pos, total_neg = pos.sum(), neg.sum()
    if not (total_pos > 0 and total_neg > 0):
        return float("nan")
    below = np.cumsum(neg) - neg  # negative weight strictly below each score
    return float(pos @ (below + 0.5 * neg) / (total_pos * total_neg))
