"""One training process per workdir: a lock file that names its holder.

`camri.main` holds `DIR/.lock` for a run's whole life (process 0, with
several processes), taken before anything in DIR is read or written. The
file holds the holder's host, pid and start time; its modification time is a
heartbeat, refreshed every `HEARTBEAT_SECONDS` by a daemon thread. The lock
itself is `fcntl.flock` on the file: the kernel (or the NFS server) releases
it when its process dies, kill -9 included, so a lock left by a killed
process on this host never blocks the next run; its file is taken over with a
warning.

Where flock is unsupported (some NFS and Lustre mounts), or may only lock
against processes of the same host (NFS mounted with local_lock), the file's
contents decide: a holder on this host is alive while its pid is; a holder on
another host is alive while its heartbeat is younger than
`STALE_AFTER_SECONDS` (10 minutes). So a run killed on another host blocks its
workdir for at most 10 minutes; one stopped cleanly removes the file. Without
flock, two processes starting in the same instant can both take the lock.

The file is removed when the lock is released, as is the workdir when taking
the lock created it and nothing else was written there. Readers
(`holder`, `busy`; launch.grid's "running elsewhere") read the file without
taking the lock. Light (the standard library and absl): the launcher imports it.
"""

import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time

from absl import logging

LOCK_FILE = ".lock"
HEARTBEAT_SECONDS = 60
STALE_AFTER_SECONDS = 600

# flock errors meaning "not supported here" rather than "held by another".
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir's lock."""


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds (or held) a workdir's lock, as its file says."""
  host: str
  pid: int
  since: str  # UTC, ISO 8601.
  heartbeat: float  # The file's modification time (seconds since the epoch).

  def describe(self) -> str:
    return f"pid {self.pid} on host {self.host} since {self.since}"

  def heartbeat_age(self) -> float:
    return max(0.0, time.time() - self.heartbeat)

  def alive(self) -> bool:
    """Whether the holder still runs: its pid on this host, its heartbeat on another."""
    if self.host != socket.gethostname():
      return self.heartbeat_age() < STALE_AFTER_SECONDS
    try:
      os.kill(self.pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:  # Alive, another user's.
      return True
    return True


def lock_path(workdir) -> str:
  return os.path.join(os.fspath(workdir), LOCK_FILE)


def _parse(text: str, mtime: float) -> Holder | None:
  try:
    record = json.loads(text)
    return Holder(str(record["host"]), int(record["pid"]), str(record["since"]), mtime)
  except (ValueError, KeyError, TypeError):
    return None  # Empty (being written) or not ours.


def holder(workdir) -> Holder | None:
  """The holder named by the workdir's lock file, alive or not; None without one.

  Reads the file without taking the lock.
  """
  try:
    with open(lock_path(workdir)) as f:
      return _parse(f.read(), os.fstat(f.fileno()).st_mtime)
  except OSError:  # No such file (or not readable): no holder known.
    return None


def busy(workdir) -> Holder | None:
  """The holder of the workdir's lock if it looks alive (see `Holder.alive`), else None."""
  found = holder(workdir)
  return found if found is not None and found.alive() else None


class WorkdirLock:
  """The lock on `workdir`: `acquire`, then `release` (or use it as a context manager)."""

  def __init__(self, workdir):
    self.workdir = os.fspath(workdir)
    self.path = lock_path(workdir)
    self._fd = None
    self._created_dir = False
    self._stop = threading.Event()
    self._heartbeat = None

  def acquire(self):
    """Takes the lock, or raises WorkdirBusyError naming the live holder.

    Creates the workdir if needed; a stale lock (its holder gone) is taken
    over with a warning. Raises OSError when the lock file cannot be written.
    """
    self._stop = threading.Event()
    self._created_dir = not os.path.isdir(self.workdir)
    os.makedirs(self.workdir, exist_ok=True)
    for _ in range(10):  # A holder releasing as we open removes the file: open it again.
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      try:
        if self._try_lock(fd):
          self._fd = fd
          break
      except BaseException:
        os.close(fd)
        self._remove_created_dir()
        raise
      os.close(fd)
    else:
      raise WorkdirBusyError(f"--workdir {self.workdir} is in use: its lock file {self.path} "
                             "keeps being replaced")
    try:
      self._write_record()
    except OSError as e:  # Name the file: ftruncate and pwrite do not.
      self.release()
      raise OSError(e.errno, e.strerror, self.path) from e
    self._heartbeat = threading.Thread(target=self._beat, name="workdir-lock-heartbeat",
                                       daemon=True)
    self._heartbeat.start()
    return self

  def _try_lock(self, fd) -> bool:
    """Whether `fd` is now the held lock; False when its file was replaced (retry)."""
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      flocked = True
    except BlockingIOError:
      self._busy(holder(self.workdir))
    except OSError as e:
      if e.errno not in _UNSUPPORTED:
        raise
      flocked = False
    try:
      if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
        return False
    except FileNotFoundError:
      return False
    with os.fdopen(os.dup(fd)) as f:
      previous = _parse(f.read(), os.fstat(fd).st_mtime)
    # With flock, only a holder on another host can hide from it (local-only flock).
    if previous is not None and (previous.host != socket.gethostname() or not flocked) \
        and previous.alive():
      self._busy(previous)
    if previous is not None:
      logging.warning("taking over the lock of --workdir %s left by %s: %s", self.workdir,
                      previous.describe(),
                      "its process is gone" if previous.host == socket.gethostname() else
                      f"no heartbeat for {previous.heartbeat_age() / 60:.0f} minutes")
    return True

  def _busy(self, found: Holder | None):
    who = found.describe() if found is not None else "a process that is starting"
    raise WorkdirBusyError(
        f"--workdir {self.workdir} is in use by {who} ({self.path}): wait for that run "
        "to end or stop it, or use another --workdir")

  def _write_record(self):
    since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since})
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, (record + "\n").encode(), 0)
    os.fsync(self._fd)

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        os.utime(self._fd)
      except OSError as e:  # The run itself reports a failing disk.
        logging.warning("could not refresh the heartbeat of %s: %s", self.path, e)

  def release(self):
    """Removes the lock file (and the workdir, if it made it and it stayed empty); unlocks."""
    if self._fd is None:
      return
    self._stop.set()
    if self._heartbeat is not None:
      self._heartbeat.join()
      self._heartbeat = None
    try:
      if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
        os.unlink(self.path)  # While still locked: a waiting opener sees a new file.
    except OSError:
      pass
    os.close(self._fd)
    self._fd = None
    self._remove_created_dir()

  def _remove_created_dir(self):
    if self._created_dir:
      try:
        os.rmdir(self.workdir)
      except OSError:
        pass  # Not empty: the run wrote there.

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc_info):
    self.release()
