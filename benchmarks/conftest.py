import pytest


def pytest_collection_modifyitems(config, items):
    # The suite times real epochs; it only makes sense with --benchmark-only.
    if not config.getoption("--benchmark-only", default=False):
        skip = pytest.mark.skip(reason="benchmarks run with: pytest benchmarks --benchmark-only")
        for item in items:
            item.add_marker(skip)
