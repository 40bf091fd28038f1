"""Evaluation metrics that can be computed in parts and combined: over the chunks of a file,
or over the slices that MPI ranks evaluate, with the same result as all rows at once.

A part holds the total weight, the weighted mean loss and accuracy (classification), or
per-output weighted means, squared-deviation sums (M2) and mean squared residuals
(regression). Parts combine with the parallel update of Chan et al. for mean and M2,
which stays accurate when targets have a large mean (unlike sum(y^2) - sum(y)^2 / n).
"""
import numpy as np

from ..core.errors import InputError
from ..core.losses import BINARY_CROSS_ENTROPY, CROSS_ENTROPY, POISSON, elements_per_row, row_losses

CLASSIFICATION_CODES = (CROSS_ENTROPY, BINARY_CROSS_ENTROPY)


def metric_part(loss_code, huber_delta, logits, Y, weights=None):
    """The combinable summary of these rows (weights: None or one non-negative weight per row)."""
    w = np.ones(len(Y)) if weights is None else weights
    total = float(w.sum())
    if total <= 0:
        return None
    losses = row_losses(loss_code, huber_delta, logits, Y) / elements_per_row(loss_code, logits.shape[1])
    part = {"weight": total, "loss": float(w @ losses) / total}
    if loss_code == CROSS_ENTROPY:
        part["accuracy"] = float(w @ (logits.argmax(axis=1) == Y[:, 0])) / total
    elif loss_code == BINARY_CROSS_ENTROPY:
        part["accuracy"] = float(w @ ((logits >= 0) == (Y >= 0.5)).all(axis=1)) / total
    else:
        Y64 = Y.astype(np.float64)
        predictions = np.exp(logits.astype(np.float64)) if loss_code == POISSON else logits  # rates, not log-rates
        mean = w @ Y64 / total
        part["mean"] = mean
        part["m2"] = w @ (Y64 - mean) ** 2
        part["residual"] = w @ (Y64 - predictions) ** 2 / total
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
        merged = {"weight": n, "loss": (a * out["loss"] + b * p["loss"]) / n}
        if "accuracy" in out:
            merged["accuracy"] = (a * out["accuracy"] + b * p["accuracy"]) / n
        if "mean" in out:
            delta = p["mean"] - out["mean"]
            merged["mean"] = out["mean"] + delta * (b / n)
            merged["m2"] = out["m2"] + p["m2"] + delta ** 2 * (a * b / n)
            merged["residual"] = (a * out["residual"] + b * p["residual"]) / n
        out = merged
    return out


def finish(part):
    """{"loss", "accuracy"} or {"loss", "r2"} (r2 averaged over outputs, 0 for a constant target)."""
    if part is None:
        raise InputError("no rows with a positive weight to evaluate")
    result = {"loss": part["loss"]}
    if "accuracy" in part:
        result["accuracy"] = part["accuracy"]
    if "mean" in part:
        spread = part["m2"] / part["weight"]
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(spread > 0, 1 - part["residual"] / spread, 0.0)
        result["r2"] = float(r2.mean())
    return result
