"""The training engine: one training state, the compiled steps on it, the one epoch loop;
schedules, callbacks, metrics."""
