"""Faults: a process killed while writing a model never leaves a partial file under the final name."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastbp

WRITER = """
import sys
import fastbp
tr = fastbp.Trainer([64, 512, 512, 10], seed=1)  # ~1.2 MB per save
print("ready", flush=True)
while True:
    tr.params[0] += 1.0
    tr.save(sys.argv[1])
"""

pytestmark = pytest.mark.slow  # the quick subset (-m "not slow") leaves it to the full suite

def test_sigkill_during_save_always_leaves_a_loadable_model(tmp_path):
    path = tmp_path / "model.fbp"
    fastbp.Trainer([64, 512, 512, 10], seed=0).save(path)
    rng = random.Random(0)
    trials = 20
    for _ in range(trials):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))  # somewhere inside a save, or between two
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        model = fastbp.load(path)  # raises if the file under the final name were partial
        assert model.params.shape == (64 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10,)
        assert np.isfinite(model.params).all()
    leftovers = [p for p in tmp_path.iterdir() if p.name != "model.fbp"]
    assert all(p.name.endswith(".tmp") for p in leftovers)  # only abandoned temporary files
    # the next save removes the ones old enough to be surely abandoned, and keeps recent ones
    old = tmp_path / ".model.fbp.old.tmp"
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    recent = tmp_path / ".model.fbp.recent.tmp"
    recent.write_bytes(b"partial")
    model.save(path)
    assert not old.exists() and recent.exists()
