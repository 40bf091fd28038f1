"""The fastbp command line end to end (subprocess), file readers and bounded streaming."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastbp

pa = pytest.importorskip("pyarrow")
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def fastbp_cli(*args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    n = 3000
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    label = np.where(x1 + 1.5 * (color == "red") - x2 > 0.2, "yes", "no")
    table = pa.table({"x1": x1, "x2": x2, "color": color, "label": label, "value": 2 * x1 - x2})
    pcsv.write_csv(table, folder / "d.csv")
    pq.write_table(table, folder / "d.parquet", row_group_size=500)
    np.save(folder / "d.npy", np.column_stack([x1, x2, (x1 - x2 > 0).astype(float)]))
    np.savez(folder / "d.npz", X=np.column_stack([x1, x2]), y=(x1 > 0).astype(float))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name,target", [("d.csv", "label"), ("d.parquet", "label"), ("d.npy", "2"),
                                         ("d.npz", "y"), ("d.parquet", "value")])
def test_train_predict_evaluate_info(files, tmp_path, name, target):
    model = tmp_path / "m.fbp"
    code, out, err = fastbp_cli("train", files / name, "--target", target, "--hidden", "16", "--epochs", 15,
                                "--lr", 0.01, "--val-split", 0.1, "--quiet", "--out", model, "--log-file",
                                tmp_path / "log.jsonl")
    assert code == 0, err
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 15 and "val_loss" in log[0]
    code, out, err = fastbp_cli("evaluate", model, files / name)
    assert code == 0, err
    scores = json.loads(out)
    assert scores["rows"] == 3000
    assert (scores["r2"] > 0.9) if target == "value" else (scores["accuracy"] > 0.85)
    for ext in ("csv", "parquet", "npy"):
        code, out, err = fastbp_cli("predict", model, files / name, "--out", tmp_path / f"p.{ext}", "--quiet")
        assert code == 0, err
    assert len(np.load(tmp_path / "p.npy")) == 3000
    code, out, _ = fastbp_cli("info", model)
    assert code == 0 and json.loads(out)["target"] == target


@pytest.mark.slow
def test_bad_input_exit_codes(files, tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "ragged.csv").write_text("a,b,t\n1,2,0\n3,4\n5,6,1\n")
    (tmp_path / "text_in_numbers.csv").write_text("a,b,t\n" + "1,2,0\n1,3,1\n" * 100 + "1,oops,1\n")
    (tmp_path / "missing.csv").write_text("a,b,t\n1,2,0\n3,,1\n5,6,1\n7,8,0\n")
    data = (files / "d.parquet").read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "bad.fbp").write_bytes(rng.bytes(100))
    cases = [
        (("train", files / "d.csv", "--target", "nope"), "target column 'nope' is not in the data"),
        (("train", tmp_path / "ragged.csv", "--target", "t"), "CSV"),
        (("train", tmp_path / "text_in_numbers.csv", "--target", "t"), "oops"),
        (("train", tmp_path / "missing.csv", "--target", "t"), "column 'b' has a missing value at row 1"),
        (("train", tmp_path / "trunc.parquet", "--target", "label"), "not a readable Parquet file"),
        (("train", tmp_path / "empty.parquet", "--target", "label"), "not a readable Parquet file"),
        (("train", tmp_path / "nothing.csv", "--target", "t"), "no data file"),
        (("train", files / "d.csv", "--target", "label", "--hidden", "0"), "--hidden sizes must be >= 1"),
        (("train", files / "d.csv", "--target", "label", "--lr", "-1"), "lr must be > 0"),
        (("train", files / "d.csv", "--target", "label", "--epochs", "0"), "--epochs must be >= 1"),
        (("predict", tmp_path / "bad.fbp", files / "d.csv", "--out", tmp_path / "p.csv"), "truncated or corrupted"),
        (("info", tmp_path / "missing.fbp"), "no model file"),
        (("train", files / "d.csv", "--target", "label", "--resume"), "--resume needs --checkpoint-dir"),
        (("train", files / "d.csv", "--target", "label", "--shard", "chunks"), "convert it to Parquet"),
        (("train", files / "d.csv", "--target", "label", "--sync-every", "0"), "sync_every must be >= 1"),
        (("train", files / "d.csv", "--target", "label", "--loss", "poisson"), "invalid choice: 'poisson'"),
        (("train", files / "d.csv", "--target", "label", "--loss", "mse", "--class-weight", "balanced"),
         "--loss mse learns the classes as one-hot scores"),
        (("train", files / "d.csv", "--target", "value", "--task", "regress", "--loss", "cross_entropy"),
         "--loss cross_entropy is a classification loss"),
        (("train", files / "d.csv", "--target", "label", "--dropout", "1.5"), "--dropout must be in [0, 1)"),
        (("train", files / "d.csv", "--target", "label", "--early-stopping", "--val-split", "0"), "give --val-split"),
        (("train", files / "d.csv", "--target", "label", "--weight-decay", "-1"), "--weight-decay must be >= 0"),
    ]
    for args, message in cases:
        code, out, err = fastbp_cli(*args, "--quiet") if args[0] == "train" else fastbp_cli(*args)
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err
    code, _, err = fastbp_cli("train", tmp_path / "missing.csv", "--target", "t", "--impute", "median", "--quiet",
                              "--hidden", "4", "--epochs", "1", "--out", tmp_path / "m.fbp", "--val-split", "0")
    assert code == 0, err
    code, _, err = fastbp_cli("train")  # argparse usage error
    assert code == 2 and "usage" in err


@pytest.mark.slow
def test_resume_equals_uninterrupted(files, tmp_path):
    # the plain preset: the 2-epoch run stands in for an interrupted 4-epoch one, which a cosine schedule spanning 4
    # epochs or early stopping's restore at the end would tell apart
    common = ["--target", "label", "--hidden", "8", "--seed", "3", "--quiet", "--threads", "1", "--buffer-rows", "1024",
              "--preset", "plain", "--val-split", "0.1"]
    code, _, err = fastbp_cli("train", files / "d.parquet", *common, "--epochs", 4, "--out", tmp_path / "full.fbp")
    assert code == 0, err
    ckpt = tmp_path / "ckpt"
    code, _, err = fastbp_cli("train", files / "d.parquet", *common, "--epochs", 2, "--checkpoint-dir", ckpt,
                              "--out", tmp_path / "half.fbp")
    assert code == 0, err
    code, out, err = fastbp_cli("train", files / "d.parquet", *common, "--epochs", 4, "--checkpoint-dir", ckpt,
                                "--resume", "--out", tmp_path / "resumed.fbp")
    assert code == 0, err
    np.testing.assert_array_equal(fastbp.load(tmp_path / "resumed.fbp").params, fastbp.load(tmp_path / "full.fbp").params)


def test_the_recipe_says_when_its_min_steps_add_epochs(files, tmp_path):
    """3,000 rows are 12 steps an epoch: the recipe's 30 epochs become 60 toward its 720 steps, and the run says
    so; --epochs given trains exactly that many, silently."""
    code, out, err = fastbp_cli("train", files / "d.parquet", "--target", "label", "--hidden", "8", "--threads", "1",
                                "--out", tmp_path / "m.fbp")
    assert code == 0, err
    assert "30 epochs would take 360 optimizer steps here: training 60 epochs, toward at least 720" in out
    assert len(fastbp.load(tmp_path / "m.fbp").history) == 60
    code, out, err = fastbp_cli("train", files / "d.parquet", "--target", "label", "--hidden", "8", "--threads", "1",
                                "--epochs", "3", "--out", tmp_path / "m.fbp")
    assert code == 0 and "optimizer steps" not in out and len(fastbp.load(tmp_path / "m.fbp").history) == 3


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resumes_bit_identically(files, tmp_path):
    """SIGINT lands anywhere (inside an epoch, mostly: several buffers each), the checkpoint holds the
    state of the last whole epoch, RNG included, and --resume ends where an uninterrupted run does, also where
    --min-steps added epochs (2,700 training rows are 11 steps an epoch: 10 epochs become 37)."""
    common = ["--target", "label", "--hidden", "8", "--seed", "5", "--threads", "1", "--buffer-rows", "256",
              "--epochs", "10", "--min-steps", "400", "--val-split", "0.1", "--quiet"]
    code, _, err = fastbp_cli("train", files / "d.parquet", *common, "--out", tmp_path / "full.fbp")
    assert code == 0, err
    assert len(fastbp.load(tmp_path / "full.fbp").history) == 37
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "fastbp", "train", str(files / "d.parquet"), *common,
                             "--checkpoint-dir", str(ckpt), "--log-file", str(tmp_path / "log.jsonl"),
                             "--out", str(tmp_path / "m.fbp")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "log.jsonl").exists() or \
            not (tmp_path / "log.jsonl").read_text().count("\n") >= 2:
        time.sleep(0.01)
    time.sleep(0.013)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "--resume" in err
    done = len(fastbp.load(ckpt / "checkpoint.fbp").history)
    assert 2 <= done < 37
    code, _, err = fastbp_cli("train", files / "d.parquet", *common, "--checkpoint-dir", ckpt, "--resume",
                              "--out", tmp_path / "resumed.fbp")
    assert code == 0, err
    np.testing.assert_array_equal(fastbp.load(tmp_path / "resumed.fbp").params,
                                  fastbp.load(tmp_path / "full.fbp").params)


@pytest.mark.slow
def test_resume_after_early_stopping_keeps_its_best_epoch(files, tmp_path):
    """The last checkpoint of a run that stopped early holds its last epoch; --resume from it knows the run had
    stopped (it trains no more) and restores the best epoch from best.fbp beside the checkpoint, as the run did."""
    common = ["--target", "label", "--hidden", "8", "--seed", "2", "--threads", "1", "--epochs", "60", "--patience",
              "2", "--early-stopping", "--monitor", "val_accuracy", "--checkpoint-dir", tmp_path / "ckpt", "--quiet"]
    code, out, err = fastbp_cli("train", files / "d.parquet", *common, "--out", tmp_path / "full.fbp")
    assert code == 0, err
    trained = len(fastbp.load(tmp_path / "ckpt" / "checkpoint.fbp").history)
    best = len(fastbp.load(tmp_path / "ckpt" / "best.fbp").history)
    assert best < trained < 60 and f"best epoch {best} of {trained}" in out
    code, out, err = fastbp_cli("train", files / "d.parquet", *common, "--resume", "--out", tmp_path / "again.fbp")
    assert code == 0, err
    again, full = fastbp.load(tmp_path / "again.fbp"), fastbp.load(tmp_path / "full.fbp")
    assert len(again.history) == trained
    np.testing.assert_array_equal(again.params, full.params)


def test_resume_with_other_options_exits_2_naming_each(files, tmp_path):
    common = ["--target", "label", "--hidden", "8", "--quiet", "--epochs", "2", "--checkpoint-dir", tmp_path / "c"]
    code, _, err = fastbp_cli("train", files / "d.parquet", *common, "--out", tmp_path / "m.fbp")
    assert code == 0, err
    code, _, err = fastbp_cli("train", files / "d.parquet", *common, "--resume", "--out", tmp_path / "m.fbp",
                              "--hidden", "16", "--optimizer", "sgd", "--lr", "0.1", "--batch-size", "64",
                              "--dtype", "float64", "--activation", "tanh")
    assert code == 2
    for option in ("--hidden", "--optimizer", "--lr", "--batch-size", "--dtype", "--activation"):
        assert option in err, (option, err)
    # options that cannot change the result may differ
    code, _, err = fastbp_cli("train", files / "d.parquet", *common, "--resume", "--out", tmp_path / "m2.fbp",
                              "--log-file", tmp_path / "l.jsonl", "--epochs", "3")
    assert code == 0, err


def test_loader_buffers_stay_within_their_configured_size(files):
    from fastbp.files.preprocess import Preprocessor
    from fastbp.files.sources import open_source
    from fastbp.engine.buffered import StreamStats

    source = open_source(files / "d.npy", chunk_rows=300)
    prep, held, n = Preprocessor.fit(source, "2", val_split=0.1, val_max_rows=100, seed=0)
    assert len(held["2"]) <= 100
    tr = fastbp.Trainer([prep.n_inputs, 8, 2], batch_size=64, epochs=2)
    stats = StreamStats()
    tr.fit_source(source, prep, n, buffer_rows=500, val_split=0.1, stats=stats)
    assert stats.max_buffer_rows <= 448  # 500 rounded down to whole batches of 64
    assert stats.max_chunk_rows <= 300
    assert stats.rows_per_epoch == n


@pytest.mark.slow
def test_predictions_match_the_python_api(files, tmp_path):
    from fastbp.files.preprocess import Preprocessor
    model = tmp_path / "m.fbp"
    assert fastbp_cli("train", files / "d.parquet", "--target", "label", "--hidden", "8", "--epochs", 2, "--quiet",
                      "--out", model)[0] == 0
    for args in ((), ("--proba",)):
        code, _, err = fastbp_cli("predict", model, files / "d.parquet", "--out", tmp_path / "p.npy",
                                  "--chunk-rows", 700, "--quiet", *args)
        assert code == 0, err
        trainer = fastbp.load(model)
        prep = Preprocessor(trainer.preprocessing)
        X, _ = prep.transform({c: v for c, v in _columns(files / "d.parquet").items()}, with_target=False)
        # the encoded inputs (as the CLI passes each chunk); labels are the classes themselves
        expected = trainer.predict_proba(X, encoded=True) if args else trainer.predict(X, encoded=True)
        table = pq.read_table(files / "d.parquet")  # the same through the schema, by column name
        np.testing.assert_array_equal(trainer.predict_proba(table) if args else trainer.predict(table), expected)
        got = np.load(tmp_path / "p.npy")
        if args:
            np.testing.assert_allclose(got, expected, rtol=1e-6)
        else:
            np.testing.assert_array_equal(got, expected)


def _columns(path):
    table = pq.read_table(path)
    return {name: (table.column(name).to_numpy() if name != "color" and name != "label"
                   else np.asarray(table.column(name).to_pylist(), dtype=object)) for name in table.column_names}


def test_unexpected_errors_exit_1_and_say_it_is_a_bug(monkeypatch, capsys):
    from fastbp import cli

    def broken(args):
        raise RuntimeError("a bug")

    parser = cli._parser
    monkeypatch.setattr(cli, "_parser", lambda: _with_run(parser(), broken))
    assert cli.main(["info", "whatever.fbp"]) == 1
    err = capsys.readouterr().err
    assert "internal error" in err and "a bug" in err and "--debug" in err and "Traceback" not in err
    assert cli.main(["info", "whatever.fbp", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err

    def wrong_type(args):  # a TypeError from inside fastbp is a bug, not bad input
        return None + 1

    monkeypatch.setattr(cli, "_parser", lambda: _with_run(parser(), wrong_type))
    assert cli.main(["info", "whatever.fbp"]) == 1


def _with_run(parser, run):
    parser._subparsers._group_actions[0].choices["info"].set_defaults(run=run)
    return parser


def test_kill_9_while_checkpointing_leaves_a_loadable_checkpoint(files, tmp_path):
    import random
    rng = random.Random(1)
    ckpt = tmp_path / "ckpt"
    for trial in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "fastbp", "train", str(files / "d.npy"), "--target", "2",
                                 "--epochs", "100000", "--hidden", "256,256", "--checkpoint-dir", str(ckpt),
                                 "--val-split", "0", "--out", str(tmp_path / "m.fbp"), "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and not (ckpt / "checkpoint.fbp").exists():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.wait()
        assert len(fastbp.load(ckpt / "checkpoint.fbp").history) >= 1


def test_bench_is_reachable_from_the_cli():
    code, out, err = fastbp_cli("bench", "--help")
    assert code == 0 and "--workloads" in out


def test_evaluate_computes_r2_over_the_whole_file_not_per_chunk(files, tmp_path):
    model = tmp_path / "m.fbp"
    assert fastbp_cli("train", files / "d.npy", "--target", "0", "--task", "regress", "--hidden", "8",
                      "--epochs", 3, "--quiet", "--out", model)[0] == 0
    code, out, err = fastbp_cli("evaluate", model, files / "d.npy", "--chunk-rows", 250)
    assert code == 0, err
    from fastbp.files.preprocess import Preprocessor
    trainer = fastbp.load(model)
    data = np.load(files / "d.npy")
    X, _ = Preprocessor(trainer.preprocessing).transform({str(i): data[:, i] for i in range(3)})
    expected = trainer.evaluate(X, data[:, 0], encoded=True)  # the target as the file holds it
    scores = json.loads(out)
    assert scores["r2"] == pytest.approx(expected["r2"], rel=1e-5)
    assert scores["loss"] == pytest.approx(expected["loss"], rel=1e-5)


@pytest.mark.slow
def test_help_lists_defaults_choices_and_examples():
    code, out, _ = fastbp_cli("train", "--help")
    assert code == 0
    from fastbp.presets import PRESETS
    by_preset = f"(default: plain adam; recipe {PRESETS['recipe']['optimizer']})"
    for text in ("(default: 256,256)", "{sgd,adam,adamw,rmsprop}", "--early-stopping", "--dropout DROPOUT",
                 "(default: 0.0)", "examples:\n  fastbp train data.parquet --target label"):
        assert text in out, text
    assert by_preset in " ".join(out.split())  # wrapped to the terminal's width
    for command in ("predict", "evaluate", "info", "export", "compile"):
        code, out, _ = fastbp_cli(command, "--help")
        assert code == 0 and "examples:" in out and f"usage: fastbp {command}" in out
    assert "usage: fastbp bench" in fastbp_cli("bench", "--help")[1]


@pytest.mark.slow
def test_training_options_and_compressed_csv(files, tmp_path):
    import gzip
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress((files / "d.csv").read_bytes()))
    log = tmp_path / "log.jsonl"
    code, _, err = fastbp_cli("train", tmp_path / "d.csv.gz", "--target", "label", "--exclude", "value", "--loss",
                              "binary_cross_entropy", "--dropout", "0.1", "--weight-decay", "0.001", "--epochs", "40",
                              "--early-stopping", "--patience", "2", "--lr", "0.05", "--hidden", "8",
                              "--out", tmp_path / "m.fbp", "--log-file", log, "--quiet")
    assert code == 0, err
    model = fastbp.load(tmp_path / "m.fbp")
    assert model.layer_sizes[-1] == 1 and model.dropout == 0.1 and model.optimizer_settings.weight_decay == 0.001
    assert len(model.history) < 40  # stopped early
    code, _, err = fastbp_cli("predict", tmp_path / "m.fbp", tmp_path / "d.csv.gz", "--out", tmp_path / "p.csv",
                              "--proba")
    assert code == 0, err
    proba = pcsv.read_csv(tmp_path / "p.csv")
    assert proba.column_names == ["proba_no", "proba_yes"]
    np.testing.assert_allclose(proba["proba_no"].to_numpy() + proba["proba_yes"].to_numpy(), 1, rtol=1e-6)
    code, out, err = fastbp_cli("evaluate", tmp_path / "m.fbp", tmp_path / "d.csv.gz")
    assert code == 0 and json.loads(out)["accuracy"] > 0.8, err


@pytest.mark.slow
def test_compile_fills_the_cache_for_each_dtype(capsys):
    from fastbp.cli import main
    assert main(["compile", "--dtype", "float32", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "fastbp compile: float32:" in out and "fastbp compile: float64:" in out
    assert "cached in" in out


def test_compile_with_the_cache_off_is_refused_before_compiling():
    proc = subprocess.run([sys.executable, "-m", "fastbp", "compile"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, FASTBP_CACHE="0"))
    assert proc.returncode == 2 and "the kernel cache is off (FASTBP_CACHE=0)" in proc.stderr, proc.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`fastbp info m.fbp | head -1`: the closed pipe ends the command as it ends shell tools (exit 141), with
    no 'internal error'."""
    fastbp.Trainer([3, 4, 2], epochs=1).save(tmp_path / "m.fbp")
    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run([sys.executable, "-m", "fastbp", "info", str(tmp_path / "m.fbp")], stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


@pytest.mark.slow
def test_no_output_may_overwrite_a_file_the_command_reads(files, tmp_path):
    data = tmp_path / "d.csv"
    data.write_bytes((files / "d.csv").read_bytes())
    model = tmp_path / "m.fbp"
    code, _, err = fastbp_cli("train", data, "--target", "label", "--hidden", "4", "--epochs", "1", "--quiet",
                              "--out", model)
    assert code == 0, err
    before = data.read_bytes(), model.read_bytes()
    for args in (["train", data, "--target", "label", "--out", data],
                 ["train", data, "--target", "label", "--out", tmp_path / "new.fbp", "--log-file", data],
                 ["predict", model, data, "--out", data],
                 ["export", model, model]):
        code, _, err = fastbp_cli(*args)
        assert code == 2 and "is the file this command reads" in err and "give another file name" in err, err
    assert (data.read_bytes(), model.read_bytes()) == before
