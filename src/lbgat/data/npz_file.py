"""The arrays of an uncompressed ``.npz``, found in the file and read row by row, never whole.

``np.load(path, mmap_mode="r")`` ignores ``mmap_mode`` for an ``.npz`` and reads an array whole when it is
accessed: 60 GB for 20 million generated images. An ``.npz`` is a zip archive of ``.npy`` files; ``np.savez``
stores them uncompressed, so each member's array bytes lie contiguous in the archive, after the member's zip
local header and its ``.npy`` header. Both headers are read here, and :meth:`StoredArray.read` reads the rows
a batch asks for at their offsets.

Rows are read (``readinto`` at an offset), not memory-mapped: with ``np.memmap`` a process's resident memory
grows by far more than the rows it touches, since a page fault maps the whole (large) page-cache folio around
it (measured: 4,096 rows spread over a 2.9 GiB file left 2.9 GiB of it resident, Linux 6.18, transparent huge
pages "always"). Read, only the rows themselves are held; the operating system's page cache keeps what it can.

A compressed member (``np.savez_compressed``) cannot be read by offset and is refused;
:func:`store_uncompressed` (``lbgat data store-npz``) rewrites such a file once, streaming.
"""

from __future__ import annotations

import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
import numpy.lib.format as npy_format

from ..errors import DataError
from ..storage.files import atomic_file

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 bytes up to the name's and extra field's lengths
_LOCAL_SIGNATURE = b"PK\x03\x04"
_COPY_CHUNK = 1 << 24


@dataclass(frozen=True)
class StoredArray:
    """A C-ordered array stored at ``offset`` in the file at ``path``, read a few rows at a time."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The rows at ``indices`` (in that order), each read from the file at its offset."""
        rows = np.empty((len(indices), *self.shape[1:]), self.dtype)
        buffer = memoryview(rows.reshape(-1).view(np.uint8))
        size = self.row_bytes
        with self._open() as file:
            for position, index in enumerate(indices.tolist()):
                file.seek(self.offset + index * size)
                self._check_read(file.readinto(buffer[position * size:(position + 1) * size]), size)
        return rows

    def read_all(self) -> np.ndarray:
        """The whole array, in memory (for the labels: 8 bytes an image)."""
        rows = np.empty(self.shape, self.dtype)
        with self._open() as file:
            file.seek(self.offset)
            self._check_read(file.readinto(memoryview(rows.reshape(-1).view(np.uint8))), rows.nbytes)
        return rows

    def _open(self) -> BinaryIO:
        try:
            return self.path.open("rb", buffering=0)
        except OSError as error:
            raise DataError(f"cannot read {self.path}: {error.strerror or error}") from None

    def _check_read(self, count: int | None, wanted: int) -> None:
        if count != wanted:  # the file shrank since it was opened
            raise DataError(f"{self.path} is truncated: its {'x'.join(map(str, self.shape))} array is cut short")


def open_npz(path: Path) -> dict[str, StoredArray]:
    """Every array of the ``.npz`` at ``path`` by name (without ``.npy``), located and checked, none read.

    A compressed member, an object or Fortran-ordered array, a truncated or damaged file raise
    :class:`DataError` in one line.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise DataError(f"{path} is not a readable .npz (zip) file: {reason}") from None
    compressed = [info.filename for info in members if info.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise DataError(
            f"{path} is a compressed .npz ({', '.join(compressed)} deflated), which cannot be read by offset; "
            f"store it uncompressed once with `lbgat data store-npz {path} OUT.npz` (streams; needs no memory) "
            "and give OUT.npz")
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            return {info.filename[:-len(".npy")]: _locate(path, file, size, info) for info in members}
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None


def _locate(path: Path, file: BinaryIO, file_size: int, info: zipfile.ZipInfo) -> StoredArray:
    damaged = f"{path} is truncated or damaged: its member {info.filename}"
    file.seek(info.header_offset)
    local = file.read(_LOCAL_HEADER.size)
    if len(local) < _LOCAL_HEADER.size or local[:4] != _LOCAL_SIGNATURE:
        raise DataError(f"{damaged} has no zip local header")
    _, name_length, extra_length = _LOCAL_HEADER.unpack(local)
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    file.seek(start)
    try:
        version = npy_format.read_magic(file)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(file)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} (lbgat reads 1.0 and 2.0)")
    except ValueError as error:
        raise DataError(f"{damaged} is not a readable .npy array ({' '.join(str(error).split())})") from None
    if dtype.hasobject:
        # Object arrays are pickles: data files are never allowed to hold code.
        raise DataError(f"refusing {path}: its member {info.filename} holds Python objects, not numbers")
    if fortran_order and len(shape) > 1:
        raise DataError(f"{path}: its member {info.filename} is stored in Fortran order; save it with "
                        "np.savez from a C-ordered (np.ascontiguousarray) array")
    offset = file.tell()
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - start + size > info.file_size or offset + size > file_size:
        raise DataError(f"{damaged} holds fewer bytes than its {'x'.join(map(str, shape))} {dtype} array needs")
    return StoredArray(path, offset, tuple(shape), dtype)


def store_uncompressed(sources: Sequence[Path], target: Path) -> None:
    """Write the new file ``target``, an ``.npz`` with every member stored uncompressed (as ``np.savez`` writes),
    each array the concatenation along its first axis of that array in every file of ``sources`` (one file:
    the same arrays; several: the parts of a split set, e.g. Wang et al.'s ``20m_part1.npz``, ``20m_part2.npz``).
    Streams: memory stays small whatever the size. ``target`` must not exist."""
    if os.path.lexists(target):
        raise DataError(f"{target} exists; give a new file name (lbgat never overwrites a file it did not write)")
    with ExitStack() as stack:
        archives = [stack.enter_context(_open_archive(source)) for source in sources]
        names = [sorted(info.filename for info in archive.infolist()) for archive in archives]
        if any(found != names[0] for found in names):
            raise DataError(f"{', '.join(map(str, sources))} do not hold the same arrays "
                            f"({'; '.join(', '.join(found) for found in names)})")
        out = stack.enter_context(atomic_file(target))
        stored = stack.enter_context(zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True))
        for name in names[0]:
            _concatenate(name, sources, archives, stored)


def _open_archive(source: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise DataError(f"{source} is not a readable .npz (zip) file: {reason}") from None


def _concatenate(name: str, sources: Sequence[Path], archives: list[zipfile.ZipFile], stored: zipfile.ZipFile) -> None:
    """Member ``name`` of every archive, one after the other, as one ``.npy`` member of ``stored``."""
    with ExitStack() as stack:
        readers = [stack.enter_context(archive.open(name)) for archive in archives]
        headers = [_read_header(reader, source, name) for reader, source in zip(readers, sources, strict=True)]
        shape, fortran_order, dtype = headers[0]
        if any((other[0][1:], other[2]) != (shape[1:], dtype) for other in headers) or (
                len(sources) > 1 and fortran_order and len(shape) > 1) or not shape:
            shown = "; ".join(f"{source}: {'x'.join(map(str, h[0]))} {h[2]}" for source, h in zip(sources, headers,
                                                                                                 strict=True))
            raise DataError(f"cannot join the {name} arrays, their rows differ ({shown})")
        total = (sum(header[0][0] for header in headers), *shape[1:])
        with stored.open(name, "w", force_zip64=True) as writer:
            npy_format.write_array_header_1_0(writer, {"descr": npy_format.dtype_to_descr(dtype),
                                                       "fortran_order": fortran_order, "shape": total})
            for reader, source in zip(readers, sources, strict=True):
                try:
                    shutil.copyfileobj(reader, writer, _COPY_CHUNK)
                except (zipfile.BadZipFile, EOFError, zlib.error) as error:  # a damaged member: nothing is kept
                    raise DataError(f"{source} is truncated or damaged: its member {name} ({error})") from None


def _read_header(reader: IO[bytes], source: Path, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = npy_format.read_magic(reader)
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        return read(reader)
    except (ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{source}: its member {name} is not a readable .npy array "
                        f"({' '.join(str(error).split())})") from None
