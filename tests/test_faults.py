"""Faults of shared clusters: a busy workdir, damaged prepared data, failed writes, live readers.

The end-to-end tests run `python -m camri.main` in subprocesses on a copy of
the session's uninterrupted digits run (`reference` in conftest.py) as it was
after epoch 2: its epoch-3 checkpoint removed, a rerun resumes from step 646
and trains epoch 3 only, and must end with the reference's metrics.csv byte for
byte. Every error is one `error:` line on stderr without a traceback.
"""

import errno
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import run_main

from camri import prepare
from camri import run_log
from camri import workdir_lock
from camri.data import pipeline
from launch import grid

STEPS_PER_EPOCH = 323  # digits_args: 1292 training images, batch size 4.
HOST = socket.gethostname()


def _after_epoch_2(reference, workdir):
  """A copy of the reference run without its last checkpoint: a rerun trains epoch 3."""
  shutil.copytree(reference, workdir)
  shutil.rmtree(workdir / "checkpoints" / str(3 * STEPS_PER_EPOCH))
  return workdir


def _metrics_text(workdir):
  return (workdir / "metrics.csv").read_text()


def _snapshot(directory):
  """Every file's bytes and modification time, and every directory, under `directory`."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs:
      out[os.path.join(root, name)] = "dir"
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[path] = (f.read(), os.stat(path).st_mtime_ns)
  return out


def _one_error_line(result, status):
  lines = run_main.error_lines(result.stderr)
  assert result.returncode == status, result.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert "Traceback" not in result.stderr
  return lines[0]


# The workdir lock.

def _stopped(pid) -> bool:
  """Whether every thread of process `pid` is stopped (state T in /proc)."""
  tasks = f"/proc/{pid}/task"
  for task in os.listdir(tasks):
    try:
      with open(f"{tasks}/{task}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:  # The thread ended.
      continue
    if state not in "tT":
      return False
  return True


def _freeze(process, timeout=60):
  """SIGSTOP, and waits until it took effect: a signal is delivered asynchronously."""
  process.send_signal(signal.SIGSTOP)
  deadline = time.monotonic() + timeout
  while not _stopped(process.pid):
    assert time.monotonic() < deadline, "the process did not stop"
    time.sleep(0.01)


def test_a_second_run_on_a_busy_workdir_exits_2_and_the_first_finishes_unharmed(
    reference, digits_args, compile_cache, tmp_path):
  workdir = _after_epoch_2(reference, tmp_path / "run")
  args = [*digits_args, "--workdir", workdir]
  first = run_main.start(*args, compile_cache=compile_cache)
  try:
    for line in first.stdout:
      if line.startswith("resuming from the checkpoint at step"):
        break
    else:
      raise AssertionError(f"exited with {first.wait()}:\n{first.stderr.read()}")
    # Frozen mid-epoch 3, whatever the machine's load: the second run meets a
    # training run, and a workdir that nothing else writes to.
    _freeze(first)
    holder = workdir_lock.holder(workdir)
    before = _snapshot(workdir)
    second = run_main.run(*args, compile_cache=compile_cache)
    assert _snapshot(workdir) == before  # No config.json rewrite, no checkpoint clean-up.
  finally:
    first.send_signal(signal.SIGCONT)
  line = _one_error_line(second, 2)
  assert line == (f"error: --workdir {workdir} is in use by pid {first.pid} on host {HOST} "
                  f"since {holder.since} ({workdir}/.lock): wait for that run to end or stop it, "
                  "or use another --workdir")
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0 and "Traceback" not in err, err
  assert _metrics_text(workdir) == _metrics_text(reference)
  assert not (workdir / ".lock").exists()
  # (A run killed with kill -9 leaves the lock file but not the lock, and its rerun takes
  # the lock over: test_preemption.py's SIGKILLed run.)


def test_a_held_workdir_refuses_a_lock_and_release_leaves_nothing(tmp_path):
  workdir = tmp_path / "run"
  with workdir_lock.WorkdirLock(workdir):
    found = workdir_lock.holder(workdir)
    assert (found.host, found.pid) == (HOST, os.getpid())
    assert time.strptime(found.since, "%Y-%m-%dT%H:%M:%SZ")
    assert workdir_lock.busy(workdir) == found
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"in use by pid {os.getpid()} on "
                       f"host {HOST} since {found.since}"):
      workdir_lock.WorkdirLock(workdir).acquire()
  assert not workdir.exists()  # It made the directory, and nothing else was written there.
  assert workdir_lock.holder(workdir) is None


def _dead_pid() -> int:
  process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
  return int(process.stdout)


def _write_lock_file(workdir, host, pid, age_seconds=0.0):
  workdir.mkdir(exist_ok=True)
  path = workdir / workdir_lock.LOCK_FILE
  path.write_text(f'{{"host": "{host}", "pid": {pid}, "since": "2026-01-01T00:00:00Z"}}\n')
  stamp = time.time() - age_seconds
  os.utime(path, (stamp, stamp))
  return path


def _without_flock(monkeypatch):
  """As on a filesystem without flock (some NFS, Lustre): the lock file's contents decide."""
  def unsupported(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
  monkeypatch.setattr(workdir_lock.fcntl, "flock", unsupported)


@pytest.fixture(params=["flock", "no_flock"])
def flock_mode(request, monkeypatch):
  if request.param == "no_flock":
    _without_flock(monkeypatch)
  return request.param


@pytest.mark.parametrize("host, age, busy", [
    (HOST, 0, False),  # Its process is gone.
    ("elsewhere", 60, True),  # Another host's heartbeat 1 minute old.
    ("elsewhere", workdir_lock.STALE_AFTER_SECONDS + 60, False),  # 11 minutes old.
])
def test_stale_locks_are_taken_over_with_a_warning_live_ones_refused(
    flock_mode, host, age, busy, tmp_path, caplog):
  del flock_mode
  path = _write_lock_file(tmp_path, host, _dead_pid(), age)
  lock = workdir_lock.WorkdirLock(tmp_path)
  if busy:
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f"on host {host} since"):
      lock.acquire()
    assert "elsewhere" in path.read_text()
    return
  with caplog.at_level(logging.WARNING), lock:
    assert workdir_lock.holder(tmp_path).pid == os.getpid()
  assert f"taking over the lock of --workdir {tmp_path} left by pid" in caplog.text
  assert ("its process is gone" if host == HOST else "no heartbeat for 11 minutes") in caplog.text
  assert not path.exists()


def test_without_flock_a_live_pid_on_this_host_holds_the_lock(monkeypatch, tmp_path):
  _without_flock(monkeypatch)
  _write_lock_file(tmp_path, HOST, os.getppid())  # Alive: pytest's parent.
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f"pid {os.getppid()} on host {HOST}"):
    workdir_lock.WorkdirLock(tmp_path).acquire()


def test_the_heartbeat_refreshes_the_lock_files_time(monkeypatch, tmp_path):
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECONDS", 0.02)
  with workdir_lock.WorkdirLock(tmp_path):
    path = tmp_path / workdir_lock.LOCK_FILE
    os.utime(path, (1, 1))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 5


def test_grid_skips_a_run_whose_workdir_is_busy(tmp_path, capsys):
  runs = grid.expand("configs/digits.py", [{"seed": 0}, {"seed": 1}], tmp_path)
  for run in runs:
    os.makedirs(run.workdir)
  with workdir_lock.WorkdirLock(runs[0].workdir):
    todo = grid.pending(runs)
    holder = workdir_lock.holder(runs[0].workdir)
  assert todo == [runs[1]]
  err = capsys.readouterr().err
  assert f"running elsewhere: seed=0 ({holder.describe()})" in err
  assert ("2 runs: 0 finished (skipped), 1 running elsewhere (skipped), 1 unfinished (resumed)"
          in err)
  assert grid.pending(runs) == runs  # Released.


# Damaged prepared data.

def test_a_truncated_tfrecord_stops_the_run_naming_the_directory_to_delete(
    reference, digits_args, compile_cache, tfds_dir, tmp_path):
  data_dir = tmp_path / "tfds"
  shutil.copytree(os.path.join(tfds_dir, "digits"), data_dir / "digits")  # Never the shared one.
  prepared = data_dir / "digits" / "1.0.0"
  (record,) = prepared.glob("digits-train.tfrecord-*")
  os.truncate(record, record.stat().st_size * 9 // 10)
  workdir = _after_epoch_2(reference, tmp_path / "run")
  args = [*digits_args, f"--config.data_dir={data_dir}", "--workdir", workdir]

  line = _one_error_line(run_main.run(*args, compile_cache=compile_cache), 5)
  assert line.startswith("error: reading the prepared digits data failed (DataLossError: "
                         "truncated record at ")
  assert line.endswith(f"delete {prepared} and the next run prepares it again (the checkpoints "
                       "written so far are kept)")
  assert run_main.checkpoint_steps(workdir) == [2 * STEPS_PER_EPOCH]
  verbose = run_main.run(*args, compile_cache=compile_cache, extra_env={"CAMRI_TRACEBACK": "1"})
  assert verbose.returncode == 5 and "Traceback" in verbose.stderr
  assert verbose.stderr.rstrip().splitlines()[-1] == line

  shutil.rmtree(prepared)  # As the line says: the rerun prepares it again, and resumes.
  result = run_main.run(*args, compile_cache=compile_cache)
  assert result.returncode == 0, result.stderr
  assert f"resuming from the checkpoint at step {2 * STEPS_PER_EPOCH}" in result.stdout
  assert _metrics_text(workdir) == _metrics_text(reference)


def test_damage_found_while_holding_out_the_validation_split_is_the_same_error(
    digits_config, tfds_dir, tmp_path):
  data_dir = tmp_path / "tfds"
  shutil.copytree(os.path.join(tfds_dir, "digits"), data_dir / "digits")
  prepared = data_dir / "digits" / "1.0.0"
  for cache in prepared.glob("camri-validation-*"):
    cache.unlink()  # So preparing the run reads the training split's labels.
  (record,) = prepared.glob("digits-train.tfrecord-*")
  os.truncate(record, record.stat().st_size * 9 // 10)
  digits_config.data_dir = str(data_dir)
  with pytest.raises(pipeline.DamagedDataError, match=f"delete {prepared} and the next run"):
    prepare.prepare_run(digits_config, str(tmp_path / "run"))


# Write failures.

def _limit_file_size():
  """Files of at most 100 kB: checkpoint data fails (EFBIG), metrics.csv and predictions fit."""
  resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_failed_checkpoint_write_stops_in_one_line_and_the_rerun_ends_as_uninterrupted(
    reference, digits_args, compile_cache, tmp_path):
  workdir = _after_epoch_2(reference, tmp_path / "run")
  args = [*digits_args, "--workdir", workdir]
  kept = _snapshot(workdir / "checkpoints" / str(2 * STEPS_PER_EPOCH))
  # The compilation cache is read, never written (a cache write would fail too).
  result = run_main.run(*args, compile_cache=compile_cache, preexec_fn=_limit_file_size,
                        extra_env={"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"})
  line = _one_error_line(result, 6)
  assert line.startswith(f"error: writing {workdir}/checkpoints/{3 * STEPS_PER_EPOCH}"
                         ".orbax-checkpoint-tmp/")
  assert line.endswith(" failed: File too large (EFBIG); the checkpoints and metrics.csv written "
                       "before are intact: make room (or fix the quota or permissions) and rerun "
                       "the same command to resume")
  assert run_main.checkpoint_steps(workdir) == [2 * STEPS_PER_EPOCH]
  assert _snapshot(workdir / "checkpoints" / str(2 * STEPS_PER_EPOCH)) == kept
  # The epoch-3 row goes with its checkpoint: the run does not look finished.
  assert _metrics_text(workdir).splitlines() == _metrics_text(reference).splitlines()[:3]
  assert not run_log.is_finished(workdir)
  assert not (workdir / ".lock").exists()

  result = run_main.run(*args, compile_cache=compile_cache)
  assert result.returncode == 0, result.stderr
  assert f"resuming from the checkpoint at step {2 * STEPS_PER_EPOCH}" in result.stdout
  assert _metrics_text(workdir) == _metrics_text(reference)
  assert run_main.checkpoint_steps(workdir) == [2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]


def test_a_failed_metrics_write_keeps_the_old_file_and_names_it(tmp_path):
  path = tmp_path / "metrics.csv"
  path.write_text("epoch\n1\n")
  script = ("import resource, sys\nfrom pathlib import Path\nfrom camri import run_log\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
            "try:\n  run_log.atomic_write(Path(sys.argv[1]), 'x' * 5000)\n"
            "except OSError as e:\n  print(run_log.write_failure(e))\n")
  result = subprocess.run([sys.executable, "-c", script, str(path)], cwd=run_main.ROOT,
                          env=run_main.env(), capture_output=True, text=True, timeout=60)
  assert result.stdout.startswith(f"writing {path} failed: File too large (EFBIG); "), result.stderr
  assert path.read_text() == "epoch\n1\n"
  assert sorted(os.listdir(tmp_path)) == ["metrics.csv"]  # No temporary left.


def _wrapped_os_error():
  try:
    try:
      raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/r/metrics.csv")
    except OSError as cause:
      raise RuntimeError("save failed") from cause
  except RuntimeError as e:
    return e


@pytest.mark.parametrize("error, expected", [
    # orbax: tensorstore's error from the save's thread, re-raised in the main thread.
    (ValueError('OUT_OF_RANGE: Error writing "w/0" in OCDBT database at local file '
                '"/r/c/2.orbax-checkpoint-tmp/s/": Failed writing: '
                '"/r/c/2.orbax-checkpoint-tmp/s/d/ec8d": Failed to write 437078 bytes to file 6: '
                "File too large [os_error_code='27']"),
     "writing /r/c/2.orbax-checkpoint-tmp/s/d/ec8d failed: File too large (EFBIG)"),
    # TensorBoard: TensorFlow's summary writer.
    (RuntimeError("{{function_node __wrapped__FlushSummaryWriter_device_/job:localhost/replica:0/"
                  "task:0/device:CPU:0}} /r/tensorboard/events.out.v2; No space left on device\n\t"
                  "Failed to flush 1 events to /r/tensorboard/events.out.v2\n\tCould not flush "
                  "events file. [Op:FlushSummaryWriter] name: "),
     "writing /r/tensorboard/events.out.v2 failed: No space left on device (ENOSPC)"),
    # An OSError that a library wrapped, found along the chain of causes.
    (_wrapped_os_error(), "writing /r/metrics.csv failed: Disk quota exceeded (EDQUOT)"),
])
def test_write_failure_finds_the_os_error_in_wrapped_errors(error, expected):
  assert run_log.write_failure(error).startswith(expected + "; ")


def test_other_errors_are_not_write_failures():
  assert run_log.write_failure(ValueError("shapes (3,) and (4,) differ")) is None
  assert run_log.write_failure(OSError(errno.ENOENT, "No such file or directory", "/x")) is None


# Readers never change a workdir.

def _garble(path):
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
  path.write_bytes(bytes(data))


def test_reading_features_changes_nothing_in_the_workdir(reference, tfds_dir, tmp_path):
  from camri import features  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  checkpoints = workdir / "checkpoints"
  # A checkpoint being written (as the trainer leaves it mid-save) ...
  in_flight = checkpoints / f"{4 * STEPS_PER_EPOCH}.orbax-checkpoint-tmp-1234"
  shutil.copytree(checkpoints / str(3 * STEPS_PER_EPOCH) / "train_sums", in_flight / "train_sums")
  # ... and a newest checkpoint that does not restore (the trainer would delete it).
  newest = checkpoints / str(3 * STEPS_PER_EPOCH) / "state"
  _garble(max((p for p in newest.rglob("*") if p.is_file() and p.parent.name == "d"),
              key=lambda p: p.stat().st_size))
  before = _snapshot(workdir)

  run = features.load_test_features(workdir, data_dir=tfds_dir)
  assert run.step == 2 * STEPS_PER_EPOCH  # The newest checkpoint that restores intact.
  assert run.features.shape == (360, 64) and run.labels.shape == (360,)
  assert _snapshot(workdir) == before
