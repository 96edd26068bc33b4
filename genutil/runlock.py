"""One writer per run folder: an exclusive lock held for the run's life.

The lock is ``flock`` on ``<run folder>/.lock``, which records who holds it (pid, host, start
time, command line). The kernel drops the lock when its process ends, however it ends, so a
lock whose holder was killed is free again: the next run takes it and says whose it was. The
file itself is never deleted (deleting a lock file that another process is waiting on would let
two processes hold "the" lock); a cleanly finished run leaves it empty.

Shared file systems: on NFSv4 Linux maps ``flock`` to byte-range locks that every client sees,
so two machines cannot both hold a run's folder. File systems that keep locks local to each
machine (NFSv3 mounted with ``nolock``, some parallel file systems' ``localflock``) cannot
guard against a second machine: there, start each run from one place, and rely on the record in
``.lock`` to see who last held it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from typing import Optional

from genutil.errors import ConfigError

__all__ = ["RunLock", "LOCK_NAME", "pid_alive"]

LOCK_NAME = ".lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    return True


class RunLock:
    """``with RunLock(folder) as lock:`` or ``acquire()`` / ``release()``; ``taken_over`` says
    whose stale lock was taken, if any."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: Optional[int] = None
        self.taken_over = ""

    def acquire(self) -> "RunLock":
        """Take the lock or raise a one-line ConfigError naming its holder."""
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise ConfigError(
                f"{self.folder} is in use by another run ({_describe(holder)}): let it finish or "
                "stop it first (two runs in one folder would mix their checkpoints)"
            ) from None
        except OSError as e:  # a file system without locks
            os.close(fd)
            raise ConfigError(
                f"{self.folder} cannot be locked ({e.strerror}): use a --save_dir on a file "
                "system with file locks"
            ) from None
        previous = _read(fd)
        if previous:
            self.taken_over = (
                "took over the lock of a run that ended without releasing it "
                f"({_describe(previous)})"
            )
        record = (
            f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
            f"started={time.strftime('%Y-%m-%d %H:%M:%S')}\ncommand={' '.join(sys.argv)}\n"
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the record and drop the lock (the kernel drops it anyway when we exit)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
        f"{holder.get('started', '?')}"
    )
