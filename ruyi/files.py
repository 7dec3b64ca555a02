"""Writes that cannot lie: a file is complete, flushed and checked before it replaces anything.

Every file ruyi writes goes through here. The data lands in a temporary name *beside* its target
(never inside a folder of the user's), is flushed to disk, and is renamed into place only when
complete; a failure or an interruption removes that temporary name and nothing else. Running out
of space (or quota, or the file-size limit) is a user error of one line naming the disk and the
space the file needs, not a traceback, and never a truncated file renamed over the old one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ruyi.errors import STOP_SIGNALS, OutputError

# errnos that mean "the disk, not ruyi": each gets a one-line OutputError
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DENIED_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def umask_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system ``path`` is (or would be) on."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def megabytes(size: int) -> str:
    if size < 100e3:
        return f"{max(size / 1e3, 1):.0f} kB"
    return f"{size / 1e6:.1f} MB" if size < 10e6 else f"{size / 1e6:.0f} MB"


def os_error_of(err: BaseException | None) -> OSError | None:
    """The OS error behind ``err``: itself, the one it was raised while handling (torch's writer
    turns a failed write into a RuntimeError), or one a library reported in words (safetensors:
    ``SafetensorError("... No space left on device (os error 28)")``)."""
    seen = set()
    while isinstance(err, Exception) and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            return err
        found = re.search(r"\(os error (\d+)\)", str(err))
        if found:
            return OSError(int(found.group(1)), str(err))
        err = err.__cause__ or err.__context__
    return None


def write_error(err: BaseException, target: Path, *, what: str, needed: int | None = None) -> OutputError | None:
    """The one-line user error for a write that failed for want of space or permission, or None
    (a different error: a bug or a broken disk, which keeps its traceback)."""
    err = os_error_of(err)  # type: ignore[assignment]
    if err is None:
        return None
    verb = "need" if what.endswith("s") else "needs"  # "the frames need", "the video needs"
    need = f"{what} {verb} ~{megabytes(needed)}" if needed else f"{what} did not fit"
    if err.errno == errno.ENOSPC:
        return OutputError(f"no space left on {mount_point(target)}: {need}; free space or choose another output")
    if err.errno == errno.EDQUOT:
        return OutputError(f"disk quota exceeded on {mount_point(target)}: {need}; free space or choose another output")
    if err.errno == errno.EFBIG:
        return OutputError(f"{target}: the file size limit (ulimit -f) was reached: {need}; raise it or choose another output")
    if err.errno in DENIED_ERRNOS:
        return OutputError(f"cannot write {target} ({os.strerror(err.errno)}); choose a writable output")
    return None


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (a few renames that must all happen or none)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a pending signal is delivered now


def make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created (deepest last), to remove on failure."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_created(folders: list[Path]) -> None:
    """Remove folders this run created, deepest first, only while empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def fsync_path(path: str | Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot sync a folder; the data itself was synced
        if not directory or err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def publish_file(tmp: str | Path, path: Path, *, replace: bool) -> None:
    """Rename a finished temporary file onto ``path``. ``replace=False`` refuses an existing
    ``path`` atomically (hard link, then unlink), so two runs racing for one name cannot both win."""
    os.chmod(tmp, umask_mode(directory=False))
    if replace:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise OutputError(f"{path} appeared while it was being written (another run?); nothing was replaced") from None
        except OSError as err:  # a file system without hard links: check, then rename (a narrow race)
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if path.exists():
                raise OutputError(f"{path} appeared while it was being written (another run?); nothing was replaced") from None
            os.rename(tmp, path)
        else:
            os.unlink(tmp)
    fsync_path(path.parent, directory=True)


@contextlib.contextmanager
def atomic_file(
    path: str | Path,
    *,
    suffix: str = "",
    what: str = "the file",
    needed: Callable[[], int | None] | None = None,
    replace: bool = True,
) -> Iterator[str]:
    """A temporary file name beside ``path``, for the block to write. When the block ends the file
    is flushed to disk and renamed onto ``path`` (``replace=False``: only if ``path`` does not
    exist). If the block fails or is interrupted the temporary file (and any folder this call
    created) is removed and ``path`` is untouched; a full disk becomes a one-line ``OutputError``
    naming the disk and ``needed()`` bytes."""
    path = Path(path)
    created = make_parents(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        if os.path.getsize(tmp) == 0:
            raise RuntimeError(f"writing {path} produced an empty file")  # a writer that said nothing went wrong
        fsync_path(tmp)
        publish_file(tmp, path, replace=replace)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        remove_created(created)
        if os_error_of(err) is not None:
            mapped = write_error(err, path, what=what, needed=needed() if needed else None)
            if mapped is not None:
                raise mapped from None
        raise


def write_bytes_atomic(path: str | Path, data: bytes, *, what: str = "the file", replace: bool = True) -> Path:
    """``path.write_bytes(data)``, atomically and checked (the size on disk is the size written)."""
    path = Path(path)
    with atomic_file(path, suffix=path.suffix, what=what, needed=lambda: len(data), replace=replace) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
        if os.path.getsize(tmp) != len(data):
            raise OSError(errno.EIO, f"{tmp} holds {os.path.getsize(tmp)} of {len(data)} bytes")
    return path


def write_text_atomic(path: str | Path, text: str, *, what: str = "the file", replace: bool = True) -> Path:
    """``path.write_text(text)`` (UTF-8), atomically: for summaries, metrics and benchmark results."""
    return write_bytes_atomic(path, text.encode("utf-8"), what=what, replace=replace)


def check_free_space(folder: Path, needed: int, *, what: str, target: Path) -> None:
    """Refuse before writing when ``folder``'s disk has clearly less room than ``needed`` bytes."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise write_error(OSError(errno.ENOSPC, "no space"), target, what=what, needed=needed)  # type: ignore[misc]


class OutputGuard:
    """What an interrupted run can truthfully say about its output: whether the file or folder
    it was to write is as it was when the run began."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.before: object = None

    def watch(self, path: Path) -> None:
        self.path, self.before = Path(path), self._state(Path(path))

    @staticmethod
    def _state(path: Path) -> object:
        try:
            if path.is_dir():
                return tuple(sorted((p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in path.iterdir()))
            stat = path.stat()
            return stat.st_ino, stat.st_size, stat.st_mtime_ns
        except OSError:
            return None

    def describe(self) -> str:
        if self.path is None:
            return "nothing was written"
        if self._state(self.path) == self.before:
            return f"{self.path} was not changed"
        return f"{self.path} had been completely written when the interrupt came"
