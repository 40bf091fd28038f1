"""Ensembles (Trainer(ensemble=k): TabM-mini, and TabM with ensemble_adapters="every_layer"): the compiled members
against plain NumPy, gradients against central differences, training against a PyTorch module of the same ensemble
(both gradient paths, one and two threads, with embedding tables), predictions as the mean of the members',
save/load and resume."""
import json
import subprocess
import sys

import numpy as np
import pytest

import fastbp
import naive

TABLES = [(5, 3), (7, 2)]


def problem(n, n_in, n_out, seed=0, loss="cross_entropy"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    if loss == "cross_entropy":
        y = rng.integers(0, n_out, size=n)
    elif loss == "binary_cross_entropy":
        y = (rng.random(size=(n, n_out)) < 0.5).astype(float)
    elif loss == "poisson":
        y = rng.poisson(1.5, size=(n, n_out)).astype(float)
    else:
        y = rng.normal(size=(n, n_out))
    return X, y


def member_logits(tr, X):
    """Each member's logits (members, n, n_out) in NumPy: the inputs times the member's adapter, the shared
    layers (with adapters on every layer, each layer's input times R_l[e], its product times S_l[e], plus the
    member's bias), the member's head."""
    layers = tr.layers
    adapters = tr.layout.adapters(tr.params)
    out = []
    for e, head in enumerate(zip(*layers[-1])):
        if tr.layout.every_layer:
            h = X
            for (W, b), (R, S) in zip(layers[:-1], tr.layout.layer_adapters(tr.params)):
                h = naive.activate(tr.activation, (h * R[e]) @ W * S[e] + b[e])
            out.append(h @ head[0] + head[1])
            continue
        hidden = [tr.activation] * (len(layers) - 1)
        _, acts = naive.forward(layers[:-1] + [head], hidden, X * adapters[e])
        out.append(acts[-1])
    return np.array(out)


def test_layout_and_initialization():
    tr = fastbp.Trainer([6, 8, 3], ensemble=4, seed=1)
    W, b = tr.layers[-1]
    assert W.shape == (4, 8, 3) and b.shape == (4, 3)
    heads = list(zip(W, b))
    start = tr.layout.w_offsets[-1] + 2 * (8 * 3 + 3)  # head 2 in the flat parameters: its W, then its b
    np.testing.assert_array_equal(W[2].ravel(), tr.params[start:start + 24])
    np.testing.assert_array_equal(b[2], tr.params[start + 24:start + 27])
    W[1, 0, 0] = 5.0  # a view: writing into it writes into the parameters
    assert tr.params[tr.layout.w_offsets[-1] + 27] == 5.0
    assert tr.params.size == (6 * 8 + 8) + 4 * (8 * 3 + 3) + 4 * 6
    adapters = tr.layout.adapters(tr.params)
    assert adapters.shape == (4, 6) and set(np.unique(adapters)) <= {-1.0, 1.0}
    assert not np.array_equal(heads[0][0], heads[1][0])  # each head its own draw
    plain = fastbp.Trainer([6, 8, 3])
    assert plain.layout.adapters(plain.params) is None
    # one member is the plain model, bit for bit
    np.testing.assert_array_equal(fastbp.Trainer([6, 8, 3], ensemble=1, seed=1).params,
                                  fastbp.Trainer([6, 8, 3], seed=1).params)
    with pytest.raises(fastbp.InputError, match="ensemble"):
        fastbp.Trainer([6, 8, 3], ensemble=0)


def test_layout_with_adapters_on_every_layer():
    k = 4
    tr = fastbp.Trainer([6, 8, 5, 3], ensemble=k, ensemble_adapters="every_layer", seed=1)
    shared = 6 * 8 + 8 * 5  # W only: the members' own biases replace the shared ones
    heads = k * (5 * 3 + 3)
    adapters = k * 6 + k * 8 * 3 + k * 5 * 2  # R_0; S_0, B_0, R_1; S_1, B_1 (the heads read layer 2 as it is)
    assert tr.params.size == shared + heads + adapters == tr.layout.n_params
    (W0, b0), (W1, b1), (W2, b2) = tr.layers
    assert W0.shape == (6, 8) and b0.shape == (k, 8) and b1.shape == (k, 5) and W2.shape == (k, 5, 3)
    (R0, S0), (R1, S1) = tr.layout.layer_adapters(tr.params)
    assert R0.shape == (k, 6) and S0.shape == (k, 8) and R1.shape == (k, 8) and S1.shape == (k, 5)
    assert set(np.unique(R0)) <= {-1.0, 1.0}  # TabM's start: random signs in, every other adapter one
    assert (S0 == 1).all() and (R1 == 1).all() and (S1 == 1).all() and (b0 == 0).all()
    R1[2, 3] = 7.0  # views
    assert np.count_nonzero(tr.params == 7.0) == 1
    # the same draws as the first-layer variant: its shared layers' weights, heads and input adapters
    mini = fastbp.Trainer([6, 8, 5, 3], ensemble=k, seed=1)
    for (W, _), (W_mini, _) in zip(tr.layers, mini.layers):
        np.testing.assert_array_equal(W, W_mini)
    np.testing.assert_array_equal(R0, mini.layout.adapters(mini.params))
    assert f"adapters ({6 * k + 8 * k * 2 + 5 * k:,} parameters) and adds the member's own biases" in tr.summary()
    with pytest.raises(fastbp.InputError, match="ensemble_adapters"):
        fastbp.Trainer([6, 8, 3], ensemble=2, ensemble_adapters="all")
    # one member is one model whatever the adapters
    np.testing.assert_array_equal(fastbp.Trainer([6, 8, 3], ensemble_adapters="every_layer", seed=1).params,
                                  fastbp.Trainer([6, 8, 3], seed=1).params)


def perturbed(tr, seed=0):
    """tr with its adapters and the members' biases moved off their start (ones and zeros), so that a wrong
    gradient or forward of any of them shows."""
    rng = np.random.default_rng(seed)
    start = tr.layout.adapter_offset
    tr.params[start:tr.layout.n_layer_params] += rng.normal(scale=0.3, size=tr.layout.n_layer_params - start)
    for _, b in tr.layers[:-1]:
        b += rng.normal(scale=0.3, size=b.shape)
    return tr


@pytest.mark.parametrize("adapters", ["first_layer", "every_layer"])
@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "mse", "poisson"])
def test_prediction_is_the_mean_of_the_members(loss, adapters):
    n_out = 3
    tr = perturbed(fastbp.Trainer([5, 7, 6, n_out], activation="tanh", loss=loss, ensemble=3, dtype="float64",
                                  seed=2, ensemble_adapters=adapters))
    X, _ = problem(40, 5, n_out, loss=loss)
    z = member_logits(tr, X)  # at the seeded start: decision_function needs no fit
    if loss == "cross_entropy":
        p = np.exp(z - z.max(axis=2, keepdims=True))
        p /= p.sum(axis=2, keepdims=True)
        mine = tr.decision_function(X)
        mine = np.exp(mine - mine.max(axis=1, keepdims=True))
        np.testing.assert_allclose(mine / mine.sum(axis=1, keepdims=True), p.mean(axis=0), rtol=1e-10, atol=1e-12)
    elif loss == "binary_cross_entropy":
        expected = (1 / (1 + np.exp(-z))).mean(axis=0)
        np.testing.assert_allclose(1 / (1 + np.exp(-tr.decision_function(X))), expected, rtol=1e-10, atol=1e-12)
    elif loss == "poisson":
        np.testing.assert_allclose(np.exp(tr.decision_function(X)), np.exp(z).mean(axis=0), rtol=1e-10)
    else:
        np.testing.assert_allclose(tr.decision_function(X), z.mean(axis=0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sizes,activation,adapters", [([4, 5, 3], "tanh", "first_layer"),
                                                       ([4, 5, 3], "tanh", "every_layer"),
                                                       ([4, 6, 5, 7, 3], "gelu", "every_layer"),
                                                       ([4, 6, 5, 3], "relu", "every_layer")])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_gradient_matches_central_differences(loss, sizes, activation, adapters):
    tr = perturbed(fastbp.Trainer(sizes, activation=activation, loss=loss, ensemble=3, dtype="float64", seed=3,
                                  ensemble_adapters=adapters))
    X, y = problem(11, 4, 3, seed=4, loss=loss)
    X[:, 0] += 0.05  # no relu input sits on its kink within the differences' step
    value, grad = tr.loss_and_grad(X, y)
    numeric = naive.numeric_gradient(tr, X, y)
    rel = np.linalg.norm(grad - numeric) / np.linalg.norm(numeric)
    assert rel < 1e-6, f"relative gradient error {rel:.2e}"
    # the loss is the mean over members of each member's mean loss
    z = member_logits(tr, X)
    losses = [naive.loss_and_dlogits(loss, z[e], y)[0] for e in range(3)]
    assert value == pytest.approx(np.mean(losses), rel=1e-10)


def test_gradient_with_tables_and_no_hidden_layer():
    """Embedded columns go through the adapters too; with no hidden layer the only layer is the heads."""
    from test_embeddings import coded_problem

    for sizes, adapters in [([2 + 5, 4, 2], "first_layer"), ([2 + 5, 2], "first_layer"),
                            ([2 + 5, 4, 3, 2], "every_layer"), ([2 + 5, 2], "every_layer")]:
        tr = perturbed(fastbp.Trainer(sizes, activation="tanh", embeddings=TABLES, ensemble=2, dtype="float64",
                                      seed=5, ensemble_adapters=adapters))
        X, y = coded_problem(9, 2, TABLES, 2, seed=6)
        _, grad = tr.loss_and_grad(X, y)
        numeric = naive.numeric_gradient(tr, X, y)
        rel = np.linalg.norm(grad - numeric) / np.linalg.norm(numeric)
        assert rel < 1e-6, f"{sizes}: relative gradient error {rel:.2e}"


@pytest.mark.parametrize("adapters", ["first_layer", "every_layer"])
def test_whole_data_gradient_adds_up_over_blocks(adapters):
    """loss_and_grad takes 4,096 rows at a time, each block adding to the gradient: over 5,000 rows it is the
    row-weighted mean of the gradients of its two parts."""
    tr = perturbed(fastbp.Trainer([4, 6, 5, 3], activation="tanh", ensemble=3, dtype="float64", seed=3,
                                  ensemble_adapters=adapters))
    X, y = problem(5000, 4, 3, seed=12)
    value, grad = tr.loss_and_grad(X, y)
    parts = [tr.loss_and_grad(X[rows], y[rows]) for rows in (slice(0, 1000), slice(1000, 5000))]
    np.testing.assert_allclose(value, (parts[0][0] * 1000 + parts[1][0] * 4000) / 5000, rtol=1e-12)
    np.testing.assert_allclose(grad, (parts[0][1] * 1000 + parts[1][1] * 4000) / 5000, rtol=1e-9, atol=1e-13)


def _torch_twin(tr, torch):
    """A torch module computing what the ensemble `tr` computes, with its parameters copied: TabM-mini's shared
    layers, or with adapters on every layer BatchEnsemble layers ((h * R) @ W) * S + B, written out here."""
    def parameter(a):
        return torch.nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float64)))

    every_layer = tr.layout.every_layer
    shared = [(parameter(W), parameter(b)) for W, b in tr.layers[:-1]]  # b: (members, n_out) with every_layer
    heads = [(parameter(W), parameter(b)) for W, b in zip(*tr.layers[-1])]
    adapters = parameter(tr.layout.adapters(tr.params))
    layer_adapters = [(parameter(R), parameter(S)) for R, S in tr.layout.layer_adapters(tr.params)[1:]] \
        if every_layer else []
    scales = [parameter(S) for _, S in tr.layout.layer_adapters(tr.params)[:1]] if every_layer else []

    def member_outputs(X):  # (members, n, n_out)
        out = []
        for e, (W_head, b_head) in enumerate(heads):
            h = X * adapters[e]
            for l, (W, b) in enumerate(shared):
                if every_layer:
                    R, S = (None, scales[0]) if l == 0 else layer_adapters[l - 1]
                    h = h if R is None else h * R[e]
                    h = torch.relu(h @ W * S[e] + b[e])
                else:
                    h = torch.relu(h @ W + b)
            out.append(h @ W_head + b_head)
        return torch.stack(out)

    def flat():  # in fastbp.core.layout's order
        def np_(p):
            return p.detach().numpy().ravel()

        parts = [np_(W) if every_layer else np.concatenate([np_(W), np_(b)]) for W, b in shared]
        parts += [np.concatenate([np_(W), np_(b)]) for W, b in heads] + [np_(adapters)]
        if every_layer:
            for l, (_, b) in enumerate(shared):
                S = scales[0] if l == 0 else layer_adapters[l - 1][1]
                parts += [np_(S), np_(b)] + ([np_(layer_adapters[l][0])] if l < len(shared) - 1 else [])
        return np.concatenate(parts)

    params = [p for pair in shared + heads + layer_adapters for p in pair] + [adapters] + scales
    return member_outputs, params, flat


@pytest.mark.parametrize("adapters", ["first_layer", "every_layer"])
@pytest.mark.parametrize("n_threads,batch_size,widths", [(1, 8, [16]), (2, 8, [40, 40]), (2, 64, [4]),
                                                         (2, 64, [4, 6, 5])],
                         ids=["one-thread", "weight-slices", "slabs", "slabs-3-hidden"])
def test_training_matches_torch(n_threads, batch_size, widths, adapters):
    """Adam steps on the mean of the members' cross-entropies, as a PyTorch loop over the same module takes them:
    the batch's rows split over threads either way (weight slices for few rows and many parameters, per-thread
    slabs otherwise), a member's rows may span two threads; with adapters on every layer, each step's gradient
    clipped to norm 0.5 first (every parameter counts in the norm)."""
    torch = pytest.importorskip("torch")
    k, n_in, n_out = 3, 5, 3
    clip = 0.5 if adapters == "every_layer" else None
    tr = fastbp.Trainer([n_in, *widths, n_out], optimizer="adam", lr=0.01, batch_size=batch_size, epochs=2,
                        shuffle=False, ensemble=k, dtype="float64", seed=7, n_threads=n_threads,
                        ensemble_adapters=adapters, clip_grad_norm=clip)
    X, y = problem(100, n_in, n_out, seed=8)
    member_outputs, params, flat = _torch_twin(tr, torch)
    opt = torch.optim.Adam(params, lr=0.01)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).long()
    for _ in range(2):
        for start in range(0, len(X), batch_size):
            opt.zero_grad()
            z = member_outputs(Xt[start:start + batch_size])
            loss = sum(torch.nn.functional.cross_entropy(z[e], yt[start:start + batch_size]) for e in range(k)) / k
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
    tr.fit(X, y)
    np.testing.assert_allclose(tr.params, flat(), rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("adapters", ["first_layer", "every_layer"])
def test_runs_repeat_bit_for_bit_and_thread_counts_agree(adapters):
    X, y = problem(300, 6, 3, seed=9)
    runs = []
    for threads in (2, 2, 1):
        tr = fastbp.Trainer([6, 32, 16, 3], ensemble=4, optimizer="adamw", batch_size=50, epochs=2, seed=1,
                            n_threads=threads, dropout=0.1, ensemble_adapters=adapters)
        tr.fit(X, y)
        runs.append(tr.params.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0], runs[2], rtol=1e-4, atol=1e-6)  # another summation order only


@pytest.mark.parametrize("adapters", ["first_layer", "every_layer"])
def test_members_differ_and_learn(tmp_path, adapters):
    X, y = problem(400, 4, 2, seed=10)
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    tr = fastbp.Trainer([4, 32, 2], ensemble=4, optimizer="adam", lr=0.01, epochs=30, batch_size=32, seed=0,
                        ensemble_adapters=adapters)
    tr.fit(X, y)
    assert (tr.predict(X) == y).mean() > 0.9
    z = member_logits(tr, X.astype(np.float32))
    assert np.abs(z[0] - z[1]).max() > 1e-3  # the members are not copies of each other
    path = tmp_path / "m.fbp"
    tr.save(path)
    back = fastbp.load(path)
    assert back.ensemble == 4 and back.ensemble_adapters == adapters
    np.testing.assert_array_equal(back.predict_proba(X), tr.predict_proba(X))
    assert "an ensemble of 4 members" in back.summary()


@pytest.mark.parametrize("adapters", ["first_layer", "every_layer"])
def test_resume_is_exact(tmp_path, adapters):
    X, y = problem(200, 5, 3, seed=11)
    common = dict(ensemble=3, optimizer="adam", batch_size=32, seed=2, ensemble_adapters=adapters)
    whole = fastbp.Trainer([5, 16, 8, 3], epochs=4, **common)
    whole.fit(X, y)
    half = fastbp.Trainer([5, 16, 8, 3], epochs=2, **common)
    half.fit(X, y)
    half.save(tmp_path / "half.fbp")
    resumed = fastbp.load(tmp_path / "half.fbp")
    resumed.fit(X, y)
    np.testing.assert_array_equal(resumed.params, whole.params)


def test_a_file_whose_parameters_do_not_fit_its_ensemble_is_refused(tmp_path):
    from fastbp.files.modelfile import read_model, write_model

    fastbp.Trainer([3, 4, 2], epochs=1).fit(np.eye(3), [0, 1, 0]).save(tmp_path / "m.fbp")
    config, arrays = read_model(tmp_path / "m.fbp")
    config["init_args"]["ensemble"] = 2
    write_model(tmp_path / "bad.fbp", config, arrays)
    with pytest.raises(fastbp.ModelFileError, match=r"ensemble 2 \(first_layer\) need 42 parameters"):
        fastbp.load(tmp_path / "bad.fbp")
    config["init_args"]["ensemble_adapters"] = "every_layer"
    write_model(tmp_path / "bad.fbp", config, arrays)
    with pytest.raises(fastbp.ModelFileError, match=r"ensemble 2 \(every_layer\) need 54 parameters"):
        fastbp.load(tmp_path / "bad.fbp")
    config["init_args"]["ensemble_adapters"] = ["every_layer"]
    write_model(tmp_path / "bad.fbp", config, arrays)
    with pytest.raises(fastbp.ModelFileError, match="ensemble_adapters must be one of"):
        fastbp.load(tmp_path / "bad.fbp")


@pytest.mark.slow
def test_cli_trains_an_ensemble_and_refuses_resuming_with_another(tmp_path):
    """--ensemble K from a file: the model holds K members, predict and evaluate use their mean, --resume checks it."""
    rng = np.random.default_rng(0)
    n = 600
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    label = np.where(x1 + 1.5 * (color == "red") - x2 > 0.2, "yes", "no")
    lines = ["x1,x2,color,label"] + [f"{a},{b},{c},{d}" for a, b, c, d in zip(x1, x2, color, label)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    common = ["train", tmp_path / "d.csv", "--target", "label", "--hidden", "16", "--preset", "plain", "--quiet",
              "--batch-size", 32, "--lr", 0.01,
              "--checkpoint-dir", tmp_path / "ck"]
    cli(*common, "--epochs", 2, "--ensemble", 3, "--out", tmp_path / "m.fbp")
    model = fastbp.load(tmp_path / "m.fbp")
    assert model.ensemble == 3 and model.layers[-1][0].shape[0] == 3
    info = json.loads(cli("info", tmp_path / "m.fbp").stdout)
    assert info["ensemble"] == 3 and info["ensemble_adapters"] == "first_layer"
    scores = json.loads(cli("evaluate", tmp_path / "m.fbp", tmp_path / "d.csv").stdout)
    assert scores["accuracy"] > 0.7
    cli(*common, "--epochs", 4, "--ensemble", 3, "--resume", "--out", tmp_path / "m.fbp")
    assert len(fastbp.load(tmp_path / "m.fbp").history) == 4
    for other in (["--ensemble", "3", "--ensemble-adapters", "every_layer"], []):
        proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, common), "--epochs", "6", "--resume",
                               "--out", str(tmp_path / "m.fbp"), *other], capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and "ensemble" in proc.stderr
    cli(*common, "--epochs", 2, "--ensemble", 3, "--ensemble-adapters", "every_layer", "--out", tmp_path / "e.fbp",
        "--checkpoint-dir", tmp_path / "ck2")
    model = fastbp.load(tmp_path / "e.fbp")
    assert model.ensemble_adapters == "every_layer" and json.loads(cli("info", tmp_path / "e.fbp").stdout)[
        "ensemble_adapters"] == "every_layer"
    assert json.loads(cli("evaluate", tmp_path / "e.fbp", tmp_path / "d.csv").stdout)["accuracy"] > 0.7
