"""Files end to end: the schema learned in training is what predict and evaluate apply (issue cases, via the CLI)."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastbp

pa = pytest.importorskip("pyarrow")
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from fastbp.files.preprocess import Preprocessor  # noqa: E402
from fastbp.files.scan import holdout_mask  # noqa: E402
from fastbp.files.scan import MEDIAN_SAMPLE, ColumnScan  # noqa: E402
from fastbp.files.sources import open_source  # noqa: E402


def cli(*args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def train(data, target, *extra, out="m.fbp"):
    code, out_text, err = cli("train", data, "--target", target, "--hidden", "16", "--threads", "1", "--out", out,
                              "--lr", "0.01", "--batch-size", "32", *extra)
    assert code == 0, err
    return out_text


def evaluate(model, data, *extra):
    code, out, err = cli("evaluate", model, data, *extra)
    assert code == 0, err
    return json.loads(out)


def test_a_predict_file_with_only_numeric_looking_categories_is_read_as_text(tmp_path):
    rng = np.random.default_rng(0)
    code = rng.choice(["1", "2", "x", "y"], size=2000)
    label = np.where(np.isin(code, ["1", "x"]), "a", "b")
    (tmp_path / "train.csv").write_text("code,label\n" + "".join(f"{c},{t}\n" for c, t in zip(code, label)))
    numeric = np.isin(code, ["1", "2"])
    (tmp_path / "test.csv").write_text("code,label\n" + "".join(f"{c},{t}\n" for c, t in
                                                               zip(code[numeric], label[numeric])))
    train(tmp_path / "train.csv", "label", "--epochs", "10", "--quiet")
    assert evaluate("m.fbp", tmp_path / "test.csv")["accuracy"] == 1.0
    assert Preprocessor(fastbp.load("m.fbp").preprocessing).state["categories"] == [["1", "2", "x", "y"]]


@pytest.mark.slow
def test_a_latin1_csv_needs_its_encoding_and_then_matches_a_utf8_file(tmp_path):
    rng = np.random.default_rng(1)
    city = rng.choice(["München", "Berlin", "Köln"], size=1500)
    label = (city == "München").astype(int)
    text = "city,label\n" + "".join(f"{c},{t}\n" for c, t in zip(city, label))
    (tmp_path / "latin1.csv").write_bytes(text.encode("latin-1"))
    (tmp_path / "utf8.csv").write_text(text, encoding="utf-8")
    code, _, err = cli("train", tmp_path / "latin1.csv", "--target", "label", "--quiet")
    assert code == 2 and "'city'" in err and "--encoding" in err and "b'" not in err
    train(tmp_path / "latin1.csv", "label", "--encoding", "latin-1", "--epochs", "10", "--quiet")
    assert fastbp.load("m.fbp").preprocessing["categories"] == [["Berlin", "Köln", "München"]]
    assert evaluate("m.fbp", tmp_path / "utf8.csv")["accuracy"] == 1.0
    code, _, err = cli("train", tmp_path / "latin1.csv", "--target", "label", "--encoding", "klingon")
    assert code == 2 and "unknown text encoding 'klingon'" in err


def _european_csv(tmp_path, n=600):
    """The same table as a comma CSV and as a ';'-separated one with decimal commas (pandas' sep=';',
    decimal=',')."""
    rng = np.random.default_rng(3)
    x, size = rng.normal(size=n).tolist(), rng.choice(["S", "M", "L"], n)
    label = np.where(np.array(x) + (size == "L") > 0.3, "yes", "no")
    rows = list(zip(x, size, label))
    (tmp_path / "plain.csv").write_text("x,size,label\n" + "".join(f"{a!r},{b},{c}\n" for a, b, c in rows))
    (tmp_path / "european.csv").write_text("x;size;label\n" + "".join(f"{a!r};{b};{c}\n".replace(".", ",")
                                                                      for a, b, c in rows))
    return tmp_path / "plain.csv", tmp_path / "european.csv"


def test_a_csv_with_another_separator_and_decimal_commas_trains_as_the_plain_one(tmp_path):
    plain, european = _european_csv(tmp_path)
    settings = dict(hidden=[8], epochs=3, batch_size=32, n_threads=1, seed=0)
    reference = fastbp.Trainer(**settings).fit_file(plain, "label")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no decimal-comma warning: the numbers are read as numbers
        ours = fastbp.Trainer(**settings).fit_file(european, "label", sep=";", decimal=",")
    assert ours.preprocessing["categories"] == reference.preprocessing["categories"] == [None, ["L", "M", "S"]]
    np.testing.assert_array_equal(ours.params, reference.params)
    with pytest.warns(UserWarning, match="column 'x' is read as text, but its values look like numbers written "
                                         "with a decimal comma"):
        fastbp.Trainer(**settings).fit_file(european, "label", sep=";")


def test_sep_and_decimal_on_the_command_line(tmp_path):
    plain, european = _european_csv(tmp_path)
    model = tmp_path / "m.fbp"
    code, _, err = cli("train", european, "--target", "label", "--quiet", "--out", model)
    assert code == 2 and "It seems to separate columns with ';'" in err and "--sep ';'" in err
    train(european, "label", "--sep", ";", "--decimal", ",", "--epochs", "3", "--quiet", out=model)
    assert evaluate(model, european, "--sep", ";", "--decimal", ",") == evaluate(model, plain)
    (tmp_path / "tabs.txt").write_text(plain.read_text().replace(",", "\t"))
    assert evaluate(model, tmp_path / "tabs.txt", "--sep", "\\t") == evaluate(model, plain)  # typed as \t
    for args, message in ((["--sep", ";;"], "sep must be one character"),
                          (["--sep", ",", "--decimal", ","], "sep and decimal are both ','"),
                          (["--decimal", ","], "sep and decimal are both ','")):
        code, _, err = cli("evaluate", model, plain, *args)
        assert code == 2 and message in err, err
    np.save(tmp_path / "d.npy", np.zeros((3, 3)))
    code, _, err = cli("evaluate", model, tmp_path / "d.npy", "--sep", ";")
    assert code == 2 and "--sep applies to CSV files only" in err


def test_standardization_is_exact_for_a_large_offset(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=20000)
    pq.write_table(pa.table({"x": 1e9 + x, "noise": rng.normal(size=x.size), "label": (x > 0).astype(np.int64)}),
                   tmp_path / "d.parquet", row_group_size=3000)
    for chunking in ([0], [1, 2]):
        source = open_source(tmp_path / "d.parquet")
        prep, _, _ = Preprocessor.fit(source, "label")
        np.testing.assert_allclose(prep.state["mean"][0], np.mean(1e9 + x), rtol=1e-14)
        np.testing.assert_allclose(prep.state["scale"][0], np.std(1e9 + x), rtol=1e-9)
    train(tmp_path / "d.parquet", "label", "--epochs", "5", "--quiet")
    assert evaluate("m.fbp", tmp_path / "d.parquet")["accuracy"] > 0.97


def test_median_fill_is_the_median_of_the_whole_sorted_file(tmp_path):
    values = np.arange(100_001, dtype=float)  # sorted: the old reservoir kept the last chunks' values
    x = values.copy()
    x[::97] = np.nan
    pq.write_table(pa.table({"x": x, "label": np.arange(x.size) % 2}), tmp_path / "d.parquet",
                   row_group_size=5000)
    prep, _, _ = Preprocessor.fit(open_source(tmp_path / "d.parquet"), "label", impute="median")
    true = np.nanmedian(x)
    assert abs(prep.state["fill"][0] - true) < 0.02 * x.size  # a uniform sample of 10,000: within ~1% of rank


def test_the_reservoir_is_uniform_whatever_the_chunking():
    rng = np.random.default_rng(0)
    kept = []
    for trial in range(40):
        scan = ColumnScan("x", "number", 10, keep_sample=True)
        values = np.arange(4 * MEDIAN_SAMPLE, dtype=float)
        for piece in np.array_split(values, [MEDIAN_SAMPLE // 3, 25_000, 25_001]):
            scan.update(piece, np.arange(piece.size), rng)
        assert scan.sample.size == MEDIAN_SAMPLE and np.unique(scan.sample).size == MEDIAN_SAMPLE
        kept.append(np.histogram(scan.sample, bins=4, range=(0, values.size))[0])
    share = np.mean(kept, axis=0) / MEDIAN_SAMPLE
    np.testing.assert_allclose(share, 0.25, atol=0.01)  # each quarter of the stream equally represented


@pytest.mark.slow
def test_pandas_index_columns_are_not_features(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"a": rng.normal(size=3000), "b": rng.normal(size=3000)})
    df["label"] = np.where(df.a + df.b > 0, "pos", "neg")
    shuffled = df.sample(frac=1.0, random_state=0)  # as after train_test_split: the index is not a range
    shuffled.to_parquet(tmp_path / "train.parquet")
    shuffled.to_csv(tmp_path / "train.csv")
    df.reset_index(drop=True).to_parquet(tmp_path / "test.parquet", index=False)
    assert "__index_level_0__" in pq.read_schema(tmp_path / "train.parquet").names
    for name in ("train.parquet", "train.csv"):
        out = train(tmp_path / name, "label", "--epochs", "5")
        assert "features: a, b\n" in out
        assert fastbp.load("m.fbp").preprocessing["features"] == ["a", "b"]
        assert evaluate("m.fbp", tmp_path / "test.parquet")["accuracy"] > 0.95
    assert "like a pandas index" in out
    out = train(tmp_path / "train.parquet", "label", "--exclude", "b", "--epochs", "1")
    assert "features: a\n" in out


def test_regression_targets_are_standardized_and_predictions_come_back_on_their_scale(tmp_path):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    X, y = sklearn_datasets.load_diabetes(return_X_y=True)
    table = pa.table({**{f"x{i}": X[:, i] for i in range(X.shape[1])}, "y": y})
    pq.write_table(table, tmp_path / "diabetes.parquet")
    train(tmp_path / "diabetes.parquet", "y", "--task", "regress", "--quiet", "--epochs", "30")
    scores = evaluate("m.fbp", tmp_path / "diabetes.parquet")
    assert scores["r2"] > 0.4
    code, _, err = cli("predict", "m.fbp", tmp_path / "diabetes.parquet", "--out", "p.npy")
    assert code == 0, err
    predicted = np.load("p.npy")
    assert predicted.dtype == np.float64 and abs(predicted.mean() - y.mean()) < 0.2 * y.std()
    assert scores["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - y) ** 2)), rel=1e-4)
    assert scores["mae"] == pytest.approx(np.mean(np.abs(predicted - y)), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("labels", [np.array([10, 2, 3]), np.array(["no", "yes", "maybe-not"]),
                                    np.array([True, False, True]), np.array([0.5, 1.5, 2.5])])
def test_predicted_labels_keep_the_targets_type_in_every_output_format(tmp_path, labels):
    rng = np.random.default_rng(4)
    pick = rng.integers(0, 2 if labels.dtype == bool else 3, size=1200)
    x = pick + 0.05 * rng.normal(size=pick.size)
    target = labels[pick] if labels.dtype != bool else pick.astype(bool)
    pcsv.write_csv(pa.table({"x": x, "t": target}), tmp_path / "d.csv")
    pq.write_table(pa.table({"x": x, "t": target}), tmp_path / "d.parquet")
    for data in ("d.csv", "d.parquet"):
        train(tmp_path / data, "t", "--task", "classify", "--epochs", "20", "--quiet")
        for ext in ("npy", "csv", "parquet"):
            code, _, err = cli("predict", "m.fbp", tmp_path / data, "--out", f"p.{ext}", "--chunk-rows", "100")
            assert code == 0, err
        got = np.load("p.npy")
        expected = np.asarray(target)
        if expected.dtype == bool and data == "d.csv":  # a CSV holds "true" / "false": text labels
            expected = np.where(expected, "true", "false")
        assert got.dtype.kind == expected.dtype.kind
        assert (got == expected).mean() > 0.95
        as_text = pcsv.ConvertOptions(column_types={"prediction": pa.string()})
        written = pcsv.read_csv("p.csv", convert_options=as_text).column("prediction").to_pylist()
        assert written[:50] == [str(v).lower() for v in got[:50]]
        assert pq.read_table("p.parquet").column("prediction").to_pylist()[:50] == got[:50].tolist()
        if labels.dtype.kind == "i":
            assert "." not in open("p.csv").read()  # 10, not 10.0


def test_one_hot_npz_targets_are_classes_and_other_2d_targets_are_refused(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(900, 3))
    y = np.eye(3)[np.argmax(X, axis=1)]
    np.savez(tmp_path / "onehot.npz", X=X, y=y)
    train(tmp_path / "onehot.npz", "y", "--epochs", "20", "--quiet")
    assert fastbp.load("m.fbp").preprocessing["classes"] == [0, 1, 2]
    assert evaluate("m.fbp", tmp_path / "onehot.npz")["accuracy"] > 0.9
    np.savez(tmp_path / "two.npz", X=X, y=X[:, :2])
    code, _, err = cli("train", tmp_path / "two.npz", "--target", "y")
    assert code == 2 and "not one-hot" in err


def test_csv_columns_whose_type_shows_late_are_read_by_their_values(tmp_path):
    n = 150_000  # over 1 MB, so the first block pyarrow would infer types from ends long before the changes
    rng = np.random.default_rng(6)
    a = rng.integers(0, 100, size=n).astype(str).astype(object)
    a[n - 10] = "1.5"
    b = rng.normal(size=n).round(3).astype(str).astype(object)
    b[: n // 2] = ""
    label = (rng.random(n) < 0.5).astype(int)
    (tmp_path / "late.csv").write_text("a,b,label\n" + "".join(f"{x},{y},{t}\n" for x, y, t in zip(a, b, label)))
    assert (tmp_path / "late.csv").stat().st_size > 1 << 20
    train(tmp_path / "late.csv", "label", "--impute", "mean", "--epochs", "1", "--quiet", "--chunk-rows", "1000",
          "--val-split", "0")
    prep = fastbp.load("m.fbp").preprocessing
    assert prep["categories"] == [None, None]
    assert prep["mean"][1] == pytest.approx(np.mean(b[n // 2:].astype(float)), rel=1e-6, abs=1e-9)


def test_output_paths_are_checked_before_training_and_a_failed_save_keeps_the_model(tmp_path):
    pq.write_table(pa.table({"x": np.arange(100.0), "t": np.arange(100) % 2}), tmp_path / "d.parquet")
    for option in ("--out", "--log-file", "--plot"):
        code, out, err = cli("train", tmp_path / "d.parquet", "--target", "t", option, tmp_path / "nope" / "f.x")
        assert code == 2 and "does not exist" in err and str(tmp_path / "nope") in err and "first pass" not in out
    no_matplotlib = ("import sys; sys.modules['matplotlib'] = None; from fastbp.cli import main; "
                     f"sys.exit(main(['train', {str(tmp_path / 'd.parquet')!r}, '--target', 't', '--plot', 'c.png']))")
    proc = subprocess.run([sys.executable, "-c", no_matplotlib], capture_output=True, text=True)
    assert proc.returncode == 2 and "pip install matplotlib" in proc.stderr and "epoch" not in proc.stdout
    from fastbp.cli import _save_model
    trainer = fastbp.Trainer([1, 2, 2])
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone").rmdir()  # the folder vanished during training
    saved = _save_model(trainer, str(tmp_path / "gone" / "model.fbp"))
    assert saved.endswith(".fbp") and "recovered" in saved
    np.testing.assert_array_equal(fastbp.load(saved).params, trainer.params)


@pytest.mark.slow
def test_errors_name_the_column_and_the_row(tmp_path):
    rows = ["1,2,0", "1,3,1"] * 10
    rows[7] = "1,inf,1"
    (tmp_path / "inf.csv").write_text("a,b,t\n" + "\n".join(rows) + "\n")
    code, _, err = cli("train", tmp_path / "inf.csv", "--target", "t")
    assert code == 2 and "column 'b' has the value inf at row 7" in err
    import datetime
    stamps = pa.array([datetime.datetime(2020, 1, 1 + i % 28) for i in range(50)])
    pq.write_table(pa.table({"when": stamps, "x": np.arange(50.0), "t": np.arange(50) % 2}), tmp_path / "ts.parquet")
    code, _, err = cli("train", tmp_path / "ts.parquet", "--target", "t")
    assert code == 2 and "column 'when' has type timestamp" in err and "--exclude" in err
    train(tmp_path / "ts.parquet", "t", "--exclude", "when", "--epochs", "1", "--quiet")
    big = np.arange(60, dtype=np.int64) + 2 ** 62
    pq.write_table(pa.table({"big": big, "t": np.arange(60) % 2}), tmp_path / "big.parquet")
    train(tmp_path / "big.parquet", "t", "--epochs", "1", "--quiet")


def test_a_predict_file_whose_numeric_column_is_empty_is_imputed_and_unknown_categories_are_counted(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(size=500)
    x[::10] = np.nan
    color = rng.choice(["red", "blue"], size=500)
    pq.write_table(pa.table({"x": x, "color": color, "t": (color == "red").astype(int)}), tmp_path / "d.parquet")
    train(tmp_path / "d.parquet", "t", "--impute", "mean", "--epochs", "30", "--quiet")
    (tmp_path / "p.csv").write_text("x,color\n,red\n,blue\n,green\n,green\n")
    code, _, err = cli("predict", "m.fbp", tmp_path / "p.csv", "--out", "p.npy")
    assert code == 0, err
    assert "column 'color': 2 row(s) hold categories not seen in training" in err
    assert list(np.load("p.npy")[:2]) == [1, 0]
    code, _, err = cli("predict", "m.fbp", tmp_path / "p.csv", "--out", "p.npy", "--on-unknown", "error")
    assert code == 2 and "'green' at row 2, not seen in training" in err


def test_booleans_written_as_text_in_training_match_a_bool_column_however_spelled(tmp_path):
    """pandas writes a bool column to CSV as True/False, which training reads as two categories; a Parquet
    file's bool column, or other spellings of the words, are the same categories when predicting."""
    rng = np.random.default_rng(9)
    member = rng.random(1200) < 0.5
    x = rng.normal(size=member.size)
    label = np.where(member, "stay", "churn")
    (tmp_path / "train.csv").write_text("x,member,label\n" + "".join(
        f"{a},{m},{t}\n" for a, m, t in zip(x, member, label)))
    train(tmp_path / "train.csv", "label", "--epochs", "10", "--quiet")
    assert fastbp.load("m.fbp").preprocessing["categories"] == [None, ["False", "True"]]
    pq.write_table(pa.table({"x": x, "member": member, "label": label}), tmp_path / "same.parquet")
    spelled = np.where(member, rng.choice(["true", "TRUE", "True"], member.size), "false")
    (tmp_path / "lower.csv").write_text("x,member,label\n" + "".join(
        f"{a},{m},{t}\n" for a, m, t in zip(x, spelled, label)))
    for other in ("same.parquet", "lower.csv"):
        code, _, err = cli("evaluate", "m.fbp", tmp_path / other)
        assert code == 0 and "not seen in training" not in err, err
        assert json.loads(_)["accuracy"] == 1.0
    prep = Preprocessor(fastbp.load("m.fbp").preprocessing)
    as_text = prep.transform({"x": x[:4], "member": pa.array(member[:4].astype(str))}, with_target=False)[0]
    for values in (member[:4], pa.array(member[:4])):  # numpy and arrow bools
        np.testing.assert_array_equal(prep.transform({"x": x[:4], "member": values}, with_target=False)[0], as_text)


def test_booleans_in_a_column_that_was_numeric_in_training_get_a_message_that_says_what_to_write(tmp_path):
    rng = np.random.default_rng(10)
    member = rng.random(600) < 0.5
    pq.write_table(pa.table({"member": member, "t": member.astype(int)}), tmp_path / "d.parquet")
    train(tmp_path / "d.parquet", "t", "--epochs", "5", "--quiet")
    (tmp_path / "p.csv").write_text("member\nTrue\nFalse\n")
    code, _, err = cli("predict", "m.fbp", tmp_path / "p.csv", "--out", "p.npy")
    assert code == 2 and "column 'member' was numeric in training but holds the text 'True'" in err
    assert "write the column's booleans as 1 and 0" in err


def test_a_file_with_another_separator_or_a_repeated_column_name_is_refused_with_what_to_do(tmp_path):
    from fastbp.files.datasets import SourceError
    (tmp_path / "parses.csv").write_text("a;b;label\n1;2;x\n3;4;y\n")  # reads as one column "a;b;label"
    (tmp_path / "fails.csv").write_text("a;label\n2,5;x\n3,5;y\n")  # decimal commas: rows of 2 columns
    for name in ("parses.csv", "fails.csv"):
        with pytest.raises(SourceError, match=r"separate columns with ';'.*pass --sep ';'.*--decimal ','"):
            open_source(tmp_path / name)
    (tmp_path / "twice.csv").write_text("x,x,label\n1,2,a\n3,4,b\n")
    pq.write_table(pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0]), pa.array([0])], names=["x", "x", "t"]),
                   tmp_path / "twice.parquet")
    for name in ("twice.csv", "twice.parquet"):
        with pytest.raises(SourceError, match="the column name 'x' is used more than once"):
            open_source(tmp_path / name)
    (tmp_path / "binary.csv").write_bytes(b"PK\x03\x04\xad|x|\n1,2\n")  # not text: no advice on separators
    with pytest.raises(SourceError) as refused:
        open_source(tmp_path / "binary.csv")
    assert "is a zip archive, not CSV text" in str(refused.value) and "separate columns" not in str(refused.value)
    (tmp_path / "fine.csv").write_text("a,b\n1,x;y\n")  # a ';' inside a cell is data
    assert open_source(tmp_path / "fine.csv").columns == ["a", "b"]


def test_a_csv_cut_short_in_its_last_row_is_reported(tmp_path):
    (tmp_path / "cut.csv").write_text("x,label\n1.5,stay\n2.5,chu")
    with pytest.warns(UserWarning, match="'.*cut.csv' does not end with a line break: if it was cut short"):
        open_source(tmp_path / "cut.csv")
    for whole in ("x,label\n1.5,stay\n", "x,label\r\n1.5,stay\r\n"):
        (tmp_path / "whole.csv").write_text(whole, newline="")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            open_source(tmp_path / "whole.csv")


def test_parquet_row_groups_are_read_in_bounded_slices(tmp_path):
    n, width = 40_000, 100
    rng = np.random.default_rng(8)
    table = pa.table({f"c{i}": rng.random(n, dtype=np.float32) for i in range(width)})
    pq.write_table(table, tmp_path / "wide.parquet", row_group_size=n)  # one row group
    source = open_source(tmp_path / "wide.parquet", chunk_rows=5000)
    sizes = [len(chunk["c0"]) for _, chunk in source.chunks(table.column_names)]
    assert max(sizes) == 5000 and sum(sizes) == n
    source.chunk_rows = 10 ** 6
    sizes = [len(chunk["c0"]) for _, chunk in source.chunks(table.column_names)]
    assert max(sizes) == source.slice_rows(width) < n  # a wide row group is sliced by cells, not rows
    raw = n * width * 4
    assert raw // 2 < source.read_memory(table.column_names) <= 2 * raw  # one page per column at most


@pytest.mark.slow
def test_option_values_and_a_directory_are_refused_before_any_work(tmp_path):
    pq.write_table(pa.table({"x": np.arange(10.0), "t": np.arange(10) % 2}), tmp_path / "d.parquet")
    for args, message in ((("--chunk-rows", "0"), "--chunk-rows must be >= 1"),
                          (("--val-split", "nan"), "--val-split must be in [0, 1)"),
                          (("--val-split", "-0.5"), "--val-split must be in [0, 1)"),
                          (("--buffer-rows", "0"), "--buffer-rows must be >= 1")):
        code, out, err = cli("train", tmp_path / "d.parquet", "--target", "t", *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    (tmp_path / "empty").mkdir()
    code, _, err = cli("train", tmp_path / "empty", "--target", "t")
    assert code == 2 and "no Parquet or CSV files (.parquet, .pq, .csv, .tsv, .txt, also compressed) in the folder" in err


def spark_style_folder(folder, rng, sizes=(700, 500, 300)):
    """Parts as Spark writes them (with bookkeeping files and a nested folder); returns the whole table."""
    tables = []
    for i, n in enumerate(sizes):
        x = rng.normal(size=n)
        color = rng.choice(["red", "green", "blue"], size=n)
        tables.append(pa.table({"x": x, "color": color, "label": np.where(x + (color == "red") > 0.3, "yes", "no")}))
    (folder / "nested").mkdir(parents=True)
    for i, table in enumerate(tables):
        where = folder / "nested" if i == 2 else folder
        pq.write_table(table, where / f"part-{i:05d}-c000.snappy.parquet", row_group_size=250)
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00000-c000.snappy.parquet.crc").write_bytes(b"crc")
    (folder / "_metadata").write_bytes(b"not a part")
    return pa.concat_tables(tables)


@pytest.mark.slow
def test_a_folder_of_parquet_parts_reads_as_one_table(tmp_path):
    whole = spark_style_folder(tmp_path / "ds", np.random.default_rng(3))
    pq.write_table(whole, tmp_path / "whole.parquet", row_group_size=250)
    source = open_source(tmp_path / "ds", chunk_rows=100)
    assert source.n_rows == whole.num_rows and source.n_chunks == 3 + 2 + 2  # row groups of every part
    read = list(source.chunks(["x", "color"]))
    x = np.concatenate([np.asarray(chunk["x"]) for _, chunk in read])
    np.testing.assert_array_equal(x, whole.column("x").to_numpy())  # parts in name order, nested ones too
    sizes = [len(chunk["x"]) for _, chunk in read]
    assert [start for start, _ in read] == list(np.cumsum([0] + sizes[:-1])) and max(sizes) <= 100
    train(tmp_path / "ds", "label", "--epochs", "3", out=tmp_path / "m.fbp")
    by_parts, whole_file = evaluate(tmp_path / "m.fbp", tmp_path / "ds"), evaluate(tmp_path / "m.fbp",
                                                                                    tmp_path / "whole.parquet")
    assert by_parts == pytest.approx(whole_file, rel=1e-12)
    code, _, err = cli("predict", tmp_path / "m.fbp", tmp_path / "ds" / "part-0000[01]*", "--out", tmp_path / "p.csv")
    assert code == 0, err
    assert pcsv.read_csv(tmp_path / "p.csv").num_rows == 700 + 500  # a glob: two parts


@pytest.mark.slow
def test_csv_parts_in_a_folder_or_a_glob_read_as_one_table(tmp_path):
    whole = spark_style_folder(tmp_path / "pq", np.random.default_rng(3))
    (tmp_path / "ds" / "nested").mkdir(parents=True)
    (tmp_path / "ds" / "_SUCCESS").write_text("")
    offset = 0
    for i, n in enumerate((700, 500, 300)):  # as Spark writes CSV: part files, compressed or not
        part = whole.slice(offset, n).select(["label", "color", "x"] if i == 1 else ["x", "color", "label"])
        where = tmp_path / "ds" / ("nested" if i == 2 else "") / f"part-{i:05d}.csv{'.gz' if i == 1 else ''}"
        with pa.CompressedOutputStream(str(where), "gzip") if i == 1 else pa.OSFile(str(where), "wb") as out:
            pcsv.write_csv(part, out)
        offset += n
    pq.write_table(whole, tmp_path / "whole.parquet", row_group_size=250)
    source = open_source(tmp_path / "ds", chunk_rows=100)
    x = np.concatenate([np.asarray(chunk["x"]).astype(float) for _, chunk in source.chunks(["x", "label"])])
    np.testing.assert_array_equal(x, whole.column("x").to_numpy())  # in name order, columns matched by name
    train(tmp_path / "ds", "label", "--epochs", "3", out=tmp_path / "m.fbp")
    assert evaluate(tmp_path / "m.fbp", tmp_path / "ds") == pytest.approx(
        evaluate(tmp_path / "m.fbp", tmp_path / "whole.parquet"), rel=1e-12)
    code, _, err = cli("predict", tmp_path / "m.fbp", tmp_path / "ds" / "part-*", "--out", tmp_path / "p.csv")
    assert code == 0, err
    assert pcsv.read_csv(tmp_path / "p.csv").num_rows == 700 + 500  # a glob: the two parts at the top


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_hive_partition_columns_are_read_from_folder_names(tmp_path, fmt):
    rng = np.random.default_rng(8)
    n = 1200
    year, region, x = rng.choice([2024, 2025, 2026], n), rng.choice(["north", "south west"], n), rng.normal(size=n)
    label = np.where(x + (year == 2026) - (region == "north") > 0, "yes", "no")
    region = region.astype(object)
    region[::97] = None  # Hive's __HIVE_DEFAULT_PARTITION__ folder
    whole = pa.table({"x": x, "year": year, "region": region, "label": label})
    root = tmp_path / "ds"
    if fmt == "parquet":
        pq.write_to_dataset(whole, root, partition_cols=["year", "region"])
    else:  # as Spark's partitionBy writes CSV: key=value folders, the values URL-encoded
        for y, r in {(int(y), r) for y, r in zip(year, region)}:
            rows = np.flatnonzero((year == y) & np.array([v == r for v in region]))
            value = "__HIVE_DEFAULT_PARTITION__" if r is None else r.replace(" ", "%20")
            folder = root / f"year={y}" / f"region={value}"
            folder.mkdir(parents=True)
            pcsv.write_csv(whole.take(rows).select(["x", "label"]), folder / "part-0.csv")
    source = open_source(root)
    assert source.columns[-2:] == ["year", "region"] and source.kinds(["year", "region"]) == {"year": None,
                                                                                          "region": None}
    values = {}
    for _, chunk in source.chunks(["x", "year", "region"]):
        for c in chunk:
            values.setdefault(c, []).append(np.asarray(chunk[c]) if c == "x" else chunk[c].to_pylist())
    x_read = np.concatenate(values["x"]).astype(float)
    by_x = {float(a): (str(y), r) for a, y, r in zip(x, year, region)}
    assert [by_x[a] for a in x_read] == list(zip(sum(values["year"], []), sum(values["region"], [])))
    train(root, "label", "--epochs", "3", "--impute", "mean", out=tmp_path / "m.fbp")
    assert fastbp.load(tmp_path / "m.fbp").preprocessing["features"] == ["x", "year", "region"]
    pq.write_table(whole, tmp_path / "whole.parquet")
    assert evaluate(tmp_path / "m.fbp", root) == pytest.approx(evaluate(tmp_path / "m.fbp", tmp_path / "whole.parquet"),
                                                               rel=1e-6)


@pytest.mark.slow
def test_dataset_folders_and_globs_that_cannot_be_read_say_why(tmp_path):
    rng = np.random.default_rng(4)
    spark_style_folder(tmp_path / "ds", rng)
    pq.write_table(pa.table({"x": ["a"] * 5, "color": ["b"] * 5, "label": ["yes"] * 5}), tmp_path / "ds" / "z.parquet")
    (tmp_path / "hive" / "year=2026").mkdir(parents=True)  # a partition column that is also in the files
    pq.write_table(pa.table({"x": [1.0], "year": [2026], "label": ["no"]}), tmp_path / "hive" / "year=2026" / "p.parquet")
    (tmp_path / "uneven" / "a=1").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1.0], "label": ["no"]}), tmp_path / "uneven" / "a=1" / "p.parquet")
    pq.write_table(pa.table({"x": [1.0], "label": ["no"]}), tmp_path / "uneven" / "p.parquet")
    (tmp_path / "mixed").mkdir()
    pcsv.write_csv(pa.table({"x": [1.0], "label": ["no"]}), tmp_path / "mixed" / "a.csv")
    pq.write_table(pa.table({"x": [1.0], "label": ["no"]}), tmp_path / "mixed" / "b.parquet")
    (tmp_path / "csvs").mkdir()
    pcsv.write_csv(pa.table({"x": [1.0, 2.0], "label": ["no", "yes"]}), tmp_path / "csvs" / "a.csv")
    pcsv.write_csv(pa.table({"y": [1.0], "label": ["no"]}), tmp_path / "csvs" / "b.csv")
    (tmp_path / "notes.json").write_text("{}")
    for data, message in ((tmp_path / "ds", "column 'x' holds string"),
                          (tmp_path / "hive", "column 'year' is both in the files and in the partition folder"),
                          (tmp_path / "uneven", "needs the same partition columns"),
                          (tmp_path / "mixed", "and Parquet ("),
                          (tmp_path / "csvs", "b.csv' has no column(s) 'x', which the first part"),
                          (tmp_path / "*.json", "neither Parquet nor CSV"),
                          (tmp_path / "none*.parquet", "no Parquet or CSV files")):
        code, _, err = cli("train", data, "--target", "label")
        assert code == 2 and message in err and "Traceback" not in err, (data, err)


def test_a_row_group_too_wide_to_read_in_slices_is_spilled_and_reads_the_same(tmp_path, monkeypatch):
    import fastbp.files.sources as sources
    rng = np.random.default_rng(9)
    n = 5000
    ints = pa.array([None if i % 7 == 0 else i for i in range(n)], type=pa.int64())
    table = pa.table({"f": rng.random(n, dtype=np.float32), "i": ints, "s": rng.choice(["a", "b"], size=n),
                      "d": rng.normal(size=n)})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2000)

    def read(spill_above):
        monkeypatch.setattr(sources, "SPILL_ABOVE", spill_above)
        monkeypatch.setattr(sources, "SPILL_GROUP_BYTES", 1000)  # a few columns at a time
        source = open_source(tmp_path / "d.parquet", chunk_rows=700)
        pieces = list(source.chunks(["d", "s", "i", "f"], order=[2, 0, 1]))
        prep, _, _ = Preprocessor.fit(source, "s", impute="mean")
        return pieces, prep.transform(pieces[0][1], pieces[0][0], with_target=True)

    plain, X_plain = read(1 << 40)
    spilled, X_spilled = read(0)
    assert [start for start, _ in plain] == [start for start, _ in spilled]
    from fastbp.files.columns import to_numbers, to_text
    for (_, a), (_, b) in zip(plain, spilled):
        for c in ("d", "i", "f"):
            np.testing.assert_array_equal(to_numbers(c, a[c]), to_numbers(c, b[c]))
        assert to_text("s", a["s"]).to_pylist() == to_text("s", b["s"]).to_pylist()
    np.testing.assert_array_equal(X_plain[0], X_spilled[0])
    np.testing.assert_array_equal(X_plain[1], X_spilled[1])


def imbalanced_labels(tmp_path, n=1200):
    """Parquet and CSV copies of a table whose string labels are 1 'yes' in 8; returns the labels."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 3))
    label = np.where(x[:, 0] + 0.5 * rng.normal(size=n) > 1.2, "yes", "no")
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": label})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=200)
    pcsv.write_csv(table, tmp_path / "d.csv")
    return label


@pytest.mark.parametrize("name", ["d.parquet", "d.csv"])
def test_class_counts_of_the_first_pass_are_the_training_rows_per_class(tmp_path, name):
    from sklearn.utils.class_weight import compute_class_weight
    label = imbalanced_labels(tmp_path)
    prep, held, n = Preprocessor.fit(open_source(tmp_path / name, chunk_rows=150), "label", val_split=0.25)
    training = label[~holdout_mask(0, np.arange(len(label)), 0.25)]
    assert prep.classes() == ["no", "yes"]
    np.testing.assert_array_equal(prep.class_counts, [(training == "no").sum(), (training == "yes").sum()])
    assert prep.class_counts.sum() == n
    np.testing.assert_allclose(fastbp.inputs.class_weight_table("balanced", prep.class_counts),
                               compute_class_weight("balanced", classes=np.array(["no", "yes"]), y=training))


@pytest.mark.parametrize("class_weight", ["balanced", {"yes": 4.0}])
def test_class_weights_streamed_from_a_file_equal_fit_on_the_same_rows(tmp_path, class_weight):
    imbalanced_labels(tmp_path)
    source = open_source(tmp_path / "d.parquet")
    prep, _, n = Preprocessor.fit(source, "label")
    X, y = prep.transform(dict(zip(pq.read_table(tmp_path / "d.parquet").column_names,
                                   pq.read_table(tmp_path / "d.parquet").columns)), dtype=np.float64)
    settings = dict(batch_size=64, epochs=3, seed=2, dtype="float64", n_threads=1, shuffle=False)
    streamed = fastbp.Trainer([3, 8, 2], **settings)
    # buffers of 256 rows: the epoch goes through five of them, as one pass over the rows in file order
    streamed.fit_source(source, prep, n, buffer_rows=256, class_weight=class_weight)
    in_memory_weight = class_weight if class_weight == "balanced" else {1: 4.0}
    in_memory = fastbp.Trainer([3, 8, 2], **settings).fit(X, y.astype(int), class_weight=in_memory_weight)
    unweighted = fastbp.Trainer([3, 8, 2], **settings).fit(X, y.astype(int))
    np.testing.assert_allclose(streamed.params, in_memory.params, rtol=1e-10, atol=1e-12)
    assert not np.allclose(streamed.params, unweighted.params)
    np.testing.assert_allclose([h["loss"] for h in streamed.history], [h["loss"] for h in in_memory.history],
                               rtol=1e-6)


@pytest.mark.slow
def test_cli_class_weight_raises_minority_recall_and_bad_values_are_refused(tmp_path):
    label = imbalanced_labels(tmp_path)
    recall = {}
    for option in ((), ("--class-weight", "balanced"), ("--class-weight", "yes=8")):
        train(tmp_path / "d.parquet", "label", "--epochs", "5", "--quiet", *option, out=tmp_path / "m.fbp")
        code, _, err = cli("predict", tmp_path / "m.fbp", tmp_path / "d.csv", "--out", tmp_path / "p.npy", "--quiet")
        assert code == 0, err
        predicted = np.load(tmp_path / "p.npy", allow_pickle=True)
        recall[option] = (predicted[label == "yes"] == "yes").mean()
    assert recall[("--class-weight", "balanced")] > recall[()] + 0.1, recall
    assert recall[("--class-weight", "yes=8")] > recall[()] + 0.1, recall
    for option, message in ((("--class-weight", "yes"), "LABEL=WEIGHT pairs"),
                            (("--class-weight", "yes=-1"), "LABEL=WEIGHT pairs"),
                            (("--class-weight", "maybe=2"), "'maybe', not a class of 'label'; its classes are: no, yes"),
                            (("--class-weight", "balanced", "--task", "regress"), "classes of a classified target")):
        code, _, err = cli("train", tmp_path / "d.parquet", "--target", "label", "--quiet", *option)
        assert code == 2 and message in err and "Traceback" not in err, (option, err)


def three_classes(tmp_path, n=900):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(n, 3))
    label = np.array(["a", "b", "c"])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)]
    pq.write_table(pa.table({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "cls": label}), tmp_path / "d.parquet",
                   row_group_size=150)
    return label


@pytest.mark.parametrize("loss", ["mse", "huber", "binary_cross_entropy"])
def test_other_losses_learn_classes_one_hot_from_a_file_as_fit_does(tmp_path, loss):
    three_classes(tmp_path)
    source = open_source(tmp_path / "d.parquet")
    prep, _, n = Preprocessor.fit(source, "cls")
    table = pq.read_table(tmp_path / "d.parquet")
    X, y = prep.transform(dict(zip(table.column_names, table.columns)), dtype=np.float64)
    settings = dict(loss=loss, batch_size=50, epochs=3, seed=2, dtype="float64", n_threads=1, shuffle=False)
    streamed = fastbp.Trainer([3, 8, 3], **settings).fit_source(source, prep, n, buffer_rows=300)
    one_hot = np.eye(3)[y.astype(int)]
    np.testing.assert_allclose(streamed.params, fastbp.Trainer([3, 8, 3], **settings).fit(X, one_hot).params,
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(fastbp.InputError, match="the model has 2 outputs with loss 'mse', but the data has 3 classes"):
        fastbp.Trainer([3, 8, 2], loss="mse").fit_source(source, prep, n)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_cli_classes_learned_one_hot_predict_evaluate_and_export_as_their_largest_output(tmp_path, loss):
    label = three_classes(tmp_path)
    train(tmp_path / "d.parquet", "cls", "--loss", loss, "--epochs", "8", "--quiet", out=tmp_path / "m.fbp")
    code, _, err = cli("predict", tmp_path / "m.fbp", tmp_path / "d.parquet", "--out", tmp_path / "p.npy", "--quiet")
    assert code == 0, err
    predicted = np.load(tmp_path / "p.npy", allow_pickle=True)
    trainer = fastbp.load(tmp_path / "m.fbp")
    prep = Preprocessor(trainer.preprocessing)
    table = pq.read_table(tmp_path / "d.parquet")
    X, _ = prep.transform(dict(zip(table.column_names, table.columns)), with_target=False)
    assert trainer.layer_sizes[-1] == 3
    largest = trainer.decision_function(X, encoded=True).argmax(1)
    np.testing.assert_array_equal(predicted, np.array(["a", "b", "c"])[largest])
    result = evaluate(tmp_path / "m.fbp", tmp_path / "d.parquet")
    assert set(result) == {"loss", "accuracy", "rows"}
    assert result["accuracy"] == pytest.approx((predicted == label).mean()) and result["accuracy"] > 0.8
    code, _, err = cli("predict", tmp_path / "m.fbp", tmp_path / "d.parquet", "--out", tmp_path / "q.npy", "--proba")
    if loss == "mse":
        assert code == 2 and "gives scores, not probabilities" in err
    else:  # one sigmoid per class (one-vs-rest)
        assert code == 0, err
        np.testing.assert_allclose(np.load(tmp_path / "q.npy"), trainer.predict_proba(X, encoded=True), rtol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    code, out, err = cli("export", tmp_path / "m.fbp", tmp_path / "m.onnx")
    assert code == 0, err
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    feeds = {c: table.column(c).to_numpy().reshape(-1, 1) for c in ("x0", "x1", "x2")}
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    np.testing.assert_array_equal(got["label"], predicted)
    scores = "scores" if loss == "mse" else "probabilities"
    assert f"outputs label, {scores}" in out
    expected = (trainer.decision_function if loss == "mse" else trainer.predict_proba)(X, encoded=True)
    np.testing.assert_allclose(got[scores], expected, rtol=1e-5, atol=1e-6)
