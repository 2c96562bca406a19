"""Files that survive a crash: one atomic-write helper, JSON in and out, and SHA-256 digests.

Every file credo writes goes through :func:`atomic_write`: the bytes go to a temporary file in the same
directory, are flushed and ``fsync``-ed, the temporary file is renamed over the target with ``os.replace``
(atomic on POSIX), and the directory is ``fsync``-ed so the rename itself is durable. A reader therefore sees
either the old file or the new one, never a mix, and a power cut cannot leave an empty file behind a rename.

Readers that can meet a damaged file raise :class:`CorruptFileError`, whose message names the file and the fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from credo.errors import CorruptFileError


def fsync_directory(directory: str | Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` with ``write(f)`` on a temporary file in the same directory, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def json_safe(value: Any) -> Any:
    """NaN and infinities become null (recursively), so the result is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented standard JSON (NaN as null) ending in a newline, atomically."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


def read_json(path: str | Path, fix: str) -> Any:
    """Parse the JSON file ``path``; a missing, unreadable or malformed file raises an error naming it and ``fix``.

    Raises:
        FileNotFoundError: ``path`` does not exist (or is a directory).
        CorruptFileError: ``path`` is not valid JSON (truncated, empty, binary).
    """
    path = Path(path)
    if path.is_dir():
        raise CorruptFileError(f"{path} is a directory, not a JSON file; {fix}")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}); {fix}") from err


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks (memory stays flat for large files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str, fix: str) -> None:
    """Raise :class:`CorruptFileError` naming ``path`` and ``fix`` unless its SHA-256 is ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise CorruptFileError(
            f"{path} is corrupted: its SHA-256 is {actual[:16]}..., {expected[:16]}... was recorded when it "
            f"was written; {fix}"
        )


# -- one file, its digest inside ---------------------------------------------------------------------------

_MAGIC = b"credo-sealed v1 sha256="


def write_sealed(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` with its SHA-256 in a one-line header, as ONE file, atomically and durably.

    Data and digest cannot disagree after a crash: the rename replaces both at once.
    """
    header = _MAGIC + sha256_bytes(payload).encode() + b"\n"
    atomic_write(path, lambda f: (f.write(header), f.write(payload)))


def read_sealed(path: str | Path, fix: str) -> bytes:
    """The payload of a file written by :func:`write_sealed`, after checking its digest.

    Raises:
        CorruptFileError: the header is missing or the payload does not match its digest (names ``path``, ``fix``).
    """
    path = Path(path)
    data = path.read_bytes()
    newline = data.find(b"\n", 0, len(_MAGIC) + 80)
    if not data.startswith(_MAGIC) or newline < 0:
        raise CorruptFileError(f"{path} is not a credo sealed file (no digest header); {fix}")
    expected, payload = data[len(_MAGIC) : newline].decode(errors="replace"), data[newline + 1 :]
    if sha256_bytes(payload) != expected:
        raise CorruptFileError(f"{path} is corrupted or truncated (its SHA-256 does not match); {fix}")
    return payload


def save_torch_sealed(path: str | Path, state: Any) -> None:
    """``torch.save`` ``state`` into a sealed file (digest inside, atomic). Only tensors and plain containers
    belong in ``state``: it is read back with ``weights_only=True``."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    write_sealed(path, buf.getvalue())


def load_torch_sealed(path: str | Path, fix: str) -> Any:
    """Read a file written by :func:`save_torch_sealed`: digest checked, then ``torch.load(weights_only=True)``,
    so a file from elsewhere cannot run code. Anything else is refused with :class:`CorruptFileError`."""
    import torch

    payload = read_sealed(path, fix)
    try:
        return torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as err:  # UnpicklingError for a crafted pickle, RuntimeError for a bad archive
        raise CorruptFileError(
            f"{path} could not be read as plain tensors and containers ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); {fix}"
        ) from err


def cache_dir() -> Path:
    """credo's cache root: ``$CREDO_CACHE``, else ``$XDG_CACHE_HOME/credo``, else ``~/.cache/credo``."""
    if os.environ.get("CREDO_CACHE"):
        return Path(os.environ["CREDO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "credo"
