"""The communicator seam for data-parallel training: one process, or MPI through mpi4py.

A communicator has `rank`, `size`, `allreduce_sum(buf)` (in place, on a flat NumPy
buffer), `bcast(buf, root=0)` (in place), `allgather(value)` and `barrier()`.
fastbp never imports mpi4py unless asked for MPI.
"""
import zlib

import numpy as np

from ..core.errors import InputError
from ..engine.engine import SingleProcess


class MPIComm:
    """MPI.COMM_WORLD (or a given mpi4py communicator). Launch with `mpiexec -n N python -m mpi4py ...`."""

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError("distributed training needs mpi4py and an MPI library: "
                              "pip install 'fastbp[mpi]' (installs mpi4py and mpich)") from None
        self._MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def allreduce_sum(self, buf):
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf

    def bcast(self, buf, root=0):
        self.comm.Bcast(buf, root=root)
        return buf

    def allgather(self, value):
        return self.comm.allgather(value)

    def barrier(self):
        self.comm.Barrier()


def make_comm(spec):
    """None or "single": one process; "mpi": MPI.COMM_WORLD; or any object with the communicator methods."""
    if spec is None or spec == "single":
        return SingleProcess()
    if spec == "mpi":
        return MPIComm()
    needed = ("rank", "size", "allreduce_sum", "bcast", "allgather", "barrier")
    if all(hasattr(spec, name) for name in needed):
        return spec
    raise InputError(f"comm must be None, 'mpi' or a communicator object with {', '.join(needed)}, got {spec!r}")


def checksum(array):
    """A cheap fingerprint to compare parameters across ranks."""
    return zlib.crc32(np.ascontiguousarray(array).tobytes())
