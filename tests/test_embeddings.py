"""Categorical embeddings: the compiled lookup against plain NumPy, gradients against central differences,
training steps against torch.nn.Embedding(sparse=True), only the rows a batch looks up change, and tables through
DataFrames, save/load and unseen categories."""
import numpy as np
import pytest

import fastbp
import naive

TABLES = [(5, 3), (7, 2)]  # (rows, dim): the last row of each is the unknown category's


def coded_problem(n, n_dense, tables, n_out, seed=0, loss="cross_entropy"):
    """X with n_dense normal columns then a category code per table (every code, never the unknown row), and y."""
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, rows - 1, size=n) for rows, _ in tables]
    X = np.column_stack([rng.normal(size=(n, n_dense))] + codes).astype(np.float64)
    y = rng.integers(0, n_out, size=n) if loss == "cross_entropy" else rng.normal(size=(n, n_out))
    return X, y


def looked_up(tr, X):
    """The first layer's inputs in NumPy: the dense columns and each code's table row (the unknown row for a code
    outside the table)."""
    n_dense = tr.layout.n_dense
    parts = [X[:, :n_dense]]
    for e, table in enumerate(tr.layout.tables(tr.params)):
        codes = X[:, n_dense + e]
        rows = np.where((codes >= 0) & (codes < len(table) - 1), codes, len(table) - 1).astype(int)
        parts.append(table[rows])
    return np.hstack(parts)


def test_forward_matches_lookup_in_numpy():
    n_dense = 4
    tr = fastbp.Trainer([n_dense + 5, 8, 3], embeddings=TABLES, dtype="float64", seed=1)
    X, _ = coded_problem(50, n_dense, TABLES, 3)
    X[:3, n_dense] = [4, -2, 99]  # the unknown row itself, and codes outside the table: the unknown row
    _, acts = naive.forward(tr.layers, ["relu"], looked_up(tr, X))
    np.testing.assert_allclose(tr.decision_function(X), acts[-1], rtol=1e-12, atol=1e-12)
    assert tr.layout.n_columns == n_dense + 2 and tr.params.size == tr.layout.n_layer_params + 5 * 3 + 7 * 2


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_gradient_matches_central_differences(loss):
    n_dense = 2
    tr = fastbp.Trainer([n_dense + 5, 4, 2], activation="tanh", loss=loss, embeddings=TABLES, dtype="float64",
                        seed=3)
    X, y = coded_problem(13, n_dense, TABLES, 2, seed=5, loss=loss)
    _, grad = tr.loss_and_grad(X, y)
    numeric = naive.numeric_gradient(tr, X, y)
    rel = np.linalg.norm(grad - numeric) / np.linalg.norm(numeric)
    assert rel < 1e-6, f"relative gradient error {rel:.2e}"
    unknown = [t[-1] for t in tr.layout.tables(grad)]  # no row uses the unknown category
    assert all(np.all(u == 0) for u in unknown)


def _torch_twin(tr, torch):
    """A torch module computing what `tr` computes: nn.Embedding(sparse=True) tables and the same layers."""
    layers = [torch.nn.Linear(W.shape[0], W.shape[1], dtype=torch.float64) for W, _ in tr.layers]
    tables = [torch.nn.Embedding(len(t), t.shape[1], sparse=True, dtype=torch.float64)
              for t in tr.layout.tables(tr.params)]
    with torch.no_grad():
        for lin, (W, b) in zip(layers, tr.layers):
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))
        for emb, t in zip(tables, tr.layout.tables(tr.params)):
            emb.weight.copy_(torch.from_numpy(t.copy()))
    n_dense = tr.layout.n_dense

    def forward(X):
        h = torch.cat([X[:, :n_dense]] + [emb(X[:, n_dense + e].long()) for e, emb in enumerate(tables)], dim=1)
        for l, lin in enumerate(layers):
            h = lin(h)
            if l < len(layers) - 1:
                h = torch.tanh(h)
        return h

    def flat():
        return np.concatenate([np.concatenate([lin.weight.detach().numpy().T.ravel(), lin.bias.detach().numpy()])
                               for lin in layers] + [emb.weight.detach().numpy().ravel() for emb in tables])

    return forward, layers, tables, flat


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_matches_torch_sparse_embeddings(optimizer):
    """SGD on every parameter, or Adam on the layers and SparseAdam on the tables (the semantics fastbp documents
    for table rows: a row steps only when a batch looks it up, with the step count of the model). SparseAdam adds
    eps to sqrt(v) before the bias correction, Adam after: eps is negligible here so that both agree."""
    torch = pytest.importorskip("torch")
    n_dense, batch = 3, 8
    tables = [(12, 3), (30, 4)]  # more rows than one batch touches
    eps = 1e-30
    tr = fastbp.Trainer([n_dense + 7, 6, 3], activation="tanh", optimizer=optimizer, lr=0.05, batch_size=batch,
                        epochs=2, shuffle=False, embeddings=tables, dtype="float64", seed=2, eps=eps)
    X, y = coded_problem(40, n_dense, tables, 3, seed=9)
    forward, layers, embs, flat = _torch_twin(tr, torch)
    dense = [p for lin in layers for p in lin.parameters()]
    sparse = [emb.weight for emb in embs]
    if optimizer == "sgd":
        opts = [torch.optim.SGD(dense + sparse, lr=0.05)]
    else:
        opts = [torch.optim.Adam(dense, lr=0.05, eps=eps), torch.optim.SparseAdam(sparse, lr=0.05, eps=eps)]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y).long()
    for _ in range(2):
        for start in range(0, len(X), batch):
            for opt in opts:
                opt.zero_grad()
            torch.nn.functional.cross_entropy(forward(Xt[start:start + batch]), yt[start:start + batch]).backward()
            for opt in opts:
                opt.step()
    tr.fit(X, y)
    np.testing.assert_allclose(tr.params, flat(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("settings", [dict(optimizer="sgd", momentum=0.9, weight_decay=0.01),
                                      dict(optimizer="adamw", weight_decay=0.1), dict(optimizer="adam", l1=0.01),
                                      dict(optimizer="adam", clip_grad_norm=0.1)],
                         ids=["sgd-momentum-decay", "adamw", "adam-l1", "adam-clip"])
def test_rows_no_batch_looks_up_do_not_change(settings):
    """Weight decay, momentum and Adam's moments act on a table row only when a batch looks it up."""
    n_dense = 2
    tables = [(10, 3)]
    tr = fastbp.Trainer([n_dense + 3, 5, 2], embeddings=tables, epochs=3, batch_size=4, seed=0, **settings)
    X, y = coded_problem(30, n_dense, [(6, 3)], 2, seed=1)  # codes 0..4 only: rows 5..9 never looked up
    before = tr.layout.tables(tr.params)[0].copy()
    tr.fit(X, y)
    after = tr.layout.tables(tr.params)[0]
    np.testing.assert_array_equal(after[5:], before[5:])
    assert np.all(np.any(after[:5] != before[:5], axis=1))


def test_constructor_checks_tables():
    with pytest.raises(fastbp.InputError, match="add up to"):
        fastbp.Trainer([4, 3, 2], embeddings=[(5, 3), (4, 2)])
    with pytest.raises(fastbp.InputError, match="rows"):
        fastbp.Trainer([4, 3, 2], embeddings=[(1, 2)])
    with pytest.raises(TypeError, match="pairs"):
        fastbp.Trainer([4, 3, 2], embeddings=[3])
    tr = fastbp.Trainer(hidden=(4,), embeddings=[(6, 3)])  # an array's last column holds the codes
    X, y = coded_problem(20, 2, [(6, 3)], 2)
    tr.fit(X, y)
    assert tr.layer_sizes == [5, 4, 2]
    with pytest.raises(fastbp.InputError, match=r"expects 3 \(2 inputs and 1 category code"):
        tr.predict(X[:, :2])


def _frame(n, seed=0):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    store = rng.integers(0, 40, size=n)
    effect = rng.normal(size=40)
    x = rng.normal(size=n)
    frame = pd.DataFrame({"store": [f"s{v}" for v in store], "x": x, "color": rng.choice(["red", "blue"], n)})
    return frame, np.where(effect[store] + 0.5 * x > 0, "yes", "no")


def test_dataframe_embeds_many_categories_and_round_trips(tmp_path):
    df, y = _frame(600)
    tr = fastbp.Trainer(hidden=(16,), optimizer="adam", lr=0.02, epochs=15, seed=0, onehot_max=16)  # "auto"
    tr.fit(df, y)
    dim = tr.preprocessing["embed"][0]
    assert tr.preprocessing["embed"] == [dim, None, None] and tr.embeddings == [[41, dim]]
    assert tr.layer_sizes[0] == dim + 1 + 2  # the store's table, x, color one-hot
    assert tr.evaluate(df, y)["accuracy"] > 0.9
    assert f"embedding tables (rows, dim) read by layer 1: 41 x {dim}" in tr.summary()
    with pytest.raises(fastbp.InputError, match="a table's categorical columns get theirs"):
        fastbp.Trainer(hidden=(4,), embeddings=[(41, 3)]).fit(df, y)
    path = tmp_path / "m.fbp"
    tr.save(path)
    back = fastbp.load(path)
    np.testing.assert_array_equal(back.predict_proba(df), tr.predict_proba(df))
    new = df.iloc[:2].copy()
    new["store"] = ["s999", "s998"]
    with pytest.warns(UserWarning, match="unknown row"):
        proba = back.predict_proba(new)
    X = back.preprocessing and tr._schema.transform({c: new[c].to_numpy() for c in new}, with_target=False)[0]
    assert np.all(X[:, -1] == 40)  # the code of the unknown row
    np.testing.assert_allclose(proba, back.predict_proba(X, encoded=True))


def test_onehot_and_embed_modes():
    df, y = _frame(400)
    assert df["store"].nunique() == 40
    onehot = fastbp.Trainer(hidden=(8,), epochs=1, categorical="onehot").fit(df, y)
    assert onehot.embeddings is None and onehot.layer_sizes[0] == 40 + 1 + 2
    assert "embed" not in onehot.preprocessing  # a one-hot schema is stored as before embeddings
    embed = fastbp.Trainer(hidden=(8,), epochs=1, categorical="embed", embedding_dim={"color": 2}, onehot_max=4)
    embed.fit(df, y)
    assert embed.preprocessing["embed"] == [13, None, 2]  # 1.6 * 40 ** 0.56 rounded; color as asked
    assert embed.layer_sizes[0] == 1 + 13 + 2
    with pytest.raises(fastbp.InputError, match="categorical must be"):
        fastbp.Trainer(hidden=(8,), categorical="dense")
    with pytest.raises(fastbp.InputError, match="embedding_dim"):
        fastbp.Trainer(hidden=(8,), embedding_dim=0)


def test_onnx_export_looks_up_the_tables():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    def run(model, feeds):
        session = ort.InferenceSession(model.SerializeToString())
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))

    tr = fastbp.Trainer([4 + 5, 8, 3], embeddings=TABLES, seed=1)
    X, y = coded_problem(60, 4, TABLES, 3)
    tr.fit(X.astype(np.float32), y)
    X[:4, 4] = [4, -1, 17, 2.7]  # the unknown row, codes outside the table, a fractional code (truncated)
    out = run(tr.to_onnx(), {"X": X.astype(np.float32)})
    np.testing.assert_allclose(out["probabilities"], tr.predict_proba(X), rtol=1e-5, atol=1e-6)

    df, labels = _frame(300)
    tr = fastbp.Trainer(hidden=(8,), epochs=2, categorical="embed").fit(df, labels)  # color's 2 categories too
    new = df.iloc[:50].copy()
    new.loc[new.index[:5], "store"] = "s999"  # unseen: the unknown row
    feeds = {"store": new["store"].to_numpy(object).reshape(-1, 1), "x": new["x"].to_numpy().reshape(-1, 1),
             "color": new["color"].to_numpy(object).reshape(-1, 1)}
    out = run(tr.to_onnx(), feeds)
    with pytest.warns(UserWarning, match="unknown row"):
        expected = tr.predict_proba(new)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="unknown row"):
        assert list(out["label"]) == list(tr.predict(new))


def test_cli_trains_embeddings_from_a_file_and_predicts_as_python(tmp_path):
    """`fastbp train --categorical embed` streams the file's category codes; `fastbp predict` and the loaded
    model's predict on the DataFrame agree, and a model resumed from its checkpoint keeps its tables."""
    import subprocess
    import sys
    df, y = _frame(500)
    df["label"] = y
    df.to_csv(tmp_path / "d.csv", index=False)

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "fastbp", *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = cli("train", tmp_path / "d.csv", "--target", "label", "--hidden", "8", "--epochs", "2", "--categorical",
              "embed", "--embedding-dim", "3", "--out", tmp_path / "m.fbp")
    assert "inputs" in out
    tr = fastbp.load(tmp_path / "m.fbp")
    assert tr.embeddings == [[41, 3], [3, 3]] and tr.layer_sizes[0] == 1 + 3 + 3
    cli("predict", tmp_path / "m.fbp", tmp_path / "d.csv", "--out", tmp_path / "p.npy", "--proba", "--quiet")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), tr.predict_proba(df.drop(columns="label")),
                               rtol=1e-6, atol=1e-7)
    # continued training of the same file keeps the schema and the tables
    again = fastbp.load(tmp_path / "m.fbp")
    again.fit_file(str(tmp_path / "d.csv"), "label")  # every row, as the CLI trained
    assert again.embeddings == tr.embeddings and len(again.history) == 4


def test_resumed_training_equals_one_run(tmp_path):
    """Two epochs, save, load, two more: the tables and their optimizer state continue bit for bit."""
    X, y = coded_problem(120, 3, TABLES, 3, seed=4)
    settings = dict(optimizer="adam", weight_decay=0.01, batch_size=16, seed=7, embeddings=TABLES)
    straight = fastbp.Trainer([3 + 5, 8, 3], epochs=4, **settings).fit(X, y)
    first = fastbp.Trainer([3 + 5, 8, 3], epochs=2, **settings).fit(X, y)
    first.save(tmp_path / "m.fbp")
    resumed = fastbp.load(tmp_path / "m.fbp")
    assert resumed.embeddings == [list(t) for t in TABLES]
    resumed.fit(X, y)
    np.testing.assert_array_equal(resumed.params, straight.params)
