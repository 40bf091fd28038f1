"""Data-parallel training over MPI ranks equals one process (launched with the environment's mpiexec)."""
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
pytestmark = pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec next to this Python (pip install mpich)")

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


def test_cli_under_mpiexec_matches_one_process(tmp_path):
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(size=(600, 4)), (rng.normal(size=600) > 0)])
    np.save(tmp_path / "d.npy", data)
    common = ["train", tmp_path / "d.npy", "--target", "4", "--hidden", "8", "--epochs", "2", "--threads", "1",
              "--dtype", "float64", "--buffer-rows", "256", "--batch-size", "64", "--quiet"]
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "fastbp", *map(str, common),
                           "--out", str(tmp_path / "mpi.fbp")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, common), "--out", str(tmp_path / "one.fbp")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(fastbp.load(tmp_path / "mpi.fbp").params, fastbp.load(tmp_path / "one.fbp").params,
                               rtol=1e-9, atol=1e-12)


def test_local_sgd_keeps_ranks_identical_and_learns(tmp_path):
    script = tmp_path / "local.py"
    script.write_text(PROBLEM + textwrap.dedent("""
        import sys, fastbp
        tr = fastbp.Trainer([6, 32, 3], batch_size=32, epochs=15, seed=1, n_threads=1, comm="mpi", sync_every=4,
                            optimizer="adam", lr=0.01)
        tr.fit(X, y)  # the per-epoch rank checksum would raise if the ranks drifted apart
        print("accuracy", tr.evaluate(X, y)["accuracy"])
        """))
    proc = launch(2, script)
    assert proc.returncode == 0, proc.stderr
    assert min(float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("accuracy")) > 0.8


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
