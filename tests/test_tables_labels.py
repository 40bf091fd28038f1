"""What data scientists pass to Trainer: DataFrames and Tables by column name, labels of any type,
and the errors for what cannot work (unfitted models, outputs that cannot hold the classes, masks,
sparse matrices, class_weight keys that are not classes)."""
import warnings

import numpy as np
import pytest

import fastbp
from fastbp.files.modelfile import read_model, write_model

pd = pytest.importorskip("pandas")


def frame(n=240, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "n": rng.integers(0, 5, n)})
    return df, np.where(df.a + df.b > 0, "yes", "no")


def test_dataframe_columns_are_matched_by_name():
    df, y = frame()
    tr = fastbp.Trainer([3, 8, 2], epochs=3, lr=0.1, seed=1).fit(df, y)
    assert list(tr.feature_names_in_) == ["a", "b", "n"]
    expected = tr.predict_proba(df.to_numpy())
    np.testing.assert_array_equal(tr.predict_proba(df[["n", "a", "b"]]), expected)  # reordered columns
    np.testing.assert_array_equal(tr.predict_proba(df.assign(c=1.0)), expected)  # other columns are not read
    with pytest.raises(fastbp.InputError, match=r"column\(s\) 'n', used in training, not in the data"):
        tr.predict(df[["a", "b"]].assign(c=1.0))
    with pytest.raises(fastbp.InputError, match=r"column 'when' has type timestamp.*convert it to numbers"):
        fastbp.Trainer([4, 2]).fit(df.assign(s="x", when=pd.Timestamp("2026-01-01"))[["a", "s", "when", "b"]], y)
    with pytest.raises(fastbp.InputError, match="'n' has a missing value at row 3"):  # a nullable integer's NA
        tr.predict(df.astype({"n": "Int64"}).assign(n=lambda d: d.n.mask(d.index == 3)))
    twice = df.set_axis(["a", "a", "n"], axis=1)
    for call in (lambda: fastbp.Trainer([3, 8, 2]).fit(twice, y), lambda: tr.predict(twice)):
        with pytest.raises(fastbp.InputError, match="column name 'a' more than once"):
            call()


@pytest.mark.parametrize("library", ["polars", "pyarrow"])
def test_polars_frames_and_arrow_tables(library):
    module = pytest.importorskip(library)
    df, y = frame()
    table = module.from_pandas(df) if library == "polars" else module.Table.from_pandas(df, preserve_index=False)
    tr = fastbp.Trainer([3, 8, 2], epochs=2, seed=1).fit(table, y)
    assert list(tr.feature_names_in_) == ["a", "b", "n"]
    np.testing.assert_array_equal(tr.predict(table), tr.predict(df))
    np.testing.assert_allclose(tr.predict_proba(table), tr.predict_proba(df.to_numpy()), rtol=1e-6)


@pytest.mark.parametrize("labels,loss,n_out", [
    (np.array(["cat", "dog", "emu"]), "cross_entropy", 3),
    (np.array([10, 20, 30]), "cross_entropy", 3),        # integers not starting at 0
    (np.array([-1, 1]), "binary_cross_entropy", 1),
    (np.array([False, True]), "binary_cross_entropy", 1),
    (np.array([0.5, 2.5]), "cross_entropy", 2),
])
def test_labels_of_any_type_come_back_as_given(labels, loss, n_out, tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 4))
    index = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5) * (len(labels) > 2)
    y = labels[index]
    tr = fastbp.Trainer([4, 16, n_out], loss=loss, optimizer="adam", lr=0.01, epochs=30, seed=0).fit(X, y)
    np.testing.assert_array_equal(tr.classes_, labels)
    predicted = tr.predict(X)
    assert predicted.dtype.kind == np.asarray(labels).dtype.kind or predicted.dtype == object
    assert np.mean(predicted == y) > 0.75
    assert tr.evaluate(X, y)["accuracy"] == pytest.approx(np.mean(predicted == y))
    tr.save(tmp_path / "m.fbp")
    loaded = fastbp.load(tmp_path / "m.fbp")
    np.testing.assert_array_equal(loaded.classes_, tr.classes_)
    np.testing.assert_array_equal(loaded.predict(X), predicted)
    with pytest.raises(fastbp.InputError, match="not seen in training"):
        tr.fit(X[:3], np.array([labels[0], labels[0], "zebra" if labels.dtype.kind == "U" else 99], dtype=object))


def test_index_labels_keep_their_outputs():
    # integers 0..K-1 are output indices, as in PyTorch: a class missing from the data keeps its output
    X = np.random.default_rng(0).normal(size=(50, 3))
    tr = fastbp.Trainer([3, 4, 3], epochs=1).fit(X, np.arange(50) % 2 * 2)  # labels 0 and 2 only
    np.testing.assert_array_equal(tr.classes_, [0, 1, 2])
    assert set(tr.predict(X)) <= {0, 1, 2}


def test_predictions_need_a_fitted_model():
    X = np.random.default_rng(0).normal(size=(20, 3))
    tr = fastbp.Trainer([3, 4, 2])
    for call in (lambda: tr.predict(X), lambda: tr.predict_proba(X), lambda: tr.evaluate(X, np.arange(20) % 2)):
        with pytest.raises(fastbp.NotFittedError, match="call fit") as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, AttributeError)
    assert tr.decision_function(X).shape == (20, 2)  # the current parameters, any time
    assert not tr.is_fitted and tr.fit(X, np.arange(20) % 2).is_fitted


def test_output_layer_must_fit_the_classes():
    X = np.random.default_rng(0).normal(size=(40, 4))
    y = np.array(["a", "b", "c", "d"])[np.arange(40) % 4]
    with pytest.raises(fastbp.InputError, match=r"4 classes .* can tell 3 apart; use layer_sizes\[-1\] = 4"):
        fastbp.Trainer([4, 3]).fit(X, y)
    with pytest.warns(UserWarning, match=r"64 outputs .* y has 2 classes: 62 outputs .* layer_sizes\[-1\] = 2"):
        fastbp.Trainer([4, 64], epochs=1).fit(X, np.arange(40) % 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastbp.Trainer([4, 3], epochs=1).fit(X, np.arange(40) % 2)  # one spare output: no warning
    assert not [w for w in caught if "outputs" in str(w.message)]
    with pytest.raises(fastbp.InputError, match=r"expects 5 \(layer_sizes\[0\] = 5\); build the Trainer with "
                                                r"layer_sizes\[0\] = 4"):
        fastbp.Trainer([5, 3]).fit(X, np.arange(40) % 2)


def test_class_weight_keys_are_classes():
    X = np.random.default_rng(0).normal(size=(60, 3))
    y = np.array(["no", "yes"])[np.arange(60) % 2]
    a = fastbp.Trainer([3, 4, 2], epochs=2, seed=0).fit(X, y, class_weight={"yes": 3.0})
    b = fastbp.Trainer([3, 4, 2], epochs=2, seed=0).fit(X, y, sample_weight=np.where(y == "yes", 3.0, 1.0))
    np.testing.assert_array_equal(a.params, b.params)
    numeric = fastbp.Trainer([3, 4, 3], epochs=1)
    for bad in ({0.7: 100.0}, {"a": 1.0}):
        with pytest.raises(fastbp.InputError, match=r"not a class; the classes are \[0, 1, 2\]"):
            numeric.fit(X, np.arange(60) % 3, class_weight=bad)


def test_masked_and_sparse_inputs_are_refused_with_a_hint():
    X = np.random.default_rng(0).normal(size=(20, 3))
    masked = np.ma.masked_array(X, mask=np.zeros_like(X, dtype=bool))
    tr = fastbp.Trainer([3, 2], epochs=1).fit(masked, np.arange(20) % 2)  # nothing masked: its data
    masked[0, 1] = np.ma.masked
    with pytest.raises(fastbp.InputError, match=r"masked array with 1 masked entries.*filled"):
        tr.fit(masked, np.arange(20) % 2)
    sparse = pytest.importorskip("scipy.sparse")
    for matrix in (sparse.csr_matrix(X), sparse.dok_matrix(X)):  # a dok_matrix is a dict, not a table's columns
        with pytest.raises(TypeError, match=r"scipy sparse matrix \(20, 3\).*toarray\(\)"):
            tr.predict(matrix)


def test_numpy_scalars_are_accepted_as_settings():
    X = np.random.default_rng(0).normal(size=(20, 3))
    tr = fastbp.Trainer([3, 4, 2], lr=np.float32(0.1), momentum=np.float64(0.5), dropout=np.float32(0.1),
                        batch_size=np.int64(8), epochs=np.int32(1), seed=np.int64(3), clip_grad_norm=np.float32(1))
    tr.fit(X, np.arange(20) % 2)
    assert tr.batch_size == 8 and tr.dropout == pytest.approx(0.1)


def test_summary_describes_the_model():
    df, y = frame(n=50)
    tr = fastbp.Trainer([3, 16, 2], optimizer="adam", epochs=1, n_threads=1)
    text = tr.summary()
    assert "MLP [3, 16, 2], 98 parameters, float32" in text and "not trained yet" in text
    assert "3 -> 16  relu" in text and "softmax in the loss" in text and "threads 1" in text
    text = tr.fit(df, y).summary()
    assert "classes ['no', 'yes']" in text and "features ['a', 'b', 'n']" in text and "trained 1 epoch(s)" in text


@pytest.mark.parametrize("entry,value", [("classes", ["a", 1]), ("classes", ["b", "a"]), ("classes", list(range(9))),
                                         ("feature_names", ["a"]), ("feature_names", ["a", "a", "b"])])
def test_hostile_classes_and_feature_names_in_model_files(entry, value, tmp_path):
    df, y = frame(n=30)
    fastbp.Trainer([3, 2], epochs=1).fit(df, y).save(tmp_path / "m.fbp")
    config, arrays = read_model(tmp_path / "m.fbp")
    config[entry] = value
    write_model(tmp_path / "bad.fbp", config, arrays)
    with pytest.raises(fastbp.ModelFileError, match="does not describe a valid fastbp model"):
        fastbp.load(tmp_path / "bad.fbp")
