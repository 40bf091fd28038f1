"""Same initial weights and batch order as PyTorch must give the same parameters (float64)."""
import numpy as np
import pytest

import fastbp
from conftest import LOSSES, make_problem

torch = pytest.importorskip("torch")

TORCH_ACT = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "gelu": torch.nn.GELU, "elu": torch.nn.ELU,
             "softplus": torch.nn.Softplus, "sigmoid": torch.nn.Sigmoid, "leaky_relu": torch.nn.LeakyReLU}
TORCH_LOSS = {"mse": torch.nn.MSELoss, "cross_entropy": torch.nn.CrossEntropyLoss,
              "binary_cross_entropy": torch.nn.BCEWithLogitsLoss,
              "poisson": lambda: torch.nn.PoissonNLLLoss(log_input=True)}


def torch_model(trainer, activation):
    modules = []
    for l, (W, b) in enumerate(trainer.layers):
        lin = torch.nn.Linear(W.shape[0], W.shape[1], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.astype(np.float64)))
            lin.bias.copy_(torch.from_numpy(b.astype(np.float64)))
        modules.append(lin)
        if l < len(trainer.layers) - 1:
            modules.append(TORCH_ACT[activation]())
    return torch.nn.Sequential(*modules)


def torch_flat(model):
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    return np.concatenate([np.concatenate([m.weight.detach().numpy().T.ravel(), m.bias.detach().numpy()])
                           for m in linears])


@pytest.mark.parametrize("sgd", [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                 dict(weight_decay=0.01), dict(momentum=0.5, weight_decay=0.01)],
                         ids=["plain", "momentum", "nesterov", "weight_decay", "momentum+decay"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", sorted(TORCH_ACT))
def test_one_epoch_matches_torch(sgd, loss, activation):
    sizes = [6, 16, 8, 3]
    X, y = make_problem(loss, 70, sizes[0], sizes[-1], seed=11)
    tr = fastbp.Trainer(sizes, activation=activation, loss=loss, lr=0.05, batch_size=16, epochs=1,
                        shuffle=False, dtype="float64", seed=4, **sgd)
    model = torch_model(tr, activation)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, **sgd)
    criterion = TORCH_LOSS[loss]()
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(np.asarray(y)) if loss != "cross_entropy" else torch.from_numpy(y).long()
    for _ in range(2):  # two epochs: the second exercises existing momentum buffers
        for start in range(0, len(X), 16):
            opt.zero_grad()
            criterion(model(Xt[start:start + 16]), yt[start:start + 16]).backward()
            opt.step()
    tr.fit(X, y).fit(X, y)
    np.testing.assert_allclose(tr.params, torch_flat(model), rtol=1e-9, atol=1e-12)


def test_float32_matches_torch_float32():
    X, y = make_problem("cross_entropy", 256, 8, 4, seed=3, dtype=np.float32)
    tr = fastbp.Trainer([8, 32, 4], lr=0.1, momentum=0.9, batch_size=32, epochs=1, shuffle=False, seed=0)
    model = torch_model(tr, "relu").float()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for start in range(0, 256, 32):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(X[start:start + 32])),
                                          torch.from_numpy(y[start:start + 32]).long()).backward()
        opt.step()
    tr.fit(X, y)
    np.testing.assert_allclose(tr.params, torch_flat(model), rtol=1e-4, atol=1e-5)
