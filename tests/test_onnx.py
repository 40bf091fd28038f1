"""ONNX export: Trainer.to_onnx, `fastbp export` of CLI models (their column preprocessing as ONNX ops)
and skl2onnx on fastbp.sklearn's estimators, each run by onnxruntime against fastbp's own predictions."""
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import fastbp
from conftest import ACTIVATIONS, make_problem
from fastbp.files.preprocess import Preprocessor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def run(model_or_path, feeds):
    data = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    session = ort.InferenceSession(data)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def assert_predicts_as_fastbp(out, tr, X):
    """The exported model's outputs `out` are what tr predicts for X."""
    if tr.is_classifier:
        np.testing.assert_array_equal(out["label"], tr.predict(X))
        np.testing.assert_allclose(out["probabilities"], tr.predict_proba(X), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(out["variable"].reshape(tr.predict(X).shape), tr.predict(X), rtol=1e-5,
                                   atol=1e-5)


TRAINER_CASES = [("cross_entropy", 3), ("binary_cross_entropy", 1), ("binary_cross_entropy", 2), ("mse", 2),
                 ("poisson", 1), ("huber", 1)]


@pytest.mark.parametrize("loss,n_out", TRAINER_CASES, ids=[f"{loss}-{n}" for loss, n in TRAINER_CASES])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_trainer_export_predicts_as_fastbp(loss, n_out, activation, tmp_path):
    X, y = make_problem(loss, 200, 5, n_out, seed=3, dtype=np.float32)
    if loss == "binary_cross_entropy" and n_out == 1:
        y = y[:, 0]
    tr = fastbp.Trainer([5, 9, 6, n_out], activation=activation, loss=loss, epochs=3, lr=0.05, seed=1).fit(X, y)
    assert_predicts_as_fastbp(run(str(tr.to_onnx(tmp_path / "m.onnx") and tmp_path / "m.onnx"), {"X": X}), tr, X)


@pytest.mark.parametrize("loss,n_out", TRAINER_CASES, ids=[f"{loss}-{n}" for loss, n in TRAINER_CASES])
@pytest.mark.parametrize("hidden,adapters", [([9, 6], "first_layer"), ([], "first_layer"), ([9, 6], "every_layer")],
                         ids=["hidden", "heads-only", "every-layer"])
def test_ensemble_export_predicts_as_fastbp(loss, n_out, hidden, adapters):
    """The members' rows as one (N, members, n) tensor through the shared layers (and their adapters), the heads,
    the mean prediction."""
    X, y = make_problem(loss, 200, 5, n_out, seed=3, dtype=np.float32)
    if loss == "binary_cross_entropy" and n_out == 1:
        y = y[:, 0]
    tr = fastbp.Trainer([5, *hidden, n_out], activation="gelu", loss=loss, epochs=3, lr=0.05, seed=1,
                        ensemble=3, ensemble_adapters=adapters).fit(X, y)
    if adapters == "every_layer":  # trained adapters, not their start (ones)
        assert not np.allclose(tr.layout.layer_adapters(tr.params)[1][0], 1.0)
    assert_predicts_as_fastbp(run(tr.to_onnx(), {"X": X}), tr, X)


def test_ensemble_with_tables_exports(tmp_path):
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=(120, 2)), rng.integers(0, 4, size=120)]).astype(np.float32)
    y = (X[:, 0] + (X[:, 2] == 1) > 0.5).astype(int)
    tr = fastbp.Trainer([2 + 3, 8, 2], embeddings=[(5, 3)], ensemble=4, epochs=3, seed=2,
                        ensemble_adapters="every_layer").fit(X, y)
    out = run(tr.to_onnx(), {"X": X})
    np.testing.assert_allclose(out["probabilities"], tr.predict_proba(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation,rtol", [("tanh", 1e-12), ("gelu", 1e-6)])  # gelu: Erf runs in float
def test_float64_trainer_export(activation, rtol):
    X, y = make_problem("cross_entropy", 100, 4, 3, seed=0)
    tr = fastbp.Trainer([4, 8, 3], activation=activation, dtype="float64", epochs=2).fit(X, y)
    out = run(tr.to_onnx(), {"X": X})
    np.testing.assert_allclose(out["probabilities"], tr.predict_proba(X), rtol=rtol)


@pytest.mark.slow
def test_cli_models_export_their_preprocessing(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.csv as pcsv
    rng = np.random.default_rng(0)
    n = 600
    a, b = rng.normal(size=n), rng.normal(size=n) * 3 + 1
    color, size = rng.choice(["red", "green", "blue"], n), rng.choice(["S", "M", "L"], n)
    member = rng.random(n) < 0.5  # pyarrow writes it as true/false: two categories
    a[::17] = np.nan
    label = np.where(np.nan_to_num(a) + (color == "red") + member > 0.8, "yes", "no")
    value = 2 * b + (size == "L")
    pcsv.write_csv(pa.table({"a": a, "b": b, "color": color, "size": size, "member": member, "label": label,
                             "value": value}), tmp_path / "d.csv")
    # rows the model has not seen: a category unseen in training is all zeros, as in fastbp predict
    new_color = color.copy()
    new_color[::5] = "purple"
    spelled = np.where(member, rng.choice(["True", "TRUE", "true"], n), rng.choice(["False", "FALSE"], n))
    new = {"a": a, "b": b, "color": new_color, "size": size, "member": spelled}  # booleans spelled otherwise
    pcsv.write_csv(pa.table(new), tmp_path / "new.csv")
    feeds = {c: v.reshape(-1, 1) if c in "ab" else v.astype(object).reshape(-1, 1) for c, v in new.items()}

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    for target, other, loss in [("label", "value", "cross_entropy"), ("label", "value", "binary_cross_entropy"),
                                ("value", "label", "mse")]:
        model = tmp_path / f"{loss}.fbp"
        cli("train", tmp_path / "d.csv", "--target", target, "--impute", "median", "--hidden", "8", "--epochs", "3",
            "--out", model, "--quiet", "--exclude", other, "--loss", loss)
        assert "wrote" in cli("export", model, tmp_path / f"{loss}.onnx")
        out = run(str(tmp_path / f"{loss}.onnx"), feeds)
        tr = fastbp.load(model)
        prep = Preprocessor(tr.preprocessing)
        assert prep.state["categories"][-1] == ["false", "true"]
        X, _ = prep.transform(new, with_target=False)
        if target == "label":
            np.testing.assert_array_equal(out["label"], tr.predict(X, encoded=True))
            # one probability per class, as `fastbp predict --proba` writes them (binary_cross_entropy too)
            cli("predict", model, tmp_path / "new.csv", "--out", tmp_path / "p.npy", "--proba", "--quiet")
            np.testing.assert_allclose(out["probabilities"], np.load(tmp_path / "p.npy"), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_allclose(out["variable"][:, 0], tr.predict(X, encoded=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("labels", [np.array(["no", "yes"]), np.array([10, 20, 30]), np.array([False, True])])
def test_trainer_export_gives_the_labels_predict_gives(labels):
    X = np.random.default_rng(0).normal(size=(90, 3)).astype(np.float32)
    y = labels[np.arange(90) % len(labels)]
    loss = "binary_cross_entropy" if labels.dtype == bool else "cross_entropy"
    tr = fastbp.Trainer([3, 6, 1 if loss == "binary_cross_entropy" else len(labels)], loss=loss, epochs=2).fit(X, y)
    out = run(tr.to_onnx(), {"X": X})
    np.testing.assert_array_equal(out["label"], tr.predict(X))


@pytest.mark.parametrize("input_dtype", ["int64", "int32", "bool", "float64", "float32"])
@pytest.mark.parametrize("model_dtype", ["float32", "float64"])
def test_trainer_export_takes_integer_boolean_and_double_inputs(input_dtype, model_dtype):
    X = np.random.default_rng(0).integers(0, 2 if input_dtype == "bool" else 5, size=(60, 3)).astype(input_dtype)
    tr = fastbp.Trainer([3, 6, 3], dtype=model_dtype, epochs=2).fit(X.astype(float), np.arange(60) % 3)
    out = run(tr.to_onnx(input_dtype=input_dtype), {"X": X})
    np.testing.assert_array_equal(out["label"], tr.predict(X.astype(float)))
    np.testing.assert_allclose(out["probabilities"], tr.predict_proba(X.astype(float)), rtol=1e-5, atol=1e-7)
    assert out["is_valid"].all()
    with pytest.raises(fastbp.InputError, match="input_dtype must be one of"):
        tr.to_onnx(input_dtype="uint8")


def test_trainer_export_marks_the_rows_predict_refuses():
    """NaN, infinity, or a finite number the model's dtype cannot hold: predict refuses the row; the graph says
    so in "is_valid" and gives NaN probabilities there, and the same answers as predict elsewhere."""
    X, y = make_problem("cross_entropy", 100, 3, 3, seed=0)
    tr = fastbp.Trainer([3, 6, 3], epochs=2).fit(X.astype(np.float32), y)
    bad = X[:6].astype(np.float64)
    bad[1, 0], bad[2, 1], bad[4, 2] = np.nan, -np.inf, 1e300  # 1e300 overflows float32
    out = run(tr.to_onnx(input_dtype="float64"), {"X": bad})
    assert out["is_valid"].tolist() == [True, False, False, True, False, True]
    for i in range(6):
        if out["is_valid"][i]:
            np.testing.assert_allclose(out["probabilities"][i], tr.predict_proba(bad[i:i + 1])[0], rtol=1e-5)
        else:
            assert np.isnan(out["probabilities"][i]).all()
            with pytest.raises(fastbp.InputError):
                tr.predict(bad[i:i + 1])


@pytest.mark.slow
@pytest.mark.parametrize("impute", [False, True])
def test_cli_model_export_refuses_and_keeps_rows_as_fastbp_predict_does(tmp_path, impute):
    """A file-trained model's graph against `fastbp predict`, row by row: without --impute both refuse a missing
    number, infinity, a value that overflows float32 when standardized and an empty text cell in a column that had
    no missing values; with it, a missing number is filled and an empty cell is the missing category, in both."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    n = 300
    a, c, d = rng.normal(size=n), rng.choice(["x", "y", "z"], n).astype(object), rng.choice(["u", "v"], n)
    d = d.astype(object)
    if impute:
        d[::7] = None  # missing in training: an empty cell is its missing category
    label = np.where(a + (c == "x") > 0.5, "yes", "no")
    pcsv.write_csv(pa.table({"a": a, "c": c, "d": pa.array(d, pa.string()), "label": label}), tmp_path / "d.csv")
    model = tmp_path / "m.fbp"
    proc = subprocess.run([sys.executable, "-m", "fastbp", "train", tmp_path / "d.csv", "--target", "label",
                           "--hidden", "6", "--epochs", "2", "--quiet", "--out", model,
                           *(["--impute", "mean"] if impute else [])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    tr = fastbp.load(model)
    rows = {"a": np.array([0.1, np.nan, np.inf, 1e300, 0.2, 0.3]),
            "c": np.array(["x", "y", "z", "x", "", "y"], dtype=object),
            "d": np.array(["u", "v", "u", "v", "u", ""], dtype=object)}
    out = run(tr.to_onnx(), {k: v.reshape(-1, 1) for k, v in rows.items()})
    expected = [True, impute, False, False, False, impute]
    assert out["is_valid"].tolist() == expected
    assert np.isnan(out["probabilities"][~out["is_valid"]]).all()
    for i in range(6):  # each row alone through fastbp predict, from Parquet ("" stored as "", not null)
        pq.write_table(pa.table({k: v[i:i + 1] for k, v in rows.items()}), tmp_path / "row.parquet")
        proc = subprocess.run([sys.executable, "-m", "fastbp", "predict", model, tmp_path / "row.parquet",
                               "--out", tmp_path / "p.npy", "--proba", "--quiet"], capture_output=True, text=True)
        assert (proc.returncode == 0) == expected[i], (i, proc.stderr)
        if proc.returncode == 0:
            np.testing.assert_allclose(out["probabilities"][i], np.load(tmp_path / "p.npy")[0], rtol=1e-5)


def test_without_onnx_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    tr = fastbp.Trainer([2, 2])
    with pytest.raises(ImportError, match=r"fastbp\[onnx\]"):
        tr.to_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------- scikit-learn estimators
skl2onnx = pytest.importorskip("skl2onnx")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def sklearn_problems():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    return X, {
        "multiclass": (MLPClassifier, np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0)], {}),
        "binary": (MLPClassifier, (X[:, 0] > 0).astype(int) + 3, {}),
        "multilabel": (MLPClassifier, np.stack([X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(int), {}),
        "regression": (MLPRegressor, 2 * X[:, 0], {}),
        "multi_output": (MLPRegressor, 2 * X[:, :2], {}),
        "poisson": (MLPRegressor, rng.poisson(np.exp(0.5 * X[:, 0])), {"loss": "poisson"}),
    }


@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh", "identity", "gelu", "softplus"])
@pytest.mark.parametrize("problem", list(sklearn_problems()[1]))
def test_skl2onnx_converts_the_estimators(problem, activation):
    X, problems = sklearn_problems()
    cls, y, extra = problems[problem]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = cls(hidden_layer_sizes=(7, 5), activation=activation, max_iter=30, random_state=0, **extra).fit(X, y)
    options = {"zipmap": False} if cls is MLPClassifier else None
    out = list(run(skl2onnx.to_onnx(model, X[:1], options=options), {"X": X}).values())
    if cls is MLPClassifier:
        np.testing.assert_array_equal(out[0], model.predict(X))
        np.testing.assert_allclose(out[1], model.predict_proba(X), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(out[0].reshape(model.predict(X).shape), model.predict(X), rtol=1e-5, atol=1e-5)


def test_skl2onnx_pipeline_with_zipmap():
    X, problems = sklearn_problems()
    _, y, _ = problems["multiclass"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(6,), max_iter=20,
                                                             random_state=0)).fit(X, y)
    out = list(run(skl2onnx.to_onnx(pipe, X[:1]), {"X": X}).values())
    np.testing.assert_array_equal(out[0], pipe.predict(X))
    proba = pipe.predict_proba(X)
    for row, expected in zip(out[1], proba):  # ZipMap: one {label: probability} per row
        assert sorted(row) == ["a", "b", "c"]
        np.testing.assert_allclose([row[c] for c in ["a", "b", "c"]], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("input_type", ["Int64TensorType", "Int32TensorType", "BooleanTensorType",
                                        "DoubleTensorType"])
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_skl2onnx_integer_boolean_and_double_inputs(cls, input_type):
    from skl2onnx.common import data_types

    dtype = {"Int64TensorType": np.int64, "Int32TensorType": np.int32, "BooleanTensorType": bool,
             "DoubleTensorType": np.float64}[input_type]
    X = np.random.default_rng(0).integers(0, 2 if dtype is bool else 6, size=(80, 3)).astype(dtype)
    y = (X[:, 0].astype(int) + X[:, 1] > (1 if dtype is bool else 4)).astype(int) if cls is MLPClassifier \
        else X.astype(float) @ [1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = cls(hidden_layer_sizes=(5,), max_iter=20, random_state=0).fit(X, y)
    options = {"zipmap": False} if cls is MLPClassifier else None
    types = [("X", getattr(data_types, input_type)([None, 3]))]
    if input_type == "Int32TensorType":  # skl2onnx refuses it for scikit-learn's own MLPs too
        from skl2onnx.common.utils import InvalidInputTypeException
        with pytest.raises(InvalidInputTypeException, match="Int32TensorType"):
            skl2onnx.convert_sklearn(model, initial_types=types, options=options)
        return
    onx = skl2onnx.convert_sklearn(model, initial_types=types, options=options)
    out = list(run(onx, {"X": X}).values())
    if cls is MLPClassifier:
        np.testing.assert_array_equal(out[0], model.predict(X))
        np.testing.assert_allclose(out[1], model.predict_proba(X), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(out[0][:, 0], model.predict(X), rtol=1e-5, atol=1e-4)


def test_skl2onnx_classifier_trained_on_one_class():
    X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(X, np.full(50, 7))
    out = list(run(skl2onnx.to_onnx(model, X[:1], options={"zipmap": False}), {"X": X * 50}).values())
    np.testing.assert_array_equal(out[0], model.predict(X * 50))
    assert (out[0] == 7).all()


def test_skl2onnx_double_input_keeps_double_precision():
    X, problems = sklearn_problems()
    X = X.astype(np.float64)
    _, y, _ = problems["binary"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(hidden_layer_sizes=(6,), activation="tanh", max_iter=20, random_state=0).fit(X, y)
    out = list(run(skl2onnx.to_onnx(model, X[:1], options={"zipmap": False}), {"X": X}).values())
    np.testing.assert_array_equal(out[0], model.predict(X))
    np.testing.assert_allclose(out[1], model.predict_proba(X), rtol=1e-12)


@pytest.mark.parametrize("n_out,loss,labels", [(5, "cross_entropy", ["a", "b", "c"]),
                                               (1, "binary_cross_entropy", ["yes"])])
def test_fewer_labels_than_outputs_predict_only_labels(n_out, loss, labels):
    """Outputs beyond the classes (more outputs than labels, or one class on a binary output) name no class:
    predict and the ONNX graph never pick them."""
    X = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    y = np.array(labels)[np.arange(60) % len(labels)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = fastbp.Trainer([3, 4, n_out], loss=loss, epochs=0).fit(X * 30, y)
    got = tr.predict(X * 30)
    assert set(got.tolist()) <= set(labels)
    np.testing.assert_array_equal(run(tr.to_onnx(), {"X": X * 30})["label"], got)


@pytest.mark.parametrize("first", ["fastbp.sklearn", "skl2onnx"])
def test_converters_register_whichever_is_imported_first(first):
    """fastbp.sklearn leaves skl2onnx unimported (a parallel search's workers would each pay ~1 s for it) and
    registers its converters as soon as skl2onnx is imported, before or after it."""
    pytest.importorskip("skl2onnx")
    code = textwrap.dedent(f"""
        import sys, numpy as np
        import {first}
        if {first!r} == "fastbp.sklearn":
            assert "skl2onnx" not in sys.modules
        import skl2onnx, fastbp.sklearn
        X = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
        model = fastbp.sklearn.MLPRegressor(hidden_layer_sizes=(4,), max_iter=5).fit(X, X[:, 0])
        print(len(skl2onnx.to_onnx(model, X[:1]).graph.node))
        """)
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) > 0
