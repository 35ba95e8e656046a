"""Small file helpers shared by every stage: atomic writes so a crash never leaves a half-written output.

Outputs get the permissions any ordinary ``open(path, "w")`` would give them: ``0o666`` less the user's umask
(0644 under umask 022, 0600 under 077), default ACLs included. ``tempfile.mkstemp`` would create them 0600
whatever the umask, so the temporary file is created here with ``os.open(..., 0o666)`` instead and the kernel
applies the umask itself (nothing reads or changes the process umask, so this is thread-safe).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _create_temp(directory: Path, name: str) -> Path:
    """A new empty file ``.NAME.<random>.tmp`` in ``directory``, mode ``0o666 & ~umask``."""
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, _TMP_FLAGS, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file for {name} in {directory}")


def atomic_write(path: PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` then move the result onto ``path`` in one rename.

    The temporary file lives in the destination directory so the final ``os.replace`` is atomic. It is
    created empty with the user's default permissions (``0o666 & ~umask``), which ``write`` keeps when it
    opens the path for writing; ``path`` ends up with those permissions (an existing file's are replaced).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path.parent, path.name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


#: Leading bytes of files people pass by mistake where a JSON file belongs.
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"RIFF", "a RIFF file (e.g. a WebP image)"),
    (b"PK\x03\x04", "a zip archive (e.g. a .pt / .pth checkpoint)"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x80", "a Python pickle (e.g. a .pkl checkpoint)"),
    (b"\x08", "a protobuf file (e.g. an ONNX graph)"),
)


def binary_kind(head: bytes) -> Optional[str]:
    """What a file whose first bytes are ``head`` is, when it is clearly not text (so not JSON); else None."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if b"\x00" in head:
        return "a binary file"
    return None
