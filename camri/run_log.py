"""A run's directory: its config, its per-epoch metrics.csv and TensorBoard events.

The one place that reads and writes run directories, for training (`MetricsLog`),
the launcher (`is_finished`) and the report (`find_runs`, `read_config`,
`read_metrics`). A workdir holds `config.json` (the resolved config, with
`num_classes` and `class_names`) and `metrics.csv` (one row per epoch, `epoch`
1-based); a run is finished when metrics.csv has a row with epoch == the
config's num_epochs.

metrics.csv is rewritten whole through a temporary file and an atomic rename at
every epoch, so a process killed at any moment leaves either the old or the new
file, never a torn one; a write that fails (a full disk) leaves the old file and
no temporary. On resume, rows past the restored checkpoint's epoch are
dropped, so the file ends with exactly one row per epoch. `write_failure` words
any failed write of a run (checkpoint, metrics, predictions, TensorBoard) in
one line.
"""

import csv
import errno
import hashlib
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import tqdm

from camri import config_fields

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
PREDICTIONS_DIR = "predictions"


def atomic_write(path, text: str | bytes | bytearray):
  """Writes `path` whole or not at all; a failed write leaves the old file and no temporary.

  Raises:
    OSError: naming `path` (not its temporary), with the OS error.
  """
  path = Path(path)
  tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
  try:
    with open(tmp, "w" if isinstance(text, str) else "wb") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    raise OSError(e.errno, e.strerror, str(path)) from e


# Errors of a write that space, a quota, the file size limit or permissions stop.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _os_error(error: BaseException) -> tuple[int | None, str | None]:
  """(errno, path) of an OS error, also as tensorstore or TensorFlow word it; else (None, None)."""
  if isinstance(error, OSError):
    return error.errno, error.filename
  text = str(error)
  # tensorstore (orbax): `Failed writing: "PATH": ... [os_error_code='27']`;
  # TensorFlow (TensorBoard): `PATH; File too large`.
  code = re.search(r"os_error_code='?(\d+)", text)
  code = int(code[1]) if code else next(
      (c for c in WRITE_ERRNOS if os.strerror(c) in text), None)
  quoted = re.findall(r'"(/[^"]+)"', text)
  paths = quoted or re.findall(r"(?<![\w:])(/[\w.+=,@%~/-]+)", text)
  return code, paths[-1] if paths else None


def write_failure(error: BaseException) -> str | None:
  """A one-line account of `error` if a write failed on space, quota, size limit or permissions.

  Looks along the chain of causes: orbax raises tensorstore's ValueError (in
  the main thread, from the save's background thread), TensorFlow its own
  errors, each with the OS error in the message.
  """
  for link in _chain(error):
    code, path = _os_error(link)
    if code in WRITE_ERRNOS:
      return (f"writing {path or 'the run directory'} failed: {os.strerror(code)} "
              f"({errno.errorcode[code]}); the checkpoints and {METRICS_FILE} written before are "
              "intact: make room (or fix the quota or permissions) and rerun the same command "
              "to resume")
  return None


class WriteFailedError(RuntimeError):
  """A write of a run failed (`write_failure` words it)."""


FAILURE_FILE = "failed.json"


def record_failure(workdir, error: str, status: int):
  """Records in the workdir why a population's member stopped: `error`'s one line and the
  exit status a single run would have had (`camri.main`'s)."""
  atomic_write(Path(workdir) / FAILURE_FILE,
               json.dumps({"error": error, "status": status}) + "\n")


def read_failure(workdir) -> dict | None:
  """`record_failure`'s record ({"error", "status"}), or None."""
  path = Path(workdir) / FAILURE_FILE
  return json.loads(path.read_text()) if path.exists() else None


def clear_failure(workdir):
  """Forgets a recorded failure: the run is being trained again."""
  (Path(workdir) / FAILURE_FILE).unlink(missing_ok=True)


def read_config(workdir) -> dict | None:
  """The run's config.json as a dict, or None when the file is absent.

  Fields added to the config since the run was written hold the value that
  implies (`config_fields.ADDED_FIELDS`).
  """
  path = Path(workdir) / CONFIG_FILE
  return config_fields.with_added_fields(json.loads(path.read_text())) if path.exists() else None


def write_config(workdir, config_dict: dict):
  atomic_write(Path(workdir) / CONFIG_FILE, json.dumps(config_dict, indent=2, sort_keys=True) + "\n")


def _number(key, text):
  if key == "epoch":
    return int(text)
  return float(text) if text not in ("", None) else math.nan


def read_metrics(workdir) -> list[dict[str, float]]:
  """metrics.csv's rows as dicts of floats (epoch as int, empty cells NaN); [] when absent."""
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  with open(path, newline="") as f:
    return [{k: _number(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def predictions_path(workdir, split: str, part: int | None = None) -> Path:
  """predictions/<split>.npz, or a process's part of it, <split>.p<part>.npz."""
  name = split if part is None else f"{split}.p{part}"
  return Path(workdir) / PREDICTIONS_DIR / f"{name}.npz"


def write_predictions(workdir, split: str, arrays: dict, part: int | None = None):
  """Writes `arrays` (ids, labels, scores, step) to `predictions_path`, atomically."""
  path = predictions_path(workdir, split, part)
  path.parent.mkdir(exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_write(path, buffer.getvalue())


def read_predictions(workdir, split: str, part: int | None = None) -> dict | None:
  """A split's saved predictions, or None when absent.

  {"ids": (N,) str, tfds ids; "labels": (N,) int64; "scores": (N, K) float32,
  the loss's prediction-rule scores, whose argmax is the predicted class;
  "step": the train step of the parameters that made them}.
  """
  path = predictions_path(workdir, split, part)
  if not path.exists():
    return None
  with np.load(path) as f:
    return {key: f[key] for key in f.files}


def merge_prediction_parts(workdir, split: str, num_parts: int):
  """Joins the processes' parts of a split's predictions into one file, then removes them."""
  parts = [read_predictions(workdir, split, part) for part in range(num_parts)]
  write_predictions(workdir, split, {
      key: np.concatenate([p[key] for p in parts]) if value.ndim else value
      for key, value in parts[0].items()})
  for part in range(num_parts):
    predictions_path(workdir, split, part).unlink()


def get_field(config: dict, path: str, default=None):
  """config["loss"]["margin"] for path "loss.margin" (a flat dotted key works too)."""
  if path in config:
    return config[path]
  value = config
  for part in path.split("."):
    if not isinstance(value, dict) or part not in value:
      return default
    value = value[part]
  return value


def is_finished(workdir) -> bool:
  """Whether metrics.csv has the row of the `last` epoch policy (epoch == num_epochs of config.json)."""
  from camri.results import selection  # pylint: disable=g-import-not-at-top  # It imports run_log.
  config = read_config(workdir)
  num_epochs = None if config is None else get_field(config, "num_epochs")
  if num_epochs is None:
    return False
  return selection.select_rows(read_metrics(workdir), int(num_epochs), "last") is not None


def find_runs(root) -> list[str]:
  """Every directory under root (root included) holding a config.json, sorted."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d != CHECKPOINT_DIR and not d.startswith("."))
    if CONFIG_FILE in filenames:
      found.append(dirpath)
  return sorted(found)


# How `launch.protocol` chose a grid's important classes, in the grid's root.
ROLES_FILE = "important_classes.json"


def find_roles(root) -> dict[str, dict]:
  """{directory: its ROLES_FILE, read} for every such file under root (root included)."""
  found = {}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d != CHECKPOINT_DIR and not d.startswith(".")]
    if ROLES_FILE in filenames:
      with open(os.path.join(dirpath, ROLES_FILE)) as f:
        found[dirpath] = json.load(f)
  return found


def tree_name(folder: str) -> str:
  """An image-folder tree's folder name: `signs` of /data/signs."""
  return os.path.basename(os.path.normpath(folder))


def tree_id(folder: str) -> str:
  """A short hash of a tree's absolute path: tells apart two trees of one folder name."""
  return hashlib.sha256(os.path.normpath(folder).encode()).hexdigest()[:6]


def dataset_name(config: dict) -> str:
  """A run's dataset as reports name it: an image-folder tree `folder:<its folder name>`."""
  dataset = get_field(config, "dataset")
  folder = get_field(config, "folder")
  return f"{dataset}:{tree_name(folder)}" if dataset == "folder" and folder else dataset


# The numbers of metrics.csv's row printed at every epoch.
_PRINTED = ("train_loss", "val_loss", "val_accuracy", "val_recall", "test_loss",
            "test_accuracy", "test_recall")


class MetricsLog:
  """One row per epoch in metrics.csv, mirrored to TensorBoard."""

  def __init__(self, workdir, enabled: bool = True, num_epochs: int | None = None):
    self.workdir = Path(workdir)
    self.enabled = enabled
    self.num_epochs = num_epochs
    self.rows = read_metrics(workdir) if enabled else []
    self._tb = self._summary = self._proto = None
    if enabled:
      # Imported here: readers of run directories (report, launcher) don't need TensorFlow.
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
      self._summary, self._proto = tf.summary, summary_pb2
      self._tb = tf.summary.create_file_writer(str(self.workdir / "tensorboard"))

  def truncate(self, last_epoch: int):
    """Forgets rows after `last_epoch` (they were not checkpointed)."""
    kept = [r for r in self.rows if r["epoch"] <= last_epoch]
    if len(kept) != len(self.rows):
      self.rows = kept
      self._flush()

  def write(self, epoch: int, row: dict[str, float], step: int):
    if not self.enabled:
      return
    self.rows = [r for r in self.rows if r["epoch"] < epoch] + [{"epoch": epoch, **row}]
    self._flush()
    shown = "  ".join(f"{key} {row[key]:.4f}" for key in _PRINTED if key in row)
    of = f"/{self.num_epochs}" if self.num_epochs else ""
    tqdm.tqdm.write(f"epoch {epoch}{of}  {shown}")
    # One event of every scalar, not an op per scalar: a population writes a row for each
    # member at every epoch, and an eager op per value took a sixth of a head's time.
    event = self._proto.Summary(value=[self._proto.Summary.Value(tag=key, simple_value=value)
                                       for key, value in row.items() if math.isfinite(value)])
    with self._tb.as_default(step=step):
      self._summary.experimental.write_raw_pb(event.SerializeToString(), step=step)
    self._tb.flush()

  def _flush(self):
    columns = list(self.rows[-1]) if self.rows else ["epoch"]
    lines = [",".join(columns)]
    for r in self.rows:
      lines.append(",".join(str(r.get(c, "nan")) for c in columns))
    atomic_write(self.workdir / METRICS_FILE, "\n".join(lines) + "\n")

  def close(self):
    if self._tb is not None:
      self._tb.close()
