"""File helpers shared by the stages: every write is all-or-nothing.

A file is written under a temporary name in its final directory, flushed to
disk, then renamed over the final name. A reader (another replica, the next
run) sees the old file or the new one, never half of one, and a run stopped
mid-write leaves no truncated output behind.
"""

import contextlib
import csv
import errno
import json
import os
import tempfile
from pathlib import Path

# mkstemp creates 0600 files; outputs get the usual umask-derived mode.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: Path):
    """Open `path` for writing text; it appears complete on success, not at all on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _fchmod_if_supported(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # KeyboardInterrupt included: a stopped run leaves no temp file.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# What a share refuses chmod with: SMB/Azure Files without unix extensions
# (modes come from the mount's file_mode), bindfs --chmod-deny.
_CHMOD_REFUSED = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def _fchmod_if_supported(fd: int, mode: int) -> None:
    """Give the file its usual mode; a share that has no modes keeps its own."""
    try:
        os.fchmod(fd, mode)
    except OSError as e:
        if e.errno not in _CHMOD_REFUSED:
            raise


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some file systems (SMB) refuse, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_csv(path: Path, header: list, rows) -> int:
    """Write rows under a header atomically; returns the number of rows."""
    n = 0
    with atomic_open(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow(row)
            n += 1
    return n


def read_csv(path: Path) -> list:
    """Rows of a CSV file with a header, as dicts."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_json(path: Path, data) -> None:
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path: Path):
    """The parsed file, or None when it is missing or not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
