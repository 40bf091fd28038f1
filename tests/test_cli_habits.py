"""The command line as newcomers type it: predictions on standard output, results kept under --quiet, evaluate
with --target, --hidden typos refused before any work, unknown options answered with the command's usage and the
closest option, and missing labels named as missing."""
import subprocess
import sys

import numpy as np
import pytest

import fastbp

pa = pytest.importorskip("pyarrow")
import pyarrow.csv as pcsv  # noqa: E402


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("habits")
    x = np.random.default_rng(0).normal(size=(200, 2))
    pcsv.write_csv(pa.table({"a": x[:, 0], "b": x[:, 1], "label": np.where(x[:, 0] > 0, "yes", "no")}),
                   folder / "d.csv")
    code, out, err = cli("train", folder / "d.csv", "--target", "label", "--hidden", "4", "--epochs", "2",
                         "--quiet", "--out", folder / "m.fbp")
    assert code == 0, err
    assert out.startswith("done: ") and " loss " in out and "model saved to" in out  # the result, also --quiet
    return folder


def test_predict_writes_csv_to_standard_output_without_out_or_with_a_dash(trained):
    code, expected, err = cli("predict", trained / "m.fbp", trained / "d.csv", "--out", trained / "p.csv")
    assert code == 0 and expected.startswith("wrote 200 predictions to")
    for out in ([], ["--out", "-"]):
        code, stdout, stderr = cli("predict", trained / "m.fbp", trained / "d.csv", *out, "--quiet")
        assert code == 0, stderr
        assert stdout == (trained / "p.csv").read_text()
        assert "wrote 200 predictions to standard output" in stderr


def test_evaluate_takes_the_models_target_and_refuses_another(trained):
    code, out, err = cli("evaluate", trained / "m.fbp", trained / "d.csv", "--target", "label", "--metric",
                         "accuracy")
    assert code == 0 and '"accuracy"' in out, err
    code, _, err = cli("evaluate", trained / "m.fbp", trained / "d.csv", "--target", "a")
    assert code == 2 and "was trained to predict 'label'" in err


@pytest.mark.parametrize("hidden,message", [("64,,32", "comma-separated layer sizes"), ("", "comma-separated"),
                                            ("0", "must be >= 1")])
def test_empty_or_bad_hidden_sizes_are_refused_before_the_first_pass(trained, hidden, message):
    code, out, err = cli("train", trained / "d.csv", "--target", "label", "--hidden", hidden, "--out",
                         trained / "x.fbp")
    assert code == 2 and message in err and "reading" not in err + out


def test_hidden_none_is_no_hidden_layer(trained):
    code, _, err = cli("train", trained / "d.csv", "--target", "label", "--hidden", "none", "--epochs", "1",
                       "--quiet", "--out", trained / "linear.fbp")
    assert code == 0, err
    assert fastbp.load(trained / "linear.fbp").layer_sizes == [2, 2]


@pytest.mark.parametrize("given,suggested", [("--learning-rate", "--lr"), ("--hiden", "--hidden"),
                                             ("--n_jobs", "--threads")])
def test_an_unknown_option_gets_the_commands_usage_and_the_closest_option(trained, given, suggested):
    code, _, err = cli("train", trained / "d.csv", "--target", "label", given, "3")
    assert code == 2
    assert "usage: fastbp train" in err and f"(did you mean {suggested}?)" in err


@pytest.mark.parametrize("labels", [np.array(["a", None, "b", "a"], dtype=object), np.array([1.0, 0.0, np.nan, 1.0])])
def test_a_missing_label_is_named_as_missing(labels):
    X = np.zeros((4, 2), np.float32)
    with pytest.raises(fastbp.InputError, match=r"y has a missing label \((None|nan)\) at row [12]"):
        fastbp.Trainer([2, 2], epochs=1).fit(X, labels)


def test_without_a_terminal_progress_is_a_line_per_epoch_and_a_failed_pass_leaves_nothing(trained):
    code, out, err = cli("train", trained / "d.csv", "--target", "label", "--hidden", "4", "--epochs", "3",
                         "--out", trained / "lines.fbp")  # stderr is a pipe here
    assert code == 0, err
    assert [line.split(" - ")[0] for line in err.splitlines() if line.startswith("epoch ")] == \
        ["epoch 1", "epoch 2", "epoch 3"]
    assert "\r" not in err and "reading" not in err and "it/s" not in err
    code, _, err = cli("train", trained / "d.csv", "--target", "label", "--exclude", "a,b", "--out",
                       trained / "x.fbp")
    assert code == 2 and err.strip() == "fastbp: error: no feature columns: the data has only the target column"


def test_a_compressed_or_other_format_file_named_csv_is_named_not_printed(trained, tmp_path):
    import gzip

    data = (trained / "d.csv").read_bytes()
    (tmp_path / "gz.csv").write_bytes(gzip.compress(data))
    (tmp_path / "numbers.csv").write_bytes(b"\x93NUMPY\x01\x00" + bytes(64))
    for name, message in (("gz.csv", "is gzip-compressed data, not CSV text: name it .csv.gz"),
                          ("numbers.csv", "is a NumPy .npy file, not CSV text: name it .npy")):
        code, _, err = cli("evaluate", trained / "m.fbp", tmp_path / name)
        assert code == 2 and message in err and "\\x" not in err
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(data))  # named as what it is, it is read
    code, out, err = cli("evaluate", trained / "m.fbp", tmp_path / "d.csv.gz", "--metric", "accuracy")
    assert code == 0, err


def test_a_pipe_is_refused_saying_why(trained, tmp_path):
    import os
    import threading

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes((trained / "d.csv").read_bytes()), daemon=True)
    writer.start()
    code, _, err = cli("evaluate", trained / "m.fbp", fifo)
    assert code == 2 and "is a pipe or device" in err and "save it to a file first" in err
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # let the writer finish
    writer.join(timeout=10)
    os.close(reader)


def test_data_dash_reads_csv_from_standard_input(trained, tmp_path):
    def piped(*args):
        proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], capture_output=True, text=True,
                              input=(trained / "d.csv").read_text(), timeout=300)
        return proc.returncode, proc.stdout, proc.stderr

    code, out, err = piped("predict", trained / "m.fbp", "-")
    assert code == 0, err
    cli("predict", trained / "m.fbp", trained / "d.csv", "--out", tmp_path / "p.csv")
    assert out == (tmp_path / "p.csv").read_text()
    code, out, err = piped("train", "-", "--target", "label", "--hidden", "4", "--epochs", "1", "--quiet", "--out",
                           tmp_path / "m.fbp")
    assert code == 0 and "model saved to" in out, err


@pytest.mark.parametrize("text, message", [("a,b\n1,2\n", "standard input has no column(s) 'label'"),
                                           ("", "standard input is not a readable CSV file")])
def test_bad_standard_input_is_named_as_such(trained, text, message):
    proc = subprocess.run([sys.executable, "-m", "fastbp", "evaluate", str(trained / "m.fbp"), "-"],
                          capture_output=True, text=True, input=text, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and "fastbp-stdin" not in proc.stderr, proc.stderr
