"""Model files are data, never code: a zip of .npy arrays (no pickle) plus JSON metadata.

Layout of a .fbp file:
  fastbp.json        format name and version, the model's configuration, and for
                     every array its dtype, shape and SHA-256
  arrays/NAME.npy    each array, read back with allow_pickle=False

Writes are atomic (temporary file in the same folder, fsync, os.replace), so a
crash or a full disk never leaves a partial file under the final name.
"""
import glob
import hashlib
import io
import json
import os
import tempfile
import time
import zipfile

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
    """Atomically write `config` (JSON-serializable dict) and `arrays` (name -> ndarray) to `path`."""
    path = os.fspath(path)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config,
        "arrays": {name: {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _digest(a)}
                   for name, a in arrays.items()},
    }
    folder = os.path.dirname(os.path.abspath(path))
    _remove_abandoned_temporaries(folder, os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr(_META, json.dumps(meta, indent=1))
                for name, a in arrays.items():
                    buf = io.BytesIO()
                    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
                    zf.writestr(f"arrays/{name}.npy", buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"could not write model file {path!r} ({exc.strerror}); "
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


def _remove_abandoned_temporaries(folder, name):
    """Delete old temporary files of this model name left by writers that were killed mid-write."""
    for leftover in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
        try:
            if time.time() - os.path.getmtime(leftover) > STALE_TEMP_SECONDS:
                os.unlink(leftover)
        except OSError:
            pass  # another process got there first, or it is not ours to remove


def read_model(path):
    """Return (config, arrays) from a file written by write_model, verifying every checksum."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        with zipfile.ZipFile(path, "r") as zf:
            try:
                meta = json.loads(zf.read(_META).decode("utf-8"))
            except KeyError:
                raise ModelFileError(f"{path!r} is a zip file but not a fastbp model (no {_META})") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
                raise ModelFileError(f"{path!r} is not a fastbp model file")
            version = meta.get("format_version")
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise ModelFileError(f"{path!r} uses model format version {version!r}, newer than this fastbp "
                                     f"reads ({FORMAT_VERSION}); upgrade fastbp to load it")
            arrays = {}
            for name, info in meta["arrays"].items():
                with zf.open(f"arrays/{name}.npy") as fh:
                    arr = np.lib.format.read_array(io.BytesIO(fh.read()), allow_pickle=False)
                if arr.dtype.str != info["dtype"] or list(arr.shape) != info["shape"] or _digest(arr) != info["sha256"]:
                    raise ModelFileError(f"{path!r} is corrupted: array {name!r} does not match its checksum")
                arrays[name] = arr
            return meta["config"], arrays
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError, TypeError, UnicodeDecodeError,
            json.JSONDecodeError, ValueError, OSError) as exc:
        raise ModelFileError(f"{path!r} is truncated or corrupted and cannot be loaded ({exc})") from None
