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

pytestmark = pytest.mark.slow  # the quick subset (-m "not slow") leaves it to the full suite

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


@pytest.mark.skipif(not os.environ.get("SKL2ONNX_TESTS"),
                    reason="skl2onnx's wheel has no tests: set SKL2ONNX_TESTS to the tests/ folder of a checkout of "
                           "skl2onnx (the same release as installed) to run its MLP converter tests on fastbp")
def test_skl2onnx_mlp_converter_tests_pass_on_fastbp(tmp_path):
    """skl2onnx's tests/test_sklearn_mlp_converter.py, from a checkout the environment names, against
    fastbp.sklearn's estimators (the same plugin swaps them in); tests/test_onnx.py holds our own cases of it."""
    folder = os.environ["SKL2ONNX_TESTS"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(__file__), folder,
                                                                   os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "sklearn_parity_plugin", "-q", "-p", "no:cacheprovider",
         os.path.join(folder, "test_sklearn_mlp_converter.py")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=1800)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and "failed" not in summary, f"{summary}\n{result.stdout[-6000:]}"
