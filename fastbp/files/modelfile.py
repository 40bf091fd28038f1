"""Model files are data, never code: a zip of .npy arrays (no pickle) plus JSON metadata.

Layout of a .fbp file:
  fastbp.json        format name and version, the model's configuration, and for
                     every array its dtype, shape and SHA-256
  arrays/NAME.npy    each array, read back with allow_pickle=False

Writes are atomic (temporary file in the same folder, fsync, os.replace), so a
crash or a full disk never leaves a partial file under the final name.
"""
import contextlib
import glob
import hashlib
import io
import json
import os
import re
import stat
import struct
import tempfile
import time
import zipfile
import zlib

import numpy as np

from ..core.errors import InputError

STALE_TEMP_SECONDS = 3600  # a temporary file this old was abandoned by a killed writer
FORMAT_NAME = "fastbp-model"
FORMAT_VERSION = 2  # 2: optimizer state as named vectors (opt_momentum_buffer, ...); 1 still loads
_META = "fastbp.json"


class ModelFileError(InputError):
    """A model file that is missing, truncated, corrupted, hostile or from a newer fastbp."""


def _digest(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def write_model(path, config, arrays):
    """Atomically write `config` (JSON-serializable dict) and `arrays` (name -> ndarray) to `path`
    (see atomic_write)."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config,
        "arrays": {name: {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _digest(a)}
                   for name, a in arrays.items()},
    }
    text = json.dumps(meta, indent=1)
    if len(text.encode()) > MAX_JSON_BYTES:  # read_model refuses more: never write a file it cannot load
        raise InputError(f"the model's settings and metadata take {len(text.encode()):,} bytes as JSON, more than "
                         f"the {MAX_JSON_BYTES:,} a model file may hold; keep large data out of `metadata` "
                         "(save it beside the model)")

    def write(fh):
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(_META, text)
            for name, a in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
                zf.writestr(f"arrays/{name}.npy", buf.getvalue())

    atomic_write(path, write)


def check_replaceable(path, what="model file"):
    """`path` is a regular file (or a link to one) or does not exist yet: writing a device, FIFO, socket or
    folder by renaming a new file onto it would replace that with a file (as root, even /dev/null)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"cannot write {what} {os.fspath(path)!r} ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
            else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise InputError(f"cannot write {what} {os.fspath(path)!r}: it is {kind}, and only regular files are "
                         "replaced; give a file name")


def atomic_write(path, write, what="model file"):
    """Call write(binary file) on a file that replaces `path` atomically (see atomic_file)."""
    with atomic_file(path, what) as fh:
        write(fh)


@contextlib.contextmanager
def atomic_file(path, what="model file"):
    """A binary file in the target's folder that becomes `path` (fsync, then rename) when the block ends
    without an exception, and is removed otherwise: readers see the old file or the whole new one, never a part.

    The file gets the permissions an ordinary write would give it: an existing file's mode, else
    0666 minus the umask. A symlink is written through: its target is replaced, atomically, in the
    target's folder, and the link stays.
    """
    check_replaceable(path, what)
    path = os.path.realpath(os.fspath(path))
    folder = os.path.dirname(os.path.abspath(path))
    try:
        _remove_abandoned_temporaries(folder, os.path.basename(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as exc:  # name the user's path, not the temporary one
        raise OSError(exc.errno, f"could not write {what} {path!r} ({exc.strerror})") from exc
    try:
        os.chmod(tmp, _file_mode(path))
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"could not write {what} {path!r} ({exc.strerror}); "
                                     "any previous file there is unchanged") from exc
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _file_mode(path):
    """The mode of the file at `path`, or what a new file gets (0666 minus the umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(mask)
        return 0o666 & ~mask


def _remove_abandoned_temporaries(folder, name):
    """Delete old temporary files of this model name left by writers that were killed mid-write."""
    for leftover in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
        try:
            if time.time() - os.path.getmtime(leftover) > STALE_TEMP_SECONDS:
                os.unlink(leftover)
        except OSError:
            pass  # another process got there first, or it is not ours to remove


# Limits for files that may come from anyone: nothing is decompressed or allocated beyond them.
MAX_JSON_BYTES = 64 << 20          # the metadata (history, column statistics) of any real model is far smaller
MAX_NPY_HEADER_BYTES = 4096        # numpy writes 64-128 bytes
MAX_EXPANSION = 20                 # declared uncompressed bytes per byte of file, beyond...
EXPANSION_FLOOR = 64 << 20         # ...this much (fastbp writes members uncompressed: ratio ~1)
ARRAY_DTYPES = {"<f4", "<f8", "<i8"}
_ARRAY_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError, TypeError, ValueError,
                UnicodeDecodeError, OSError, NotImplementedError, RuntimeError, zlib.error, struct.error,
                AttributeError, IndexError, OverflowError)


def read_model(path):
    """Return (config, arrays) from a file written by write_model, treating it as untrusted input.

    Before anything is decompressed: the member names must be exactly the metadata and the arrays it
    lists (no paths, no extras), each stored or deflated, unencrypted, with declared sizes that match
    what the metadata says the arrays need and that the file's own size can justify. Members are read
    as streams with hard caps, each array's .npy header is compared with the metadata before its data
    is read, nothing may trail, and every array's SHA-256 must match. Every failure is ModelFileError.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a directory, not a model file (.fbp)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    _refuse_data_files(path)
    try:
        return _read(path)
    except ModelFileError:
        raise
    except _READ_ERRORS as exc:
        raise ModelFileError(f"{path!r} is truncated or corrupted and cannot be loaded "
                             f"({type(exc).__name__}: {exc})") from None


def _refuse_data_files(path):
    """A data file given where a model belongs: say what it is (zip would call it corrupted)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    kind = ("a Parquet file" if head[:4] == b"PAR1" else "a NumPy array file (.npy)" if head[:6] == b"\x93NUMPY"
            else "a gzip file" if head[:2] == b"\x1f\x8b" else None)
    if kind is None and head and not head.startswith(b"PK"):
        try:
            head.decode("utf-8")
            kind = "a text file (CSV?)"
        except UnicodeDecodeError:
            pass
    if kind:
        raise ModelFileError(f"{path!r} is {kind}, not a fastbp model file (.fbp, written by fastbp train or "
                             "Trainer.save); check the order of the arguments")


def _bad(path, what):
    return ModelFileError(f"{path!r} is not a valid fastbp model file: {what}")


def _read(path):
    budget = max(EXPANSION_FLOOR, MAX_EXPANSION * os.path.getsize(path))
    with zipfile.ZipFile(path, "r") as zf:
        members = {}
        for info in zf.infolist():
            if info.filename in members:
                raise _bad(path, f"member {info.filename!r} appears twice")
            if info.flag_bits & 0x1:
                raise _bad(path, f"member {info.filename!r} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _bad(path, f"member {info.filename!r} uses compression method {info.compress_type}")
            members[info.filename] = info
        if _META not in members:
            raise ModelFileError(f"{path!r} is a zip file but not a fastbp model (no {_META})")
        if sum(info.file_size for info in members.values()) > budget:
            raise _bad(path, "its members declare far more data than the file can hold (a zip bomb?)")
        if members[_META].file_size > MAX_JSON_BYTES:
            raise _bad(path, f"{_META} declares {members[_META].file_size} bytes, more than {MAX_JSON_BYTES}")
        meta = json.loads(_read_capped(zf, members[_META], members[_META].file_size).decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ModelFileError(f"{path!r} is not a fastbp model file")
        version = meta.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise _bad(path, f"format_version {version!r}")
        if version > FORMAT_VERSION:
            raise ModelFileError(f"{path!r} uses model format version {version!r}, newer than this fastbp "
                                 f"reads ({FORMAT_VERSION}); upgrade fastbp to load it")
        specs = meta.get("arrays")
        if not isinstance(specs, dict) or not isinstance(meta.get("config"), dict):
            raise _bad(path, "its metadata lacks 'arrays' or 'config'")
        expected = {_META} | {f"arrays/{name}.npy" for name in specs}
        if set(members) != expected:
            extra, missing = sorted(set(members) - expected), sorted(expected - set(members))
            raise _bad(path, f"members {extra} are not listed in its metadata" if extra else
                       f"members {missing} are missing")
        arrays = {}
        for name, spec in specs.items():
            dtype, shape = _array_spec(path, name, spec)
            arrays[name] = _read_array(path, zf, members[f"arrays/{name}.npy"], name, dtype, shape, spec["sha256"])
        return meta["config"], arrays


def _array_spec(path, name, spec):
    """(dtype, shape) of an array as the metadata declares it, checked."""
    if not _ARRAY_NAME.fullmatch(name) or not isinstance(spec, dict):
        raise _bad(path, f"array name {name!r}")
    dtype, shape, digest = spec.get("dtype"), spec.get("shape"), spec.get("sha256")
    if dtype not in ARRAY_DTYPES:
        raise _bad(path, f"array {name!r} has dtype {dtype!r}; model arrays are float32, float64 or int64")
    if not isinstance(shape, list) or len(shape) > 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2 ** 40 for n in shape):
        raise _bad(path, f"array {name!r} has shape {shape!r}")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise _bad(path, f"array {name!r} has no valid checksum")
    return np.dtype(dtype), tuple(shape)


def _read_array(path, zf, info, name, dtype, shape, digest):
    """One array, its header checked against the metadata before any data is read, no trailing bytes."""
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    nbytes = count * dtype.itemsize
    if not nbytes <= info.file_size <= nbytes + MAX_NPY_HEADER_BYTES:
        raise _bad(path, f"member for array {name!r} declares {info.file_size} bytes, but {shape} of {dtype} "
                         f"needs {nbytes} plus a header")
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(fh, max_header_size=MAX_NPY_HEADER_BYTES)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(fh, max_header_size=MAX_NPY_HEADER_BYTES)
        else:
            raise _bad(path, f"array {name!r} has .npy version {version}")
        got_shape, fortran, got_dtype = header
        if got_shape != shape or fortran or got_dtype != dtype:
            raise _bad(path, f"array {name!r} holds {got_shape} {got_dtype}, but its metadata says {shape} {dtype}")
        arr = np.empty(shape, dtype=dtype)
        view = memoryview(arr.reshape(-1).view(np.uint8))
        filled = 0
        while filled < nbytes:
            got = fh.readinto(view[filled:])
            if not got:
                raise _bad(path, f"array {name!r} is truncated")
            filled += got
        if fh.read(1):
            raise _bad(path, f"array {name!r} has trailing bytes")
    if _digest(arr) != digest:
        raise ModelFileError(f"{path!r} is corrupted: array {name!r} does not match its checksum")
    return arr


def _read_capped(zf, info, cap):
    """A member's bytes, never more than `cap` (a member may inflate past what it declares)."""
    with zf.open(info) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise _bad(zf.filename, f"member {info.filename!r} is larger than it declares")
    return data
