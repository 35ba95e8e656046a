"""Whole-directory replacement for exports: a killed export leaves the old complete directory or the new one.

An export is written into a fresh hidden directory beside its target (``.NAME.export-PID-XXXX``); only when
every file is written and synced does :func:`commit` move it into place: with Linux's
``renameat2(RENAME_EXCHANGE)`` the two directories swap in one atomic step, elsewhere the old directory is
renamed aside, the new one renamed into place, then the old one deleted (a crash between those two renames
leaves the target missing and the old export aside: loading the contract, or the next export, renames it
back: :func:`rcnn_deploy.contract.recover_interrupted_export`). Files in the old directory that are not part
of the old export (engines, calibration caches, your own files) are hard-linked into the new one, so
re-exporting never deletes them.

``RCNN_DEPLOY_EXPORT_CRASH_AT=POINT`` SIGKILLs the exporting process at that named point (fault injection for
the kill tests; the points are :data:`CRASH_POINTS`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import signal
import sys
from pathlib import Path
from typing import Callable, Iterable

from ..contract import export_leftovers, recover_interrupted_export
from ..errors import UserError

CRASH_ENV = "RCNN_DEPLOY_EXPORT_CRASH_AT"
CRASH_POINTS = (
    "staged",  # the hidden directory exists, nothing written yet
    "graph_partial",  # half of the first graph file written
    "graphs_written",  # every graph written, no contract yet
    "contract_written",  # the new export complete in the hidden directory
    "old_aside",  # fallback path only: the old export renamed aside, the new one not yet in place
    "swapped",  # the new export in place, the old one not yet deleted
)


def crash_point(name: str) -> None:
    """SIGKILL this process here when ``RCNN_DEPLOY_EXPORT_CRASH_AT`` names this point (fault injection)."""
    if os.environ.get(CRASH_ENV) == name:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def write_file(path: Path, data: bytes, crash_halfway: bool = False) -> None:
    """Write and fsync ``path`` (inside a staging directory: no temporary name needed)."""
    with open(path, "wb") as f:
        if crash_halfway:
            f.write(data[: len(data) // 2])
            f.flush()
            crash_point("graph_partial")
            f.write(data[len(data) // 2 :])
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def stage(target: Path) -> Path:
    """A new empty hidden directory beside ``target`` (removing what killed exports left there)."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError("exists and is not a directory", where=target, fix="choose a directory for -o")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted_export(target)  # a previous export killed mid-swap: its old directory back first
        for p, _ in export_leftovers(target):
            shutil.rmtree(p, ignore_errors=True)
        staged = parent / f".{target.name}.export-{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(staged)  # mode 0o777 & ~umask, like any directory the user makes
    except OSError as e:
        raise UserError(f"cannot create the export directory ({e.strerror or e})", where=target) from None
    crash_point("staged")
    return staged


def _link_tree(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(src), str(dst))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # this kernel or file system has no exchange
    raise OSError(err, os.strerror(err), str(b))


def commit(staged: Path, target: Path, exported: Iterable[str], old_files: Callable[[Path], Iterable[str]]) -> None:
    """Move the complete export in ``staged`` to ``target`` in one step. ``exported``: the names written there;
    ``old_files(old_dir)``: the names that belonged to the previous export (not carried over)."""
    target = Path(target)
    new = set(exported)
    if target.is_dir():
        drop = set(old_files(target)) | new
        for p in target.iterdir():
            if p.name in drop or (p.name.startswith(".") and p.name.endswith(".tmp")):  # old exports' stray temps
                continue
            _link_tree(p, staged / p.name)
    _fsync_dir(staged)
    parent = target.parent
    if target.exists():
        if _exchange(staged, target):
            _fsync_dir(parent)
            crash_point("swapped")
            shutil.rmtree(staged, ignore_errors=True)  # the previous export, now at the staging name
            return
        aside = parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(target, aside)
        crash_point("old_aside")
        os.rename(staged, target)
        _fsync_dir(parent)
        crash_point("swapped")
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staged, target)
        _fsync_dir(parent)
