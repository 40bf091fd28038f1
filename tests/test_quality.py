"""fastbp bench --quality: fixed splits, each system in its own process, metrics as scikit-learn defines them."""
import numpy as np
import pytest

from fastbp import quality

pytest.importorskip("sklearn")
pytest.importorskip("pandas")


def test_the_split_is_fixed_and_the_metrics_are_scikit_learns():
    from sklearn import metrics
    df, target, task = quality.load_table("breast_cancer")
    train, test = quality.split(df)
    again, _ = quality.split(df)
    assert task == "classify" and len(train) + len(test) == len(df) and train.equals(again)
    rng = np.random.default_rng(0)
    truth, proba = rng.integers(0, 2, 50), rng.random((50, 1))
    proba = np.column_stack([1 - proba[:, 0], proba[:, 0]])
    got = quality.scores("classify", truth, (proba[:, 1] > 0.5).astype(int), proba)
    assert got["roc_auc"] == pytest.approx(metrics.roc_auc_score(truth, proba[:, 1]))
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(truth, proba[:, 1] > 0.5))
    values = rng.normal(size=50)
    got = quality.scores("regress", values, values + 0.1)
    assert got["rmse"] == pytest.approx(0.1) and got["r2"] == pytest.approx(metrics.r2_score(values, values + 0.1))


@pytest.mark.slow
def test_each_system_runs_in_its_own_process_and_reports_its_peak_memory(capsys):
    lines = quality.main(["breast_cancer"], ["fastbp", "hgb"], seeds=(0, 1))
    rows = [line for line in lines if line.startswith("| breast_cancer")]
    assert len(rows) == 2 and all("accuracy" in row and "roc_auc" in row for row in rows)
    accuracy = float(rows[0].split("accuracy ")[1].split(" ")[0])
    assert accuracy > 0.9
    assert int(rows[0].rstrip(" |").rsplit("| ", 1)[1]) > 50  # MiB
    # each seed is its own fit: fastbp's initial weights differ, so its ROC AUC does
    assert float(rows[0].split("roc_auc ")[1].split(" ± ")[1].split(" ")[0]) > 0


def test_results_over_seeds_are_the_mean_and_the_sample_standard_deviation():
    runs = [{"system": "x", "task": "regress", "rows": [8, 2], "rmse": rmse, "r2": 0.5, "fit_s": fit,
             "predict_s": 0.1, "peak_mib": peak}
            for rmse, fit, peak in ((1.0, 2.0, 90), (2.0, 4.0, 120), (3.0, 3.0, 100))]
    summary = quality.summarize(runs)
    assert (summary["rmse"], summary["rmse_sd"], summary["r2_sd"]) == (2.0, 1.0, 0.0)
    assert (summary["fit_s"], summary["peak_mib"], summary["seeds"]) == (3.0, 120, 3)
    assert "rmse_sd" not in quality.summarize(runs[:1])
    assert quality.available("realmlp") in (None, "pytabkit is not installed")
