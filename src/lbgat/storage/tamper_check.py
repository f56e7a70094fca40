"""Telling a tampered file from a damaged one when ``torch.load(weights_only=True)`` refuses it.

Both end in a refusal, and nothing in either file runs; the difference is what to do next. A file
whose pickle names a Python global outside torch's allowlist (``os.system``, a class) was written
to hold code or objects: that is tampering, and ``--resume`` must stop rather than quietly take the
previous checkpoint. Anything else (random bytes, a truncated or rewritten file, opcodes that make
no sense) is damage, and ``--resume`` falls back to ``last.prev.pt``.

torch reports a refused global as ``GLOBAL module.name`` in its message. A pickle written with
protocol 4 or 5 (not torch's own protocol 2) is refused earlier, at an opcode torch does not read
(``Unsupported operand 149``), before its globals are seen; such a file is scanned with
:mod:`pickletools` (which decodes opcodes and never builds or runs anything), and it counts as
tampering when it parses as a complete pickle that names a global.

A damaged torch file can name a global too: a flipped byte in ``torch._utils._rebuild_tensor_v2``
gives ``torchR_utils._rebuild_tensor_v2``. So a name only counts as tampering when it is a Python
name (identifiers joined by dots) and not a near-miss of a global torch allows (similarity below
:data:`NEAR_MISS`). Neither rule can make a file run: they only choose between stopping and
falling back.
"""

from __future__ import annotations

import difflib
import functools
import io
import pickletools
import re
import zipfile
from pathlib import Path

# How torch's weights-only unpickler names a global it refuses (blocked module, or not allowlisted).
_REFUSED_GLOBAL = re.compile(r"\bGLOBAL (.*?) (was not an allowed global|whose module \S+ is blocked)", re.DOTALL)
_PYTHON_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", re.ASCII)
# One changed character in a 10-character allowed name is still 0.9 alike; eval vs set, exec vs set: 0.8.
NEAR_MISS = 0.9
_UNSUPPORTED_OPCODE = re.compile(r"Unsupported operand (\d+)")
_VALID_OPCODES = {opcode.code.encode("latin-1")[0] for opcode in pickletools.opcodes}
_SCAN_LIMIT = 64 << 20  # a pickle that carries code is small; the scan never reads more than this
_MAX_PICKLES = 8  # torch's legacy format is a few pickles in a row, then raw tensor bytes


def refused_global(message: str, path: Path) -> str | None:
    """The Python global that makes ``path`` unsafe, given torch's refusal ``message``; None when
    the refusal is damage (the file does not name a global that would load code or objects)."""
    named = _REFUSED_GLOBAL.search(message)
    if named:
        name, reason = named.groups()
        return name if reason.startswith("whose module") or is_foreign_global(name) else None
    opcode = _UNSUPPORTED_OPCODE.search(message)
    if opcode and int(opcode.group(1)) in _VALID_OPCODES:  # a real pickle, in a protocol torch never writes
        return _first_global(_pickle_bytes(path))
    return None


def is_foreign_global(name: str) -> bool:
    """``name`` is a Python global that torch does not allow, and not a damaged spelling of one it does."""
    if not _PYTHON_NAME.fullmatch(name):
        return False
    allowed = _allowed_globals()
    if name in allowed:
        return False
    return not difflib.get_close_matches(name, allowed, n=1, cutoff=NEAR_MISS)


@functools.cache
def _allowed_globals() -> tuple[str, ...]:
    """What torch's weights-only unpickler accepts (a private table; the globals torch writes if it moves)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return tuple(_get_allowed_globals())
    except (ImportError, AttributeError):
        return ("collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "torch.FloatStorage", "torch.DoubleStorage", "torch.HalfStorage", "torch.BFloat16Storage",
                "torch.LongStorage", "torch.IntStorage", "torch.ByteStorage", "torch.BoolStorage", "torch.Size",
                "torch.device")


def unpickling_detail(message: str, inner: BaseException | None) -> str:
    """The specific reason in torch's long refusal text (it wraps the unpickler's own message)."""
    opcode = _UNSUPPORTED_OPCODE.search(message)
    if opcode:
        return f"unsupported pickle opcode {opcode.group(1)}"
    for text in (str(inner) if inner is not None else "", message):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return brief(lines[0])
    return "unreadable pickle"


def brief(text: str, limit: int = 120) -> str:
    """One line of at most about ``limit`` characters, cut at a word and marked when cut."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    sentence = line.split(". ", 1)[0]
    if len(sentence) <= limit:
        return sentence
    return line[:limit].rsplit(" ", 1)[0] + " ..."


def _pickle_bytes(path: Path) -> bytes:
    """The pickle(s) in ``path``: the ``data.pkl`` of a torch zip archive, else the file itself."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [name for name in archive.namelist() if name.endswith("data.pkl")]
                if not names:
                    return b""
                with archive.open(names[0]) as member:
                    return member.read(_SCAN_LIMIT)
        with open(path, "rb") as file:
            return file.read(_SCAN_LIMIT)
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return b""


def _first_global(data: bytes) -> str | None:
    """The first global named by the complete pickles at the start of ``data`` (None if none)."""
    stream = io.BytesIO(data)
    for _ in range(_MAX_PICKLES):
        if stream.tell() >= len(data):
            break
        strings: list[str] = []
        named: list[str] = []
        try:
            for opcode, argument, _position in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    named.append(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL":  # module and name are the two strings before it
                    named.append(".".join(strings[-2:]))
                elif isinstance(argument, str):
                    strings.append(argument)
        except Exception:  # noqa: BLE001 - not a complete pickle: bytes that mean nothing, not code
            return None
        foreign = [name for name in named if is_foreign_global(name)]
        if foreign:
            return foreign[0]
    return None
