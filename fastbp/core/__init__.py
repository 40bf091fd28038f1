"""The compiled hot path: typed bundles, kernels, activations, losses, optimizers, layout. No Python objects inside."""
import os

# Set before Numba loads libgomp, which reads it once. Measured on 2 vCPUs (docs/threads.md, ~27 ns
# a spin there, so ~80 us): long enough to bridge the serial gap between a batch's two regions, so
# the worker is not put to sleep and woken twice a batch (with 200 spins, 2 threads often ran
# small_batch and narrow no faster than one: 0.8-0.9x, with 5-9x the context switches); short enough
# that, with ThreadChooser, beside a busy process 2 threads keep 0.8-1.0x of one (30,000: 0.76-0.91x).
SPIN_COUNT = "3000"
if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
