"""pytest plugin: scikit-learn's own MLP tests run against fastbp.sklearn.

Loaded with `-p sklearn_parity_plugin` in a pytest process of its own (tests/test_sklearn_suite.py
starts it): the names MLPClassifier and MLPRegressor in sklearn.neural_network point at fastbp's
estimators before scikit-learn's test module imports them, so its module-level parametrizations
see them too.
"""
import pytest
import sklearn.neural_network

import fastbp.sklearn

sklearn.neural_network.MLPClassifier = fastbp.sklearn.MLPClassifier
sklearn.neural_network.MLPRegressor = fastbp.sklearn.MLPRegressor


def pytest_configure(config):
    # a first compile in a fresh cache is announced with a warning; scikit-learn's tests may forbid warnings
    config.addinivalue_line("filterwarnings", "ignore::fastbp.CompileNotice")


@pytest.fixture
def global_random_seed():
    """The seed scikit-learn's conftest gives (42 unless SKLEARN_TESTS_GLOBAL_RANDOM_SEED says otherwise);
    its own fixture takes precedence where its conftest is installed."""
    return 42
