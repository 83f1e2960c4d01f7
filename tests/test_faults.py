"""Faults of shared clusters: a busy workdir, damaged prepared data, failed writes, live readers.

The end-to-end tests run `python -m camri.main` in subprocesses on a copy of
the session's uninterrupted digits run (`reference` in conftest.py) as it was
after epoch 2: its epoch-3 checkpoint removed, a rerun resumes from step 646
and trains epoch 3 only, and must end with the reference's metrics.csv byte for
byte. Every error is one `error:` line on stderr without a traceback.
"""

import errno
import os
import resource
import shutil
import subprocess
import sys

import pytest
import run_main

from camri import run_log

STEPS_PER_EPOCH = 323  # digits_args: 1292 training images, batch size 4.


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
            "try:\n  run_log._atomic_write(Path(sys.argv[1]), 'x' * 5000)\n"
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
