"""Several processes, as on several hosts: two `camri.main --distributed` on this machine.

Each process has the session's 2 simulated CPU devices (4 in all) and reads its
own share of the data; they find each other the way they would in a Slurm job
step (SLURM_* variables, with the coordinator's address given explicitly) and
all-reduce over gloo. A preemption notice that reaches one process only (process 1
signals itself mid-epoch 2, tests/signal_at_step_main.py) must stop both at the
same step, both exiting 143, and the rerun must repeat the uninterrupted
two-process run byte for byte. The runs augment (crop), each
example by its global id: the first records what its train steps see
(tests/feed_probe_main.py), the same through either feed, and the i-th
example of each process cropped apart.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import round_off
import run_main

from camri import features
from camri import run_log
from tests import feed_probe

PROCESSES = 2
PER_PROCESS = 16  # Examples per process and step.
# 1292 training images: 651 and 641 per process. The stop poll comes every 10 steps
# (`train.call_hooks`, a quarter epoch): a signal after step 41 stops both at step 50.
STEPS_PER_EPOCH = 40
SIGNAL_STEP = STEPS_PER_EPOCH + 1
STOP_STEP = 50


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_job(args, compile_cache, mains=((),) * PROCESSES) -> list[subprocess.Popen]:
  """The processes of one job step, each `camri.main --distributed` (or the script and
  arguments of its entry in `mains`, taking the same flags)."""
  port = _free_port()
  processes = []
  for rank, main in enumerate(mains):
    env = {**run_main.env(compile_cache), "SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "localhost",
           "SLURM_NTASKS": str(PROCESSES), "SLURM_PROCID": str(rank),
           "SLURM_LOCALID": str(rank), "JAX_COORDINATOR_ADDRESS": f"localhost:{port}"}
    command = ([sys.executable, *map(str, main), *map(str, args), "--distributed"] if main
               else run_main.command(*args, "--distributed"))
    processes.append(subprocess.Popen(
        command, cwd=run_main.ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return processes


def _finish(processes, timeout=300) -> list[tuple[int, str, str]]:
  results = []
  for process in processes:
    try:
      out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for p in processes:
        p.kill()
      raise
    results.append((process.returncode, out, err))
  return results


def _metrics_text(workdir):
  with open(os.path.join(workdir, "metrics.csv")) as f:
    return f.read()


@pytest.fixture
def job_args(tfds_dir):
  return ["--config", "configs/digits.py", f"--config.data_dir={tfds_dir}",
          "--config.num_epochs=2", f"--config.batch_size={PER_PROCESS * PROCESSES}",
          "--config.progress_bar=False", "--config.augment=('crop',)"]


def _assert_each_process_crops_its_own_examples(probe):
  """Through either feed, the step sees the same global batches; the i-th example of
  each process is cropped by its own key (with keys by local position, as tf.data's
  augmentation had them, every process would crop its i-th example alike)."""
  seen = [np.load(probe / f"p{p}.npz") for p in range(PROCESSES)]
  for s in seen:
    np.testing.assert_array_equal(s["host"], s["device"])
    np.testing.assert_array_equal(s["host"], seen[0]["host"])
  assert sorted(np.concatenate([s["rows"] for s in seen])) == list(range(PER_PROCESS * PROCESSES))
  apart = []
  for step, (raw, augmented) in enumerate(zip(seen[0]["raw"], seen[0]["host"])):
    for i in range(PER_PROCESS):
      offsets = [feed_probe.crop_offsets(raw[s["rows"][i]], augmented[s["rows"][i]])
                 for s in seen]
      assert all(offsets), (step, i)  # Each is a crop of its example.
      apart.append(not set.intersection(*offsets))
  assert sum(apart) >= len(apart) // 2, apart


def test_a_signal_to_one_process_stops_both_and_the_rerun_repeats_the_job(
    job_args, tfds_dir, tmp_path):
  compile_cache = tmp_path / "jax_cache"
  reference = tmp_path / "reference"
  probe = tmp_path / "probe"
  probe.mkdir()
  results = _finish(_start_job([*job_args, "--workdir", reference], compile_cache,
                               mains=[("tests/feed_probe_main.py", probe)] * PROCESSES))
  for returncode, _, err in results:
    assert returncode == 0, err[-3000:]
  _assert_each_process_crops_its_own_examples(probe)
  assert "done: epoch 2" in results[0][1]
  assert [r["epoch"] for r in run_log.read_metrics(reference)] == [1, 2]
  assert run_main.checkpoint_steps(reference) == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
  # The processes' evaluation counted every test image once: it agrees with
  # this single process's pass over the test split with the saved state.
  single = features.load_test_features(reference, data_dir=tfds_dir)
  last = run_log.read_metrics(reference)[-1]
  assert len(single.labels) == 360
  # (Up to near ties: one process and two compile different programs.)
  accuracy = np.mean(np.argmax(single.cosine, -1) == single.labels)
  assert abs(last["test_accuracy"] - accuracy) <= np.mean(round_off.near_ties(single.cosine))
  assert last["test_accuracy"] > 0.8
  # Each process wrote its share of the predictions; process 0 merged them.
  for split, size in (("val", 145), ("test", 360)):
    saved = run_log.read_predictions(reference, split)
    assert len(set(saved["ids"])) == len(saved["ids"]) == size
    assert last[f"{split}_accuracy"] == np.mean(np.argmax(saved["scores"], -1) == saved["labels"])
  assert sorted(os.listdir(os.path.join(reference, run_log.PREDICTIONS_DIR))) == [
      "test.npz", "val.npz"]

  workdir = tmp_path / "run"
  args = [*job_args, "--workdir", workdir]
  # Process 0 is not told.
  results = _finish(_start_job(args, compile_cache,
                               mains=[(), ("tests/signal_at_step_main.py", SIGNAL_STEP)]))
  for returncode, _, err in results:
    assert returncode == 143, err[-3000:]
    assert "Resume with the same command:" in err
  assert run_main.checkpoint_steps(workdir) == [STEPS_PER_EPOCH, STOP_STEP]  # Inside epoch 2.
  assert f"checkpoint saved at step {STOP_STEP}" in results[0][2]
  assert [r["epoch"] for r in run_log.read_metrics(workdir)] == [1]

  results = _finish(_start_job(args, compile_cache))
  for returncode, _, err in results:
    assert returncode == 0, err[-3000:]
  assert f"resuming from the checkpoint at step {STOP_STEP}" in results[0][1]
  assert _metrics_text(workdir) == _metrics_text(reference)
