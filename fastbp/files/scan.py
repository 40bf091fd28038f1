"""The first pass over a file: what every column is and its statistics, merged exactly over chunks and ranks.

Each column gets a `ColumnScan`: counts and the mean and squared deviations of its numbers
(updated per chunk and merged with the parallel formulas of Chan et al., so a column
1e9 + N(0, 1) keeps its true spread under any chunking and across MPI ranks), a uniform
reservoir sample for the median (Vitter's algorithm R: the i-th number replaces a random
slot with probability k/i), the distinct text values while they are few, and the first
cell that is not a number. Whether a CSV column is numeric is decided from the whole
file, not from its first block; `kind` and `categories` give the verdict for the whole file.
"""
import re

import numpy as np

from ..core.errors import InputError, warn
from .columns import NUMBER, NUMBER_PATTERN, TEXT, concat, is_arrow, take, to_numbers, to_text, where

MISSING = "<missing>"
MEDIAN_SAMPLE = 10_000  # numbers kept per column for --impute median and quantile encodings (exact below that)
MAX_LABELS = 10_000
NUMBER_GROUP = 256  # numeric columns scanned together (bounds the block: rows x 256 float64)
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")  # a number as a CSV with --decimal ',' writes it
STRAY_TEXT = 99  # a column of numbers with fewer than 1 text cell in 100 has bad cells; more make it categorical


def holdout_keys(seed, rows):
    """A uniform number in [0, 1) per row number: a stateless hash, the same in every pass and on every rank."""
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the point of the hash
        x = (rows.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def holdout_mask(seed, rows, fraction):
    """Rows whose key falls below `fraction` are validation rows."""
    if fraction <= 0:
        return np.zeros(len(rows), dtype=bool)
    return holdout_keys(seed, rows) < fraction


class Holdout:
    """The validation rows of a file: a `fraction` of its rows chosen by their keys (holdout_keys). When more
    are held than the sample keeps, the sample is the rows with the smallest keys: a uniform sample of the
    whole file whatever its row order, the same under any chunking and rank count."""

    def __init__(self, seed, fraction):
        self.seed, self.fraction = seed, fraction

    def mask(self, rows):
        return holdout_mask(self.seed, rows, self.fraction)

    def keys(self, rows):
        return holdout_keys(self.seed, rows)


class ColumnScan:
    """What the first pass learns about one column (picklable, so MPI ranks can gather it)."""

    def __init__(self, name, declared, max_categories, keep_sample):
        self.name, self.declared, self.max_categories = name, declared, max_categories
        self.count, self.mean, self.m2 = 0, 0.0, 0.0  # the numbers of all-numeric chunks
        self.seen_text = 0  # cells of text chunks that are not numbers ...
        self.seen_numeric_text = 0  # ... and those that are
        self.first_text = None  # (row, value) of the first cell that is not a number
        self.distinct = set()  # text values seen; None once there are more than max_categories
        self.missing = 0
        self.sample = np.empty(0) if keep_sample else None
        self.sampled = 0  # numbers offered to the reservoir

    # ---------------------------------------------------------------- one chunk
    def update(self, values, rows, rng):
        """Add one chunk's training cells; rows: their row numbers in the file. Returns the cells as float64
        when the file declares the column numeric (None otherwise)."""
        if self.declared == NUMBER:
            numbers = to_numbers(self.name, values, rows[0] if len(rows) else 0)
            self._numbers(numbers, rows, rng)
            return numbers
        import pyarrow as pa
        import pyarrow.compute as pc
        text = to_text(self.name, values)
        self.missing += text.null_count
        self._remember(text)
        if self.declared == TEXT:
            return
        trimmed = pc.utf8_trim_whitespace(text)
        try:
            numbers = pc.cast(trimmed, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # a chunk with text: count both kinds, keep the first text cell
            looks_numeric = pc.fill_null(pc.match_substring_regex(trimmed, NUMBER_PATTERN, ignore_case=True), True)
            looks_numeric = looks_numeric.to_numpy(zero_copy_only=False)
            present = ~text.is_null().to_numpy(zero_copy_only=False)
            is_text = present & ~looks_numeric
            self.seen_numeric_text += int((present & looks_numeric).sum())
            self.seen_text += int(is_text.sum())
            i = int(np.flatnonzero(is_text)[0])
            if self.first_text is None or rows[i] < self.first_text[0]:
                self.first_text = (int(rows[i]), text[i].as_py())
            return
        self._numbers(numbers, rows, rng, missing_counted=True)

    def _numbers(self, v, rows, rng, missing_counted=False):
        nan = np.isnan(v)
        if not missing_counted:
            self.missing += int(nan.sum())
        ok = v[~nan] if nan.any() else v
        bad = np.flatnonzero(np.isinf(v))
        if bad.size:
            raise InputError(f"column {self.name!r} has the value {v[bad[0]]} at {where(0, rows[bad[0]])}; "
                             "replace infinite values (or drop those rows) first")
        if ok.size:
            with np.errstate(over="ignore"):
                mean = float(ok.mean())
                m2 = float(((ok - mean) ** 2).sum())
            if not np.isfinite(m2):
                r = int(np.argmax(np.abs(v) * ~nan)) if nan.any() else int(np.argmax(np.abs(v)))
                self._too_wide(f"values such as {v[r]:g} (at {where(0, rows[r])})")
            self.merge_moments(ok.size, mean, m2)
            if self.sample is not None:
                self.offer(ok, rng)

    def merge_moments(self, n, mean, m2):
        total = self.count + n
        with np.errstate(over="ignore"):
            delta = mean - self.mean
            self.mean += delta * n / total
            self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        if not np.isfinite(self.m2):
            self._too_wide("its values")

    def _too_wide(self, which):
        raise InputError(f"column {self.name!r} cannot be standardized: its variance overflows float64 ({which} "
                         "lie so far from the mean that their squares pass 1.8e308); rescale the column (divide "
                         "it by a power of ten) or drop those rows")

    def _remember(self, text):
        if self.distinct is None:
            return
        import pyarrow.compute as pc
        self.distinct.update(v for v in pc.unique(text.drop_null()).to_pylist())
        if len(self.distinct) > self.max_categories:
            self.distinct = None

    def offer(self, values, rng):
        """Offer numbers to the median's reservoir sample."""
        k = MEDIAN_SAMPLE
        room = k - self.sample.size
        if room > 0:
            self.sample = np.concatenate([self.sample, values[:room]])
            self.sampled += min(room, values.size)
            values = values[room:]
        if values.size:
            # the i-th number offered (1-based) takes slot j, uniform in [0, i), when j < k
            i = self.sampled + 1 + np.arange(values.size)
            slot = np.floor(rng.random(values.size) * i).astype(np.int64)
            hit = np.flatnonzero(slot < k)
            # later numbers win a slot they share with earlier ones, as in the sequential algorithm
            last = hit[::-1][np.unique(slot[hit][::-1], return_index=True)[1]]
            self.sample[slot[last]] = values[last]
            self.sampled += values.size

    # ---------------------------------------------------------------- ranks
    def merge(self, other, rng):
        """This column's statistics and `other`'s (another rank's part of the file) as one."""
        if other.count:
            self.merge_moments(other.count, other.mean, other.m2)
        self.seen_text += other.seen_text
        self.seen_numeric_text += other.seen_numeric_text
        if other.first_text is not None and (self.first_text is None or other.first_text[0] < self.first_text[0]):
            self.first_text = other.first_text
        if self.distinct is not None and other.distinct is not None:
            self.distinct |= other.distinct
            if len(self.distinct) > self.max_categories:
                self.distinct = None
        else:
            self.distinct = None
        self.missing += other.missing
        if self.sample is not None:
            # each part of the file contributes to the sample in proportion to the numbers it saw
            total = self.sampled + other.sampled
            parts = []
            for sample, seen in ((self.sample, self.sampled), (other.sample, other.sampled)):
                share = min(sample.size, round(MEDIAN_SAMPLE * seen / max(total, 1)))
                parts.append(rng.choice(sample, share, replace=False) if share < sample.size else sample)
            self.sample, self.sampled = np.concatenate(parts), total

    # ---------------------------------------------------------------- the verdict
    def kind(self):
        """NUMBER or TEXT for the whole file; an error when the cells disagree in a way no type fits."""
        if self.declared is not None:
            return self.declared
        if not self.seen_text:
            return NUMBER
        if self.count + self.seen_numeric_text >= STRAY_TEXT * self.seen_text:
            raise InputError(f"column {self.name!r} holds numbers, but {self._first_text()}; fix or remove that cell")
        if self.first_text is not None and _DECIMAL_COMMA.fullmatch(str(self.first_text[1]).strip()):
            warn(f"column {self.name!r} is read as text, but its values look like numbers written with a decimal comma "
                 f"({self.first_text[1]!r}): for a CSV pass --decimal ',' (decimal=',' in Trainer.fit_file); in a "
                 "DataFrame convert the column to numbers first")
        return TEXT

    def _first_text(self):
        row, value = self.first_text
        return f"{where(0, row)} has the text {value!r}"

    def categories(self):
        if self.distinct is None:
            mixed = f" (numbers, and text: {self._first_text()})" if self.count + self.seen_numeric_text else ""
            raise InputError(f"column {self.name!r} has more than {self.max_categories} distinct values{mixed}; as "
                             "text it looks like an identifier: leave it out (--exclude), clean it, or raise "
                             "max_categories (--max-categories; above onehot_max categories a column is embedded, "
                             "a learned table instead of an input per category)")
        return sorted(self.distinct) + ([MISSING] if self.missing else [])

    def std(self):
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0

    def median(self):
        return float(np.median(self.sample)) if self.sample is not None and self.sample.size else self.mean

    def quantiles(self, levels):
        """(distinct values, their levels): the sample's quantiles at `levels` (increasing, in [0, 1]); a value
        that several levels share gets their mean level. At least two values (a constant column: v -+ 1)."""
        sample = self.sample if self.sample is not None and self.sample.size else np.array([self.mean])
        values, inverse = np.unique(np.quantile(sample, levels), return_inverse=True)
        if values.size < 2:
            return [float(values[0]) - 1, float(values[0]) + 1], [0.0, 1.0]
        at = np.bincount(inverse, levels) / np.bincount(inverse)
        return values.tolist(), at.tolist()


class TargetScan(ColumnScan):
    """A column scan that also collects the distinct labels and their type."""

    def __init__(self, name, declared):
        super().__init__(name, declared, MAX_LABELS, keep_sample=False)
        # rows per distinct value as read: numbers for numeric targets, else the cells' text (CSV cells before
        # the verdict); None once there are more than MAX_LABELS (not classes)
        self.counts = {}
        self.label_type = None
        self.integral = True
        # consecutive training rows (file order within each rank's chunks) whose targets differ / rise / fall
        self.changes, self.rises, self.falls = 0, 0, 0
        self._last = None

    def update(self, values, rows, rng):
        self._follow_order(values)
        missing = self.missing
        numbers = super().update(values, rows, rng)
        if self.missing > missing:
            raise InputError(f"target column {self.name!r} has a missing value at "
                             f"{where(0, _first_missing(values, rows))}; drop those rows first")
        if numbers is not None:
            self.integral &= bool(np.all(numbers == np.round(numbers)))
            self.label_type = self.label_type or _number_type(values)
            if self.counts is not None:
                distinct, counts = np.unique(numbers, return_counts=True)
                self._count(distinct.tolist(), counts.tolist())

    def _follow_order(self, values):
        """Counts how often the target changes between consecutive rows (and, for the file's own numbers,
        rises or falls): few changes mean a sorted file. Compared by pyarrow: no Python objects per cell."""
        if not len(values):
            return
        import pyarrow as pa
        import pyarrow.compute as pc
        values = pa.array(values) if not is_arrow(values) else values
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        both = values if self._last is None or self._last.type != values.type else pa.concat_arrays(
            [self._last, values])  # the pair across the chunk boundary too
        self._last = values.slice(len(values) - 1)
        before, after = both.slice(0, len(both) - 1), both.slice(1)
        self.changes += pc.sum(pc.not_equal(before, after)).as_py() or 0
        if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):  # (a CSV's cells are text here)
            self.rises += pc.sum(pc.less(before, after)).as_py() or 0
            self.falls += pc.sum(pc.greater(before, after)).as_py() or 0

    def looks_sorted(self, n_rows, classes):
        """A sentence saying the file looks sorted by this target, or None."""
        if n_rows < 100:
            return None
        if classes and self.counts:
            share = self.class_counts(classes) / max(n_rows, 1)
            expected = (n_rows - 1) * (1 - float((share ** 2).sum()))
            if self.changes < expected / 4:
                return (f"the target {self.name!r} changes value only {self.changes:,} times in {n_rows:,} rows "
                        f"(about {expected:,.0f} if they were in random order): the file looks sorted")
        moves = self.rises + self.falls
        if not classes and moves >= 100 and min(self.rises, self.falls) < moves / 4:
            up = self.rises >= self.falls
            return (f"the target {self.name!r} {'rises' if up else 'falls'} between {max(self.rises, self.falls):,} "
                    f"of {moves:,} consecutive rows that differ: the file looks sorted by it")
        return None

    def _remember(self, text):
        """ColumnScan's distinct texts, counted (one value_counts gives both)."""
        if self.distinct is None:
            return
        import pyarrow.compute as pc
        counted = pc.value_counts(text.drop_null())
        distinct = counted.field("values").to_pylist()
        self.distinct.update(distinct)
        if len(self.distinct) > self.max_categories:
            self.distinct = None
        self._count(distinct, counted.field("counts").to_pylist())

    def _count(self, values, counts):
        if self.counts is None:
            return
        for value, n in zip(values, counts):
            self.counts[value] = self.counts.get(value, 0) + int(n)
        if len(self.counts) > MAX_LABELS:  # not classes: stop counting
            self.counts = None

    def merge(self, other, rng):
        super().merge(other, rng)
        self.changes += other.changes
        self.rises += other.rises
        self.falls += other.falls
        self.integral &= other.integral
        self.label_type = self.label_type or other.label_type
        if self.counts is not None and other.counts is not None:
            self._count(list(other.counts), list(other.counts.values()))
        else:
            self.counts = None

    def class_counts(self, classes):
        """Training rows per class, in the order of `classes` (the labels finish() gave)."""
        index = {label: i for i, label in enumerate(classes)}
        numeric = bool(classes) and not isinstance(classes[0], str)
        counts = np.zeros(len(classes), dtype=np.int64)
        for value, n in (self.counts or {}).items():
            counts[index[float(value) if numeric and isinstance(value, str) else value]] += n
        return counts

    def finish(self):
        """(kind, classes sorted, label type 'int'/'float'/'bool'/'str', all values whole numbers)."""
        kind = self.kind() if self.declared is not None or not self.seen_text else TEXT
        if self.declared == NUMBER:
            if self.counts is None:
                return kind, [], self.label_type, self.integral
            as_type = {"int": int, "bool": bool}.get(self.label_type, float)
            return kind, [as_type(v) for v in sorted(self.counts)], self.label_type, self.integral
        if self.distinct is None:
            return kind, [], "str", False  # too many distinct values to be classes
        if kind == TEXT:
            return kind, sorted(self.distinct), "str", False
        numbers = sorted({float(v) for v in self.distinct})
        integral = all(v.is_integer() for v in numbers)
        return NUMBER, [int(v) for v in numbers] if integral else numbers, "int" if integral else "float", integral


def _number_type(values):
    kind = values.dtype.kind if not is_arrow(values) else _arrow_number_kind(values.type)
    return {"b": "bool", "i": "int", "u": "int"}.get(kind, "float")


def _arrow_number_kind(dtype):
    import pyarrow as pa
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return "b" if pa.types.is_boolean(dtype) else "i" if pa.types.is_integer(dtype) else "f"


class FirstPass:
    """Every column's scan, the training-row count and a sample of validation rows: one rank's part or the file's."""

    def __init__(self, features, target, declared, max_categories, keep_sample):
        self.settings = (features, target, declared, max_categories, keep_sample)
        self.columns = {c: ColumnScan(c, declared[c], max_categories, keep_sample) for c in features}
        self.target = TargetScan(target, declared[target])
        self.n_rows = 0
        self.held = []  # pieces (row numbers, {column: values}) of validation rows, in the file's own types
        self.held_rows = 0

    @classmethod
    def combine(cls, parts, rng):
        """One FirstPass from the parts of every rank, in rank order (so every rank gets the same numbers)."""
        whole = cls(*parts[0].settings)
        for part in parts:
            whole.merge(part, rng)
        return whole

    def merge(self, other, rng):
        for c, scan in self.columns.items():
            scan.merge(other.columns[c], rng)
        self.target.merge(other.target, rng)
        self.n_rows += other.n_rows
        self.held += other.held
        self.held_rows += other.held_rows

    def hold(self, rows, chunk, holdout, max_rows):
        """Add validation rows; beyond 2 * max_rows, keep the max_rows of smallest key (Holdout)."""
        self.held.append((rows, chunk))
        self.held_rows += len(rows)
        if self.held_rows > 2 * max_rows:
            self._keep_first_keys(holdout, max_rows)

    def _keep_first_keys(self, holdout, max_rows):
        rows = np.concatenate([r for r, _ in self.held])
        keep = np.sort(np.argpartition(holdout.keys(rows), max_rows - 1)[:max_rows]) if len(rows) > max_rows \
            else np.argsort(rows, kind="stable")
        names = list(self.held[0][1])
        chunk = {c: take(concat([piece[c] for _, piece in self.held]), keep) for c in names}
        self.held = [(rows[keep], chunk)]
        self.held_rows = len(keep)

    def held_columns(self, holdout, max_rows):
        """The validation rows as {column: values}, at most max_rows of them chosen by key (None without any)."""
        if not self.held_rows:
            return None
        self._keep_first_keys(holdout, max_rows)
        return self.held[0][1]


def first_pass(source, target, features, impute, max_categories, holdout, val_max_rows, seed, progress, chunks,
               quantiles=False):
    """One pass over the given chunks (all when None): a FirstPass. holdout: the validation rows (Holdout).
    quantiles: keep each numeric column's reservoir sample (for quantile encodings) even without median impute."""
    columns = features + [target]
    declared = source.kinds(columns)
    part = FirstPass(features, target, declared, max_categories, keep_sample=impute == "median" or quantiles)
    # validation rows are checked like training rows (bad cells reported at their row), their numbers not kept
    checks = {c: ColumnScan(c, declared[c], max_categories, keep_sample=False) for c in features}
    # columns the file declares numeric are scanned together, a block of columns at a time
    numbers = [c for c in features if declared[c] == NUMBER]
    number_groups = [numbers[i:i + NUMBER_GROUP] for i in range(0, len(numbers), NUMBER_GROUP)]
    others = [c for c in features if declared[c] != NUMBER]
    rng = np.random.default_rng(seed)
    for start, chunk in source.chunks(columns, None, chunks):
        n = len(chunk[target])
        rows = np.arange(start, start + n)
        val = holdout.mask(rows)
        if val.any():
            held = np.flatnonzero(val)
            part.hold(rows[held], {c: take(v, held) for c, v in chunk.items()}, holdout, val_max_rows)
            held_chunk = {c: take(chunk[c], held) for c in features}
            for group in number_groups:
                _scan_numbers([checks[c] for c in group], held_chunk, rows[held], impute, rng)
            for c in others:
                _scan_cells(checks[c], held_chunk[c], rows[held], impute, rng)
            train = np.flatnonzero(~val)
            chunk = {c: take(v, train) for c, v in chunk.items()}
            rows = rows[train]
        part.n_rows += len(rows)
        part.target.update(chunk[target], rows, rng)
        for group in number_groups:
            _scan_numbers([part.columns[c] for c in group], chunk, rows, impute, rng)
        for c in others:
            _scan_cells(part.columns[c], chunk[c], rows, impute, rng)
        if progress is not None:
            progress(n)
    return part


def number_block(columns, chunk, start=0):
    """The columns as one float64 matrix (rows x columns), NaN where missing."""
    block = np.empty((len(chunk[columns[0]]), len(columns)), order="F")  # columns written contiguously
    for j, c in enumerate(columns):
        block[:, j] = to_numbers(c, chunk[c], start)
    return block


def _scan_numbers(scans, chunk, rows, impute, rng):
    """_scan_cells for numeric columns, vectorized over a group of them."""
    if not len(rows):
        return
    block = number_block([s.name for s in scans], chunk)
    nan = np.isnan(block)
    inf = np.isinf(block)
    if inf.any():
        r, j = np.argwhere(inf)[0]
        raise InputError(f"column {scans[j].name!r} has the value {block[r, j]} at {where(0, rows[r])}; "
                         "replace infinite values (or drop those rows) first")
    if impute is None and nan.any():
        r, j = np.argwhere(nan)[0]
        raise InputError(f"column {scans[j].name!r} has a missing value at {where(0, rows[r])}; impute "
                         "mean|median (--impute, or the Trainer's impute=; text columns get their own 'missing' "
                         "category) or clean the data")
    counts = (~nan).sum(axis=0)
    # sums along axis 0 are not pairwise: centre first (on the running mean, else the first row), so a
    # column 1e9 + N(0, 1) keeps its digits
    shift = np.array([s.mean if s.count else 0.0 for s in scans])
    fresh = np.array([s.count == 0 for s in scans])
    shift[fresh] = np.where(nan[0], 0.0, block[0])[fresh]
    centred = np.where(nan, 0.0, block - shift)
    offset = centred.sum(axis=0) / np.maximum(counts, 1)
    means = shift + offset
    with np.errstate(over="ignore", invalid="ignore"):
        m2 = (np.where(nan, 0.0, centred - offset) ** 2).sum(axis=0)
    for j in np.flatnonzero(~np.isfinite(m2)):  # the value farthest out named, as ColumnScan does
        r = int(np.argmax(np.where(nan[:, j], 0.0, np.abs(block[:, j]))))
        scans[j]._too_wide(f"values such as {block[r, j]:g} (at {where(0, rows[r])})")
    for j, scan in enumerate(scans):
        scan.missing += int(len(rows) - counts[j])
        if counts[j]:
            scan.merge_moments(int(counts[j]), float(means[j]), float(m2[j]))
            if scan.sample is not None:
                scan.offer(block[~nan[:, j], j], rng)


def _scan_cells(scan, values, rows, impute, rng):
    scan.update(values, rows, rng)
    if scan.missing and impute is None:
        raise InputError(f"column {scan.name!r} has a missing value at {where(0, _first_missing(values, rows))}; "
                         "impute mean|median (--impute, or the Trainer's impute=; text columns get their own "
                         "'missing' category) or clean the data")


def _first_missing(values, rows):
    if is_arrow(values):
        import pyarrow.compute as pc
        return int(rows[np.flatnonzero(pc.is_null(values, nan_is_null=True).to_numpy(zero_copy_only=False))[0]])
    return int(rows[np.flatnonzero(np.isnan(values.astype(np.float64)))[0]])
