"""Every Python block of README.md and of the docs pages it links runs exactly as written (a page's blocks in
order, sharing names, as a reader pastes them into one session), in a folder holding the data files they name;
the README's tour runs its shell block after its Python block, as written."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbp

ROOT = Path(__file__).parent.parent
# the README first, then the pages it links, in the order a reader follows them; each page runs as one session
PAGES = ["README.md", "docs/api.md", "docs/cli.md", "docs/sklearn.md", "docs/onnx.md", "docs/distributed.md",
         "docs/settings.md", "docs/performance.md"]

pytestmark = pytest.mark.slow  # the quick subset (-m "not slow") leaves it to the full suite

def _data_files(folder):
    """The data files the README and docs name: data.parquet (a small classification table) and big.npy."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=2000), rng.normal(size=2000)
    color = rng.choice(["red", "green", "blue"], size=2000)
    label = np.where(x1 + (color == "red") - x2 > 0.2, "yes", "no")
    pq.write_table(pa.table({"x1": x1, "x2": x2, "color": color, "label": label}), folder / "data.parquet")
    X = rng.normal(size=(4000, 6)).astype(np.float32)
    np.save(folder / "big.npy", np.column_stack([X, (X[:, 0] > 0).astype(np.float32)]))


def _blocks(page, language):
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / page).read_text(), re.S)


def test_every_python_block_of_the_readme_and_docs_runs(tmp_path):
    for module in ("sklearn", "mpi4py", "skl2onnx", "onnxruntime", "pandas", "pyarrow"):
        pytest.importorskip(module)
    _data_files(tmp_path)
    assert len(_blocks("README.md", "python")) >= 2 and sum(len(_blocks(p, "python")) for p in PAGES) >= 8
    for page in PAGES:
        blocks = _blocks(page, "python")
        script = "\n".join(f"print('--- {page} block {i}', flush=True)\nexec({block!r})"
                           for i, block in enumerate(blocks))
        (tmp_path / "blocks.py").write_text(script)
        result = subprocess.run([sys.executable, "blocks.py"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"{page}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    model = fastbp.load(tmp_path / "model.fbp")  # last written by docs/cli.md's "Files from Python" block
    assert len(model.history) == 5 and model.history[-1]["val_accuracy"] > 0.8 and model.preprocessing
    predicted = subprocess.run([sys.executable, "-m", "fastbp", "predict", "model.fbp", "data.parquet", "--out",
                                "p.csv"], cwd=tmp_path, capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr
    assert (tmp_path / "model.onnx").stat().st_size > 0


def test_the_readme_tour_runs_in_the_shell(tmp_path):
    """The tour's bash block, line by line as a reader pastes it, after the Python block that writes churn.csv
    (`fastbp` as the installed command; `python -m fastbp` where this interpreter has no such script)."""
    pytest.importorskip("pandas")
    python, shell = _blocks("README.md", "python")[0], _blocks("README.md", "bash")[1]
    (tmp_path / "tour.py").write_text(python)
    result = subprocess.run([sys.executable, "tour.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    command = str(Path(sys.executable).with_name("fastbp"))
    command = command if Path(command).exists() else f"{sys.executable} -m fastbp"
    for line in [line for line in shell.splitlines() if line.strip()]:
        assert line.startswith("fastbp ")
        run = subprocess.run(command + line[len("fastbp"):], shell=True, cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0 and "rror" not in run.stderr, f"{line}\n{run.stderr}"
    assert (tmp_path / "predictions.csv").read_text().splitlines()[0] == '"prediction"'
