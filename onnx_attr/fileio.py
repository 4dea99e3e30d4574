"""File handling for results and user files.

Atomic writes (a result file is either complete or absent, never half-written), created with the
permissions the umask allows like any other file; a lock so that two runs never write into one
result folder at once; the clean-up of temporaries a killed run left behind; and the check that
a path a user names is a regular file before anything reads it (a FIFO would hang the reader).
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import stat
from pathlib import Path
from typing import Callable, Iterator, Optional

from onnx_attr.errors import InputError, OutputError

#: Every temporary is `.<stem>.tmp-<random><suffix>` beside its target; the clean-up matches this.
TEMP_MARK = ".tmp-"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: it is a folder")
    tmp = _create_temporary(folder, path)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as err:
        raise OutputError(f"cannot write {str(path)!r}: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _create_temporary(folder: Path, path: Path) -> Path:
    """An empty new file, mode 0666 less the umask (mkstemp would force 0600 on every result)."""
    for _ in range(100):
        tmp = folder / f".{path.stem}{TEMP_MARK}{secrets.token_hex(4)}{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"cannot write into {str(folder)!r}: {err.strerror or err}") from err
    raise OutputError(f"cannot create a temporary file in {str(folder)!r}")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, data: object) -> Path:
    """`data` as strict JSON (a NaN or infinity, which Python writes bare and other parsers reject,
    as null), atomically."""
    text = json.dumps(_strict(data), indent=2, default=str, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _strict(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def leftover_temporaries(folder: Path, depth: int = 1) -> Iterator[Path]:
    """Temporaries of `atomic_write` in `folder` and its subfolders down to `depth`."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") and TEMP_MARK in entry.name and entry.is_file(follow_symlinks=False):
            yield Path(entry.path)
        elif depth > 0 and entry.is_dir(follow_symlinks=False):
            yield from leftover_temporaries(Path(entry.path), depth - 1)


def remove_leftover_temporaries(folder: Path, depth: int = 1) -> int:
    """Delete what killed runs left behind; call only with the folder's lock held."""
    removed = 0
    for tmp in list(leftover_temporaries(folder, depth)):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed


class FolderLock:
    """An exclusive, non-blocking lock on a result folder (`.onnx-attr.lock` inside it).

    The operating system drops it when the process ends, however it ends (SIGKILL included), so
    a stale lock never blocks the next run. Where `fcntl` is missing (Windows) no lock is taken.
    """

    NAME = ".onnx-attr.lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self._fd: Optional[int] = None

    def __enter__(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise OutputError(f"cannot lock {str(self.path.parent)!r}: {err.strerror or err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OutputError(
                    f"another onnx-attr run is writing into {str(self.path.parent)!r}; wait for it to finish "
                    "or give this run another --out") from err
            raise OutputError(f"cannot lock {str(self.path.parent)!r}: {err.strerror or err}") from err
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def regular_file(path: str | os.PathLike, what: str) -> Path:
    """`path` if it is a regular file (symlinks followed); a clear error for anything else, before
    anything opens it: opening a FIFO blocks until a writer comes, a device may never end."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError as err:
        raise InputError(f"{what} {str(path)!r} does not exist") from err
    except OSError as err:
        raise InputError(f"{what} {str(path)!r} cannot be read: {err.strerror or err}") from err
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {str(path)!r} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
        raise InputError(f"{what} {str(path)!r} is {kind}, not a regular file; save the data to a file first")
    return path
