"""MetricsLog: metrics.csv and its TensorBoard mirror."""

import glob
import math

import tensorflow as tf

from camri import run_log


def test_each_epoch_is_one_tensorboard_event_of_its_finite_values(tmp_path):
  log = run_log.MetricsLog(tmp_path, num_epochs=2)
  log.write(1, {"train_loss": 1.5, "val_accuracy": 0.25, "val_precision_3": math.nan}, step=10)
  log.write(2, {"train_loss": 1.25, "val_accuracy": 0.5, "val_precision_3": 0.75}, step=20)
  log.close()
  [events] = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  written = [(e.step, [(v.tag, v.simple_value) for v in e.summary.value])
             for e in tf.compat.v1.train.summary_iterator(events) if e.summary.value]
  assert written == [(10, [("train_loss", 1.5), ("val_accuracy", 0.25)]),
                     (20, [("train_loss", 1.25), ("val_accuracy", 0.5), ("val_precision_3", 0.75)])]
  assert [r["epoch"] for r in run_log.read_metrics(tmp_path)] == [1, 2]
