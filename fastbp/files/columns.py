"""One column of a chunk, as a reader gives it, coerced to the logical type the schema fixed.

A reader gives a column as a pyarrow Array (CSV, Parquet) or a numpy array (.npy/.npz,
or data handed over from Python). The schema says whether the model reads it as a
number or as text; these functions convert any of those inputs to that type and name
the column and the row when a value cannot be converted. Nothing here infers a type
from the values of one chunk: that is the first pass's job (fastbp.files.scan).
"""
import numpy as np

from ..core.errors import InputError

NUMBER, TEXT = "number", "text"
BOOLEAN_SPELLINGS = (("True", "true", "TRUE"), ("False", "false", "FALSE"))  # to_text writes the first
# what pyarrow's string -> float64 cast accepts, so a chunk can be tested cell by cell without a Python loop
NUMBER_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity|nan)$"


def _pa():
    import pyarrow as pa
    import pyarrow.compute as pc
    return pa, pc


def where(start, offset):
    """A row position as messages give it: data rows counted from 0, the header excluded."""
    return f"row {start + int(offset)}"


def arrow_kind(column, dtype):
    """NUMBER or TEXT for a pyarrow type, or an error naming the column for types a model cannot read."""
    pa, _ = _pa()
    if pa.types.is_dictionary(dtype):
        return arrow_kind(column, dtype.value_type)
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype) \
            or pa.types.is_decimal(dtype) or pa.types.is_null(dtype):
        return NUMBER
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_binary(dtype) \
            or pa.types.is_large_binary(dtype):
        return TEXT
    raise InputError(f"column {column!r} has type {dtype}, which fastbp cannot use as a feature: convert it to "
                     "numbers or text first (e.g. a timestamp to seconds), or leave it out (--exclude, or drop it "
                     "from the DataFrame)")


def is_arrow(values):
    return not isinstance(values, np.ndarray)


def take(values, index):
    """The rows `index` (integer positions) of a column, in the column's own representation."""
    if is_arrow(values):
        pa, _ = _pa()
        return values.take(pa.array(np.asarray(index, dtype=np.int64)))
    return values[index]


def concat(pieces):
    """One column from consecutive pieces of the same column (numpy where a row group was spilled, arrow
    otherwise: mixed, the numpy pieces become arrow arrays)."""
    if not any(is_arrow(p) for p in pieces):
        return np.concatenate(pieces)
    pa, _ = _pa()
    arrays = [pa.array(p) if not is_arrow(p) else p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p
              for p in pieces]
    if len({a.type for a in arrays}) > 1:  # float32 spilled beside float64 read: the numbers as float64
        arrays = [a.cast(pa.float64()) for a in arrays]
    return pa.concat_arrays(arrays)


def to_numbers(column, values, start=0):
    """float64 numpy array, NaN where a value is missing; an error names the first cell that is not a number."""
    if not is_arrow(values):
        if values.dtype.kind in "biuf":
            return values.astype(np.float64)
        if values.dtype.kind in "OUS":
            return to_numbers(column, _arrow_text(column, values), start)
        raise InputError(f"column {column!r} has dtype {values.dtype}; fastbp needs numbers or text")
    pa, pc = _pa()
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if _plain_numbers(values):
        return values.to_numpy().astype(np.float64)  # the common case, without pyarrow's cast kernel
    kind = arrow_kind(column, values.type)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if kind == TEXT:
        text = _utf8(column, values)
        trimmed = pc.utf8_trim_whitespace(text)
        try:
            values = pc.cast(trimmed, pa.float64())
        except pa.ArrowInvalid:
            ok = pc.fill_null(pc.match_substring_regex(trimmed, NUMBER_PATTERN, ignore_case=True), True)
            bad = int(np.flatnonzero(~ok.to_numpy(zero_copy_only=False))[0])
            raise InputError(f"column {column!r} holds numbers, but {where(start, bad)} has the value "
                             f"{text[bad].as_py()!r}; fix that cell (or train with the column as text)") from None
    elif pa.types.is_null(values.type):
        return np.full(len(values), np.nan)
    else:
        values = pc.cast(values, pa.float64(), safe=False)  # int64 beyond 2**53 rounds, as numpy's cast does
    return values.to_numpy(zero_copy_only=False)


def _plain_numbers(values):
    pa, _ = _pa()
    return not values.null_count and (pa.types.is_floating(values.type) or pa.types.is_integer(values.type))


def stored_numbers(column, values):
    """A numeric arrow column as numpy in its own dtype when that is exact (float32 stays 4 bytes), else as
    to_numbers gives it (float64, NaN where missing); to_numbers of the result equals to_numbers of the input."""
    return values.to_numpy() if _plain_numbers(values) else to_numbers(column, values)


def to_text(column, values, start=0):
    """A pyarrow string array (null = missing). Numbers become text the way a CSV writes them ("3", "2.5"),
    booleans the way pandas and Python write them ("True", "False")."""
    pa, pc = _pa()
    if not is_arrow(values):
        if values.dtype.kind in "biuf":
            values = pa.array(values)
        else:
            return _arrow_text(column, values)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = arrow_kind(column, values.type)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if kind == TEXT:
        return _utf8(column, values)
    if pa.types.is_boolean(values.type):
        return pc.if_else(values, BOOLEAN_SPELLINGS[0][0], BOOLEAN_SPELLINGS[1][0])
    if pa.types.is_floating(values.type):
        # a float column that holds whole numbers is written like integers: 3.0 -> "3"
        whole = pc.fill_null(pc.equal(values, pc.round(values)), False)
        as_int = pc.cast(pc.if_else(whole, values, 0), pa.int64(), safe=False)
        return pc.if_else(whole, pc.cast(as_int, pa.string()), pc.cast(values, pa.string()))
    return pc.cast(values, pa.string())


def _arrow_text(column, values):
    pa, _ = _pa()
    try:
        return pa.array([None if v is None or (isinstance(v, float) and v != v) else str(v) for v in values],
                        type=pa.string())
    except (TypeError, pa.ArrowInvalid) as exc:
        raise InputError(f"column {column!r} cannot be read as text ({exc})") from None


def _utf8(column, values):
    """Binary columns are decoded as UTF-8, or an error says how to read another encoding."""
    pa, pc = _pa()
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        try:
            return pc.cast(values, pa.string())
        except pa.ArrowInvalid:
            raise InputError(f"column {column!r} holds text that is not UTF-8; re-save the file as UTF-8, or for a "
                             "CSV pass its encoding (e.g. --encoding latin-1)") from None
    if pa.types.is_large_string(values.type):
        return pc.cast(values, pa.string())
    return values


def category_keys(known):
    """(text, index) pairs that find each of the categories `known`: the category itself and, for a boolean
    one, the other usual spellings of that word (pyarrow's: true, True, TRUE), so that a bool column or a
    file that spells booleans otherwise finds the category the model was trained on."""
    keys = [(k, i) for i, k in enumerate(known)]
    taken = set(known)
    for i, k in enumerate(known):
        for words in BOOLEAN_SPELLINGS:
            if k in words:
                keys += [(w, i) for w in words if w not in taken]
                taken.update(words)
    return keys


def codes(column, values, known, start=0):
    """Position of each value in the list `known` of strings (category_keys), -1 where unseen or missing."""
    pa, pc = _pa()
    text = to_text(column, values, start)
    keys = category_keys(known)
    index = pc.index_in(text, value_set=pa.array([k for k, _ in keys], type=pa.string()))
    if len(keys) > len(known):  # other spellings of a boolean: their key's position to its category's
        index = pc.take(pa.array([i for _, i in keys], type=pa.int64()), index)
    return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64), text
