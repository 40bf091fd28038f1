"""fastbp.sklearn against scikit-learn's own MLP: same trajectories, scores, API and estimator checks."""
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn import datasets  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def fit_quietly(model, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(*args, **kwargs)


def assert_same_model(ours, theirs, rtol=1e-8):
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-10)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-8)
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_


def problems():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 6))
    return {
        "multiclass": (SkClassifier, MLPClassifier, X, (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)),
        "binary": (SkClassifier, MLPClassifier, X, np.where(X[:, 0] * X[:, 1] > 0, "yes", "no")),
        "multilabel": (SkClassifier, MLPClassifier, X, np.stack([X[:, 0] > 0, X[:, 1] > 0.5], axis=1).astype(int)),
        "regression": (SkRegressor, MLPRegressor, X, X[:, 0] - 2 * X[:, 1] ** 2),
        "multi_output": (SkRegressor, MLPRegressor, X, np.stack([X[:, 0], X[:, 1] * X[:, 2]], axis=1)),
    }


SOLVERS = [
    dict(solver="adam"),
    dict(solver="sgd", learning_rate_init=0.05),
    dict(solver="sgd", learning_rate_init=0.05, nesterovs_momentum=False),
    dict(solver="sgd", learning_rate_init=0.05, learning_rate="invscaling", momentum=0.5),
    dict(solver="sgd", learning_rate_init=0.05, learning_rate="adaptive", n_iter_no_change=2, tol=0.1),
    dict(solver="adam", early_stopping=True, n_iter_no_change=3),
]


@pytest.mark.parametrize("params", SOLVERS, ids=[str(p) for p in SOLVERS])
@pytest.mark.parametrize("problem", list(problems()))
@pytest.mark.parametrize("shuffle", [False, True])
def test_same_trajectory_as_sklearn(params, problem, shuffle):
    sk_cls, our_cls, X, y = problems()[problem]
    if params.get("early_stopping") and problem == "multilabel":
        pytest.skip("covered by the other problems")
    kwargs = dict(hidden_layer_sizes=(12, 7), activation="tanh", max_iter=8, batch_size=32, shuffle=shuffle,
                  random_state=3, alpha=1e-3, **params)
    theirs = fit_quietly(sk_cls(**kwargs), X, y)
    ours = fit_quietly(our_cls(**kwargs), X, y)
    assert_same_model(ours, theirs)
    if params.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-12)


@pytest.mark.parametrize("problem", ["multiclass", "regression"])
def test_sample_weight_and_partial_fit_match_sklearn(problem):
    sk_cls, our_cls, X, y = problems()[problem]
    w = np.random.default_rng(1).uniform(0.1, 3, size=len(y))
    kwargs = dict(hidden_layer_sizes=(10,), solver="sgd", learning_rate_init=0.02, batch_size=25, max_iter=4,
                  random_state=0, shuffle=False)
    assert_same_model(fit_quietly(our_cls(**kwargs), X, y, sample_weight=w),
                      fit_quietly(sk_cls(**kwargs), X, y, sample_weight=w))
    extra = {"classes": np.unique(y)} if problem == "multiclass" else {}
    ours, theirs = our_cls(**kwargs), sk_cls(**kwargs)
    for start in range(0, 150, 50):
        ours.partial_fit(X[start:start + 50], y[start:start + 50], **extra)
        theirs.partial_fit(X[start:start + 50], y[start:start + 50], **extra)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("problem", ["multiclass", "binary", "regression"])
def test_lbfgs_matches_sklearn(problem):
    sk_cls, our_cls, X, y = problems()[problem]
    # Without hidden layers and with alpha > 0 the problem is convex: both must reach its one minimum.
    kwargs = dict(hidden_layer_sizes=(), solver="lbfgs", alpha=0.5, max_iter=2000, random_state=0, tol=1e-10)
    assert abs(fit_quietly(our_cls(**kwargs), X, y).loss_ - fit_quietly(sk_cls(**kwargs), X, y).loss_) < 1e-6
    # With a hidden layer, the same iterations from the same start give the same loss.
    kwargs.update(hidden_layer_sizes=(8,), max_iter=20)
    ours, theirs = fit_quietly(our_cls(**kwargs), X, y), fit_quietly(sk_cls(**kwargs), X, y)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-9)


@pytest.mark.parametrize("params", [dict(solver="adam"), dict(solver="sgd", learning_rate_init=0.01),
                                    dict(solver="lbfgs", max_iter=15)], ids=["adam", "sgd", "lbfgs"])
def test_poisson_matches_sklearn(params):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 4))
    y = rng.poisson(np.exp(0.5 * X[:, 0] - 0.3 * X[:, 1]))
    kwargs = dict(loss="poisson", hidden_layer_sizes=(9,), activation="tanh", batch_size=20, random_state=1,
                  **{"max_iter": 6, **params})
    ours, theirs = fit_quietly(MLPRegressor(**kwargs), X, y), fit_quietly(SkRegressor(**kwargs), X, y)
    if params["solver"] == "lbfgs":
        assert ours.n_iter_ == theirs.n_iter_
        np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-9)
    else:
        assert_same_model(ours, theirs)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-7)
    assert ours.predict(X).min() > 0  # rates, not log-rates


def test_extreme_row_counts_as_in_sklearn_loss_curve():
    # scikit-learn clips probabilities to [eps, 1 - eps] in its reported loss: one row with a huge
    # feature adds at most -log(eps) to the curve (and so to the convergence rule), not its logit
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    X[0, 0] = 1e38
    kwargs = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
    ours, theirs = fit_quietly(MLPClassifier(**kwargs), X, y), fit_quietly(SkClassifier(**kwargs), X, y)
    assert max(theirs.loss_curve_) < 1
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-3)


def test_warm_start_after_new_hidden_sizes_starts_afresh():
    X, y = datasets.load_iris(return_X_y=True)
    model = fit_quietly(MLPClassifier(hidden_layer_sizes=(5,), warm_start=True, max_iter=5, random_state=0), X, y)
    fit_quietly(model, X, y)
    assert len(model.loss_curve_) == 10  # same layers: continued
    model.set_params(hidden_layer_sizes=(7, 4))
    fit_quietly(model, X, y)
    assert [c.shape for c in model.coefs_] == [(4, 7), (7, 4), (4, 3)] and len(model.loss_curve_) == 5
    fresh = fit_quietly(MLPClassifier(hidden_layer_sizes=(7, 4), max_iter=5, random_state=0), X, y)
    np.testing.assert_allclose(model.loss_curve_, fresh.loss_curve_, rtol=1e-12)


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_non_finite_weights_raise_sklearns_error(solver):
    rng = np.random.RandomState(0)
    X = np.finfo(np.float64).max * rng.uniform(size=(10, 2))
    with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            MLPRegressor(solver=solver).fit(X, rng.standard_normal(size=10))


def test_lbfgs_has_no_partial_fit():
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    assert hasattr(MLPClassifier(solver="sgd"), "partial_fit")


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "wine", "diabetes"])
def test_default_settings_score_like_sklearn(name):
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    if name == "diabetes":
        y = (y - y.mean()) / y.std()
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    ours_cls, sk_cls = (MLPRegressor, SkRegressor) if name == "diabetes" else (MLPClassifier, SkClassifier)
    ours = fit_quietly(ours_cls(random_state=0), X_train, y_train).score(X_test, y_test)
    theirs = fit_quietly(sk_cls(random_state=0), X_train, y_train).score(X_test, y_test)
    assert abs(ours - theirs) <= 0.01


def test_pipeline_grid_search_clone_pickle():
    X, y = datasets.load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0))
    search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2]}, cv=3)
    fit_quietly(search, X, y)
    assert search.best_score_ > 0.8
    assert cross_val_score(clone(pipe), X, y, cv=3).mean() > 0.8
    model = search.best_estimator_
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))
    assert clone(MLPClassifier(n_threads=1, activation="gelu")).get_params()["activation"] == "gelu"


def test_a_search_in_threads_equals_the_one_in_a_single_process():
    """The kernels release the GIL, so joblib's threading backend runs a search's fits at once with no worker
    processes to start (docs/sklearn.md); concurrent fits must give the sequential search's scores and model."""
    from joblib import parallel_backend
    X, y = datasets.load_digits(return_X_y=True)
    X, y = X[:600] / 16.0, y[:600]
    grid = {"hidden_layer_sizes": [(16,), (32,)], "alpha": [1e-4, 1e-2]}
    searches = []
    for n_jobs in (1, 2):
        with parallel_backend("threading", n_jobs=n_jobs):
            search = GridSearchCV(MLPClassifier(max_iter=15, random_state=0), grid, cv=3, n_jobs=n_jobs)
            searches.append(fit_quietly(search, X, y))
    sequential, threaded = searches
    for key in ("mean_test_score", "split0_test_score", "split2_test_score"):
        np.testing.assert_array_equal(threaded.cv_results_[key], sequential.cv_results_[key])
    assert threaded.best_params_ == sequential.best_params_
    for a, b in zip(threaded.best_estimator_.coefs_, sequential.best_estimator_.coefs_):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("problem", ["multiclass", "regression"])
def test_pickled_estimator_predicts_and_trains_on_identically(problem, tmp_path):
    import joblib
    _, our_cls, X, y = problems()[problem]
    model = our_cls(hidden_layer_sizes=(10,), solver="sgd", max_iter=3, random_state=0)
    fit_quietly(model, X, y)
    joblib.dump(model, tmp_path / "model.joblib")
    twins = [pickle.loads(pickle.dumps(model)), joblib.load(tmp_path / "model.joblib")]
    for twin in twins:
        np.testing.assert_array_equal(twin.predict(X), model.predict(X))
    model.partial_fit(X, y)
    for twin in twins:  # optimizer state (velocities, learning rate) travels too
        twin.partial_fit(X, y)
        for a, b in zip(twin.coefs_ + twin.intercepts_, model.coefs_ + model.intercepts_):
            np.testing.assert_array_equal(a, b)


def test_float32_kept_and_class_weight():
    X, y = datasets.load_iris(return_X_y=True)
    X = X.astype(np.float32)
    model = fit_quietly(MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0), X, y)
    assert model.coefs_[0].dtype == np.float32 and model.predict_proba(X).dtype == np.float32
    counts = np.array([1, 3, 2])[y]  # class_weight equals integer-valued sample weights
    a = fit_quietly(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0,
                                  class_weight={0: 1, 1: 3, 2: 2}), X, y)
    b = fit_quietly(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0), X, y, sample_weight=counts)
    for u, v in zip(a.coefs_, b.coefs_):
        np.testing.assert_array_equal(u, v)


def test_importing_fastbp_does_not_import_sklearn():
    code = "import sys, fastbp; fastbp.Trainer([2, 2]); print('sklearn' in sys.modules or 'mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# Checks that fail with a reason: keep this list short and explained.
EXPECTED_FAILED = {}


@parametrize_with_checks([MLPClassifier(max_iter=50), MLPRegressor(max_iter=50)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize("dtype", ["float32", np.float32])
def test_dtype_trains_a_pipelines_float64_in_float32(dtype):
    """A Pipeline's scaler hands float64 on: dtype="float32" trains in float32, exactly as the same rows cast
    first would, and predicts from float64 rows too."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)) * 10 + 3
    y = (X[:, 0] > 3).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0,
                                                             dtype=dtype)).fit(X, y)
        scaled = StandardScaler().fit_transform(X)
        direct = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(scaled.astype(np.float32), y)
        regressor = MLPRegressor(hidden_layer_sizes=(8,), max_iter=3, dtype="float32").fit(scaled, X[:, 1])
    assert pipe[-1].coefs_[0].dtype == np.float32 and regressor.coefs_[0].dtype == np.float32
    np.testing.assert_array_equal(pipe[-1].coefs_[0], direct.coefs_[0])
    np.testing.assert_array_equal(pipe.predict_proba(X), direct.predict_proba(scaled.astype(np.float32)))
    assert MLPClassifier().get_params()["dtype"] is None  # default: the input's, as before
