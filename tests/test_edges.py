"""Nothing lost at the edges: outputs that are not regular files, inputs made of parts, failed checkpoints,
metadata too large to load, prediction files' modes, settings that are not booleans."""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp.core.errors import InputError, InputTypeError

pa = pytest.importorskip("pyarrow")
import pyarrow.csv as pcsv  # noqa: E402


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def trained():
    X = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    return fastbp.Trainer([3, 4, 2], epochs=1, n_threads=1).fit(X, (X[:, 0] > 0).astype(int))


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_save_replaces_only_regular_files(tmp_path, trained, kind):
    target = tmp_path / "target"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    with pytest.raises(InputError, match=f"it is a {'FIFO' if kind == 'fifo' else 'folder'}.*only regular files"):
        trained.save(target)
    mode = os.stat(target).st_mode
    assert (stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISDIR(mode))
    link = tmp_path / "link.fbp"  # a link to a regular file is written through, the link stays
    (tmp_path / "real.fbp").write_bytes(b"")
    link.symlink_to(tmp_path / "real.fbp")
    trained.save(link)
    assert link.is_symlink() and fastbp.load(tmp_path / "real.fbp").params.tobytes() == trained.params.tobytes()


@pytest.mark.slow
def test_cli_outputs_onto_a_fifo_or_into_the_parts_read_are_refused_before_any_work(tmp_path, trained):
    folder = tmp_path / "ds"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        x = rng.normal(size=(100, 2))
        pcsv.write_csv(pa.table({"a": x[:, 0], "b": x[:, 1], "label": (x[:, 0] > 0).astype(int)}),
                       folder / f"part-{i}.csv")
    before = [(folder / f"part-{i}.csv").read_bytes() for i in range(2)]
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    train = ["train", folder, "--target", "label", "--hidden", "4", "--epochs", "1", "--quiet"]
    model = tmp_path / "m.fbp"
    for args, message in (([*train, "--out", folder / "part-1.csv"], "is the file this command reads"),
                          ([*train, "--out", model, "--log-file", folder / "part-1.csv"],
                           "is the file this command reads"),
                          ([*train, "--out", fifo], "it is a FIFO"),
                          ([*train, "--out", model, "--log-file", fifo], "it is a FIFO")):
        code, _, err = cli(*args)
        assert code == 2 and message in err, (args, err)
        assert "reading" not in err  # refused before the first pass
    code, _, err = cli(*train, "--out", model)
    assert code == 0, err
    for args, message in ((["predict", model, folder / "part-*.csv", "--out", folder / "part-0.csv"],
                           "is the file this command reads"),
                          (["predict", model, folder, "--out", fifo], "it is a FIFO"),
                          (["export", model, fifo], "it is a FIFO")):
        code, _, err = cli(*args)
        assert code == 2 and message in err, (args, err)
    assert [(folder / f"part-{i}.csv").read_bytes() for i in range(2)] == before
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_checkpoint_that_cannot_be_written_is_a_warning_and_the_model_is_kept(tmp_path, monkeypatch, capsys):
    from fastbp import cli as fastbp_cli
    from fastbp.trainer import Trainer

    data = tmp_path / "d.csv"
    x = np.random.default_rng(0).normal(size=(200, 2))
    pcsv.write_csv(pa.table({"a": x[:, 0], "b": x[:, 1], "label": (x[:, 0] > 0).astype(int)}), data)
    real_save = Trainer.save

    def full_disk(self, path):
        if os.path.basename(path) == "checkpoint.fbp":
            raise OSError(28, "No space left on device")
        return real_save(self, path)

    monkeypatch.setattr(Trainer, "save", full_disk)
    code = fastbp_cli.main(["train", str(data), "--target", "label", "--hidden", "4", "--epochs", "3", "--quiet",
                            "--threads", "1", "--checkpoint-dir", str(tmp_path / "c"), "--out",
                            str(tmp_path / "m.fbp")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("could not write the checkpoint") == 4  # after each of 3 epochs, and at the end
    assert "No space left on device" in err and "the model was saved to" in err
    assert len(fastbp.load(tmp_path / "m.fbp").history) == 3


@pytest.mark.parametrize("ext", ["csv", "parquet", "npy"])
def test_prediction_files_get_the_model_files_mode_and_an_empty_input_gives_a_header(tmp_path, ext):
    from fastbp import cli as fastbp_cli

    data, empty = tmp_path / "d.csv", tmp_path / "empty.csv"
    x = np.random.default_rng(0).normal(size=(100, 2))
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "label": np.where(x[:, 0] > 0, "yes", "no")})
    pcsv.write_csv(table, data)
    pcsv.write_csv(table.slice(0, 0), empty)
    model, out = tmp_path / "m.fbp", tmp_path / f"p.{ext}"
    run = ["--quiet"]
    assert fastbp_cli.main(["train", str(data), "--target", "label", "--hidden", "4", "--epochs", "1",
                            "--threads", "1", "--out", str(model), *run]) == 0
    old = os.umask(0o027)
    try:
        for proba, width in ((False, ()), (True, (2,))):
            if out.exists():
                out.unlink()
            flags = ["--proba"] if proba else []
            assert fastbp_cli.main(["predict", str(model), str(empty), "--out", str(out), *flags, *run]) == 0
            assert stat.S_IMODE(os.stat(out).st_mode) == 0o640  # 0666 minus the umask, as a model file
            if ext == "csv":
                header = out.read_text().strip()
                assert header == ('"proba_no","proba_yes"' if proba else '"prediction"')
            elif ext == "parquet":
                import pyarrow.parquet as pq
                got = pq.read_table(out)
                assert got.num_rows == 0
                assert got.column_names == (["proba_no", "proba_yes"] if proba else ["prediction"])
                assert got.schema.field(0).type == (pa.float32() if proba else pa.string())
            else:
                got = np.load(out)
                assert got.shape == (0, *width) and got.dtype.kind == ("f" if proba else "U")
        os.chmod(out, 0o604)  # an existing file keeps its mode
        assert fastbp_cli.main(["predict", str(model), str(data), "--out", str(out), *run]) == 0
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o604
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["d.csv", "empty.csv", "m.fbp", f"p.{ext}"])


def test_save_refuses_metadata_the_loader_would_refuse(tmp_path, trained, monkeypatch):
    from fastbp.files import modelfile

    monkeypatch.setattr(modelfile, "MAX_JSON_BYTES", 20_000)
    trained.metadata["notes"] = "x" * 30_000
    with pytest.raises(InputError, match="more than the 20,000 a model file may hold"):
        trained.save(tmp_path / "m.fbp")
    assert not os.listdir(tmp_path)
    trained.metadata["notes"] = "x" * 100
    trained.save(tmp_path / "m.fbp")
    assert fastbp.load(tmp_path / "m.fbp").metadata["notes"] == "x" * 100


@pytest.mark.parametrize("setting", [{"shuffle": "no"}, {"shuffle": 1}, {"optimizer": "sgd", "momentum": 0.9,
                                                                         "nesterov": "no"},
                                     {"optimizer": "adam", "amsgrad": "yes"},
                                     {"optimizer": "rmsprop", "centered": 1.5}])
def test_booleans_are_booleans(setting):
    with pytest.raises(InputTypeError, match="must be True or False"):
        fastbp.Trainer([2, 2], **setting)


def test_numpy_booleans_are_booleans():
    tr = fastbp.Trainer([2, 2], optimizer="adam", amsgrad=np.bool_(True), shuffle=np.bool_(False))
    assert tr.shuffle is False and tr.optimizer_settings.amsgrad is True


def test_overflow_is_named_as_overflow(tmp_path, capsys):
    """A finite number that overflows (cast to float32, or standardized) is refused as an overflow, naming the
    column and the range, never as "NaN or infinity" in data that has none."""
    import pandas as pd
    from fastbp import cli as fastbp_cli

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2))
    y = (X[:, 0] > 0).astype(int)
    X[5, 1] = 1e300
    with pytest.raises(InputError, match=r"value 1e\+300 at row 5.*beyond float32's range"):
        fastbp.Trainer([2, 4, 2], epochs=1).fit(X, y)
    for table in (pd.DataFrame(X, columns=["a", "b"], index=np.arange(100) + 7),
                  pa.table({"a": X[:, 0], "b": X[:, 1]})):
        # a table is standardized by its schema: the column's variance is what overflows
        with pytest.raises(InputError, match=r"column 'b' cannot be standardized.*1e\+300 \(at row 5\)"):
            fastbp.Trainer([2, 4, 2], epochs=1).fit(table, y)
    assert fastbp.Trainer([2, 4, 2], epochs=1, dtype="float64").fit(X, y).predict(X).shape == (100,)
    X[5, 1] = np.inf  # a real infinity is still called one
    with pytest.raises(InputError, match="contains NaN or infinity"):
        fastbp.Trainer([2, 4, 2], epochs=1).fit(X, y)

    def table(b):
        return pa.table({"a": X[:, 0], "b": b, "label": y})
    wide, normal = tmp_path / "wide.csv", tmp_path / "normal.csv"
    b = rng.normal(size=100)
    b[3] = 1.7e308
    pcsv.write_csv(table(b), wide)
    pcsv.write_csv(table(rng.normal(size=100)), normal)
    model = tmp_path / "m.fbp"
    run = ["--target", "label", "--hidden", "4", "--epochs", "1", "--val-split", "0", "--quiet", "--out", str(model)]
    assert fastbp_cli.main(["train", str(wide), *run]) == 2
    err = capsys.readouterr().err
    assert "column 'b' cannot be standardized: its variance overflows float64" in err and "1.7e+308" in err
    assert "malformed" not in err and not os.path.exists(model)
    assert fastbp_cli.main(["train", str(normal), *run]) == 0
    b[3] = 1e300  # far outside the training range: standardized, it passes float32's
    pcsv.write_csv(table(b), wide)
    assert fastbp_cli.main(["predict", str(model), str(wide), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "column 'b' has the value 1e+300 at row 3, which overflows float32 when standardized" in err
    assert "NaN or infinity" not in err and "warning" not in err


def test_column_names_that_are_not_strings_go_as_in_scikit_learn():
    import warnings

    import pandas as pd

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 2))
    y = (X[:, 0] > 0).astype(int)
    with pytest.raises(InputTypeError, match=r"column names mix types \(int, str\)"):
        fastbp.Trainer([2, 4, 2], epochs=1).fit(pd.DataFrame(X, columns=["a", 1]), y)
    for columns in ([3, 7], pd.MultiIndex.from_tuples([("g", "a"), ("g", "b")])):
        frame = pd.DataFrame(X, columns=columns)
        with pytest.warns(UserWarning, match="column names are not strings.*go by position") as caught:
            tr = fastbp.Trainer([2, 4, 2], epochs=1).fit(frame, y)
        assert caught[0].filename == __file__  # the user's line, not fastbp's
        assert tr.feature_names_in_ is None
        np.testing.assert_array_equal(tr.predict(X), fastbp.Trainer([2, 4, 2], epochs=1).fit(X, y).predict(X))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas' default names 0..n-1 say nothing: no warning
        assert fastbp.Trainer([2, 4, 2], epochs=1).fit(pd.DataFrame(X), y).feature_names_in_ is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("loss,n_out", [("cross_entropy", 2), ("binary_cross_entropy", 1)])
def test_float_labels_come_back_as_floats(tmp_path, dtype, loss, n_out):
    X = np.random.default_rng(0).normal(size=(80, 2))
    y = (X[:, 0] > 0).astype(dtype)
    tr = fastbp.Trainer([2, 4, n_out], loss=loss, epochs=2).fit(X, y)
    assert tr.classes_.dtype.kind == "f" and tr.classes_.tolist() == [0.0, 1.0]
    assert tr.predict(X).dtype.kind == "f" and set(tr.predict(X).tolist()) <= {0.0, 1.0}
    tr.save(tmp_path / "m.fbp")
    assert fastbp.load(tmp_path / "m.fbp").predict(X).dtype.kind == "f"
    ints = fastbp.Trainer([2, 4, n_out], loss=loss, epochs=2).fit(X, y.astype(int))
    assert ints.predict(X).dtype.kind == "i"
    np.testing.assert_array_equal(ints.params, tr.params)  # the same model either way


def test_parquet_parts_whose_numeric_types_differ_read_as_one_float64_column(tmp_path, capsys):
    import pyarrow.parquet as pq
    from fastbp import cli as fastbp_cli

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.integers(0, 50, 200)
    y = (a + b / 25 > 2).astype(np.int64)
    color = rng.choice(["red", "blue"], 200)
    mixed, plain = tmp_path / "mixed", tmp_path / "plain"
    mixed.mkdir(), plain.mkdir()
    a32 = a.astype(np.float32).astype(np.float64)  # the values float32 can hold, so both datasets are equal
    for i, rows in enumerate((slice(0, 100), slice(100, 200))):
        text = pa.array(color[rows]).dictionary_encode() if i else pa.array(color[rows], pa.string())
        pq.write_table(pa.table({"a": a32[rows].astype(np.float32) if i == 0 else a32[rows],
                                 "b": b[rows].astype(np.int32 if i == 0 else np.int64), "color": text,
                                 "y": y[rows].astype(np.float64 if i == 0 else np.int64)}), mixed / f"part-{i}.parquet")
        pq.write_table(pa.table({"a": a32[rows], "b": b[rows].astype(np.float64), "color": color[rows],
                                 "y": y[rows].astype(np.float64)}), plain / f"part-{i}.parquet")
    run = ["--target", "y", "--hidden", "4", "--epochs", "2", "--threads", "1", "--quiet"]
    for folder in (mixed, plain):
        assert fastbp_cli.main(["train", str(folder), *run, "--out", str(tmp_path / f"{folder.name}.fbp")]) == 0, \
            capsys.readouterr().err
    np.testing.assert_array_equal(fastbp.load(tmp_path / "mixed.fbp").params,
                                  fastbp.load(tmp_path / "plain.fbp").params)
    assert fastbp_cli.main(["evaluate", str(tmp_path / "mixed.fbp"), str(mixed)]) == 0
    pq.write_table(pa.table({"a": a[:10], "b": b[:10].astype(str), "color": color[:10], "y": y[:10]}),
                   mixed / "part-2.parquet")  # numbers in one part, text in another: still refused
    assert fastbp_cli.main(["train", str(mixed), *run, "--out", str(tmp_path / "x.fbp")]) == 2
    assert "column 'b' holds string in" in capsys.readouterr().err


def test_pieces_of_a_column_concatenate_whether_spilled_or_read():
    from fastbp.files.columns import concat, to_numbers

    pieces = [np.array([1, 2], np.float32), pa.array([3, None], pa.int64()), np.array([np.nan, 5.0])]
    np.testing.assert_array_equal(to_numbers("c", concat(pieces)), [1, 2, 3, np.nan, np.nan, 5])


def test_saves_pickles_and_predictions_during_a_fit_see_whole_epochs(tmp_path):
    """A thread saves, pickles, deep-copies, summarizes and predicts in a loop while fit runs in another: every
    file loads, and every copy is the model at the end of an epoch: continued to the end, it gives the bits of
    the run nobody interrupted."""
    import copy
    import pickle
    import threading
    import time

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 8)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    settings = dict(optimizer="adam", epochs=12, batch_size=32, seed=3, n_threads=1)
    reference = fastbp.Trainer([8, 32, 2], **settings).fit(X, y)
    tr = fastbp.Trainer([8, 32, 2], **settings)
    taken, errors, done = [], [], threading.Event()

    def reader():
        i = 0
        try:
            while not done.is_set():
                path = tmp_path / f"s{i}.fbp"
                tr.save(path)
                taken.append(("file", path))
                taken.append(("pickle", pickle.dumps(tr)))
                taken.append(("copy", copy.deepcopy(tr)))
                tr.summary()
                if tr.history:
                    assert tr.predict(X[:5]).shape == (5,)
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    class Slow(fastbp.Callback):  # epochs long enough for the reader to come in between them, on any machine
        def on_epoch_end(self, trainer, epoch, logs):
            time.sleep(0.02)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        tr.fit(X, y, callbacks=[Slow()])
    finally:
        done.set()
        thread.join()
    assert not errors, errors
    np.testing.assert_array_equal(tr.params, reference.params)  # the readers changed nothing
    copies = {"file": 0, "pickle": 0, "copy": 0}
    for kind, item in taken:
        model = fastbp.load(item, n_threads=1) if kind == "file" else pickle.loads(item) if kind == "pickle" else item
        epochs = len(model.history)
        if 0 < epochs < settings["epochs"]:
            copies[kind] += 1
        model.epochs = settings["epochs"] - epochs
        if model.epochs:
            model.fit(X, y)
        np.testing.assert_array_equal(model.params, reference.params, err_msg=f"{kind} after {epochs} epochs")
    assert all(n > 0 for n in copies.values()), copies  # some were taken in the middle of the run


def test_settings_changed_after_construction_are_honoured_or_refused(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(int)

    def trained(changes=None, **settings):
        tr = fastbp.Trainer([4, 8, 2], **{"epochs": 3, "batch_size": 32, "n_threads": 1, **settings})
        for name, value in (changes or {}).items():
            setattr(tr, name, value)
        return tr.fit(X, y)

    for kept in ("layer_sizes", "activation", "loss", "dtype", "init", "seed", "huber_delta", "comm"):
        tr = fastbp.Trainer([4, 8, 2])
        with pytest.raises(AttributeError, match=f"{kept} is fixed when a Trainer is built"):
            setattr(tr, kept, getattr(tr, kept))
    tr = fastbp.Trainer([4, 8, 2], optimizer="adam")
    with pytest.raises(AttributeError, match="optimizer settings are immutable: set trainer.amsgrad"):
        tr.optimizer_settings.amsgrad = True
    # each change trains exactly as the constructor argument would (the kernels get the state they need)
    for settings, changes in (({"optimizer": "adam"}, {"amsgrad": True}),
                              ({"optimizer": "rmsprop"}, {"centered": True, "momentum": 0.5}),
                              ({}, {"optimizer": "adam"}), ({"optimizer": "adam", "lr": 0.01}, {"optimizer": "sgd"}),
                              ({}, {"dropout": 0.3, "batch_size": 16, "lr": 0.1, "clip_grad_norm": 0.5})):
        changed = trained(changes, **settings)
        expected = trained(**{**settings, **changes})
        np.testing.assert_array_equal(changed.params, expected.params, err_msg=str(changes))
        changed.save(tmp_path / "m.fbp")  # and the file says what trained
        loaded = fastbp.load(tmp_path / "m.fbp")
        assert loaded.optimizer == expected.optimizer and loaded.optimizer_settings.settings() == \
            expected.optimizer_settings.settings()
    # a refused change leaves everything as it was
    tr = fastbp.Trainer([4, 8, 2], optimizer="sgd")
    for name, value, message in (("nesterov", True, "needs optimizer='sgd' and momentum > 0"),
                                 ("optimizer", "lbfgs", "unknown optimizer"), ("amsgrad", "yes", "True or False"),
                                 ("epochs", -1, "epochs must be >= 0"), ("dropout", 1.0, r"\[0, 1\)"),
                                 ("verbose", 3, "verbose must be 0"), ("on_divergence", "ignore", "'raise' or")):
        before = (tr.optimizer_settings, getattr(tr, name))
        with pytest.raises(InputError, match=message):
            setattr(tr, name, value)
        assert (tr.optimizer_settings, getattr(tr, name)) == before
    # switching the optimizer mid-training starts its state afresh, as a new torch.optim optimizer does
    tr = trained(optimizer="sgd", momentum=0.9)
    with pytest.raises(InputError, match="adam has no momentum parameter"):  # validated together
        tr.optimizer = "adam"
    tr.configure_optimizer(optimizer="adam", momentum=0.0)
    assert tr.state.optimizer.momentum_buffer.size == 0 and tr.state.step == 0 and tr.lr == 1e-3


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "latin-1"])
def test_a_cut_short_warning_reads_the_last_character_in_the_files_encoding(tmp_path, encoding):
    import warnings

    from fastbp.files.sources import CsvFormat, CsvSource

    text = "a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(20))
    whole, cut = tmp_path / "whole.csv", tmp_path / "cut.csv"
    whole.write_bytes(text.encode(encoding))
    cut.write_bytes(text[:-1].encode(encoding))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CsvSource(str(whole), 1000, CsvFormat(encoding, ","))
    with pytest.warns(UserWarning, match="does not end with a line break"):
        CsvSource(str(cut), 1000, CsvFormat(encoding, ","))


def test_resume_takes_the_same_rows_in_another_format_and_refuses_others(tmp_path, capsys):
    import pyarrow.parquet as pq
    from fastbp import cli as fastbp_cli

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "label": np.where(x[:, 0] > 0, "yes", "no")})
    pcsv.write_csv(table, tmp_path / "d.csv")
    pq.write_table(table, tmp_path / "d.parquet")
    pq.write_table(table.take(rng.permutation(300)), tmp_path / "shuffled.parquet")
    run = ["--target", "label", "--hidden", "4", "--threads", "1", "--val-split", "0", "--quiet", "--checkpoint-dir",
           str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.fbp")]
    assert fastbp_cli.main(["train", str(tmp_path / "d.csv"), *run, "--epochs", "2"]) == 0
    assert fastbp_cli.main(["train", str(tmp_path / "shuffled.parquet"), *run, "--epochs", "3", "--resume"]) == 2
    assert "not the same rows in the same order" in capsys.readouterr().err
    assert fastbp_cli.main(["train", str(tmp_path / "d.parquet"), *run, "--epochs", "3", "--resume",
                            "--val-max-rows", "10"]) == 2
    assert "--val-max-rows 200000 -> 10" in capsys.readouterr().err
    assert fastbp_cli.main(["train", str(tmp_path / "d.parquet"), *run, "--epochs", "3", "--resume"]) == 0
    assert len(fastbp.load(tmp_path / "m.fbp").history) == 3
