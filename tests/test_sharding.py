"""How ranks split a file, checked in one process: merged first-pass statistics and the shard choice."""
import numpy as np
import pytest

from fastbp.files.preprocess import Holdout, Preprocessor
from fastbp.files.scan import first_pass
from fastbp.files.sources import open_source
from fastbp.parallel.file_shards import shard_mode

pa = pytest.importorskip("pyarrow")
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


class GatherOfRanks:
    """Stands in for an MPI communicator: rank `rank` of `size`, whose allgather returns given values."""

    def __init__(self, rank, size, gathered=None):
        self.rank, self.size, self.gathered = rank, size, gathered

    def allgather(self, value):
        return self.gathered


@pytest.fixture
def table_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    x = rng.normal(3, 2, size=n)
    x[rng.random(n) < 0.05] = np.nan
    color = rng.choice(["red", "green", "blue", None], size=n)
    color[:1000] = "red"  # one rank's chunks see fewer categories than the other's
    label = np.where(np.nan_to_num(x) + (color == "red") > 3, "yes", "no")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": x, "color": color, "label": label}), path, row_group_size=700)
    return path


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("impute", ["mean", "median"])
def test_ranks_first_passes_merge_to_the_whole_files_statistics(table_file, ranks, impute):
    source = open_source(table_file)
    options = dict(impute=impute, val_split=0.2, seed=4)
    whole, held, n = Preprocessor.fit(source, "label", **options)
    chunks = [range(r, source.n_chunks, ranks) for r in range(ranks)]
    parts = [first_pass(source, "label", ["x", "color"], impute, 1000, Holdout(4, 0.2),
                        10 ** 6, 4, None, c) for c in chunks]
    for rank in range(ranks):
        merged, merged_held, merged_n = Preprocessor.fit(source, "label", **options,
                                                         comm=GatherOfRanks(rank, ranks, parts))
        assert merged_n == n
        state, expected = merged.state, whole.state
        assert state["categories"] == expected["categories"] and state["classes"] == expected["classes"]
        np.testing.assert_allclose(state["mean"], expected["mean"], rtol=1e-12)
        np.testing.assert_allclose(state["scale"], expected["scale"], rtol=1e-12)
        if impute == "mean":
            np.testing.assert_allclose(state["fill"], expected["fill"], rtol=1e-12)
        else:  # a sample median of 5000 values: close, not equal
            assert abs(state["fill"][0] - np.nanmedian(pq.read_table(table_file)["x"].to_numpy())) < 0.2
        assert sorted(np.nan_to_num(merged_held["x"])) == sorted(np.nan_to_num(held["x"]))
        assert merged.matches(whole.state)  # a checkpoint resumes across rank counts


def test_preparation_matches_to_rounding_but_not_beyond(table_file):
    prep, _, _ = Preprocessor.fit(open_source(table_file), "label", impute="mean")
    state = prep.state
    assert prep.matches({**state, "mean": [m * (1 + 1e-13) for m in state["mean"]]})
    assert not prep.matches({**state, "scale": [v * 1.001 for v in state["scale"]]})
    assert not prep.matches({**state, "categories": [None, ["blue", "red"]]})
    assert not prep.matches({**state, "classes": ["no"]})
    assert not prep.matches({k: v for k, v in state.items() if k != "impute"})


def test_a_rank_that_saw_text_where_another_saw_numbers_is_an_error():
    from fastbp.files.scan import ColumnScan
    rng = np.random.default_rng(0)
    numbers, text = ColumnScan("x", None, 1000, False), ColumnScan("x", None, 1000, False)
    numbers.update(pa.array([str(v) for v in range(700)]), np.arange(700), rng)
    text.update(pa.array(["1.5"] * 99 + ["a"]), np.arange(700, 800), rng)
    numbers.merge(text, rng)
    with pytest.raises(ValueError, match="column 'x' holds numbers, but row 799 has the text 'a'"):
        numbers.kind()


def test_shard_modes(tmp_path, table_file):
    parquet = open_source(table_file)  # 8 row groups
    np.save(tmp_path / "a.npy", np.zeros((100, 3)))
    array = open_source(tmp_path / "a.npy", chunk_rows=10)
    pcsv.write_csv(pa.table({"a": [1, 2]}), tmp_path / "c.csv")
    csv = open_source(tmp_path / "c.csv")
    assert shard_mode("auto", parquet, 1) == "rows"
    assert shard_mode("auto", parquet, 4) == "chunks"
    assert shard_mode("auto", parquet, 9) == "rows"  # fewer row groups than ranks: keep every rank busy
    assert shard_mode("auto", array, 4) == "rows"
    assert shard_mode("chunks", array, 4) == "chunks"
    assert shard_mode("auto", csv, 4) == "rows"
    with pytest.raises(ValueError, match="convert it to Parquet"):
        shard_mode("chunks", csv, 1)
    with pytest.raises(ValueError, match="has 8 chunk"):
        shard_mode("chunks", parquet, 9)
    with pytest.raises(ValueError, match="shard must be one of"):
        shard_mode("files", parquet, 2)


@pytest.mark.parametrize("loss,n_out", [("mse", 2), ("huber", 1), ("cross_entropy", 3),
                                        ("binary_cross_entropy", 2)])
def test_metrics_combined_from_parts_equal_metrics_of_all_rows(loss, n_out):
    """What MPI ranks (validation slices) and `fastbp evaluate` (file chunks) rely on."""
    import fastbp
    from fastbp.engine import metrics
    rng = np.random.default_rng(0)
    X = rng.normal(size=(301, 5))
    if loss == "cross_entropy":
        y = rng.integers(0, 3, size=301)
    elif loss == "binary_cross_entropy":
        y = (rng.random((301, 2)) > 0.5).astype(float)
    else:  # a large offset: a one-pass sum(y^2) - sum(y)^2/n formula would lose R2 entirely
        y = 1e8 + rng.normal(size=(301, n_out)).squeeze()
    w = rng.uniform(0, 2, size=301)
    tr = fastbp.Trainer([5, 8, n_out], loss=loss, dtype="float64", seed=0, epochs=0).fit(X, y)  # untrained
    if loss in ("mse", "huber"):
        tr.params[tr.layout.w_offsets[1] + 8 * n_out:] = 1e8  # output bias near the targets
    whole = tr.evaluate(X, y, sample_weight=w)
    cuts = [0, 7, 150, 151, 301]
    parts = [tr.metric_part(X[a:b], y[a:b], w[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    combined = metrics.finish(metrics.combine(parts))
    assert combined.keys() == whole.keys()
    for key in whole:  # r2 to 1e-7: float64 holds a mean near 1e8 only to ~1e-8
        assert combined[key] == pytest.approx(whole[key], rel=1e-7 if key == "r2" else 1e-9, abs=1e-12)
    if "r2" in whole:
        sk = pytest.importorskip("sklearn.metrics")
        assert whole["r2"] == pytest.approx(sk.r2_score(y, tr.predict(X), sample_weight=w), rel=1e-7)
