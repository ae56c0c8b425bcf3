"""Atomic writes, the one implementation: a file (atomic_write and its text / JSON forms) or a
folder (atomic_dir) is written beside its destination under a temporary name and renamed into place
when complete. A crash (or kill -9) never leaves a partial file or folder, and what was there before
stays until the new one is whole."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path


def _new_file_mode(path: Path) -> int:
    """The permissions a plain open() would leave: an existing file keeps its own, a new one gets
    0o666 less the umask (mkstemp, used for atomic writes, creates 0o600)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        pass
    try:  # Linux: read the umask without changing it (os.umask would, for a moment, for all threads)
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """write(f) into a temporary file beside `path`, then rename: a crash (or kill -9) never leaves
    a partial file, and an existing file stays as it was until the new one is complete. binary: f
    is opened in binary mode (e.g. for torch.save), else as UTF-8 text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            if hasattr(os, "fchmod"):  # not on Windows (before Python 3.13)
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True, default=str))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


@contextlib.contextmanager
def atomic_dir(dest: Path):
    """A new empty folder beside `dest` to write into; when the block ends without an error it
    replaces `dest` (an existing one is removed first), otherwise it is removed. Blocks may nest:
    the inner folder is renamed into place first, each only once everything in both was written."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        yield tmp
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
