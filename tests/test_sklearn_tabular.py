"""fastbp.sklearn's TabularMLPClassifier / TabularMLPRegressor: scikit-learn's estimator checks, the same model as
Trainer.from_preset, tables with text and missing values, arrays read through a schema, grid searches, pickling."""
import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")
pd = pytest.importorskip("pandas")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastbp import Trainer  # noqa: E402
from fastbp.sklearn import TabularMLPClassifier, TabularMLPRegressor  # noqa: E402

SMALL = dict(hidden_layer_sizes=(32,), n_members=2, random_state=0)
WEIGHTS_ARE_NOT_REPEATS = ("mini-batch training: a row's weight scales its gradient in its batch, a repeated row "
                           "lands in other batches")
EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": WEIGHTS_ARE_NOT_REPEATS,
    "check_sample_weight_equivalence_on_sparse_data": WEIGHTS_ARE_NOT_REPEATS,
    "check_methods_subset_invariance": "float32: a row's outputs can differ in the last bit with the number of "
                                       "rows the GEMM blocks together",
}


@parametrize_with_checks([TabularMLPClassifier(**SMALL), TabularMLPRegressor(**SMALL)],
                         expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _table(n=240, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"size": rng.normal(size=n), "colour": rng.choice(["red", "green", None], n),
                       "count": rng.integers(0, 5, n).astype(float)})
    df.loc[rng.choice(n, 10, replace=False), "size"] = np.nan
    score = df["size"].fillna(0) + np.where(df["colour"] == "red", 1.5, -0.5) + 0.3 * df["count"]
    return df, score.to_numpy()


@pytest.mark.parametrize("n_members,adapters", [(1, None), (3, None), (3, "every_layer")])
def test_the_estimator_is_the_preset_trainer(n_members, adapters):
    """The estimator's parameters reach the Trainer under its names: the same model as Trainer.from_preset with
    those settings, fitted on the same table, bit for bit."""
    df, score = _table()
    y = np.where(score > 0.5, "late", "on time")
    est = TabularMLPClassifier(n_members=n_members, ensemble_adapters=adapters, hidden_layer_sizes=(16, 8), epochs=3,
                               lr=1e-2, impute="median", random_state=5).fit(df, y)
    tr = Trainer.from_preset("recipe", loss="cross_entropy", ensemble=n_members, hidden=(16, 8), epochs=3, lr=1e-2,
                             impute="median", seed=5, **({"ensemble_adapters": adapters} if adapters else {}))
    tr.fit(df, y)
    np.testing.assert_array_equal(est.trainer_.params, tr.params)
    np.testing.assert_array_equal(est.predict_proba(df), tr.predict_proba(df))
    assert est.trainer_.ensemble == n_members and est.trainer_.label_smoothing == pytest.approx(0.1)
    assert est.trainer_.ensemble_adapters == (adapters or "first_layer")
    assert list(est.classes_) == ["late", "on time"] and est.predict(df).dtype == y.dtype
    assert list(est.feature_names_in_) == ["size", "colour", "count"] and est.n_features_in_ == 3
    assert len(est.loss_curve_) == 3


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_a_table_is_read_by_name_and_an_array_by_position():
    df, score = _table()
    est = TabularMLPRegressor(epochs=5, impute="median", **SMALL).fit(df, score)
    np.testing.assert_array_equal(est.predict(df[["count", "size", "colour"]]), est.predict(df))
    with pytest.warns(UserWarning, match="X does not have valid feature names"):  # scikit-learn's warning
        np.testing.assert_array_equal(est.predict(df.to_numpy(dtype=object)), est.predict(df))
    with pytest.raises(ValueError, match="has 2 features, but TabularMLPRegressor is expecting 3"):
        est.predict(np.zeros((4, 2)))


def test_arrays_get_the_schema_a_table_gets():
    """An array's columns go through the learned schema too: a target in the tens of thousands is standardized
    for training and predicted on its own scale."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1000, 4)) * [1, 10, 100, 1000]
    y = 50_000 + 8_000 * np.tanh(X[:, 0]) + 3 * X[:, 2]
    est = TabularMLPRegressor(**SMALL).fit(X, y)
    assert est.trainer_.preprocessing["target_scale"] == pytest.approx(y.std(), rel=1e-3)
    assert not hasattr(est, "feature_names_in_")
    assert est.score(X, y) > 0.9
    positional = pd.DataFrame(X)  # names 0..3: by position, as scikit-learn reads them
    np.testing.assert_array_equal(est.predict(positional), est.predict(X))


def test_grid_search_clone_and_pickle():
    df, score = _table()
    y = (score > 0.5).astype(int)
    search = GridSearchCV(TabularMLPClassifier(epochs=4, impute="median", hidden_layer_sizes=(16,), random_state=0),
                          {"n_members": [1, 2]}, cv=2).fit(df, y)
    assert search.best_params_["n_members"] in (1, 2) and 0.5 < search.best_score_ <= 1
    assert clone(search.best_estimator_).get_params() == search.best_estimator_.get_params()
    again = pickle.loads(pickle.dumps(search.best_estimator_))
    np.testing.assert_array_equal(again.predict_proba(df), search.best_estimator_.predict_proba(df))


def test_random_state():
    df, score = _table()
    fits = [TabularMLPRegressor(epochs=2, impute="median", hidden_layer_sizes=(8,), random_state=seed).fit(df, score)
            for seed in (3, 3, None, None)]
    np.testing.assert_array_equal(fits[0].predict(df), fits[1].predict(df))
    assert not np.array_equal(fits[2].predict(df), fits[3].predict(df))


def test_missing_values_need_impute():
    df, score = _table()
    with pytest.raises(ValueError, match="column 'size' has a missing value .* impute mean|median"):
        TabularMLPRegressor(epochs=1, **SMALL).fit(df, score)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        TabularMLPRegressor(epochs=1, **SMALL).fit(df[["size", "count"]].to_numpy(), score)
    filled = TabularMLPRegressor(epochs=1, impute="mean", **SMALL).fit(df[["size", "count"]].to_numpy(), score)
    assert np.isfinite(filled.predict(df[["size", "count"]].to_numpy())).all()


def test_onnx_export_takes_the_columns_and_gives_what_predict_gives():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"size": rng.normal(size=3000), "colour": rng.choice(["red", "green", "blue"], 3000)})
    y = np.where(df["size"] + (df["colour"] == "red") > 0.3, "a", "b")
    est = TabularMLPClassifier(epochs=3, random_state=0).fit(df, y)  # numeric "auto": bins for "size"
    session = ort.InferenceSession(est.to_onnx().SerializeToString())
    label, proba, valid = session.run(None, {"size": df[["size"]].to_numpy(),
                                             "colour": df[["colour"]].to_numpy().astype(str)})
    np.testing.assert_allclose(proba, est.predict_proba(df), atol=1e-5)
    np.testing.assert_array_equal(label, est.predict(df))
    assert valid.all()


def test_a_frame_without_names_is_read_by_position_whichever_way_it_was_fitted():
    df, score = _table()
    named = TabularMLPRegressor(epochs=2, impute="median", **SMALL).fit(df, score)
    positional = df.set_axis(range(3), axis=1)  # pandas' default names 0, 1, 2
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        np.testing.assert_array_equal(named.predict(positional), named.predict(df))
    unnamed = TabularMLPRegressor(epochs=2, impute="median", **SMALL).fit(positional, score)
    assert not hasattr(unnamed, "feature_names_in_") and unnamed.trainer_.layer_sizes == named.trainer_.layer_sizes
    np.testing.assert_array_equal(unnamed.predict(positional), named.predict(df))  # the same schema and seed
