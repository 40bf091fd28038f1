"""Optimizers, clipping, schedules, weights and the extra losses against PyTorch (float64, rel 1e-9)."""
import numpy as np
import pytest

import fastbp
from conftest import make_problem

torch = pytest.importorskip("torch")
from test_torch import torch_flat, torch_model  # noqa: E402

TORCH_OPT = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
             "rmsprop": torch.optim.RMSprop}
TORCH_LOSS = {"mse": torch.nn.MSELoss, "cross_entropy": torch.nn.CrossEntropyLoss, "mae": torch.nn.L1Loss,
              "binary_cross_entropy": torch.nn.BCEWithLogitsLoss}


def run_torch(tr, X, y, loss, epochs, batch, opt_name, opt_kwargs, activation="tanh", clip=None, scheduler=None,
              criterion=None, sample_weight=None):
    model = torch_model(tr, activation)
    opt = TORCH_OPT[opt_name](model.parameters(), **opt_kwargs)
    sched = scheduler(opt) if scheduler else None
    criterion = criterion or TORCH_LOSS[loss]()
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y).long() if loss == "cross_entropy" else torch.from_numpy(np.asarray(y, dtype=np.float64))
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        total = 0.0
        for start in range(0, len(X), batch):
            opt.zero_grad()
            value = criterion(model(Xt[start:start + batch]), yt[start:start + batch])
            value.backward()
            total += value.item() * len(Xt[start:start + batch])
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(total / len(X))
            else:
                sched.step()
    return torch_flat(model), lrs


OPTIMIZER_CASES = [
    ("adam", {}, {}),
    ("adam", {"weight_decay": 0.01, "betas": (0.8, 0.99)}, {}),
    ("adam", {"amsgrad": True}, {}),
    ("adamw", {}, {}),
    ("adamw", {"amsgrad": True, "weight_decay": 0.1}, {}),
    ("rmsprop", {}, {}),
    ("rmsprop", {"momentum": 0.9}, {}),
    ("rmsprop", {"centered": True}, {}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.01, "alpha": 0.9}, {}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}, {"clip": 0.3}),
    ("adam", {}, {"clip": 0.05}),
]


@pytest.mark.parametrize("name,kwargs,extra", OPTIMIZER_CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in OPTIMIZER_CASES])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_optimizer_matches_torch(name, kwargs, extra, loss):
    sizes = [6, 20, 12, 3]
    X, y = make_problem(loss, 90, sizes[0], sizes[-1], seed=3)
    tr = fastbp.Trainer(sizes, activation="tanh", loss=loss, optimizer=name, batch_size=16, epochs=3,
                        shuffle=False, dtype="float64", seed=2, clip_grad_norm=extra.get("clip"), **kwargs)
    torch_kwargs = dict(kwargs)
    torch_kwargs.setdefault("lr", tr.lr)
    expected, _ = run_torch(tr, X, y, loss, 3, 16, name, torch_kwargs, clip=extra.get("clip"))
    tr.fit(X, y)
    np.testing.assert_allclose(tr.params, expected, rtol=1e-9, atol=1e-12)


SCHEDULE_CASES = [
    (("step", {"step_size": 2, "gamma": 0.5}), lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5)),
    (("exponential", {"gamma": 0.7}), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.7)),
    (("cosine", {"eta_min": 0.001}), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 6, eta_min=0.001)),
    (("one_cycle", {"max_lr": 0.2}), lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.2, total_steps=6,
                                                                                 cycle_momentum=False)),
    (("reduce_on_plateau", {"patience": 0, "factor": 0.5, "threshold": 0.05}),
     lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5, threshold=0.05)),
]


@pytest.mark.parametrize("spec,make", SCHEDULE_CASES, ids=[c[0][0] for c in SCHEDULE_CASES])
def test_schedule_matches_torch(spec, make):
    sizes = [5, 16, 3]
    X, y = make_problem("cross_entropy", 64, 5, 3, seed=1)
    tr = fastbp.Trainer(sizes, activation="tanh", optimizer="sgd", lr=0.1, momentum=0.9, batch_size=16,
                        epochs=6, shuffle=False, dtype="float64", lr_schedule=spec)
    expected, lrs = run_torch(tr, X, y, "cross_entropy", 6, 16, "sgd", {"lr": 0.1, "momentum": 0.9}, scheduler=make)
    tr.fit(X, y)
    np.testing.assert_allclose([h["lr"] for h in tr.history], lrs, rtol=1e-12)
    np.testing.assert_allclose(tr.params, expected, rtol=1e-9, atol=1e-12)


def test_schedule_formulas():
    from fastbp.engine.schedules import make_schedule
    cos = make_schedule(("cosine", {"warmup_epochs": 2}))
    cos.start(6)
    assert [round(cos.lr(e, 1.0), 6) for e in range(6)] == [0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447]
    inv = make_schedule(("invscaling", {"power_t": 0.5}))
    np.testing.assert_allclose([inv.lr(e, 1.0) for e in range(3)], [1, 1 / np.sqrt(2), 1 / np.sqrt(3)])
    with pytest.raises(ValueError, match="valid schedules"):
        make_schedule("warm")


@pytest.mark.parametrize("loss,make", [("huber", lambda: torch.nn.HuberLoss(delta=0.7)),
                                       ("mae", lambda: torch.nn.L1Loss()),
                                       ("mse", lambda: torch.nn.MSELoss())])
def test_regression_losses_multi_output_match_torch(loss, make):
    X, y = make_problem("mse", 70, 4, 3, seed=5)
    tr = fastbp.Trainer([4, 10, 3], activation="tanh", loss=loss, huber_delta=0.7, lr=0.05, batch_size=16,
                        epochs=2, shuffle=False, dtype="float64")
    expected, _ = run_torch(tr, X, y, loss, 2, 16, "sgd", {"lr": 0.05}, criterion=make())
    tr.fit(X, y)
    np.testing.assert_allclose(tr.params, expected, rtol=1e-9, atol=1e-12)
    value, _ = tr.loss_and_grad(X, y)
    np.testing.assert_allclose(value, tr.evaluate(X, y)["loss"], rtol=1e-12)


def test_class_weight_matches_torch_weighted_cross_entropy():
    X, y = make_problem("cross_entropy", 80, 4, 3, seed=7)
    weights = {0: 0.5, 1: 2.0, 2: 1.5}
    tr = fastbp.Trainer([4, 8, 3], activation="tanh", lr=0.1, batch_size=16, epochs=2, shuffle=False,
                        dtype="float64")
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64))
    expected, _ = run_torch(tr, X, y, "cross_entropy", 2, 16, "sgd", {"lr": 0.1}, criterion=criterion)
    tr.fit(X, y, class_weight=weights)
    np.testing.assert_allclose(tr.params, expected, rtol=1e-9, atol=1e-12)


def test_label_smoothing_matches_torch():
    X, y = make_problem("cross_entropy", 80, 4, 3, seed=7)
    tr = fastbp.Trainer([4, 8, 3], activation="tanh", optimizer="adam", lr=0.05, batch_size=16, epochs=2,
                        shuffle=False, dtype="float64", label_smoothing=0.2)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.2)
    expected, _ = run_torch(tr, X, y, "cross_entropy", 2, 16, "adam", {"lr": 0.05}, criterion=criterion)
    tr.fit(X, y)
    np.testing.assert_allclose(tr.params, expected, rtol=1e-9, atol=1e-12)
    # the loss reported is the smoothed objective's: one full batch, before its step
    once = fastbp.Trainer([4, 8, 3], activation="tanh", batch_size=80, epochs=1, dtype="float64",
                          label_smoothing=0.2)
    smoothed = criterion(torch_model(once, "tanh")(torch.from_numpy(X)), torch.from_numpy(y).long()).item()
    once.fit(X, y)
    assert once.history[0]["loss"] == pytest.approx(smoothed, rel=1e-12)
    with pytest.raises(fastbp.InputError, match="label_smoothing needs loss='cross_entropy'"):
        fastbp.Trainer([4, 3, 1], loss="mse", label_smoothing=0.1).fit(X, y.astype(float))
