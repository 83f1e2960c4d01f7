"""Reading a run directory written by `camri.main`.

A run's workdir holds `config.json` (the resolved config, with `num_classes`
and `class_names`) and `metrics.csv` (one row per epoch, `epoch` 1-based).
A run is finished when metrics.csv has a row with epoch == config num_epochs.
"""

import csv
import json
import os

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"


def get_field(config, path, default=None):
  """config["loss"]["margin"] for path "loss.margin"; also accepts flat dotted keys."""
  if path in config:
    return config[path]
  value = config
  for part in path.split("."):
    if not isinstance(value, dict) or part not in value:
      return default
    value = value[part]
  return value


def read_config(workdir):
  """The run's config.json as a dict, or None when the file is absent."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_metrics(workdir):
  """The rows of metrics.csv, numbers as float (epoch as int); [] when absent."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    rows = []
    for row in csv.DictReader(f):
      row = {k: (float(v) if v not in ("", None) else float("nan")) for k, v in row.items()}
      row["epoch"] = int(row["epoch"])
      rows.append(row)
  return rows


def last_epoch(workdir):
  """The largest epoch in metrics.csv, 0 when it has no row."""
  return max((row["epoch"] for row in read_metrics(workdir)), default=0)


def is_finished(workdir):
  """Whether metrics.csv has a row with epoch == num_epochs of config.json."""
  config = read_config(workdir)
  if config is None or get_field(config, "num_epochs") is None:
    return False
  num_epochs = int(get_field(config, "num_epochs"))
  return any(row["epoch"] == num_epochs for row in read_metrics(workdir))


def find_runs(root):
  """Every directory under root (root included) holding a config.json, sorted."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d != "checkpoints" and not d.startswith("."))
    if CONFIG_FILE in filenames:
      found.append(dirpath)
  return sorted(found)
