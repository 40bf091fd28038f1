"""MPI: the communicator seam, distributed steps and sharded file epochs."""
