"""Model files are untrusted input: hostile files fail fast with ModelFileError, in bounded time and memory;
saved files get ordinary permissions and write through symlinks."""
import io
import json
import os
import random
import stat
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp.files.modelfile import read_model, write_model


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    tr = fastbp.Trainer([3, 6, 2], optimizer="adam", epochs=2).fit(X, y, validation_split=0.25)
    path = tmp_path_factory.mktemp("m") / "m.fbp"
    tr.save(path)
    return path.read_bytes(), tr.params.copy()


def _members(blob):
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _zip(members, compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _load_bounded(path):
    """Load `path`: it must give the same model or ModelFileError, within 2 s and 200 MB."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        return fastbp.load(path)
    except fastbp.ModelFileError as exc:
        assert str(path) in str(exc)
        return None
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert seconds < 2, f"{seconds:.1f} s"
        assert peak < 200 << 20, f"{peak >> 20} MiB"


def _meta_edit(blob, edit):
    members = _members(blob)
    meta = json.loads(members["fastbp.json"])
    edit(meta)
    members["fastbp.json"] = json.dumps(meta).encode()
    return _zip(members)


def test_fuzzed_model_files_load_identically_or_raise_model_file_error(model_bytes, tmp_path):
    blob, params = model_bytes
    rng = random.Random(1234)
    names = list(_members(blob))
    for trial in range(300):
        kind = trial % 5
        data = bytearray(blob)
        if kind == 0:  # bit flips
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncation
            data = data[:rng.randrange(len(data))]
        elif kind == 2:  # members swapped, renamed or dropped
            members = _members(blob)
            a, b = rng.sample(names, 2)
            choice = rng.randrange(3)
            if choice == 0:
                members[a], members[b] = members[b], members[a]
            elif choice == 1:
                members["../" + a] = members.pop(a)
            else:
                del members[a]
            data = _zip(members)
        elif kind == 3:  # metadata edits: sizes, shapes, dtypes, versions, types
            key = rng.choice(["layer_sizes", "shape", "dtype", "version", "arrays", "history", "rng"])

            def edit(meta):
                if key == "layer_sizes":
                    meta["config"]["init_args"]["layer_sizes"] = rng.choice([[3, 200_000_000, 2], [3, 10 ** 12, 2],
                                                                             [3], "x", [3, -6, 2]])
                elif key == "shape":
                    meta["arrays"]["params"]["shape"] = rng.choice([[10 ** 12], [-1], [2, 2, 2], "x"])
                elif key == "dtype":
                    meta["arrays"]["params"]["dtype"] = rng.choice(["|O", "<c16", "<f8", 5])
                elif key == "version":
                    meta["format_version"] = rng.choice([0, "1", None, True])
                elif key == "arrays":
                    meta["arrays"] = rng.choice([[], None, {"../x": {}}])
                elif key == "history":
                    meta["config"]["history"] = rng.choice([None, 5, [[1]]])
                else:
                    meta["config"]["shuffle_rng_state"] = rng.choice([None, {"state": 1}, []])
            data = _meta_edit(blob, edit)
        else:  # the npy header of params edited
            members = _members(blob)
            raw = bytearray(members["arrays/params.npy"])
            header_end = raw.index(b"\n") + 1
            header = raw[:header_end].decode("latin1").replace("'shape': (", "'shape': (1000000000000, ")
            members["arrays/params.npy"] = header.encode("latin1") + bytes(raw[header_end:])
            data = _zip(members)
        path = tmp_path / f"f{trial}.fbp"
        path.write_bytes(bytes(data))
        loaded = _load_bounded(path)
        if loaded is not None:
            np.testing.assert_array_equal(loaded.params, params)


def _json_paths(node, path=()):
    """Every path into a JSON tree (dict keys and list positions), containers and leaves alike."""
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node[:3]):
            yield from _json_paths(value, (*path, i))


def test_every_json_field_of_another_type_loads_or_is_a_model_file_error(tmp_path):
    """Every field of a model file's JSON (format, settings, history, RNG state, classes, features, schedule,
    preprocessing, array specs) replaced by values of other types: the file loads, and the model then predicts,
    summarizes and exports its preprocessing, or load raises ModelFileError; nothing else, ever."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    from fastbp.files.preprocess import Preprocessor
    from fastbp.files.sources import open_source

    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"x": rng.normal(size=60), "color": rng.choice(["red", "blue"], 60),
                             "label": rng.choice(["yes", "no"], 60)}), tmp_path / "d.parquet")
    prep, _, _ = Preprocessor.fit(open_source(tmp_path / "d.parquet"), "label")
    X = rng.normal(size=(5, prep.n_inputs)).astype(np.float32)
    tr = fastbp.Trainer([prep.n_inputs, 3, 2], optimizer="adam", epochs=1, lr_schedule="cosine").fit(
        X, np.array(["no", "yes", "no", "yes", "no"]))
    tr.preprocessing = prep.state
    tr.feature_names_in_ = None
    tr.save(tmp_path / "m.fbp")
    blob = (tmp_path / "m.fbp").read_bytes()
    meta = json.loads(_members(blob)["fastbp.json"])
    paths = [p for p in _json_paths(meta) if p]
    assert len(paths) > 60
    for path in paths:
        for value in ([], {}, None, "x", 1.5, True, -1, 10 ** 30, [[]], ["x"]):
            def edit(meta):
                node = meta
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = value
            target = tmp_path / "edited.fbp"
            target.write_bytes(_meta_edit(blob, edit))
            try:
                loaded = fastbp.load(target)
            except fastbp.ModelFileError:
                continue
            loaded.summary()
            loaded.predict(X, encoded=True)
            if loaded.preprocessing:
                Preprocessor(loaded.preprocessing)


def test_zip_bombs_are_refused_before_decompressing(model_bytes, tmp_path):
    blob, _ = model_bytes
    members = _members(blob)
    meta = json.loads(members["fastbp.json"])
    meta["config"]["padding"] = " " * (300 << 20)  # deflates to ~300 KB
    members["fastbp.json"] = json.dumps(meta).encode()
    path = tmp_path / "bomb.fbp"
    path.write_bytes(_zip(members, zipfile.ZIP_DEFLATED))
    assert path.stat().st_size < 2 << 20
    with pytest.raises(fastbp.ModelFileError, match="zip bomb|declares"):
        _load_bounded(path) or fastbp.load(path)


def test_extra_members_and_trailing_bytes_are_refused(model_bytes, tmp_path):
    blob, _ = model_bytes
    members = _members(blob)
    members["arrays/params.npy"] += b"\0" * 16
    path = tmp_path / "trailing.fbp"
    path.write_bytes(_zip(members))
    with pytest.raises(fastbp.ModelFileError):
        fastbp.load(path)
    members = _members(blob)
    members["extra.txt"] = b"hello"
    path.write_bytes(_zip(members))
    with pytest.raises(fastbp.ModelFileError, match="not listed"):
        fastbp.load(path)


def test_info_on_hostile_files_exits_2_with_one_line(model_bytes, tmp_path):
    import subprocess
    import sys
    blob, _ = model_bytes
    path = tmp_path / "nokeys.fbp"
    path.write_bytes(_meta_edit(blob, lambda meta: meta["config"].pop("init_args")))
    proc = subprocess.run([sys.executable, "-m", "fastbp", "info", str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(path) in proc.stderr


def test_saved_files_get_ordinary_permissions_and_symlinks_are_written_through(tmp_path):
    tr = fastbp.Trainer([2, 2])
    old = os.umask(0o022)
    try:
        tr.save(tmp_path / "new.fbp")
        assert stat.S_IMODE((tmp_path / "new.fbp").stat().st_mode) == 0o644
        (tmp_path / "shared.fbp").write_bytes(b"")
        os.chmod(tmp_path / "shared.fbp", 0o664)
        tr.save(tmp_path / "shared.fbp")
        assert stat.S_IMODE((tmp_path / "shared.fbp").stat().st_mode) == 0o664
        os.symlink(tmp_path / "shared.fbp", tmp_path / "link.fbp")
        tr.params[0] += 1
        tr.save(tmp_path / "link.fbp")
        assert (tmp_path / "link.fbp").is_symlink()
        np.testing.assert_array_equal(fastbp.load(tmp_path / "shared.fbp").params, tr.params)
    finally:
        os.umask(old)


def test_a_round_trip_still_reads_every_array(tmp_path):
    arrays = {"params": np.arange(5, dtype=np.float32), "opt_step": np.array([3])}
    write_model(tmp_path / "x.fbp", {"a": 1}, arrays)
    config, back = read_model(tmp_path / "x.fbp")
    assert config == {"a": 1} and back["opt_step"][0] == 3
    np.testing.assert_array_equal(back["params"], arrays["params"])


def test_a_model_from_a_newer_fastbp_names_the_settings_this_one_lacks(tmp_path):
    from fastbp.files.modelfile import read_model, write_model
    fastbp.Trainer([3, 2], epochs=1).fit(np.eye(3), [0, 1, 0]).save(tmp_path / "m.fbp")
    config, arrays = read_model(tmp_path / "m.fbp")
    config["init_args"]["mixture_of_experts"] = 8
    config["fastbp_version"] = "9.9"
    write_model(tmp_path / "new.fbp", config, arrays)
    with pytest.raises(fastbp.ModelFileError, match=r"written by fastbp '9.9' with settings this fastbp .* does "
                                                    r"not know: mixture_of_experts; load it with that version or a "
                                                    r"newer"):
        fastbp.load(tmp_path / "new.fbp")
