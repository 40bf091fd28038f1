"""The bad-input catalogue: each case raises ValueError/TypeError (or ModelFileError) naming the problem.

Inputs that look unusual but are valid (Fortran order, strides, read-only, memory-mapped,
integer, bool, float16) must work instead: see test_trainer.py and the cases at the end.
Data-file readers and the CLI add their rows when they land.
"""
import numpy as np
import pytest

import fastbp

X_OK = np.random.default_rng(0).normal(size=(10, 3))
Y_OK = np.arange(10) % 2


def ce():
    return fastbp.Trainer([3, 4, 2], batch_size=4, epochs=1)


def with_nan(a, where=(0, 0), value=np.nan):
    a = np.array(a, dtype=float)
    a[where] = value
    return a


FIT_CASES = [
    ("nan in X", lambda: (with_nan(X_OK), Y_OK), ValueError, "NaN or infinity"),
    ("inf in X", lambda: (with_nan(X_OK, value=np.inf), Y_OK), ValueError, "NaN or infinity"),
    ("-inf in X", lambda: (with_nan(X_OK, (3, 2), -np.inf), Y_OK), ValueError, "row 3, column 2"),
    ("nan in y", lambda: (X_OK, with_nan(Y_OK, 0)), ValueError, "missing label"),
    ("empty X", lambda: (np.empty((0, 3)), np.empty(0)), ValueError, "0 samples"),
    ("zero features", lambda: (np.empty((10, 0)), Y_OK), ValueError, "0 features"),
    ("1-D X", lambda: (X_OK[:, 0], Y_OK), ValueError, "reshape"),
    ("3-D X", lambda: (X_OK[:, :, None], Y_OK), ValueError, "must be 2-D"),
    ("wrong n_features", lambda: (X_OK[:, :2], Y_OK), ValueError, "expects 3"),
    ("y too short", lambda: (X_OK, Y_OK[:5]), ValueError, "must match"),
    ("y 2-D for cross_entropy", lambda: (X_OK, np.eye(2)[Y_OK]), ValueError, "argmax"),
    ("more classes than outputs", lambda: (X_OK, np.arange(10) % 3 + 1), ValueError,
     r"3 classes \(\[1, 2, 3\]\) but the model can tell 2 apart; use layer_sizes\[-1\] = 3"),
    ("labels of mixed types", lambda: (X_OK, np.array(["a", 1] * 5, dtype=object)), TypeError, "mixes label types"),
    ("string X", lambda: (X_OK.astype(str), Y_OK), TypeError, "strings"),
    ("complex X", lambda: (X_OK + 1j, Y_OK), TypeError, "complex"),
    ("object X with text", lambda: (np.array([["a"] * 3] * 10, dtype=object), Y_OK), TypeError, "non-numeric"),
    ("ragged X", lambda: ([[1.0, 2.0, 3.0], [1.0]], [0, 1]), ValueError, "could not be turned into an array"),
]


@pytest.mark.parametrize("name,make,exc,message", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_rejects(name, make, exc, message):
    X, y = make()
    with pytest.raises(exc, match=message):
        ce().fit(X, y)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function"])
def test_predict_rejects_wrong_features_and_nan(method):
    tr = ce().fit(X_OK, Y_OK)
    with pytest.raises(ValueError, match="expects 3"):
        getattr(tr, method)(X_OK[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        getattr(tr, method)(with_nan(X_OK))


def test_evaluate_and_loss_and_grad_validate_too():
    tr = ce().fit(X_OK, Y_OK)
    with pytest.raises(ValueError, match="0..1"):
        tr.evaluate(X_OK, Y_OK + 5)
    named = ce().fit(X_OK, np.array(["no", "yes"])[Y_OK])
    with pytest.raises(ValueError, match=r"label\(s\) not seen in training: \['maybe'\]; the classes are \['no', 'yes'\]"):
        named.evaluate(X_OK, np.array(["no", "yes", "maybe", "no", "yes"] * 2))
    with pytest.raises(ValueError, match="NaN"):
        tr.loss_and_grad(with_nan(X_OK), Y_OK)


def test_weight_and_validation_arguments():
    tr = ce()
    with pytest.raises(ValueError, match="negative"):
        tr.fit(X_OK, Y_OK, sample_weight=-np.ones(10))
    with pytest.raises(ValueError, match="one weight per row"):
        tr.fit(X_OK, Y_OK, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="sum to zero"):
        tr.fit(X_OK, Y_OK, sample_weight=np.zeros(10))
    with pytest.raises(ValueError, match="dict or 'balanced'"):
        tr.fit(X_OK, Y_OK, class_weight="auto")
    with pytest.raises(ValueError, match="class_weight needs a classification loss"):
        fastbp.Trainer([3, 1], loss="mse").fit(X_OK, Y_OK, class_weight="balanced")
    with pytest.raises(ValueError, match="not both"):
        tr.fit(X_OK, Y_OK, validation_data=(X_OK, Y_OK), validation_split=0.2)
    with pytest.raises(ValueError, match="fraction in"):
        tr.fit(X_OK, Y_OK, validation_split=1.5)
    with pytest.raises(ValueError, match="expects 3"):
        tr.fit(X_OK, Y_OK, validation_data=(X_OK[:, :2], Y_OK))
    with pytest.raises(ValueError, match="cannot monitor 'val_loss'"):
        tr.fit(X_OK, Y_OK, callbacks=[fastbp.EarlyStopping()])
    with pytest.raises(TypeError, match="Callback instances"):
        tr.fit(X_OK, Y_OK, callbacks=[print])


def test_target_checks_per_loss():
    bce = fastbp.Trainer([3, 2], loss="binary_cross_entropy")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bce.fit(X_OK, np.full((10, 2), 2.0))
    with pytest.raises(ValueError, match="shape"):
        bce.fit(X_OK, np.zeros((10, 3)))
    mse = fastbp.Trainer([3, 1], loss="mse")
    with pytest.raises(ValueError, match="shape"):
        mse.fit(X_OK, np.zeros((10, 2)))
    with pytest.raises(ValueError, match="predict_proba needs a classification loss"):
        mse.predict_proba(X_OK)


CONSTRUCTOR_CASES = [
    (dict(layer_sizes=[]), ValueError, "at least two"),
    (dict(layer_sizes=[3]), ValueError, "at least two"),
    (dict(layer_sizes=[3, 0, 2]), ValueError, ">= 1"),
    (dict(layer_sizes=[3, -4, 2]), ValueError, ">= 1"),
    (dict(layer_sizes=[3, 2.5, 2]), TypeError, "layer size .* must be an integer"),
    (dict(layer_sizes=5), TypeError, "list of positive integers"),
    (dict(activation="swish"), ValueError, "valid activations: identity, relu"),
    (dict(activation=["relu", "tanh"]), ValueError, "one name per hidden layer"),
    (dict(loss="hinge"), ValueError, "valid losses: mse, cross_entropy"),
    (dict(optimizer="lion"), ValueError, "valid optimizers: sgd, adam, adamw, rmsprop"),
    (dict(lr=0.0), ValueError, "lr must be > 0"),
    (dict(lr=-1.0), ValueError, "lr must be > 0"),
    (dict(lr=float("nan")), ValueError, "lr must be finite"),
    (dict(lr="fast"), TypeError, "lr must be a number"),
    (dict(momentum=-0.1), ValueError, "momentum must be >= 0"),
    (dict(nesterov=True), ValueError, "nesterov=True needs optimizer=.sgd. and momentum"),
    (dict(weight_decay=-1e-3), ValueError, "weight_decay"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=-3), ValueError, "batch_size must be >= 1"),
    (dict(batch_size=2.5), TypeError, "batch_size must be an integer"),
    (dict(epochs=-1), ValueError, "epochs"),
    (dict(dtype="float16"), ValueError, "float32' or 'float64"),
    (dict(n_threads=0), ValueError, "n_threads must be >= 1"),
    (dict(n_threads=10_000), ValueError, "exceeds"),
    (dict(init="orthogonal"), ValueError, "valid inits"),
    (dict(layer_sizes=[3, 1], loss="cross_entropy"), ValueError, "at least 2 outputs"),
    (dict(dropout=1.0), ValueError, r"dropout rates must lie in \[0, 1\)"),
    (dict(dropout=[0.1, 0.2]), ValueError, "one rate per hidden layer"),
    (dict(clip_grad_norm=-1), ValueError, "clip_grad_norm"),
    (dict(lr_schedule="warmup"), ValueError, "valid schedules"),
    (dict(lr_schedule=("step", {"size": 3})), TypeError, "bad options for lr_schedule"),
    (dict(optimizer="adam", betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be < 1"),
    (dict(optimizer="adam", momentum=0.9), ValueError, "no momentum parameter"),
    (dict(on_divergence="ignore"), ValueError, "on_divergence"),
    (dict(verbose=3), ValueError, "verbose"),
    (dict(loss="huber", huber_delta=0), ValueError, "huber_delta"),
]


@pytest.mark.parametrize("kwargs,exc,message", CONSTRUCTOR_CASES, ids=[str(c[0]) for c in CONSTRUCTOR_CASES])
def test_constructor_rejects(kwargs, exc, message):
    args = dict(layer_sizes=[3, 4, 2])
    args.update(kwargs)
    with pytest.raises(exc, match=message):
        fastbp.Trainer(**args)


def test_model_file_errors(tmp_path):
    tr = ce()
    path = tmp_path / "m.fbp"
    tr.save(path)
    data = path.read_bytes()
    (tmp_path / "truncated.fbp").write_bytes(data[: len(data) // 2])
    with pytest.raises(fastbp.ModelFileError, match="truncated or corrupted"):
        fastbp.load(tmp_path / "truncated.fbp")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (tmp_path / "flipped.fbp").write_bytes(bytes(flipped))
    with pytest.raises(fastbp.ModelFileError):
        fastbp.load(tmp_path / "flipped.fbp")
    (tmp_path / "text.fbp").write_text("hello")
    with pytest.raises(fastbp.ModelFileError):
        fastbp.load(tmp_path / "text.fbp")
    with pytest.raises(FileNotFoundError):
        fastbp.load(tmp_path / "missing.fbp")


def test_model_file_from_future_version_and_pickle_payload(tmp_path):
    import io
    import json
    import zipfile

    tr = ce()
    path = tmp_path / "m.fbp"
    tr.save(path)
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("fastbp.json"))
        members = {n: zf.read(n) for n in zf.namelist()}
    meta["format_version"] = 99
    future = tmp_path / "future.fbp"
    with zipfile.ZipFile(future, "w") as zf:
        for n, blob in members.items():
            zf.writestr(n, json.dumps(meta) if n == "fastbp.json" else blob)
    with pytest.raises(fastbp.ModelFileError, match="upgrade fastbp"):
        fastbp.load(future)

    # an object array (pickle inside .npy) must be refused, never unpickled
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    hostile = tmp_path / "hostile.fbp"
    meta["format_version"] = 1
    with zipfile.ZipFile(hostile, "w") as zf:
        for n, blob in members.items():
            zf.writestr(n, json.dumps(meta) if n == "fastbp.json" else (buf.getvalue() if "params" in n else blob))
    with pytest.raises(fastbp.ModelFileError):
        fastbp.load(hostile)


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    tr = ce()
    path = tmp_path / "m.fbp"
    tr.save(path)
    before = path.read_bytes()
    tr.params[:] = 0

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(OSError, match="previous file there is unchanged"):
        tr.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.fbp"]


ESTIMATOR_CASES = [
    ("nan in X", lambda: (with_nan(X_OK), Y_OK), ValueError, "NaN"),
    ("1-D X", lambda: (X_OK[:, 0], Y_OK), ValueError, "2D array"),
    ("empty X", lambda: (np.empty((0, 3)), np.empty(0)), ValueError, "0 sample"),
    ("y too short", lambda: (X_OK, Y_OK[:5]), ValueError, "inconsistent numbers of samples"),
    ("complex X", lambda: (X_OK + 1j, Y_OK), ValueError, "[Cc]omplex"),
]


@pytest.mark.parametrize("name,make,exc,message", ESTIMATOR_CASES, ids=[c[0] for c in ESTIMATOR_CASES])
def test_estimators_reject(name, make, exc, message):
    sk = pytest.importorskip("fastbp.sklearn")
    X, y = make()
    for estimator in (sk.MLPClassifier(max_iter=2), sk.MLPRegressor(max_iter=2)):
        with pytest.raises(exc, match=message):
            estimator.fit(X, y)
    with pytest.raises(ValueError, match="activation"):
        sk.MLPClassifier(activation="swish").fit(X_OK, Y_OK)
    fitted = sk.MLPClassifier(max_iter=2).fit(X_OK, Y_OK)
    with pytest.raises(ValueError, match="features"):
        fitted.predict(X_OK[:, :2])


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.uint8, np.bool_])
def test_narrow_numeric_dtypes_work(dtype):
    X = (np.abs(X_OK) * 3).astype(dtype)
    tr = ce()
    tr.fit(X, Y_OK)
    assert tr.predict(X).shape == (10,)


@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "mse", "huber", "mae"])
def test_huge_logits_give_finite_loss_and_gradient(loss):
    n_out = 2
    tr = fastbp.Trainer([2, n_out], loss=loss, dtype="float32")
    W, b = tr.layers[0]
    W[...] = [[1e4, -1e4], [0.0, 0.0]]
    b[...] = 0.0
    X = np.array([[1.0, 0.0], [-1.0, 0.0]])
    y = [1, 0] if loss == "cross_entropy" else [[0.0, 1.0], [1.0, 0.0]]
    value, grad = tr.loss_and_grad(X, y)
    assert np.isfinite(value) and np.isfinite(grad).all()
