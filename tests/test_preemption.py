"""Killed, stopped, corrupted or diverging runs: nothing is lost and nothing is mixed.

The end-to-end tests run `python -m camri.main` in subprocesses on digits with
batch size 4 (323 steps per epoch, so a signal lands inside an epoch) for 3
epochs, and compare metrics.csv byte for byte with an uninterrupted run's: data
order and dropout keys derive from (seed, epoch, step) and the epoch's metric
sums are checkpointed, so a resumed run must repeat the uninterrupted one
exactly. The uninterrupted run is made once per test session; the runs of one
pytest worker share JAX's persistent compilation cache (an executable loaded
from it is the one a fresh compile of the same program gives).
"""

import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import run_main

from camri import checkpoint
from camri import run_log
from camri import workdir_lock

STEPS_PER_EPOCH = 323  # 1437 - 145 validation = 1292 training images, batch size 4.


def _metrics_text(workdir):
  with open(os.path.join(workdir, "metrics.csv")) as f:
    return f.read()


def test_sigterm_mid_epoch_or_sigkill_then_rerun_repeats_the_uninterrupted_run(
    reference, digits_args, compile_cache, tmp_path):
  """SIGTERM mid-epoch 2 saves and exits; its rerun, killed (SIGKILL) mid-epoch, leaves
  that checkpoint the newest and its lock file, which the next takes over; that one,
  stopped as it finishes epoch 2, first flushes the epoch's row; and the last run ends as
  the uninterrupted one, byte for byte."""
  workdir = tmp_path / "run"
  args = [*digits_args, "--workdir", workdir]
  process = run_main.start(*args, compile_cache=compile_cache)
  assert run_main.wait_for_checkpoint(workdir, process) == STEPS_PER_EPOCH
  sent = time.monotonic()
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=60)
  assert time.monotonic() - sent < 60
  assert process.returncode == 143, err
  assert "Traceback" not in err
  assert "SIGTERM received: stopped at step" in err
  assert "Resume with the same command:" in err
  assert "-m camri.main --config configs/digits.py" in err
  step = max(run_main.checkpoint_steps(workdir))
  assert STEPS_PER_EPOCH < step < 2 * STEPS_PER_EPOCH  # Inside epoch 2.
  assert f"checkpoint saved at step {step}" in err
  assert [r["epoch"] for r in run_log.read_metrics(workdir)] == [1]

  killed = run_main.start(*args, compile_cache=compile_cache)
  for line in killed.stdout:
    if line.startswith(f"resuming from the checkpoint at step {step}"):
      killed.kill()  # SIGKILL, somewhere in epoch 2.
      break
  else:
    raise AssertionError(f"exited with {killed.wait()}:\n{killed.stderr.read()}")
  killed.communicate()
  assert max(run_main.checkpoint_steps(workdir)) == step
  assert [r["epoch"] for r in run_log.read_metrics(workdir)] == [1]
  # It leaves the workdir's lock file, but not the lock.
  assert workdir_lock.holder(workdir).pid == killed.pid

  # Rerun; stop it with SIGTERM as it finishes epoch 2: the row of a completed
  # epoch is flushed before it exits.
  process = run_main.start(*args, compile_cache=compile_cache)
  for line in process.stdout:
    if line.startswith("epoch 2/3"):
      process.send_signal(signal.SIGTERM)
      break
  out, err = process.communicate(timeout=60)
  assert process.returncode == 143 and "Traceback" not in err, err
  assert (f"taking over the lock of --workdir {workdir} left by pid {killed.pid} on host "
          f"{socket.gethostname()}" in err and "its process is gone" in err), err
  assert [r["epoch"] for r in run_log.read_metrics(workdir)] == [1, 2]
  assert max(run_main.checkpoint_steps(workdir)) >= 2 * STEPS_PER_EPOCH

  result = run_main.run(*args, compile_cache=compile_cache)
  assert result.returncode == 0, result.stderr
  assert "resuming from the checkpoint at step" in result.stdout
  assert [r["epoch"] for r in run_log.read_metrics(workdir)] == [1, 2, 3]
  assert _metrics_text(workdir) == _metrics_text(reference)
  assert not (workdir / ".lock").exists()


def test_sigterm_between_calls_of_several_steps_resumes_exactly(digits_args, compile_cache,
                                                                tmp_path):
  """With 7 steps per call (a loop on the devices), a stop lands between calls, and
  the augmented run resumed repeats an uninterrupted one with the same steps_per_call.

  One epoch at batch 32: 40 steps, in calls ending at steps 7, 14, 21, ...; the
  SIGTERM sent at step 20 stops the run after the call that ends at 21. XLA's
  default optimisation: at the tests' level 0, XLA:CPU's loops run 3x slower.
  The workdir holds a feed.json naming the other feed, as runs before wrote it
  (they refused to resume an augmented run on the other feed): it is ignored.
  """
  args = [*digits_args, "--config.num_epochs=1", "--config.batch_size=32",
          "--config.steps_per_call=7", "--config.data_on_device=true",
          "--config.augment=('crop',)"]
  xla_flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  uninterrupted = tmp_path / "uninterrupted"
  result = run_main.run(*args, "--workdir", uninterrupted, compile_cache=compile_cache,
                        extra_env=xla_flags)
  assert result.returncode == 0, result.stderr
  assert "data on the devices (uint8, 0.1 MiB), 7 steps per call" in result.stdout

  workdir = tmp_path / "run"
  result = run_main.run("20", *args, "--workdir", workdir, main="tests/signal_at_step_main.py",
                        compile_cache=compile_cache, extra_env=xla_flags)
  assert result.returncode == 143, result.stderr
  assert "SIGTERM received: stopped at step 21 of 40; checkpoint saved at step 21" in result.stderr
  assert run_main.checkpoint_steps(workdir) == [21]
  (workdir / "feed.json").write_text('{"data_on_device": false}\n')
  result = run_main.run(*args, "--workdir", workdir, compile_cache=compile_cache,
                        extra_env=xla_flags)
  assert result.returncode == 0, result.stderr
  assert "resuming from the checkpoint at step 21" in result.stdout
  assert _metrics_text(workdir) == _metrics_text(uninterrupted)


def _garble_largest_array_file(step_dir):
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
           for name in names if os.sep + "d" + os.sep in os.path.join(root, name)]
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    f.seek(0)
    f.write(data)


def test_corrupt_newest_checkpoint_resumes_from_the_previous(reference, digits_args,
                                                             compile_cache, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  checkpoints = workdir / "checkpoints"
  assert run_main.checkpoint_steps(workdir) == [2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]
  # Garbled bytes that orbax reads without complaint: only the fingerprint catches them.
  _garble_largest_array_file(checkpoints / str(3 * STEPS_PER_EPOCH))
  # And a checkpoint a killed process left half written.
  partial = checkpoints / f"{4 * STEPS_PER_EPOCH}.orbax-checkpoint-tmp-1234"
  shutil.copytree(checkpoints / str(2 * STEPS_PER_EPOCH) / "train_sums", partial / "train_sums")

  args = [*digits_args, "--config.num_epochs=4", "--workdir", workdir]
  result = run_main.run(*args, compile_cache=compile_cache)
  assert result.returncode == 0, result.stderr
  # The run's first line says what it runs on (2 simulated devices here).
  assert result.stdout.splitlines()[0] == (
      "2 x cpu, 1 process; batch 4 (2 per device); digits: train 1292, val 145, test 360; "
      f"{STEPS_PER_EPOCH} steps per epoch; data on the devices (uint8, 0.1 MiB), "
      "1 step per call")
  assert f"the checkpoint at step {3 * STEPS_PER_EPOCH} is unreadable" in result.stderr
  assert "do not match the fingerprint" in result.stderr
  assert "partly written checkpoint" in result.stderr
  assert f"resuming from the checkpoint at step {2 * STEPS_PER_EPOCH}" in result.stdout
  assert not partial.exists()
  rows = _metrics_text(workdir).splitlines()
  assert [r["epoch"] for r in run_log.read_metrics(workdir)] == [1, 2, 3, 4]
  assert rows[:4] == _metrics_text(reference).splitlines()  # Epoch 3 recomputed, identical.
  assert run_main.checkpoint_steps(workdir) == [3 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    reference, digits_args, compile_cache, tmp_path):
  # The reference as it was after epoch 2, resumed: NaN images in batch 3 of epoch 3 (bad
  # data), that is at step 646 + 4.
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  shutil.rmtree(workdir / "checkpoints" / str(3 * STEPS_PER_EPOCH))
  result = run_main.run(str(2 * STEPS_PER_EPOCH + 3), *digits_args, "--workdir", workdir,
                        main="tests/nan_data_main.py",
                        compile_cache=compile_cache)
  lines = run_main.error_lines(result.stderr)
  assert result.returncode == 3, result.stderr
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
  assert lines[0].startswith(
      f"error: the training loss or state became NaN or Inf at step {2 * STEPS_PER_EPOCH + 4}; ")
  assert f"the last good checkpoint (step {2 * STEPS_PER_EPOCH}) is kept" in lines[0]
  assert run_main.checkpoint_steps(workdir) == [2 * STEPS_PER_EPOCH]
  assert [r["epoch"] for r in run_log.read_metrics(workdir)] == [1, 2]
  saved = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(2 * STEPS_PER_EPOCH), "state"))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_a_second_signal_exits_at_once():
  script = ("import os, signal, time\n"
            "from camri.preemption import StopRequest\n"
            "stop = StopRequest(); stop.install()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "print('first:', stop.signal, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(30)\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=run_main.ROOT, env=run_main.env(),
                          capture_output=True, text=True, timeout=30)
  assert result.returncode == 128 + signal.SIGTERM
  assert result.stdout == "first: SIGTERM\n"
  assert "SIGTERM again: exiting now" in result.stderr


def test_stop_request_gives_the_signals_back():
  from camri.preemption import StopRequest  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  stop = StopRequest()
  stop.install()
  assert signal.getsignal(signal.SIGINT) == stop._handle  # pylint: disable=protected-access
  stop.uninstall()
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("damage", ["garble", "truncate", "delete_manifest", "delete_arrays"])
def test_restore_latest_skips_a_damaged_checkpoint(damage, tmp_path, monkeypatch):
  state = {"w": jnp.arange(4096, dtype=jnp.float32).reshape(64, 64), "b": jnp.ones(3)}
  sums = {"count": jnp.zeros(())}
  manager = checkpoint.manager(tmp_path, keep=3)
  for step in (1, 2):
    checkpoint.save(manager, step, jax.tree.map(lambda x: x + step, state), sums)
  manager.close()
  step_dir = tmp_path / "checkpoints" / "2"
  data_files = [os.path.join(root, n) for root, _, names in os.walk(step_dir / "state")
                for n in names if os.sep + "d" + os.sep in os.path.join(root, n)]
  if damage == "garble":
    _garble_largest_array_file(step_dir)
  elif damage == "truncate":
    path = max(data_files, key=os.path.getsize)
    os.truncate(path, os.path.getsize(path) // 2)
  elif damage == "delete_manifest":
    os.remove(step_dir / "state" / "manifest.ocdbt")
  else:
    for path in data_files:
      os.remove(path)

  manager = checkpoint.manager(tmp_path, keep=3)
  reported = []  # The failed restore's abandoned reads say nothing, now or when collected.
  monkeypatch.setattr(sys, "unraisablehook", reported.append)
  step, restored, _ = checkpoint.restore_latest(manager, state, sums, delete_unreadable=True)
  gc.collect()
  assert not reported, [(u.exc_type, u.exc_value, u.object) for u in reported]
  assert step == 1
  np.testing.assert_array_equal(restored["w"], state["w"] + 1)
  assert manager.all_steps() == [1]  # The damaged one is gone: step 2 can be saved again.
  manager.close()


def test_restore_latest_refuses_when_no_checkpoint_restores(tmp_path):
  manager = checkpoint.manager(tmp_path, keep=3)
  checkpoint.save(manager, 1, {"w": jnp.ones(3)}, {"count": jnp.zeros(())})
  manager.close()
  manager = checkpoint.manager(tmp_path, keep=3)
  with pytest.raises(checkpoint.UnreadableCheckpointError, match="delete .*checkpoints"):
    checkpoint.restore_latest(manager, {"w": jnp.ones(4)}, {"count": jnp.zeros(())})
  assert manager.all_steps() == [1]  # Kept: the code may be what changed.
  manager.close()


def _population(tmp_path, name, digits_args, extra=()):
  """A POPULATION.json of two digits members (other seeds and learning rates), 2 epochs of
  80 steps (batch 16)."""
  members = [[*digits_args, "--config.num_epochs=2", "--config.batch_size=16", *extra,
               f"--config.seed={seed}",
              f"--config.learning_rate={rate}", "--workdir", str(tmp_path / name / f"m{seed}")]
             for seed, rate in ((0, 1e-3), (1, 3e-3))]
  spec = tmp_path / f"{name}.json"
  spec.write_text(json.dumps({"members": members}))
  return spec, [tmp_path / name / f"m{seed}" for seed in (0, 1)]


def test_a_killed_or_stopped_population_resumes_every_member_exactly(digits_args, compile_cache,
                                                                     tmp_path):
  """kill -9 mid-epoch, then a SIGTERM between calls of the resumed population: each
  member's metrics.csv is then the uninterrupted population's, byte for byte."""
  spec, uninterrupted = _population(tmp_path, "uninterrupted", digits_args)
  result = run_main.run(spec, module="camri.population", compile_cache=compile_cache)
  assert result.returncode == 0, result.stderr
  assert "a population of 2 runs" in result.stdout

  spec, stopped = _population(tmp_path, "stopped", digits_args)
  process = run_main.start(spec, module="camri.population", compile_cache=compile_cache)
  assert run_main.wait_for_checkpoint(stopped[0], process) == 80  # An epoch.
  process.kill()  # SIGKILL, somewhere in epoch 2 (member 1 may not have saved step 80).
  process.communicate()
  # The stop poll comes every 20 steps: a signal after step 100 stops at step 100.
  result = run_main.run("100", "--population", spec, main="tests/signal_at_step_main.py",
                        compile_cache=compile_cache)
  assert result.returncode == 143, result.stderr
  assert "Resume with the same command:" in result.stderr and "-m camri.population" in result.stderr
  assert [run_main.checkpoint_steps(w)[-1] for w in stopped] == [100, 100]
  result = run_main.run(spec, module="camri.population", compile_cache=compile_cache)
  assert result.returncode == 0, result.stderr
  assert "resuming from the checkpoint at step 100" in result.stdout
  for workdir, reference_dir in zip(stopped, uninterrupted):
    assert _metrics_text(workdir) == _metrics_text(reference_dir)
