"""Metrics (fastbp.engine.metrics) against scikit-learn's metric functions: every task, with sample weights,
combined over chunks as a file is evaluated, in the history, monitored by EarlyStopping and in the CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp.engine import metrics

skm = pytest.importorskip("sklearn.metrics")

rng = np.random.default_rng(0)
X = rng.normal(size=(400, 4)).astype(np.float32)
W = rng.random(400)


def problem(kind):
    """(Trainer, y) trained briefly, so that every metric is away from its extremes."""
    noise = rng.normal(size=400)
    if kind == "binary":
        y, sizes, loss = (X[:, 0] + X[:, 1] + noise > 0).astype(int), [4, 8, 2], "cross_entropy"
    elif kind == "binary_bce":
        y, sizes, loss = np.where(X[:, 0] + noise > 0, "yes", "no"), [4, 8, 1], "binary_cross_entropy"
    elif kind == "multiclass":
        y, sizes, loss = np.digitize(X[:, 0] + noise, [-0.7, 0.0, 0.7]), [4, 8, 4], "cross_entropy"
    elif kind == "multilabel":
        y, sizes, loss = np.stack([X[:, 0] + noise > 0, X[:, 1] > 0.3], 1).astype(np.float32), [4, 8, 2], \
            "binary_cross_entropy"
    elif kind == "regression":
        y, sizes, loss = X[:, 0] * 3 + noise + 10, [4, 8, 1], "mse"
    else:
        y, sizes, loss = np.stack([X[:, 0] + noise, X[:, 1] * 2], 1), [4, 8, 2], "huber"
    return fastbp.Trainer(sizes, loss=loss, optimizer="adam", lr=0.01, epochs=3, seed=1).fit(X, y), y


@pytest.mark.parametrize("kind", ["binary", "binary_bce", "multiclass", "multilabel", "regression",
                                  "multi_output"])
def test_metrics_equal_scikit_learns(kind):
    tr, y = problem(kind)
    got = tr.evaluate(X, y, sample_weight=W)
    assert list(got) == list(metrics.names(tr.net.loss_code, tr.layout.n_out))
    predicted = tr.predict(X)
    if kind in ("regression", "multi_output"):
        assert got["r2"] == pytest.approx(skm.r2_score(y, predicted, sample_weight=W), rel=1e-5)
        assert got["rmse"] == pytest.approx(skm.root_mean_squared_error(y, predicted, sample_weight=W), rel=1e-5)
        assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, predicted, sample_weight=W), rel=1e-5)
        return
    proba = tr.predict_proba(X).astype(np.float64)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted, sample_weight=W), rel=1e-12)
    if kind == "multilabel":
        assert got["f1"] == pytest.approx(skm.f1_score(y, predicted, average="macro", sample_weight=W), rel=1e-12)
        assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, sample_weight=W), rel=1e-9)
        return
    binary = kind != "multiclass"
    if kind == "binary_bce":
        proba = np.column_stack([1 - proba[:, 0], proba[:, 0]])
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba, sample_weight=W), rel=1e-5)
    f1 = skm.f1_score(y, predicted, sample_weight=W, average="binary" if binary else "macro",
                      **({"pos_label": "yes"} if kind == "binary_bce" else {}))
    assert got["f1"] == pytest.approx(f1, rel=1e-12)
    auc = skm.roc_auc_score(y, proba[:, 1] if binary else proba, sample_weight=W, multi_class="ovr")
    assert got["roc_auc"] == pytest.approx(auc, rel=1e-6)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multi_output"])
def test_parts_combined_over_chunks_equal_all_rows_at_once(kind):
    tr, y = problem(kind)
    whole = tr.evaluate(X, y, sample_weight=W)
    cuts = [0, 7, 150, 151, 400]
    parts = [tr.metric_part(X[a:b], y[a:b], W[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    combined = metrics.finish(metrics.combine(parts))
    for name, value in whole.items():
        assert combined[name] == pytest.approx(value, rel=1e-9), name


def test_auc_counts_ties_as_half_and_is_nan_without_both_classes():
    scores = np.array([0.1, 0.5, 0.5, 0.9])
    positive = np.array([False, True, False, True])
    assert metrics.auc(scores, positive, np.ones(4)) == pytest.approx(0.875)
    assert metrics.auc(scores, positive, np.ones(4)) == pytest.approx(skm.roc_auc_score(positive, scores))
    assert np.isnan(metrics.auc(scores, np.ones(4, bool), np.ones(4)))


def test_history_holds_every_validation_metric_and_early_stopping_monitors_any():
    tr, y = problem("binary")
    tr.epochs = 4
    stop = fastbp.EarlyStopping("val_roc_auc", patience=2)
    assert stop.mode == "max" and fastbp.EarlyStopping("val_log_loss").mode == "min"
    tr.fit(X, y, validation_split=0.25, callbacks=[stop])
    assert {f"val_{m}" for m in metrics.CLASSIFICATION_METRICS} <= set(tr.history[-1])
    with pytest.raises(fastbp.InputError, match="cannot monitor 'val_rmse'"):
        tr.fit(X, y, validation_split=0.25, callbacks=[fastbp.EarlyStopping("val_rmse")])


@pytest.mark.slow
def test_cli_evaluate_gives_the_chosen_metrics_on_the_targets_scale(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.csv as pcsv

    value = X[:, 0] * 300 + 1000 + rng.normal(size=400) * 50
    pcsv.write_csv(pa.table({"a": X[:, 0], "b": X[:, 1], "value": value}), tmp_path / "d.csv")

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], capture_output=True, text=True)
        return proc.returncode, proc.stdout, proc.stderr

    code, _, err = cli("train", tmp_path / "d.csv", "--target", "value", "--hidden", "8", "--epochs", "5", "--quiet",
                       "--out", tmp_path / "m.fbp", "--early-stopping", "--monitor", "val_mae", "--val-split", "0.2")
    assert code == 0, err
    code, out, err = cli("evaluate", tmp_path / "m.fbp", tmp_path / "d.csv", "--metric", "rmse,mae")
    assert code == 0, err
    got = json.loads(out)
    assert set(got) == {"rmse", "mae", "rows"}
    code, out, _ = cli("predict", tmp_path / "m.fbp", tmp_path / "d.csv", "--out", tmp_path / "p.npy", "--quiet")
    predicted = np.load(tmp_path / "p.npy")
    assert got["rmse"] == pytest.approx(skm.root_mean_squared_error(value, predicted), rel=1e-5)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(value, predicted), rel=1e-5)
    code, _, err = cli("evaluate", tmp_path / "m.fbp", tmp_path / "d.csv", "--metric", "roc_auc")
    assert code == 2 and "this model gives loss, r2, rmse, mae" in err
    code, _, err = cli("train", tmp_path / "d.csv", "--target", "value", "--monitor", "val_auc", "--out",
                       tmp_path / "x.fbp")
    assert code == 2 and "not a validation metric" in err


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_without_roc_auc_a_part_keeps_no_rows(kind):
    """metric_part(roc_auc=False), as fastbp evaluate --metric without roc_auc asks for it: the other metrics
    are the same and nothing in the part grows with the rows."""
    tr, y = problem(kind)
    full = tr.evaluate(X, y, sample_weight=W)
    parts = [tr.metric_part(X[i:i + 100], y[i:i + 100], W[i:i + 100], roc_auc=False) for i in range(0, 400, 100)]
    assert all("ranking" not in part for part in parts)
    assert all(np.size(value) <= 4 for part in parts for value in part.values())
    lean = tr.finish_metrics(parts)
    assert set(lean) == set(full) - {"roc_auc"}
    for name, value in lean.items():
        assert value == pytest.approx(full[name], rel=1e-9)
