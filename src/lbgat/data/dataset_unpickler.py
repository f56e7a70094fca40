"""Reading dataset pickles (the CIFAR "python version" format) without letting them run code.

A pickle can name any importable callable and have it called while loading. CIFAR batches need
only numpy array reconstruction on top of the builtin containers, so every other global is
refused: a dataset file is data and must never be able to execute anything.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import DataError

try:
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy < 1.26 has no numpy._core
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

# Globals that a CIFAR-style pickle may reference, resolved here rather than imported by name, so
# that old files naming numpy.core do not trigger numpy 2's deprecation shim.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    # Protocol 5 writes arrays as _frombuffer(bytes, dtype, shape, order); it cannot make objects.
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") under protocols 0-2.
    ("_codecs", "encode"): codecs.encode,
}


class _DatasetUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], *, display_name: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._display_name = display_name

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self._display_name}: "
                "dataset files may only contain arrays, lists, dicts, strings and numbers"
            ) from None


def safe_unpickle(path_or_file: str | os.PathLike[str] | IO[bytes], *, encoding: str = "latin1") -> Any:
    """Load a pickle that may hold only numpy arrays, lists, dicts, strings, bytes and numbers.

    ``encoding`` decodes Python 2 ``str`` objects, as in the official CIFAR files. Any other
    global, and any truncated or corrupt file, raises :class:`DataError` naming the file.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        path = Path(path_or_file)
        try:
            with path.open("rb") as file:
                return _load(file, str(path), encoding)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _load(path_or_file, str(getattr(path_or_file, "name", "<stream>")), encoding)


def _load(file: IO[bytes], display_name: str, encoding: str) -> Any:
    try:
        return _DatasetUnpickler(file, display_name=display_name, encoding=encoding).load()
    except DataError:
        raise
    except Exception as exc:  # a damaged pickle can fail in many ways (EOF, bad opcode, bad array)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{display_name} is truncated or corrupt: not a readable pickle ({reason})") from exc
