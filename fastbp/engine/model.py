"""Building what the engine trains from names: the Net bundle of a layer list, activations and a loss,
and the optimizer bundles. The faces (Trainer, fastbp.sklearn) build models through here."""
import numpy as np

from ..core.activations import ACTIVATIONS, IDENTITY, activation_code
from ..core.bundles import make_hyper, make_net, make_optimizer, make_regularization
from ..core.layout import Layout
from ..core.losses import (SKLEARN_BINARY_LOG_LOSS, SKLEARN_LOG_LOSS, SKLEARN_POISSON, SKLEARN_SQUARED,
                           elements_per_row, loss_code)
from ..core.optim import SKLEARN_OPTIMIZERS

ACTIVATION_NAMES = tuple(ACTIVATIONS)
# scikit-learn's own loss definitions (fastbp.sklearn only; see fastbp.core.losses)
SKLEARN_LOSS_CODES = {"sklearn_squared_error": SKLEARN_SQUARED, "sklearn_poisson": SKLEARN_POISSON,
                      "sklearn_log_loss": SKLEARN_LOG_LOSS, "sklearn_binary_log_loss": SKLEARN_BINARY_LOG_LOSS}


def build_net(layer_sizes, hidden_activations, loss, huber_delta=1.0, mean_over_outputs=True, embeddings=(),
              members=1, adapters="first_layer"):
    """(Layout, Net) for these layers, one activation name per hidden layer and a loss name.
    mean_over_outputs=False sums a row's loss over its outputs (scikit-learn's losses) instead of
    averaging over every element (PyTorch's mean reduction). embeddings: (rows, dim) per categorical
    table (fastbp.core.layout); members, adapters: an ensemble's (fastbp.core.layout)."""
    layout = Layout(layer_sizes, embeddings, members, adapters)
    codes = [activation_code(a) for a in hidden_activations] + [IDENTITY]
    code = SKLEARN_LOSS_CODES[loss] if loss in SKLEARN_LOSS_CODES else loss_code(loss)
    return layout, make_net(layout.sizes, layout.w_offsets, codes, code, huber_delta,
                            elements_per_row(code, layout.n_out) if mean_over_outputs else 1, layout.n_dense,
                            np.column_stack([layout.emb_rows, layout.emb_dims, layout.emb_offsets]),
                            layout.n_layer_params, layout.members)


def no_regularization(net, dtype, weight_penalty=0.0):
    return make_regularization(np.zeros(net.sizes.size - 1), dtype, weight_penalty=weight_penalty)


def sklearn_optimizer(solver, n_params, dtype):
    """scikit-learn's SGD (velocity form) or Adam as an optimizer bundle, state zeroed, at step 0."""
    code, states = SKLEARN_OPTIMIZERS[solver]
    return make_optimizer(code, n_params, dtype, states)


def sklearn_hyper(learning_rate, momentum, nesterov, beta_1, beta_2, epsilon):
    return make_hyper(learning_rate, momentum, nesterov, beta1=beta_1, beta2=beta_2, eps=epsilon)
