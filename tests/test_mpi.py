"""Data-parallel training over MPI ranks equals one process (launched with the environment's mpiexec)."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fastbp

pytest.importorskip("mpi4py")
MPIEXEC = Path(sys.executable).parent / "mpiexec"
pytestmark = [pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to this Python (pip install mpich)"),
              pytest.mark.slow]

PROBLEM = """
import numpy as np
rng = np.random.default_rng(0)
X = rng.normal(size=(203, 6))
y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
"""
SETTINGS = {
    "adam": dict(optimizer="adam"),
    "sgd_clip": dict(optimizer="sgd", momentum=0.9, nesterov=True, clip_grad_norm=0.5, lr=0.05),
    "rmsprop_weights": dict(optimizer="rmsprop", lr=0.005),
    "adam_dropout": dict(optimizer="adam", dropout=0.3),  # masks follow the data row, not the rank's slice
    "adam_every_layer": dict(optimizer="adam", ensemble_adapters="every_layer", dropout=0.2),
}


def launch(n, script, *args, timeout=120):
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([str(MPIEXEC), "-n", str(n), sys.executable, "-m", "mpi4py", str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def train_script(tmp_path, settings):
    script = tmp_path / "train.py"
    script.write_text(PROBLEM + textwrap.dedent(f"""
        import sys, fastbp
        weights = np.linspace(0.5, 2, len(y)) if {settings == 'rmsprop_weights'} else None
        tr = fastbp.Trainer([6, 32, 16, 3], batch_size=32, epochs=3, dtype="float64", seed=1, n_threads=1,
                            comm="mpi", **{SETTINGS[settings]!r})
        tr.fit(X, y, sample_weight=weights, validation_split=0.2)
        tr.save(sys.argv[1])
        """))
    return script


@pytest.mark.parametrize("settings", list(SETTINGS))
@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_give_the_same_parameters_as_one_process(tmp_path, settings, ranks):
    proc = launch(ranks, train_script(tmp_path, settings), tmp_path / "m.fbp")
    assert proc.returncode == 0, proc.stderr
    namespace = {}
    exec(PROBLEM, namespace)
    X, y = namespace["X"], namespace["y"]
    weights = np.linspace(0.5, 2, len(y)) if settings == "rmsprop_weights" else None
    single = fastbp.Trainer([6, 32, 16, 3], batch_size=32, epochs=3, dtype="float64", seed=1, n_threads=1,
                            **SETTINGS[settings]).fit(X, y, sample_weight=weights, validation_split=0.2)
    distributed = fastbp.load(tmp_path / "m.fbp")
    np.testing.assert_allclose(distributed.params, single.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([h["loss"] for h in distributed.history], [h["loss"] for h in single.history],
                               rtol=1e-9)
    assert distributed.history[-1]["val_loss"] == pytest.approx(single.history[-1]["val_loss"], rel=1e-9)


def test_float32_histories_sum_in_float64_like_one_process(tmp_path):
    """Loss and weight totals cross the ranks in float64: a float32 run's history matches one process
    (2 threads split each batch's rows as 2 ranks do) far below float32 rounding."""
    script = tmp_path / "f32.py"
    script.write_text(PROBLEM + textwrap.dedent("""
        import sys, fastbp
        tr = fastbp.Trainer([6, 8, 3], batch_size=64, epochs=3, seed=1, n_threads=1, comm="mpi", lr=0.1)
        tr.fit(X, y, sample_weight=np.linspace(0.5, 2, len(y)))
        tr.save(sys.argv[1])
        """))
    proc = launch(2, script, tmp_path / "m.fbp")
    assert proc.returncode == 0, proc.stderr
    namespace = {}
    exec(PROBLEM, namespace)
    X, y = namespace["X"], namespace["y"]
    single = fastbp.Trainer([6, 8, 3], batch_size=64, epochs=3, seed=1, n_threads=2, lr=0.1).fit(
        X, y, sample_weight=np.linspace(0.5, 2, len(y)))
    distributed = fastbp.load(tmp_path / "m.fbp")
    np.testing.assert_allclose(distributed.params, single.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose([h["loss"] for h in distributed.history], [h["loss"] for h in single.history],
                               rtol=1e-12)


def test_a_failing_rank_ends_the_job_quickly(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(PROBLEM + textwrap.dedent("""
        import fastbp
        from mpi4py import MPI
        tr = fastbp.Trainer([6, 8, 3], epochs=1000, n_threads=1, comm="mpi")
        if MPI.COMM_WORLD.Get_rank() == 1:
            raise RuntimeError("rank 1 failed")
        tr.fit(X, y)
        """))
    start = time.time()
    proc = launch(2, script, timeout=60)
    assert proc.returncode != 0
    assert "rank 1 failed" in proc.stderr
    assert time.time() - start < 30


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_mpi(name, *args, **kwargs):
        if name.startswith("mpi4py"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpi)
    with pytest.raises(ImportError, match=r"pip install 'fastbp\[mpi\]'"):
        fastbp.Trainer([2, 2], comm="mpi")


@pytest.mark.parametrize("extra,by_target", [((), False), (("--class-weight", "balanced"), False), ((), True),
                                             (("--no-spill",), True)])
def test_cli_under_mpiexec_matches_one_process(tmp_path, extra, by_target):
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(size=(600, 4)), (rng.normal(size=600) > 0.8)])
    if by_target:  # a sorted export: every rank gathers the same rows from all over the file
        data = data[np.argsort(data[:, 4], kind="stable")]
    np.save(tmp_path / "d.npy", data)
    # class weights: counted over the ranks' parts of the first pass, and every rank weighs whole batches
    common = ["train", tmp_path / "d.npy", "--target", "4", "--hidden", "8", "--epochs", "2", "--threads", "1",
              "--dtype", "float64", "--buffer-rows", "256", "--batch-size", "64", "--quiet", "--chunk-rows", "100",
              *extra]
    # 6 chunks: the ranks split the first pass and merge its statistics; training stays equal to one process
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "fastbp", *map(str, common),
                           "--out", str(tmp_path / "mpi.fbp")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, common), "--out", str(tmp_path / "one.fbp")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(fastbp.load(tmp_path / "mpi.fbp").params, fastbp.load(tmp_path / "one.fbp").params,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ranks,sync_every", [(2, 4), (3, 3)])  # 3 ranks: slices of 10/11/11 rows, uneven steps
def test_local_sgd_keeps_ranks_identical_and_learns(tmp_path, ranks, sync_every):
    script = tmp_path / "local.py"
    script.write_text(PROBLEM + textwrap.dedent(f"""
        import sys, fastbp
        tr = fastbp.Trainer([6, 32, 3], batch_size=32, epochs=15, seed=1, n_threads=1, comm="mpi",
                            sync_every={sync_every}, optimizer="adam", lr=0.01)
        tr.fit(X, y)  # the per-epoch rank checksum would raise if the ranks drifted apart
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_rank() == 0:  # the ranks hold the same parameters; one line, not interleaved
            print("accuracy", tr.evaluate(X, y)["accuracy"])
        """))
    proc = launch(ranks, script)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.split()[-1]) > 0.8


def test_ranks_with_different_labels_number_them_alike(tmp_path):
    script = tmp_path / "labels.py"
    script.write_text(PROBLEM + textwrap.dedent("""
        import sys, fastbp
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank()
        names = np.array(["cat", "dog", "emu"])[y]
        mine = (names == "emu") == (rank == 1)  # rank 1 holds every emu, rank 0 the rest
        tr = fastbp.Trainer([6, 8, 3], epochs=2, n_threads=1, comm="mpi").fit(X[mine], names[mine], local_data=True)
        open(f"{sys.argv[1]}/classes{rank}.txt", "w").write(" ".join(tr.classes_))
        """))
    proc = launch(2, script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    for rank in range(2):
        assert (tmp_path / f"classes{rank}.txt").read_text() == "cat dog emu"


def test_memory_mapped_data_on_ranks_equals_in_memory_training(tmp_path):
    """Each rank gathers only the rows of its slices from the mapped file; the result equals in-memory data."""
    namespace = {}
    exec(PROBLEM, namespace)
    X, y = namespace["X"], namespace["y"]
    np.save(tmp_path / "X.npy", X)
    script = tmp_path / "mapped.py"
    script.write_text(textwrap.dedent(f"""
        import sys, numpy as np, fastbp
        X = np.load({str(tmp_path / 'X.npy')!r}, mmap_mode="r")
        y = {y.tolist()!r}
        tr = fastbp.Trainer([6, 32, 3], batch_size=32, epochs=3, dtype="float64", seed=1, n_threads=1, comm="mpi")
        tr.fit(X, y)
        tr.save(sys.argv[1])
        """))
    proc = launch(2, script, tmp_path / "m.fbp")
    assert proc.returncode == 0, proc.stderr
    single = fastbp.Trainer([6, 32, 3], batch_size=32, epochs=3, dtype="float64", seed=1, n_threads=1).fit(X, y)
    np.testing.assert_allclose(fastbp.load(tmp_path / "m.fbp").params, single.params, rtol=1e-9, atol=1e-12)


def _parquet(path, groups, rows_per_group, seed=0, by_target=False):
    """A classification table (4 features, 3 classes) written with the given row-group layout (sorted by
    its label: by_target)."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(groups * rows_per_group, 4))
    label = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    if by_target:
        order = np.argsort(label, kind="stable")
        X, label = X[order], label[order]
    table = pa.table({**{f"f{i}": X[:, i] for i in range(4)}, "label": label})
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path


SHARDED_SCRIPT = """
import json, sys, numpy as np, fastbp
from fastbp.files.preprocess import Preprocessor
from fastbp.files.sources import open_source
from fastbp.engine.buffered import StreamStats
source = open_source(sys.argv[1])
prep, _, n = Preprocessor.fit(source, "label")
settings = json.loads(sys.argv[3])
class_weight = settings.pop("class_weight", None)
tr = fastbp.Trainer([prep.n_inputs, 16, 3], batch_size=32, dtype="float64", seed=1, n_threads=1, comm="mpi",
                    **settings)
stats = StreamStats()
tr.fit_source(source, prep, n, buffer_rows=64, stats=stats, shard="chunks", class_weight=class_weight)
from mpi4py import MPI
with open(f"{sys.argv[2]}.rank{MPI.COMM_WORLD.Get_rank()}", "w") as f:  # which chunks this rank read in the last epoch
    f.write(" ".join(map(str, stats.chunks_read)))
tr.save(sys.argv[2])
"""


def _chunks_read(model, rank):
    return Path(f"{model}.rank{rank}").read_text().split()


@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_chunk_sharded_steps_average_each_ranks_local_batch(tmp_path, class_weight):
    """Without shuffling, step s of 2 chunk-sharded ranks is one batch of rank 0's s-th 16 rows plus rank 1's."""
    data = _parquet(tmp_path / "d.parquet", groups=4, rows_per_group=64)
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    settings = {"shuffle": False, "epochs": 2, "optimizer": "adam", "class_weight": class_weight}
    proc = launch(2, script, data, tmp_path / "m.fbp", json.dumps(settings))
    assert proc.returncode == 0, proc.stderr
    assert [_chunks_read(tmp_path / "m.fbp", r) for r in (0, 1)] == [["0", "2"], ["1", "3"]]
    from fastbp.files.preprocess import Preprocessor
    from fastbp.files.sources import open_source
    source = open_source(data)
    prep, _, _ = Preprocessor.fit(source, "label")
    columns = prep.features + ["label"]
    groups = [prep.transform(chunk, start, dtype=np.float64) for start, chunk in source.chunks(columns)]
    per_rank = [[np.concatenate([groups[k][i] for k in (r, r + 2)]) for i in (0, 1)] for r in (0, 1)]
    blocks = [per_rank[r][i][s:s + 16] for s in range(0, 128, 16) for r in (0, 1) for i in (0, 1)]
    X = np.concatenate(blocks[0::2])
    y = np.concatenate(blocks[1::2]).astype(int)
    single = fastbp.Trainer([prep.n_inputs, 16, 3], batch_size=32, dtype="float64", seed=1, n_threads=1,
                            shuffle=False, epochs=2, optimizer="adam").fit(X, y, class_weight=class_weight)
    np.testing.assert_allclose(fastbp.load(tmp_path / "m.fbp").params, single.params, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("settings,by_target", [('{"epochs": 25, "optimizer": "adam", "lr": 0.01}', False),
                                               ('{"epochs": 25, "optimizer": "adam", "lr": 0.01, "sync_every": 3}',
                                                False),
                                               ('{"epochs": 25, "optimizer": "adam", "lr": 0.01}', True)])
def test_chunk_sharded_ranks_read_disjoint_chunks_and_learn(tmp_path, settings, by_target):
    # uneven: ranks get 3 and 2 row groups; sorted by label, each rank's groups hold other classes
    data = _parquet(tmp_path / "d.parquet", groups=5, rows_per_group=60, by_target=by_target)
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    proc = launch(2, script, data, tmp_path / "m.fbp", settings)
    assert proc.returncode == 0, proc.stderr  # the per-epoch checksum would fail if ranks drifted apart
    read = [_chunks_read(tmp_path / "m.fbp", r) for r in (0, 1)]
    assert sorted(len(r) for r in read) == [2, 3]
    assert sorted(sum(read, [])) == ["0", "1", "2", "3", "4"]
    from fastbp.files.preprocess import Preprocessor
    from fastbp.files.sources import open_source
    source = open_source(data)
    prep, _, _ = Preprocessor.fit(source, "label")
    whole = {c: np.concatenate([chunk[c] for _, chunk in source.chunks(prep.features + ["label"])])
             for c in prep.features + ["label"]}
    assert fastbp.load(tmp_path / "m.fbp").evaluate(whole, "label")["accuracy"] > 0.85  # read by its schema


def test_ranks_share_out_the_row_groups_of_a_dataset_folder(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    for i, groups in enumerate([2, 2, 1]):  # 5 row groups over 3 parts
        _parquet(folder / f"part-{i:05d}.snappy.parquet", groups=groups, rows_per_group=60, seed=i)
    (folder / "_SUCCESS").write_text("")
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    proc = launch(2, script, folder, tmp_path / "m.fbp", '{"epochs": 3}')
    assert proc.returncode == 0, proc.stderr
    read = [_chunks_read(tmp_path / "m.fbp", r) for r in (0, 1)]
    assert sorted(len(r) for r in read) == [2, 3] and sorted(sum(read, [])) == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("by_target", [False, True])
def test_resume_after_kill_under_mpi_equals_an_uninterrupted_run(tmp_path, by_target):
    data = _parquet(tmp_path / "d.parquet", groups=8, rows_per_group=2000, by_target=by_target)
    env = dict(os.environ, NUMBA_NUM_THREADS="1")

    def train(out, *extra):
        return [str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "fastbp", "train", str(data),
                "--target", "label", "--hidden", "64,64", "--epochs", "6", "--threads", "1", "--dtype", "float64",
                "--buffer-rows", "1024", "--quiet", "--out", str(out), *map(str, extra)]

    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(train(tmp_path / "killed.fbp", "--checkpoint-dir", ckpt), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt / "checkpoint.fbp").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, 9)  # mpiexec and both ranks
    proc.wait()
    assert len(fastbp.load(ckpt / "checkpoint.fbp").history) >= 1
    resumed = subprocess.run(train(tmp_path / "resumed.fbp", "--checkpoint-dir", ckpt, "--resume"), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    full = subprocess.run(train(tmp_path / "full.fbp"), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    np.testing.assert_array_equal(fastbp.load(tmp_path / "resumed.fbp").params,
                                  fastbp.load(tmp_path / "full.fbp").params)


@pytest.mark.parametrize("sync_every", [1, 3])
def test_divergence_on_chunk_sharded_ranks_ends_every_rank_together(tmp_path, sync_every):
    """Ranks see different rows, so one may hit NaN first; none may be left waiting in a collective."""
    data = _parquet(tmp_path / "d.parquet", groups=4, rows_per_group=60)
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    settings = f'{{"epochs": 3, "optimizer": "sgd", "lr": 1e30, "on_divergence": "warn", "sync_every": {sync_every}}}'
    proc = launch(2, script, data, tmp_path / "m.fbp", settings, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("training diverged") == 2  # each rank warns, after the same epoch
    assert np.isfinite(fastbp.load(tmp_path / "m.fbp").params).all()


def test_ranks_passing_different_data_get_a_clear_error_not_a_hang(tmp_path):
    script = tmp_path / "different.py"
    script.write_text(PROBLEM + textwrap.dedent("""
        import fastbp
        from mpi4py import MPI
        rows = 203 if MPI.COMM_WORLD.Get_rank() == 0 else 150   # each rank loaded "its own" data
        fastbp.Trainer([6, 8, 3], epochs=2, n_threads=1, comm="mpi").fit(X[:rows], y[:rows])
        """))
    proc = launch(2, script, timeout=60)
    assert proc.returncode != 0
    assert "MPI ranks [1] passed different training data than rank 0" in proc.stderr


LOCAL_SCRIPT = PROBLEM + """
import json, sys, fastbp
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
options = json.loads(sys.argv[2])
cut = options.pop("cut")
mine = slice(0, cut) if rank == 0 else slice(cut, len(X))   # each rank holds its own rows
weights = np.linspace(0.5, 2, len(y))[mine] if options.pop("weights", False) else None
tr = fastbp.Trainer([6, 16, 3], batch_size=32, dtype="float64", seed=1, n_threads=1, comm="mpi", **options)
tr.fit(X[mine], y[mine], sample_weight=weights, local_data=True,
       validation_data=(X[mine], y[mine]))
tr.save(sys.argv[1])
"""


def test_local_data_steps_average_each_ranks_local_batch(tmp_path):
    """Without shuffling, step s of fit(local_data=True) on 2 ranks is rank 0's s-th 16 rows plus rank 1's."""
    script = tmp_path / "local.py"
    script.write_text(LOCAL_SCRIPT)
    proc = launch(2, script, tmp_path / "m.fbp", '{"cut": 96, "shuffle": false, "epochs": 2, "optimizer": "adam"}')
    assert proc.returncode == 0, proc.stderr
    namespace = {}
    exec(PROBLEM, namespace)
    # rank 0 holds rows 0..95 (6 steps), rank 1 rows 96..202 (7 steps, the last one alone with 11 rows)
    order = np.concatenate([np.r_[s:s + 16, 96 + s:96 + s + 16] for s in range(0, 96, 16)] + [np.arange(192, 203)])
    reference = fastbp.Trainer([6, 16, 3], batch_size=32, dtype="float64", seed=1, n_threads=1, shuffle=False,
                               epochs=2, optimizer="adam").fit(namespace["X"][order], namespace["y"][order])
    distributed = fastbp.load(tmp_path / "m.fbp")
    np.testing.assert_allclose(distributed.params, reference.params, rtol=1e-9, atol=1e-12)
    whole = reference.evaluate(namespace["X"], namespace["y"])  # validation: both ranks' rows combined
    assert distributed.history[-1]["val_loss"] == pytest.approx(whole["loss"], rel=1e-9)


@pytest.mark.parametrize("options", ['{"cut": 120, "epochs": 20, "optimizer": "adam", "lr": 0.01, "weights": true}',
                                     '{"cut": 150, "epochs": 20, "optimizer": "adam", "lr": 0.01, "sync_every": 3}',
                                     '{"cut": 100, "epochs": 20, "optimizer": "adam", "lr": 0.01, "dropout": 0.2}',
                                     '{"cut": 100, "epochs": 20, "optimizer": "adam", "lr": 0.01, "dropout": 0.2, '
                                     '"sync_every": 2}'])
def test_local_data_with_uneven_ranks_learns_and_stays_identical(tmp_path, options):
    script = tmp_path / "local.py"
    script.write_text(LOCAL_SCRIPT)
    proc = launch(2, script, tmp_path / "m.fbp", options)
    assert proc.returncode == 0, proc.stderr  # the per-epoch checksum would fail if ranks drifted apart
    namespace = {}
    exec(PROBLEM, namespace)
    assert fastbp.load(tmp_path / "m.fbp").evaluate(namespace["X"], namespace["y"])["accuracy"] > 0.8  # majority: 0.5


def test_exact_mode_resumes_on_a_different_number_of_ranks(tmp_path):
    """--shard rows equals one process for any rank count, so a checkpoint moves between 2 and 3 ranks."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "d.npy", np.column_stack([rng.normal(size=(600, 4)), (rng.normal(size=600) > 0)]))
    # the plain preset: a 2-epoch run stands in for an interrupted 4-epoch one (a cosine over 4 epochs, or early
    # stopping's restore at the end, would tell them apart)
    common = ["train", tmp_path / "d.npy", "--target", "4", "--hidden", "8", "--threads", "1", "--dtype", "float64",
              "--buffer-rows", "256", "--batch-size", "64", "--quiet", "--chunk-rows", "100", "--preset", "plain",
              "--val-split", "0.1"]
    ckpt = tmp_path / "ckpt"
    env = dict(os.environ, NUMBA_NUM_THREADS="1")

    def run(ranks, *args):
        launcher = [str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "mpi4py"] if ranks > 1 else [sys.executable]
        proc = subprocess.run([*launcher, "-m", "fastbp", *map(str, common), *map(str, args)], capture_output=True,
                              text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr

    run(2, "--epochs", 2, "--checkpoint-dir", ckpt, "--out", tmp_path / "half.fbp")
    run(3, "--epochs", 4, "--checkpoint-dir", ckpt, "--resume", "--out", tmp_path / "resumed.fbp")
    run(1, "--epochs", 4, "--out", tmp_path / "one.fbp")
    np.testing.assert_allclose(fastbp.load(tmp_path / "resumed.fbp").params, fastbp.load(tmp_path / "one.fbp").params,
                               rtol=1e-9, atol=1e-12)


TABLE_SCRIPT = """
import json, sys
import numpy as np, pandas as pd, fastbp
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
rng = np.random.default_rng(0)
df = pd.DataFrame({"x": rng.normal(size=300), "color": rng.choice(["red", "green", "blue"], 300),
                   "n": pd.array(rng.integers(0, 5, 300), dtype="Int64")})
df.loc[::17, "n"] = pd.NA
y = np.where(df.x + (df.color == "red") > 0.3, "late", "on time")
local = json.loads(sys.argv[2])
mine = slice(0, 140) if rank == 0 else slice(140, 300)
tr = fastbp.Trainer(hidden=(8,), batch_size=32, dtype="float64", seed=1, n_threads=1, comm="mpi", impute="mean",
                    epochs=10, optimizer="adam", lr=0.01)
if local:  # each rank holds its own rows: the schema is learned from all of them
    tr.fit(df[mine], y[mine], local_data=True)
else:
    tr.fit(df, y)
tr.save(sys.argv[1])
"""


@pytest.mark.parametrize("local", [False, True])
def test_a_dataframe_schema_is_the_same_on_every_rank(tmp_path, local):
    """A DataFrame's schema under MPI: the whole table's on every rank (each rank's rows merged with
    local_data=True); without local_data the model equals one process's."""
    pytest.importorskip("pandas")
    script = tmp_path / "table.py"
    script.write_text(TABLE_SCRIPT)
    proc = launch(2, script, tmp_path / "m.fbp", json.dumps(local))
    assert proc.returncode == 0, proc.stderr  # ranks check their parameters agree after every epoch
    model = fastbp.load(tmp_path / "m.fbp")
    namespace = {}
    exec(TABLE_SCRIPT.split("local = ")[0].replace("from mpi4py import MPI\nrank = MPI.COMM_WORLD.Get_rank()\n", ""),
         namespace)
    df, y = namespace["df"], namespace["y"]
    one = fastbp.Trainer(hidden=(8,), batch_size=32, dtype="float64", seed=1, n_threads=1, impute="mean",
                         epochs=10, optimizer="adam", lr=0.01).fit(df, y)
    from fastbp.files.preprocess import Preprocessor
    assert Preprocessor(model.preprocessing).matches(one.preprocessing)  # statistics of all 300 rows
    if not local:
        np.testing.assert_allclose(model.params, one.params, rtol=1e-9, atol=1e-12)
    assert model.evaluate(df, y)["accuracy"] > 0.8


EMBEDDING_PROBLEM = PROBLEM + """
codes = rng.integers(0, 40, size=len(y))  # 40 categories of a 41-row table: a batch looks up a few rows
X = np.column_stack([X, codes]).astype(np.float64)
y = (y + (codes % 3 == 0)) % 3
"""


@pytest.mark.parametrize("settings,ensemble", [("adam", 1), ("sgd_clip", 1), ("adam", 3), ("adam_every_layer", 3)])
def test_embedding_steps_on_ranks_equal_one_process(tmp_path, settings, ensemble):
    """A table's rows step only when some rank's batch looked them up, as in one process (an ensemble's members
    too: each rank runs them on its rows)."""
    script = tmp_path / "emb.py"
    script.write_text(EMBEDDING_PROBLEM + textwrap.dedent(f"""
        import sys, fastbp
        tr = fastbp.Trainer([6 + 4, 16, 3], embeddings=[(41, 4)], batch_size=32, epochs=3, dtype="float64",
                            seed=1, n_threads=1, comm="mpi", ensemble={ensemble}, **{SETTINGS[settings]!r})
        tr.fit(X, y)
        tr.save(sys.argv[1])
        """))
    proc = launch(2, script, tmp_path / "m.fbp")
    assert proc.returncode == 0, proc.stderr
    namespace = {}
    exec(EMBEDDING_PROBLEM, namespace)
    single = fastbp.Trainer([6 + 4, 16, 3], embeddings=[(41, 4)], batch_size=32, epochs=3, dtype="float64", seed=1,
                            n_threads=1, ensemble=ensemble, **SETTINGS[settings]).fit(namespace["X"], namespace["y"])
    np.testing.assert_allclose(fastbp.load(tmp_path / "m.fbp").params, single.params, rtol=1e-9, atol=1e-12)
