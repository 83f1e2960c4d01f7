"""Faults of shared clusters: a busy workdir, damaged prepared data, failed writes, live readers.

The end-to-end tests run `python -m camri.main` in subprocesses on a copy of
the session's uninterrupted digits run (`reference` in conftest.py) as it was
after epoch 2: its epoch-3 checkpoint removed, a rerun resumes from step 646
and trains epoch 3 only, and must end with the reference's metrics.csv byte for
byte. Every error is one `error:` line on stderr without a traceback.
"""

import os
import shutil

STEPS_PER_EPOCH = 323  # digits_args: 1292 training images, batch size 4.


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
