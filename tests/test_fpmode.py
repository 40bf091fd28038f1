"""Denormals are flushed inside compiled regions and the thread's mode is restored after."""
import platform

import numba
import numpy as np
import pytest

from fastbp.core.fpmode import _ENABLED, flush_denormals, restore_fp_mode

pytestmark = pytest.mark.skipif(
    not _ENABLED or numba.config.DISABLE_JIT or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="FTZ/DAZ control is x86-only, compiled-only, and can be disabled")


@numba.njit
def _scaled_flushed(x, factor):
    mode = flush_denormals()
    inside = x * factor
    restore_fp_mode(mode)
    return inside


@numba.njit
def _scaled(x, factor):
    return x * factor


def test_denormals_flushed_inside_and_restored_after():
    tiny = np.float32(1e-39)  # a float32 denormal
    assert _scaled_flushed(tiny, np.float32(1.0)) == 0.0
    assert _scaled(tiny, np.float32(1.0)) == tiny  # the thread's mode was restored
    assert np.float32(1e-39) * np.float32(1.0) != 0


def test_training_with_denormal_parameters_stays_finite():
    import fastbp
    X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    tr = fastbp.Trainer([4, 8, 2], optimizer="adam", batch_size=16, epochs=2)
    tr.params[:] = np.float32(1e-39)
    tr.fit(X, y)
    assert np.isfinite(tr.params).all()
