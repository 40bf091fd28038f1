"""A DataFrame through Trainer.fit takes the path a file takes through `fastbp train`: the same first pass and
schema (kinds, categories, statistics, missing values, the target's classes or scale), stored in the model and
applied by predict, evaluate, save/load, `fastbp predict` and ONNX."""
import numpy as np
import pytest

import fastbp
from fastbp import cli
from fastbp.presets import PRESETS
from fastbp.files.preprocess import Preprocessor
from fastbp.files.sources import open_source

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def mixed(n=600, seed=0):
    """Numbers, text, a pandas category, bools and a nullable integer with missing values."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "x": rng.normal(size=n),
        "color": rng.choice(["red", "green", "blue"], n),
        "size": pd.Categorical(rng.choice(["S", "M", "L"], n)),
        "member": rng.random(n) > 0.5,
        "visits": pd.array(rng.integers(0, 9, n), dtype="Int64"),
    })
    df.loc[rng.choice(n, 20, replace=False), "visits"] = pd.NA
    late = np.where(df.x + (df.color == "red") - 0.5 * df.member > 0.3, "late", "on time")
    return df, late


def test_a_dataframe_learns_the_schema_a_file_gives(tmp_path):
    df, y = mixed()
    tr = fastbp.Trainer([9, 16, 2], optimizer="adam", lr=0.01, epochs=15, impute="median", seed=0).fit(df, y)
    pq.write_table(pa.Table.from_pandas(df.assign(late=y), preserve_index=False), tmp_path / "d.parquet")
    prep, _, _ = Preprocessor.fit(open_source(tmp_path / "d.parquet"), "late", impute="median")
    state = dict(tr.preprocessing, target="late")  # y came without a name: stored as "target"
    assert tr.preprocessing["target"] == "target" and prep.matches(state)
    assert list(tr.feature_names_in_) == ["x", "color", "size", "member", "visits"]
    np.testing.assert_array_equal(tr.classes_, ["late", "on time"])
    predicted = tr.predict(df)
    assert predicted.dtype.kind in "OU" and np.mean(predicted == y) > 0.9
    # the command line reads the model's schema from the file: the same predictions
    tr.save(tmp_path / "m.fbp")
    assert cli.main(["predict", str(tmp_path / "m.fbp"), str(tmp_path / "d.parquet"), "--out",
                     str(tmp_path / "p.npy"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy", allow_pickle=True), predicted)
    loaded = fastbp.load(tmp_path / "m.fbp")
    np.testing.assert_array_equal(loaded.predict_proba(df), tr.predict_proba(df))
    np.testing.assert_array_equal(loaded.classes_, tr.classes_)
    # columns by name, whatever their order, with others beside them
    np.testing.assert_array_equal(tr.predict(df[df.columns[::-1]].assign(extra=1)), predicted)


def test_missing_values_follow_impute():
    df, y = mixed(n=200)
    with pytest.raises(fastbp.InputError, match=r"column 'visits' has a missing value at row \d+; impute mean\|median"):
        fastbp.Trainer([9, 2], epochs=1).fit(df, y)
    tr = fastbp.Trainer([9, 2], epochs=1, impute="mean").fit(df, y)
    fill = tr.preprocessing["fill"][4]
    assert fill == pytest.approx(df.visits.astype(float).mean())
    text = df.assign(color=df.color.where(df.index % 7 != 0, None))  # a missing text cell: its own category
    tr = fastbp.Trainer([10, 2], epochs=1, impute="mean").fit(text, y)
    assert "(missing)" in tr.preprocessing["categories"][1][-1] or len(tr.preprocessing["categories"][1]) == 4


def test_unknown_categories_and_widths_are_explained():
    df, y = mixed(n=200)
    with pytest.raises(fastbp.InputError, match=r"5 columns encode to 9 inputs \('color' one per category: 3; "
                                                r"'size' one per category: 3\).*layer_sizes\[0\] = 9"):
        fastbp.Trainer([5, 2], impute="mean").fit(df, y)
    tr = fastbp.Trainer([9, 2], epochs=1, impute="mean").fit(df, y)
    new = df.head(4).assign(color=["red", "purple", "red", "teal"])
    with pytest.warns(UserWarning, match=r"column 'color': 2 row\(s\) hold categories not seen in training"):
        tr.predict(new)
    with pytest.raises(fastbp.InputError, match=r"y has 3 classes .* 2 output\(s\).*layer_sizes\[-1\] = 3"):
        fastbp.Trainer([9, 2], impute="mean").fit(df, np.array(["a", "b", "c"])[np.arange(200) % 3])


def test_a_regression_target_is_standardized_and_predicted_on_its_scale(tmp_path):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"carat": rng.uniform(0.2, 3, 800), "cut": rng.choice(["Fair", "Good", "Ideal"], 800)})
    df["price"] = 4000 * df.carat + 800 * (df.cut == "Ideal") + rng.normal(0, 100, 800)
    tr = fastbp.Trainer([4, 32, 1], loss="mse", optimizer="adam", lr=0.01, epochs=40, seed=0).fit(df, "price")
    assert tr.preprocessing["target"] == "price" and tr.preprocessing["target_scale"] > 1000
    predicted = tr.predict(df)
    result = tr.evaluate(df, "price")
    assert result["rmse"] == pytest.approx(np.sqrt(sklearn_metrics.mean_squared_error(df.price, predicted)), rel=1e-4)
    assert result["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(df.price, predicted), rel=1e-4)
    assert result["r2"] == pytest.approx(sklearn_metrics.r2_score(df.price, predicted), rel=1e-4)
    assert result["r2"] > 0.95
    np.testing.assert_array_equal(tr.evaluate(df.drop(columns="price"), df.price)["rmse"], result["rmse"])
    # the history's validation errors are on the price's scale too (the model learns it standardized)
    val = df.head(200)
    tr.fit(df, "price", validation_data=(val, "price"))
    last, now = tr.history[-1], tr.evaluate(val, "price")
    for name in ("val_rmse", "val_mae", "val_r2"):
        assert last[name] == pytest.approx(now[name[4:]], rel=1e-6)


def test_numeric_arrays_are_read_by_position_after_a_table():
    df, y = mixed(n=200)
    numeric = df[["x"]].assign(v=df.visits.fillna(0).astype(float))
    tr = fastbp.Trainer([2, 8, 2], epochs=2).fit(numeric, y)
    np.testing.assert_array_equal(tr.predict_proba(numeric.to_numpy()), tr.predict_proba(numeric))
    with pytest.raises(fastbp.InputError, match=r"X has shape \(200, 3\), but the model reads 2 columns \(x, v\)"):
        tr.predict(numeric.assign(z=1.0).to_numpy())


def test_polars_and_arrow_tables_give_what_pandas_gives():
    pl = pytest.importorskip("polars")
    df, y = mixed(n=300)
    df = df.astype({"size": str})
    reference = fastbp.Trainer([9, 8, 2], epochs=3, impute="mean", seed=2).fit(df, y)
    for table in (pl.from_pandas(df), pa.Table.from_pandas(df, preserve_index=False)):
        tr = fastbp.Trainer([9, 8, 2], epochs=3, impute="mean", seed=2).fit(table, y)
        assert Preprocessor(tr.preprocessing).matches(reference.preprocessing)
        np.testing.assert_array_equal(tr.params, reference.params)
        np.testing.assert_array_equal(tr.predict(table), reference.predict(df))


def test_a_dataframe_model_exports_its_columns_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    df, y = mixed(n=300)
    df = df.astype({"size": str, "visits": float}).fillna({"visits": 0.0})
    tr = fastbp.Trainer([9, 8, 2], epochs=3, seed=0).fit(df, y)
    session = ort.InferenceSession(tr.to_onnx().SerializeToString())
    feeds = {}
    for c, kinds in zip(tr.preprocessing["features"], tr.preprocessing["categories"]):
        values = df[c].to_numpy()
        # categories as strings; numbers (bools too: 1/0) as double
        feeds[c] = (values.astype(str).astype(object) if kinds is not None
                    else values.astype(np.float64)).reshape(-1, 1)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    np.testing.assert_array_equal(got["label"], tr.predict(df))
    np.testing.assert_allclose(got["probabilities"], tr.predict_proba(df), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss,target", [("cross_entropy", "labels"), ("binary_cross_entropy", "two"),
                                         ("binary_cross_entropy", "multilabel"), ("mse", "values")])
def test_hidden_takes_the_widths_from_the_first_fit(loss, target, tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 5))
    y = {"labels": np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)],
         "two": X[:, 0] > 0, "multilabel": (X[:, :3] > 0).astype(int), "values": X[:, :2] @ [[1.0, 2], [3, 4]]}[target]
    n_out = {"labels": 3, "two": 1, "multilabel": 3, "values": 2}[target]
    deferred = fastbp.Trainer(hidden=(16, 8), loss=loss, optimizer="adam", lr=0.01, epochs=3, seed=4)
    with pytest.raises(fastbp.NotFittedError, match="layer sizes, which come from the first fit's data"):
        deferred.decision_function(X)
    assert "hidden layers [16, 8]" in deferred.summary() and "hidden=(16, 8)" in repr(deferred)
    deferred.fit(X, y)
    explicit = fastbp.Trainer([5, 16, 8, n_out], loss=loss, optimizer="adam", lr=0.01, epochs=3, seed=4).fit(X, y)
    assert deferred.layer_sizes == [5, 16, 8, n_out]
    np.testing.assert_array_equal(deferred.params, explicit.params)  # the same seeded start, the same steps
    deferred.save(tmp_path / "m.fbp")
    np.testing.assert_array_equal(fastbp.load(tmp_path / "m.fbp").predict(X), explicit.predict(X))


def test_hidden_takes_the_widths_from_a_table():
    df, y = mixed(n=200)
    tr = fastbp.Trainer(hidden=(8,), epochs=1, impute="mean").fit(df, y)
    assert tr.layer_sizes == [9, 8, 2]
    reg = fastbp.Trainer(hidden=(), loss="mse", epochs=1, impute="mean").fit(df.assign(v=df.x * 3), "v")
    assert reg.layer_sizes == [9, 1]
    for bad, message in [(dict(), "give layer_sizes"), (dict(layer_sizes=[9, 2], hidden=(3,)), "not both"),
                         (dict(hidden=(0,)), r"every hidden width \(in \(0,\)\) must be >= 1"),
                         (dict(hidden="64"), "hidden must be a list of widths"),
                         (dict(hidden=(4,), activation=["relu", "tanh"]), "expected 1, got 2")]:
        with pytest.raises(fastbp.InputError, match=message):
            fastbp.Trainer(**bad)


def test_fit_file_is_what_fastbp_train_runs(tmp_path):
    df, y = mixed(n=900)
    path = tmp_path / "d.csv"
    import pyarrow.csv as pcsv
    pcsv.write_csv(pa.Table.from_pandas(df.assign(late=y), preserve_index=False), path)
    assert cli.main(["train", str(path), "--target", "late", "--hidden", "12", "--epochs", "3", "--impute", "mean",
                     "--val-split", "0.2", "--preset", "plain", "--quiet", "--out", str(tmp_path / "cli.fbp")]) == 0
    from_cli = fastbp.load(tmp_path / "cli.fbp")
    tr = fastbp.Trainer(hidden=(12,), optimizer="adam", epochs=3, impute="mean", seed=0)
    tr.fit_file(path, "late", val_split=0.2)
    assert tr.layer_sizes == from_cli.layer_sizes and Preprocessor(tr.preprocessing).matches(from_cli.preprocessing)
    np.testing.assert_array_equal(tr.params, from_cli.params)  # the same first pass, holdout, spill and steps
    assert [h["val_loss"] for h in tr.history] == [h["val_loss"] for h in from_cli.history]
    np.testing.assert_array_equal(tr.predict(df), from_cli.predict(df))  # and the DataFrame through its schema
    # continued training keeps the schema; a file that prepares otherwise is refused
    tr.fit_file(path, "late", val_split=0.2)
    assert len(tr.history) == 6
    pcsv.write_csv(pa.Table.from_pandas(df.assign(late=y, color="red"), preserve_index=False), tmp_path / "o.csv")
    with pytest.raises(fastbp.InputError, match="differently prepared data"):
        tr.fit_file(tmp_path / "o.csv", "late")
    with pytest.raises(fastbp.InputError, match="fit_file needs target="):
        fastbp.Trainer(hidden=(4,)).fit_file(path)


@pytest.mark.parametrize("numeric", ["quantile", "ple"])
def test_numeric_encodings_from_the_first_pass(numeric, tmp_path):
    """Quantile bins from the first pass's sample: the quantile transform (unit variance over the training
    rows) and piecewise-linear encoding (an input per bin), the same from a DataFrame, the CLI and ONNX."""
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"x": rng.exponential(size=2000), "k": rng.integers(0, 3, 2000),
                       "c": rng.choice(["a", "b"], 2000)})
    y = np.sin(3 * df.x) + df.k
    tr = fastbp.Trainer(hidden=(16,), loss="mse", optimizer="adam", lr=0.01, epochs=5, numeric=numeric,
                        numeric_bins=8).fit(df, y)
    edges = tr.preprocessing["edges"]
    assert edges[2] is None and len(edges[1]) == 3  # k: 3 distinct values, categorical c: none
    X, _ = Preprocessor(tr.preprocessing).transform({c: df[c].to_numpy() for c in df}, with_target=False)
    if numeric == "ple":
        assert len(edges[0]) == 9 and tr.layer_sizes[0] == 8 + 2 + 2
        np.testing.assert_allclose(edges[0], np.quantile(df.x, np.linspace(0, 1, 9)))
        ramps = X[:, :8]
        assert ramps.min() == 0 and ramps.max() == 1
        # the bins a value has passed are 1, the one it is in partial, the others 0
        assert np.all(np.diff(ramps, axis=1) <= 0)
    else:
        assert tr.layer_sizes[0] == 4
        assert X[:, 0].mean() == pytest.approx(0, abs=0.01) and X[:, 0].std() == pytest.approx(1, abs=0.01)
        order = np.argsort(df.x.to_numpy())
        assert np.all(np.diff(X[order, 0]) >= 0)  # monotone in the value
    pq.write_table(pa.Table.from_pandas(df.assign(y=y), preserve_index=False), tmp_path / "d.parquet")
    assert cli.main(["train", str(tmp_path / "d.parquet"), "--target", "y", "--hidden", "16", "--epochs", "1",
                     "--numeric", numeric, "--numeric-bins", "8", "--val-split", "0", "--quiet", "--out",
                     str(tmp_path / "m.fbp")]) == 0
    from_cli = fastbp.load(tmp_path / "m.fbp")
    assert from_cli.preprocessing["edges"] == Preprocessor.fit(open_source(tmp_path / "d.parquet"), "y",
                                                                numeric=numeric, bins=8)[0].state["edges"]
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    session = ort.InferenceSession(tr.to_onnx().SerializeToString())
    feeds = {"x": df.x.to_numpy().copy().reshape(-1, 1), "k": df.k.to_numpy(float).reshape(-1, 1),
             "c": df.c.to_numpy(object).reshape(-1, 1)}
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    np.testing.assert_allclose(got["variable"][:, 0], tr.predict(df), rtol=1e-4, atol=1e-4)
    assert got["is_valid"].all()
    feeds["x"][0, 0] = np.inf
    assert not session.run(["is_valid"], feeds)[0][0]


def test_numeric_auto_bins_where_the_rows_fill_them():
    """numeric="auto" chooses piecewise-linear bins with 100 training rows per binned input, else standardizes;
    the schema stores the choice (a model file never says "auto")."""
    rng = np.random.default_rng(1)
    frame = lambda n: pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n)})  # noqa: E731
    many, few = frame(3300), frame(3100)  # 2 columns x 16 bins: 3,200 rows decide
    binned = fastbp.Trainer(hidden=(4,), loss="mse", epochs=1, numeric="auto").fit(many, many.x)
    assert binned.preprocessing["numeric"] == "ple" and binned.layer_sizes[0] == 32
    plain = fastbp.Trainer(hidden=(4,), loss="mse", epochs=1, numeric="auto").fit(few, few.x)
    assert plain.preprocessing["numeric"] == "standard" and "edges" not in plain.preprocessing
    with pytest.raises(fastbp.InputError, match="'numeric' must be one of standard, quantile, ple"):
        Preprocessor({**plain.preprocessing, "numeric": "auto"})


def test_cli_presets_fill_the_options_left_out(tmp_path):
    """--preset recipe (the default) trains 4 members for 30 epochs of a cosine schedule on every row; plain one
    model for 10 epochs at a constant lr; an option given wins; --early-stopping holds 10 % of the rows out unless
    --val-split says otherwise, and --val-split 0 turns early stopping off."""
    df, late = mixed(400)
    pq.write_table(pa.Table.from_pandas(df.assign(late=late), preserve_index=False), tmp_path / "d.parquet")

    def options(*args):
        assert cli.main(["train", str(tmp_path / "d.parquet"), "--target", "late", "--hidden", "8", "--quiet",
                         "--impute", "mean", "--out", str(tmp_path / "m.fbp"), *args]) == 0
        model = fastbp.load(tmp_path / "m.fbp")
        return model.metadata["cli_options"], model

    recipe, model = options("--epochs", "3")
    assert (recipe["early_stopping"], recipe["val_split"], recipe["optimizer"], recipe["numeric"],
            recipe["lr_schedule"]) == (False, 0.0, "adamw", "auto", "cosine")
    assert "val_loss" not in model.history[-1] and model.ensemble == recipe["ensemble"] == 4
    assert PRESETS["recipe"]["epochs"] == 30
    stopping, model = options("--epochs", "3", "--early-stopping")
    assert (stopping["early_stopping"], stopping["val_split"]) == (True, 0.1) and "val_loss" in model.history[-1]
    plain, model = options("--preset", "plain")
    assert (plain["early_stopping"], plain["val_split"], plain["lr_schedule"]) == (False, 0.0, "constant")
    assert model.ensemble == 1
    assert len(model.history) == 10 and "val_loss" not in model.history[-1]
    given, _ = options("--epochs", "2", "--val-split", "0", "--optimizer", "sgd")
    assert (given["early_stopping"], given["val_split"], given["optimizer"]) == (False, 0.0, "sgd")
    # the recipe's own epochs on a small table: 400 rows are 2 steps an epoch, so its 720 steps ask for 360 epochs
    # and get 4 x 30; --epochs given are the epochs (above: 3)
    small, model = options()
    assert (model.epochs, small["min_steps"], recipe["min_steps"], len(model.history)) == (30, 720, 0, 120)


@pytest.mark.parametrize("preset", ["recipe", "plain"])
def test_trainer_from_preset_trains_as_the_cli_preset_does(tmp_path, preset):
    """Trainer.from_preset gives the Python API the CLI's presets from the same table of settings: the same
    optimizer, schedule, encoding, ensemble and hidden widths as `fastbp train --preset NAME`; settings given win."""
    df, late = mixed(300)
    pq.write_table(pa.Table.from_pandas(df.assign(late=late), preserve_index=False), tmp_path / "d.parquet")
    assert cli.main(["train", str(tmp_path / "d.parquet"), "--target", "late", "--quiet", "--impute", "mean",
                     "--epochs", "2", "--preset", preset, "--out", str(tmp_path / "m.fbp")]) == 0
    from_cli = fastbp.load(tmp_path / "m.fbp")
    trainer = fastbp.Trainer.from_preset(preset, epochs=2, impute="mean").fit(df, late)
    for name in ("optimizer", "lr", "epochs", "min_steps", "numeric", "ensemble", "label_smoothing", "weight_decay",
                 "batch_size", "activation"):
        assert getattr(trainer, name) == getattr(from_cli, name), name
    assert type(trainer.lr_schedule) is type(from_cli.lr_schedule)
    assert vars(trainer.lr_schedule) == vars(from_cli.lr_schedule)
    assert trainer.layer_sizes[1:-1] == from_cli.layer_sizes[1:-1]
    assert len(trainer.history) == len(from_cli.history) == 2


def test_trainer_from_preset_takes_the_settings_given_and_names_unknown_presets():
    trainer = fastbp.Trainer.from_preset("recipe", layer_sizes=[4, 8, 2], ensemble=1, lr=1e-2)
    assert (trainer.layer_sizes, trainer.ensemble, trainer.lr, trainer.optimizer) == ([4, 8, 2], 1, 1e-2, "adamw")
    assert (trainer.epochs, trainer.min_steps, trainer.activation, trainer.label_smoothing) == (30, 720, "gelu", 0.1)
    assert fastbp.Trainer.from_preset("recipe", loss="mse").label_smoothing == 0  # cross-entropy's only
    # epochs given are the epochs, unless min_steps is given too
    assert fastbp.Trainer.from_preset("recipe", epochs=5).min_steps == 0
    assert fastbp.Trainer.from_preset("recipe", epochs=5, min_steps=50).min_steps == 50
    with pytest.raises(fastbp.InputError, match="unknown preset 'fast'; choose one of plain, recipe"):
        fastbp.Trainer.from_preset("fast")
