"""Streamed training does not depend on the order the file was written in (sorted exports are the common case)."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastbp
from fastbp.core.errors import InputError
from fastbp.engine.engine import Engine
from fastbp.files.preprocess import Preprocessor
from fastbp.files.sources import open_source
from fastbp.files.scan import holdout_mask
from fastbp.files import streaming
from fastbp.files.streaming import EncodedRows, FileTargets

pa = pytest.importorskip("pyarrow")
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

N = 6000


def table(kind, seed=0):
    """A classification table (4 features) with its target: binary or 10 classes."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 4))
    score = X[:, 0] + 0.5 * X[:, 1]
    y = (score > 0).astype(int) if kind == "binary" else np.digitize(score, np.quantile(score, np.arange(1, 10) / 10))
    return X, y


def write(path, X, y):
    columns = {**{f"f{i}": X[:, i] for i in range(X.shape[1])}, "label": y}
    if path.suffix == ".parquet":
        pq.write_table(pa.table(columns), path, row_group_size=1000)
    elif path.suffix == ".csv":
        pcsv.write_csv(pa.table(columns), path)
    else:
        np.save(path, np.column_stack([X, y]))
    return path


def train(path, n_out, spill, epochs=4, buffer_rows=256, val_split=0.0):
    source = open_source(path, chunk_rows=500)
    target = "label" if path.suffix != ".npy" else "4"
    prep, _, n = Preprocessor.fit(source, target, val_split=val_split)
    tr = fastbp.Trainer([prep.n_inputs, 16, n_out], optimizer="adam", lr=0.01, batch_size=32, epochs=epochs, seed=0,
                        n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr.fit_source(source, prep, n, buffer_rows=buffer_rows, val_split=val_split, spill=spill)
    return tr, prep


def log_loss_on(tr, prep, X, y):
    """The model's loss on the whole table, in its original order (the same rows whatever the file's order)."""
    columns = {**{f"f{i}": X[:, i] for i in range(X.shape[1])}}
    if prep.features != list(columns):
        columns = {str(i): X[:, i] for i in range(X.shape[1])}
    Xt, _ = prep.transform({**columns, prep.target: y}, dtype=np.float32)
    return tr.evaluate(Xt, y, encoded=True)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".npy"])
@pytest.mark.parametrize("kind,order", [("binary", "target"), ("classes", "target"), ("binary", "feature")])
def test_a_sorted_file_trains_as_well_as_a_shuffled_one(tmp_path, suffix, kind, order):
    X, y = table(kind)
    n_out = 2 if kind == "binary" else 10
    shuffled = write(tmp_path / f"shuffled{suffix}", X, y)
    by = np.argsort(y if order == "target" else X[:, 0], kind="stable")
    ordered = write(tmp_path / f"sorted{suffix}", X[by], y[by])
    reference = log_loss_on(*train(shuffled, n_out, spill=True), X, y)
    spilled = log_loss_on(*train(ordered, n_out, spill=True), X, y)
    # within what another seed changes (the two files' rows go through different random orders)
    assert abs(spilled["loss"] - reference["loss"]) < 0.2 * reference["loss"] + 0.005, (spilled, reference)
    assert abs(spilled["accuracy"] - reference["accuracy"]) < 0.04, (spilled, reference)
    if order == "target":  # shuffling within the buffer alone fails on the same file: what the spill is for
        buffered = log_loss_on(*train(ordered, n_out, spill=False), X, y)
        assert buffered["loss"] > 1.5 * reference["loss"], (buffered, reference)


@pytest.mark.parametrize("max_blocks", [None, 1000])  # 1000: blocks of 5 rows, as a file of over 2^22 rows has
def test_every_buffer_is_drawn_from_the_whole_file_and_an_epoch_sees_each_row_once(tmp_path, monkeypatch, max_blocks):
    if max_blocks:
        monkeypatch.setattr(streaming, "MAX_BLOCKS", max_blocks)
    X, y = table("binary")
    by = np.argsort(y, kind="stable")
    path = write(tmp_path / "sorted.parquet", X[by], y[by])
    seen = []
    original = Engine.train_rows

    def recording(self, Xb, Yb, weights, order, hyper):
        seen.append((Xb[order].copy(), Yb[order, 0].copy()))
        return original(self, Xb, Yb, weights, order, hyper)

    monkeypatch.setattr(Engine, "train_rows", recording)
    tr, prep = train(path, 2, spill=True, epochs=2, val_split=0.2)
    per_epoch = len(seen) // 2
    epoch = seen[:per_epoch]
    shares = [labels.mean() for _, labels in epoch]
    assert min(shares) > 0.3 and max(shares) < 0.7, shares  # sorted in the file: all 0s, then all 1s
    source = open_source(path, chunk_rows=500)
    _, _, n = Preprocessor.fit(source, "label", val_split=0.2)
    rows = np.concatenate([Xb for Xb, _ in epoch])
    assert len(rows) == n
    expected = np.concatenate([prep.transform(chunk, start, dtype=np.float32)[0] for start, chunk in
                               source.chunks(prep.features + ["label"])])
    expected = expected[~holdout_mask(0, np.arange(N), 0.2)]
    np.testing.assert_array_equal(np.unique(rows, axis=0), np.unique(expected, axis=0))
    assert len(np.unique(rows, axis=0)) == n  # each training row once


def test_validation_rows_are_a_uniform_sample_of_a_sorted_file(tmp_path):
    X, y = table("binary")
    by = np.argsort(y, kind="stable")
    path = write(tmp_path / "sorted.parquet", X[by], y[by])
    source = open_source(path)
    _, held, _ = Preprocessor.fit(source, "label", val_split=0.5, val_max_rows=200)
    labels = np.asarray(held["label"])
    assert len(labels) == 200
    assert 0.35 < labels.mean() < 0.65  # the first 200 held rows would all be 0
    # the same rows under any chunking
    _, again, _ = Preprocessor.fit(open_source(path, chunk_rows=77), "label", val_split=0.5, val_max_rows=200)
    np.testing.assert_array_equal(np.asarray(again["f0"]), np.asarray(held["f0"]))


def test_a_file_sorted_by_its_target_is_named_and_warned_about_without_the_spill(tmp_path):
    X, y = table("classes")
    by = np.argsort(y, kind="stable")
    ordered = write(tmp_path / "sorted.parquet", X[by], y[by])
    shuffled = write(tmp_path / "shuffled.parquet", X, y)
    source = open_source(ordered)
    prep, _, n = Preprocessor.fit(source, "label")
    assert "changes value only 9 times in 6,000 rows" in prep.looks_sorted
    assert Preprocessor.fit(open_source(shuffled), "label")[0].looks_sorted is None
    tr = fastbp.Trainer([prep.n_inputs, 4, 10], epochs=1, n_threads=1)
    with pytest.warns(UserWarning, match="looks sorted.*shuffled only within the buffer"):
        tr.fit_source(source, prep, n, spill=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr.fit_source(source, prep, n)
    # a regression target in rising order
    np.save(tmp_path / "r.npy", np.column_stack([X, np.sort(X[:, 0])]))
    prep, _, _ = Preprocessor.fit(open_source(tmp_path / "r.npy"), "4")
    assert "rises between 5,999 of 5,999" in prep.looks_sorted


def test_the_spill_needs_room_and_says_where(tmp_path, monkeypatch):
    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    with pytest.raises(InputError, match=r"needs 8\.0 MiB of disk in .*has 40 KiB free.*TMPDIR.*--no-spill"):
        EncodedRows(100_000, 20, FileTargets("cross_entropy", 2), np.float32, folder=str(tmp_path))


@pytest.mark.parametrize("windows", [None, (3, 64)])  # (3, 64): a window ends every 3 rows or 2 rows apart
def test_encoded_rows_read_back_what_was_written(tmp_path, monkeypatch, windows):
    if windows:
        monkeypatch.setattr(streaming, "GATHER_ROWS", windows[0])
        monkeypatch.setattr(streaming, "GATHER_BYTES", windows[1])
    rng = np.random.default_rng(0)
    targets = FileTargets("mse", 3, class_table=np.array([1.0, 2.0, 3.0]))
    rows = EncodedRows(50, 4, targets, np.float64, folder=str(tmp_path))
    X, Y, W = rng.normal(size=(50, 4)), rng.normal(size=(50, 3)), rng.random(50)
    rows.write(X[:20], Y[:20], W[:20])
    rows.write(X[20:], Y[20:], W[20:])
    with pytest.raises(InputError, match="more training rows than its first pass counted"):
        rows.write(X[:1], Y[:1], W[:1])
    Xb, (Yb, Wb) = np.zeros((10, 4)), targets.buffers(10, np.float64)
    picked = np.array([0, 7, 8, 30, 41, 48, 49])
    rows.gather(Xb, Yb, Wb, 3, picked)
    np.testing.assert_array_equal(Xb[3:], X[picked])
    np.testing.assert_array_equal(Yb[3:], Y[picked])
    np.testing.assert_array_equal(Wb[3:], W[picked])
    assert not Xb[:3].any()
    assert not os.listdir(tmp_path)  # unnamed: nothing to clean up after a crash
    held = rows.arrays[0]  # a view still alive (a traceback's frame holds one after Ctrl-C inside gather)
    rows.close()
    assert held[0, 0] == X[0, 0] and rows.file.closed


@pytest.mark.slow
def test_cli_resume_on_a_sorted_file_equals_an_uninterrupted_run(tmp_path):
    X, y = table("binary")
    by = np.argsort(y, kind="stable")
    path = write(tmp_path / "sorted.csv", X[by], y[by])

    def cli(*args):
        # the plain preset: a 1-epoch run stands in for an interrupted 3-epoch one (a cosine over 3 epochs, or
        # early stopping's restore at the end, would tell them apart)
        proc = subprocess.run([sys.executable, "-m", "fastbp", "train", str(path), "--target", "label", "--hidden",
                               "8", "--threads", "1", "--buffer-rows", "512", "--batch-size", "64", "--quiet",
                               "--preset", "plain", "--val-split", "0.1", *map(str, args)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    cli("--epochs", 3, "--out", tmp_path / "full.fbp")
    cli("--epochs", 1, "--checkpoint-dir", tmp_path / "c", "--out", tmp_path / "half.fbp")
    cli("--epochs", 3, "--checkpoint-dir", tmp_path / "c", "--resume", "--out", tmp_path / "resumed.fbp")
    np.testing.assert_array_equal(fastbp.load(tmp_path / "resumed.fbp").params,
                                  fastbp.load(tmp_path / "full.fbp").params)
    proc = cli("--epochs", 1, "--no-spill", "--out", tmp_path / "buffered.fbp")
    assert "looks sorted" in proc.stderr
