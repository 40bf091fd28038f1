"""Column handling for files: feature selection, one-hot categories, imputation, standardization.

`Preprocessor.fit` learns everything in one streaming pass over a source (and keeps
a bounded sample of held-out validation rows); `transform` turns one chunk into the
model's input matrix and encoded targets. The fitted state is plain JSON, stored
in the model file, so `fastbp predict` applies exactly what training used.
"""
import numpy as np

from ..core.errors import InputError

MISSING = "<missing>"
MEDIAN_SAMPLE = 10_000  # per-column reservoir for --impute median (approximate on larger files)


def _is_text(values):
    return values.dtype == object


def holdout_mask(seed, rows, fraction):
    """Rows whose hash falls below `fraction` are validation rows: stateless, same in every pass."""
    if fraction <= 0:
        return np.zeros(len(rows), dtype=bool)
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the point of the hash
        x = (rows.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


class Preprocessor:
    def __init__(self, state):
        self.state = state
        self.features = state["features"]
        self.target = state["target"]
        self.task = state["task"]
        self.n_inputs = int(sum(len(c) if c is not None else 1 for c in state["categories"]))
        self._index = {f: i for i, f in enumerate(self.features)}
        classes = state.get("classes") or []
        self._class_index = {self._label_key(c): i for i, c in enumerate(classes)}
        # numeric labels (the common case) are encoded with one searchsorted, not a loop over rows
        self._numeric_classes = np.array(classes, dtype=np.float64) \
            if classes and not any(isinstance(c, str) for c in classes) else None

    # ------------------------------------------------------------------ learning
    @classmethod
    def fit(cls, source, target, features=None, task=None, impute=None, max_categories=1000, val_split=0.0,
            val_max_rows=200_000, seed=0, progress=None, comm=None):
        """One pass over `source`: statistics of the training rows and a sample of validation rows.

        With an MPI communicator (size > 1) and a source in chunks (.npy, Parquet), each rank scans
        only every size-th chunk and the statistics are merged, identically on every rank.
        """
        if target not in source.columns:
            raise InputError(f"target column {target!r} is not in the data; columns are: {', '.join(source.columns)}")
        features = [c for c in source.columns if c != target] if not features else list(features)
        missing = [c for c in features if c not in source.columns]
        if missing:
            raise InputError(f"feature column(s) {', '.join(map(repr, missing))} not in the data; "
                             f"columns are: {', '.join(source.columns)}")
        if target in features:
            raise InputError(f"the target column {target!r} is also listed as a feature")
        if not features:
            raise InputError("no feature columns: the data has only the target column")
        if impute not in (None, "mean", "median"):
            raise InputError(f"impute must be 'mean' or 'median', got {impute!r}")
        sharded = comm is not None and comm.size > 1 and getattr(source, "chunk_starts", None) is not None
        chunks = range(comm.rank, source.n_chunks, comm.size) if sharded else None
        stats = _scan(source, target, features, task, impute, max_categories, val_split,
                      max(1, val_max_rows // comm.size) if sharded else val_max_rows, seed, progress, chunks)
        if sharded:
            stats = _merge(comm.allgather(stats), features, max_categories, seed)
        return cls._from_stats(stats, target, features, task, impute, val_max_rows)

    @classmethod
    def _from_stats(cls, st, target, features, task, impute, val_max_rows):
        if st["n_rows"] == 0:
            raise InputError("the data has no training rows")
        labels = st["labels"]
        if task is None:
            small = st["integral_target"] and len(labels) <= 50
            task = "classify" if st["text_target"] or small else "regress"
        if task not in ("classify", "regress"):
            raise InputError(f"task must be 'classify' or 'regress', got {task!r}")
        if task == "regress" and st["text_target"]:
            raise InputError(f"target column {target!r} holds text; regression needs numbers (use --task classify)")
        if task == "classify" and len(labels) < 2:
            raise InputError(f"target column {target!r} has {len(labels)} distinct value(s); classification needs 2+")
        if task == "classify" and len(labels) > 10_000:
            raise InputError(f"target column {target!r} has over 10000 distinct values; is it a regression target?")
        categories = st["categories"]
        state = {"features": features, "target": target, "task": task, "impute": impute,
                 "categories": [sorted(categories[c]) if categories[c] is not None else None for c in features],
                 "mean": [], "scale": [], "fill": []}
        for c in features:
            if categories[c] is not None:
                state["mean"].append(0.0), state["scale"].append(1.0), state["fill"].append(0.0)
                continue
            n = max(st["count"][c], 1)
            mean = st["total"][c] / n
            std = np.sqrt(max(st["squares"][c] / n - mean * mean, 0.0))
            sample = st["sample"][c]
            fill = mean if impute != "median" else (float(np.median(sample)) if sample else mean)
            state["mean"].append(mean), state["scale"].append(std if std > 1e-12 else 1.0), state["fill"].append(fill)
        if task == "classify":
            state["classes"] = sorted(labels, key=lambda v: (isinstance(v, str), v))
        held = st["held"]
        held_rows = {c: np.concatenate([h[c] for h in held])[:val_max_rows] for c in features + [target]} \
            if held else None
        return cls(state), held_rows, st["n_rows"]

    def matches(self, state):
        """True when `state` prepares data the same way: same columns, categories, classes and task, and
        statistics equal to rounding (a first pass split over a different number of MPI ranks sums in
        another order)."""
        mine = self.state
        if set(mine) != set(state):
            return False
        for key, value in mine.items():
            if key in ("mean", "scale", "fill"):
                if len(value) != len(state[key]) or not np.allclose(value, state[key], rtol=1e-9, atol=1e-12):
                    return False
            elif value != state[key]:
                return False
        return True

    # ------------------------------------------------------------------ applying
    @staticmethod
    def _label_key(v):
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return int(v)
        return v

    def transform(self, chunk, start=0, with_target=True, dtype=np.float32):
        """(X, y) for one chunk; y is None without the target. Rows are numbered from `start` in messages."""
        n = len(next(iter(chunk.values())))
        X = np.empty((n, self.n_inputs), dtype=dtype)
        col = 0
        for c, cats, mean, scale, fill in zip(self.features, self.state["categories"], self.state["mean"],
                                              self.state["scale"], self.state["fill"]):
            if c not in chunk:
                raise InputError(f"column {c!r}, used in training, is not in the data")
            v = chunk[c]
            if cats is None:
                if _is_text(v):
                    raise InputError(f"column {c!r} holds text but was numeric in training")
                nan = np.isnan(v)
                if nan.any():
                    if self.state["impute"] is None:
                        raise InputError(f"column {c!r} has a missing value at row {start + np.flatnonzero(nan)[0]}; "
                                         "the model was trained without --impute")
                    v = np.where(nan, fill, v)
                X[:, col] = (v - mean) / scale
                col += 1
            else:
                lookup = {k: i for i, k in enumerate(cats)}
                X[:, col:col + len(cats)] = 0
                for i, x in enumerate(v):
                    key = MISSING if x is None else str(x)
                    j = lookup.get(key)
                    if j is not None:  # an unseen category becomes all zeros
                        X[i, col + j] = 1
                    elif x is None:
                        raise InputError(f"column {c!r} has a missing value at row {start + i}")
                col += len(cats)
        if not with_target:
            return X, None
        if self.target not in chunk:
            raise InputError(f"target column {self.target!r} is not in the data")
        y = chunk[self.target]
        if self.task == "regress":
            if _is_text(y) or np.isnan(y).any():
                raise InputError(f"target column {self.target!r} must be numeric with no missing values")
            return X, y.astype(dtype)
        if self._numeric_classes is not None and not _is_text(y):
            known = self._numeric_classes
            index = np.minimum(np.searchsorted(known, y), len(known) - 1)
            unseen = np.flatnonzero(known[index] != y)
            if unseen.size:
                i = unseen[0]
                raise InputError(f"target value {self._label_key(y[i].item())!r} at row {start + i} was not seen in "
                                 f"training; known classes: {self.state['classes'][:20]}")
            return X, index.astype(dtype)
        codes = np.empty(n, dtype=dtype)
        for i, v in enumerate(y.tolist()):
            j = self._class_index.get(self._label_key(v))
            if j is None:
                raise InputError(f"target value {v!r} at row {start + i} was not seen in training; "
                                 f"known classes: {self.state['classes'][:20]}")
            codes[i] = j
        return X, codes

    def classes(self):
        return self.state.get("classes")


def _scan(source, target, features, task, impute, max_categories, val_split, val_max_rows, seed, progress, chunks):
    """Statistics of the training rows of the given chunks (all when None), as a plain dict."""
    count = {c: 0 for c in features}
    total = {c: 0.0 for c in features}
    squares = {c: 0.0 for c in features}
    sample = {c: [] for c in features}
    categories = {c: None for c in features}
    labels, text_target, numeric_target_integral = set(), None, True
    n_rows = 0
    held = []
    rng = np.random.default_rng(seed)
    for start, chunk in source.chunks(features + [target], chunks):
        rows = np.arange(start, start + len(chunk[target]))
        val = holdout_mask(seed, rows, val_split)
        if val.any() and sum(len(h[target]) for h in held) < val_max_rows:
            held.append({c: v[val] for c, v in chunk.items()})
        train = ~val
        n_rows += int(train.sum())
        y = chunk[target][train]
        if _is_text(y):
            text_target = True
            bad = np.flatnonzero([v is None for v in y])
        else:
            text_target = False if text_target is None else text_target
            bad = np.flatnonzero(np.isnan(y))
            numeric_target_integral &= bool(np.all(y[~np.isnan(y)] == np.round(y[~np.isnan(y)])))
        if bad.size:
            raise InputError(f"target column {target!r} has a missing value at row {rows[train][bad[0]]}; "
                             "drop those rows first")
        if task != "regress" and len(labels) <= 10_000:
            labels.update(y.tolist())
        for c in features:
            v = chunk[c][train]
            if _is_text(v):
                if categories[c] is None:
                    if count[c]:
                        raise InputError(f"column {c!r} mixes numbers and text")
                    categories[c] = set()
                nulls = np.flatnonzero([x is None for x in v])
                if nulls.size and impute is None:
                    raise InputError(f"column {c!r} has a missing value at row {rows[train][nulls[0]]}; "
                                     "pass --impute mean|median (text columns get their own 'missing' "
                                     "category) or clean the data")
                _refuse_numbers_in_text(c, v, rows[train])
                categories[c].update(MISSING if x is None else str(x) for x in v)
                _check_category_count(c, categories[c], max_categories)
            else:
                if categories[c] is not None:
                    raise InputError(f"column {c!r} mixes numbers and text")
                nan = np.isnan(v)
                if nan.any() and impute is None:
                    raise InputError(f"column {c!r} has a missing value at row {rows[train][np.flatnonzero(nan)[0]]}"
                                     "; pass --impute mean|median or clean the data")
                ok = v[~nan]
                count[c] += ok.size
                total[c] += float(ok.sum())
                squares[c] += float((ok * ok).sum())
                if impute == "median":
                    _reservoir(sample[c], ok, rng)
        if progress is not None:
            progress(len(chunk[target]))
    return {"count": count, "total": total, "squares": squares, "sample": sample, "categories": categories,
            "labels": labels, "text_target": text_target, "integral_target": numeric_target_integral,
            "n_rows": n_rows, "held": held}


def _merge(parts, features, max_categories, seed):
    """One rank's statistics from every rank's (in rank order, so every rank gets the same numbers)."""
    merged = {"count": {}, "total": {}, "squares": {}, "sample": {}, "categories": {},
              "labels": set().union(*(p["labels"] for p in parts)),
              "text_target": any(p["text_target"] for p in parts),
              "integral_target": all(p["integral_target"] for p in parts),
              "n_rows": sum(p["n_rows"] for p in parts), "held": sum((p["held"] for p in parts), [])}
    rng = np.random.default_rng(seed)
    for c in features:
        for key in ("count", "total", "squares"):
            merged[key][c] = sum(p[key][c] for p in parts)
        text = [p["categories"][c] for p in parts if p["categories"][c] is not None]
        if text and merged["count"][c]:
            raise InputError(f"column {c!r} mixes numbers and text")
        merged["categories"][c] = set().union(*text) if text else None
        if text:
            _check_category_count(c, merged["categories"][c], max_categories)
        # median sample: each rank's reservoir contributes in proportion to the values it saw
        merged["sample"][c] = []
        for p in parts:
            share = round(MEDIAN_SAMPLE * p["count"][c] / max(merged["count"][c], 1))
            values = np.asarray(p["sample"][c])
            if values.size > share:
                values = rng.choice(values, share, replace=False)
            merged["sample"][c].extend(values.tolist())
    return merged



def _check_category_count(column, categories, max_categories):
    if len(categories) > max_categories:
        raise InputError(f"column {column!r} has more than {max_categories} distinct values; it looks "
                         "like an identifier: drop it, or raise --max-categories")

def _refuse_numbers_in_text(column, values, rows):
    """A text column whose cells are mostly numbers has a bad cell, not categories."""
    numeric = np.array([_parses_as_number(x) for x in values], dtype=bool)
    present = np.array([x is not None for x in values], dtype=bool)
    if numeric.any() and (present & ~numeric).any() and numeric.sum() >= (present & ~numeric).sum():
        i = np.flatnonzero(present & ~numeric)[0]
        raise InputError(f"column {column!r} holds numbers but row {rows[i]} has the non-numeric value "
                         f"{values[i]!r}; fix or remove that cell")


def _parses_as_number(x):
    if x is None:
        return False
    try:
        float(x)
        return True
    except ValueError:
        return False


def _reservoir(sample, values, rng):
    """Keep a uniform sample of at most MEDIAN_SAMPLE values (approximately, chunk by chunk)."""
    room = MEDIAN_SAMPLE - len(sample)
    if room > 0:
        sample.extend(values[:room].tolist())
        values = values[room:]
    if values.size:
        keep = rng.random(values.size) < MEDIAN_SAMPLE / (MEDIAN_SAMPLE + values.size)
        for v in values[keep]:
            sample[int(rng.integers(0, MEDIAN_SAMPLE))] = float(v)
