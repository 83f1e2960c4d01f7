"""A run's directory: its config, its per-epoch metrics.csv and TensorBoard events.

metrics.csv is rewritten whole through a temporary file and an atomic rename at
every epoch, so a process killed at any moment leaves either the old or the new
file, never a torn one. On resume, rows past the restored checkpoint's epoch are
dropped, so the file ends with exactly one row per epoch.
"""

import json
import math
import os
from pathlib import Path

from camri.rundir import CONFIG_FILE, METRICS_FILE, read_config, read_metrics

__all__ = ["CONFIG_FILE", "METRICS_FILE", "MetricsLog", "read_config", "read_metrics",
           "write_config"]


def _atomic_write(path: Path, text: str):
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_config(workdir, config_dict: dict):
  _atomic_write(Path(workdir) / CONFIG_FILE, json.dumps(config_dict, indent=2, sort_keys=True) + "\n")


class MetricsLog:
  """One row per epoch in metrics.csv, mirrored to TensorBoard."""

  def __init__(self, workdir, enabled: bool = True):
    self.workdir = Path(workdir)
    self.enabled = enabled
    self.rows = read_metrics(workdir) if enabled else []
    self._tb = self._summary = None
    if enabled:
      # Imported here, not at the top: checking a run's config.json before it
      # starts must not wait for TensorFlow.
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._summary = tf.summary
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
    with self._tb.as_default(step=step):
      for key, value in row.items():
        if math.isfinite(value):
          self._summary.scalar(key, value)
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
