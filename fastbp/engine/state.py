"""What a training run changes, in one place: parameters, the optimizer bundle (named state
vectors and step), the shuffle RNG, the schedule and the history. A snapshot copies all of
it, so an interrupted or diverged epoch is undone exactly and a resumed run continues
bit-identically."""
import copy

import numpy as np

from ..core.bundles import STATE_NAMES, writable_copies


class TrainingState:
    def __init__(self, params, optimizer, shuffle_rng, schedule, dropout_seed, split_seed):
        self.params = params
        self.optimizer = optimizer
        self.shuffle_rng = shuffle_rng
        self.schedule = schedule
        self.dropout_seed = int(dropout_seed)
        self.split_seed = int(split_seed)
        self.history = []

    def __setstate__(self, state):
        # unpickled arrays may be read-only (joblib gives its workers large ones as read-only memory maps): training
        # writes them in place, and the kernels are compiled for writable arrays
        self.__dict__.update(state)
        if not self.params.flags.writeable:
            self.params = np.array(self.params)
        self.optimizer = writable_copies(self.optimizer)

    @property
    def step(self):
        return int(self.optimizer.step[0])

    def state_arrays(self):
        """{name: vector} of the optimizer state in use (saved with the model)."""
        return {name: getattr(self.optimizer, name) for name in STATE_NAMES if getattr(self.optimizer, name).size}

    def ensure_state(self, names):
        """Allocate (zeroed) the named state vectors a run needs and this state lacks."""
        missing = {n: np.zeros(self.params.size, dtype=self.params.dtype) for n in names
                   if getattr(self.optimizer, n).size == 0}
        if missing:
            self.optimizer = self.optimizer._replace(**missing)

    def load_arrays(self, params, step, state):
        """Put saved values in place; `state` is {name: vector} as state_arrays() gave it."""
        self.params[...] = params
        self.optimizer.step[0] = step
        self.ensure_state(state)
        for name, values in state.items():
            getattr(self.optimizer, name)[...] = values

    def snapshot(self):
        return (self.params.copy(), {n: v.copy() for n, v in self.state_arrays().items()}, self.step,
                copy.deepcopy(self.shuffle_rng.bit_generator.state), copy.deepcopy(vars(self.schedule)),
                len(self.history))

    def restore(self, snapshot, weights_only=False):
        """Back to the snapshot; weights_only keeps the RNG, schedule and history (early stopping's
        best weights)."""
        params, state, step, rng_state, schedule_vars, n_history = snapshot
        self.load_arrays(params, step, state)
        for name in STATE_NAMES:  # vectors allocated after the snapshot go back to zero
            if name not in state and getattr(self.optimizer, name).size:
                getattr(self.optimizer, name)[...] = 0
        if weights_only:
            return
        self.shuffle_rng.bit_generator.state = rng_state
        vars(self.schedule).clear()
        vars(self.schedule).update(schedule_vars)
        del self.history[n_history:]
