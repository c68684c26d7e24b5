"""Writing folders safely: one writer per folder, and a full disk as one line, never half a file.

A folder that vgkit writes for a long time (a feature cache, a run, a synthetic
dataset) is locked with :func:`folder_lock`: an exclusive ``flock`` (the
``filelock`` package) on ``<folder>/.vgkit.lock``. A second writer fails at once
and is told who holds the folder, read from ``.vgkit.lock.json`` beside it (a
separate file, because opening the lock file may truncate it). The kernel
drops a flock when its process dies, so the lock of a killed process never
blocks; a stale ``.vgkit.lock.json`` is simply overwritten.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from vgkit.errors import VgkitError

LOCK_FILE, HOLDER_FILE = ".vgkit.lock", ".vgkit.lock.json"
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# posix_fallocate where the filesystem cannot: reservation is skipped, the free-space check stands
_CANNOT_RESERVE = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})
# this process's held locks by folder: the CLI and the Trainer it builds share one (re-entrant)
_HELD: dict[Path, list[Any]] = {}


class FolderLockedError(VgkitError):
    """Another process is writing the folder."""


class DiskFullError(VgkitError):
    """The filesystem has (or would have) no space left for what is being written."""


class FolderLock:
    """An exclusive, non-blocking lock on a folder for as long as it is written."""

    def __init__(self, directory: str | os.PathLike[str], what: str) -> None:
        self.directory, self.what, self.held = Path(directory), what, False

    def acquire(self) -> FolderLock:
        """Take the lock (creating the folder) or raise FolderLockedError at once."""
        if self.held:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        key = self.directory.resolve()
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            lock = FileLock(str(key / LOCK_FILE), timeout=0, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                raise FolderLockedError(f"{self.directory} is being written by another vgkit "
                                        f"process ({_holder(key)}); wait for it to finish or "
                                        "choose another folder") from None
            _HELD[key] = [lock, 1]
            _write_holder(key, self.what)
        self.held = True
        return self

    def release(self) -> None:
        """Let go of the lock (a no-op when not held)."""
        if not self.held:
            return
        self.held = False
        key = self.directory.resolve()
        entry = _HELD.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            with suppress(OSError):  # the folder went away; nothing is left to describe
                (key / HOLDER_FILE).unlink(missing_ok=True)
            entry[0].release()

    def __del__(self) -> None:  # a holder dropped without release() (an error mid-setup)
        with suppress(Exception):  # at interpreter shutdown the kernel drops the flock anyway
            self.release()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def folder_lock(directory: str | os.PathLike[str], what: str) -> FolderLock:
    """A lock on `directory` for `what` (e.g. "vgkit train"): ``with folder_lock(d, what):``."""
    return FolderLock(directory, what)


def _write_holder(directory: Path, what: str) -> None:
    """Record who holds the lock, for the message a second writer gets."""
    info = {"pid": os.getpid(), "what": what, "command": " ".join(sys.argv)[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = directory / f".{HOLDER_FILE}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(info))
        os.replace(tmp, directory / HOLDER_FILE)
    except OSError:  # a full disk must not stop the writer that holds the lock
        tmp.unlink(missing_ok=True)


def _holder(directory: Path) -> str:
    """'PID 1234, what, since ...' of the process holding `directory`'s lock, as far as known."""
    try:
        info = json.loads((directory / HOLDER_FILE).read_text())
        return f"PID {info['pid']}, {info['what']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # it has not written it yet
        return "PID unknown"


# ------------------------------------------------------------ full disks
def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError meaning no space (ENOSPC) or no quota (EDQUOT) left."""
    return isinstance(exc, OSError) and exc.errno in _FULL


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def human(nbytes: float) -> str:
    """Bytes as a short readable size: '812 KiB', '4.1 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit in ("B", "KiB") else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def write_error(path: str | os.PathLike[str] | None, exc: OSError) -> VgkitError:
    """One line for an OSError while writing `path`; a full disk says how much is free."""
    path = path if path is not None else exc.filename
    if is_disk_full(exc):
        where = f" writing {path}" if path else ""
        try:
            free = f"{human(free_bytes(path))} free on its filesystem" if path else exc.strerror
        except OSError:
            free = exc.strerror
        return DiskFullError(f"no space left on device{where} ({free})")
    return VgkitError(f"cannot write {path}: {exc.strerror or exc}")


def os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: itself, or one a Rust library (safetensors) only names in text."""
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"(.*?)\s*\(os error (\d+)\)", str(exc))
    if found:
        return OSError(int(found.group(2)), os.strerror(int(found.group(2))))
    return None


@contextmanager
def disk_full_errors() -> Iterator[None]:
    """Turn a no-space OSError raised inside into a one-line DiskFullError."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise write_error(exc.filename, exc) from None


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write and rename over it.

    If anything fails the temporary file is removed, `path` is left as it was,
    and an OSError (a full disk above all) becomes one line naming `path`.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        err = os_error(exc)
        if err is None or isinstance(exc, KeyboardInterrupt):
            raise
        raise write_error(path, err) from None


# ------------------------------------------------------------ reserving space
def check_space(directory: str | os.PathLike[str], needed: int, what: str) -> None:
    """Refuse before writing when `directory`'s filesystem has less than `needed` bytes free."""
    free = free_bytes(directory)
    if needed > free:
        raise DiskFullError(f"{directory}: {what} needs {human(needed)} but its filesystem has "
                            f"{human(free)} free; free some space or choose another folder")


def reserve(path: Path, what: str) -> bool:
    """Allocate every block of `path` now, so later writes through a memmap cannot SIGBUS.

    A write into an unallocated page of a memory map on a full disk kills the
    process with SIGBUS and no message; allocated blocks cannot run out. Checks
    the free space first; returns False where the filesystem cannot reserve.
    """
    st = path.stat()
    check_space(path.parent, max(0, st.st_size - st.st_blocks * 512), what)
    if not hasattr(os, "posix_fallocate") or st.st_size == 0:
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, st.st_size)
    except OSError as exc:
        if exc.errno in _CANNOT_RESERVE:
            return False
        raise write_error(path, exc) from None
    finally:
        os.close(fd)
    return True


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` whole or not at all: temp file, fsync, rename (parents made).

    The one text writer of vgkit: a crash leaves the old file or the new one, never
    half; a full disk is one line naming `path`, with the temporary removed.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(p, exc) from None
    with replacing(p) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the name changes
        os.replace(tmp, p)
    return p
