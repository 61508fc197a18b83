"""The run-directory lock: one process per workdir.

`<workdir>/.lock` is held with `fcntl.flock` on a file descriptor the process keeps open,
with the holder's pid, host and start time written inside. A second process is refused and
told that pid. The kernel drops a flock when its process dies, so the lock of a killed run
(SIGKILL, OOM, a lost node) is taken over by the next one with no clean-up; the file left
behind only names its last holder. Locks are re-entrant within a process: experiments.run
takes one around a whole run and the trainer's start takes it again without blocking
itself. On filesystems without distributed locks (some NFS set-ups) a flock is per host,
and two hosts on one workdir are not caught.

Standard library only, so every layer may use it (the trainers, `python -m she_jax.eval`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from typing import Any

LOCK_FILE = ".lock"


class WorkdirLocked(RuntimeError):
    """Another live process holds the run directory's lock."""


# Locks this process holds: real path of the workdir -> the open lock file's descriptor.
_HELD: dict[str, int] = {}


def _key(workdir: str) -> str:
    return os.path.realpath(workdir)


def lock_path(workdir: str) -> str:
    return os.path.join(workdir, LOCK_FILE)


def holder(workdir: str) -> dict[str, Any] | None:
    """What the lock file says about its (last) holder: {'pid', 'host', 'since'}, or None."""
    try:
        with open(lock_path(workdir)) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None  # being written right now, or not ours
    return info if isinstance(info, dict) else None


def _describe(info: Mapping[str, Any] | None) -> str:
    if not info:
        return "a process whose pid is not yet written"
    return (f"pid {info.get('pid')} on host {info.get('host')} "
            f"(since {info.get('since')})")


def holds(workdir: str) -> bool:
    """Whether this process holds `workdir`'s lock."""
    return _key(workdir) in _HELD


def acquire(workdir: str, *, wait: bool = False, create: bool = True) -> bool:
    """Takes `workdir`'s lock for this process; True if taken now, False if already held.

    Creates the directory (with `create`; else a missing one is FileNotFoundError). With
    `wait`, blocks until the holder releases it (or dies), logging who it waits for;
    without, raises WorkdirLocked naming the holder's pid.
    """
    key = _key(workdir)
    if key in _HELD:
        return False
    if not create and not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir} does not exist: not a run directory")
    os.makedirs(workdir, exist_ok=True)
    path = lock_path(workdir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by subprocesses
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            if not wait:
                raise WorkdirLocked(
                    f"{workdir} is in use by {_describe(holder(workdir))} (lock file {path}); "
                    "two runs in one directory would overwrite each other's checkpoints and "
                    "logs. Wait for it to finish or use another --workdir.") from None
            logging.warning("waiting for %s to release %s", _describe(holder(workdir)), path)
            fcntl.flock(fd, fcntl.LOCK_EX)
            logging.info("took the lock of %s", workdir)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = fd
    return True


def release(workdir: str) -> None:
    """Releases this process's lock on `workdir` (a no-op if it holds none)."""
    fd = _HELD.pop(_key(workdir), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor drops the flock


@contextlib.contextmanager
def locked(workdir: str, *, wait: bool = False, create: bool = True) -> Iterator[None]:
    """Holds `workdir`'s lock for the block (see `acquire`); re-entrant (an inner block of
    the same process on the same directory neither blocks nor releases)."""
    taken = acquire(workdir, wait=wait, create=create)
    try:
        yield
    finally:
        if taken:
            release(workdir)
