"""Every Python block of README.md runs exactly as written (in order, sharing names, as a reader
pastes them into one session), in a folder holding the data files the README names."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbp

README = Path(__file__).parent.parent / "README.md"


def test_every_python_block_of_the_readme_runs(tmp_path):
    for module in ("sklearn", "mpi4py", "skl2onnx", "onnxruntime", "pandas", "pyarrow"):
        pytest.importorskip(module)
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=2000), rng.normal(size=2000)
    color = rng.choice(["red", "green", "blue"], size=2000)
    label = np.where(x1 + (color == "red") - x2 > 0.2, "yes", "no")
    pq.write_table(pa.table({"x1": x1, "x2": x2, "color": color, "label": label}), tmp_path / "data.parquet")
    X = rng.normal(size=(4000, 6)).astype(np.float32)
    np.save(tmp_path / "big.npy", np.column_stack([X, (X[:, 0] > 0).astype(np.float32)]))

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 6
    script = "\n".join(f"print('--- README block {i}', flush=True)\nexec({block!r})" for i, block in enumerate(blocks))
    (tmp_path / "readme_blocks.py").write_text(script)
    result = subprocess.run([sys.executable, "readme_blocks.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    model = fastbp.load(tmp_path / "model.fbp")  # last written by the "Files from Python" block
    assert len(model.history) == 5 and model.history[-1]["val_accuracy"] > 0.8 and model.preprocessing
    predicted = subprocess.run([sys.executable, "-m", "fastbp", "predict", "model.fbp", "data.parquet", "--out",
                                "p.csv"], cwd=tmp_path, capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr
    assert (tmp_path / "model.onnx").stat().st_size > 0
