"""A run's directory: its config, its per-epoch metrics.csv and TensorBoard events.

metrics.csv is rewritten whole through a temporary file and an atomic rename at
every epoch, so a process killed at any moment leaves either the old or the new
file, never a torn one. On resume, rows past the restored checkpoint's epoch are
dropped, so the file ends with exactly one row per epoch.
"""

import csv
import json
import math
import os
from pathlib import Path

import tensorflow as tf

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"


def _atomic_write(path: Path, text: str):
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_config(workdir) -> dict | None:
  path = Path(workdir) / CONFIG_FILE
  return json.loads(path.read_text()) if path.exists() else None


def write_config(workdir, config_dict: dict):
  _atomic_write(Path(workdir) / CONFIG_FILE, json.dumps(config_dict, indent=2, sort_keys=True) + "\n")


def read_metrics(workdir) -> list[dict[str, float]]:
  """metrics.csv's rows as dicts of floats (epoch as int)."""
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  with open(path, newline="") as f:
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)]


class MetricsLog:
  """One row per epoch in metrics.csv, mirrored to TensorBoard."""

  def __init__(self, workdir, enabled: bool = True):
    self.workdir = Path(workdir)
    self.enabled = enabled
    self.rows = read_metrics(workdir) if enabled else []
    self._tb = (tf.summary.create_file_writer(str(self.workdir / "tensorboard"))
                if enabled else None)

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
    with self._tb.as_default(step=step):
      for key, value in row.items():
        if math.isfinite(value):
          tf.summary.scalar(key, value)
    self._tb.flush()

  def _flush(self):
    columns = list(self.rows[-1]) if self.rows else ["epoch"]
    lines = [",".join(columns)]
    for r in self.rows:
      lines.append(",".join(str(r.get(c, "nan")) for c in columns))
    _atomic_write(self.workdir / METRICS_FILE, "\n".join(lines) + "\n")

  def close(self):
    if self._tb is not None:
      self._tb.close()
