"""scikit-learn's own test suite for its MLPs (sklearn/neural_network/tests/test_mlp.py, from the
installed scikit-learn, not a copy) run against fastbp.sklearn, in a pytest process of its own."""
import os
import subprocess
import sys

import pytest

sklearn = pytest.importorskip("sklearn")

# The version the parity is stated for (CI installs it): another release's suite may test features
# of that release.
SUITE_VERSION = "1.9.1"


@pytest.mark.skipif(sklearn.__version__ != SUITE_VERSION,
                    reason=f"parity is stated for scikit-learn {SUITE_VERSION}, found {sklearn.__version__}")
def test_sklearn_mlp_suite_passes_on_fastbp(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                   os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "sklearn_parity_plugin", "--pyargs",
         "sklearn.neural_network.tests.test_mlp", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"scikit-learn's MLP suite on fastbp.sklearn: {summary}\n" \
                                   f"{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
