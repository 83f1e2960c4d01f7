"""Stands in for `python -m camri.main` in launcher tests: writes config.json + metrics.csv.

    python -m fake_main --config C --workdir W [--config.field=value ...]

Like camri.main it resumes: epochs already in metrics.csv are kept and the run
goes on to num_epochs. Each call appends one line to W/calls.txt. The test
recall of class k is 0.5 + 0.1 * ((7 * k) % K) / K + 0.001 * seed (so with K=5
classes sorted by recall are 0, 3, 1, 4, 2); the validation recall (no
columns with --config.validation_fraction=0) 0.5 + 0.1 * ((2 * k + 1) % K) / K
+ 0.001 * seed (with K=5 sorted 2, 0, 3, 1, 4); accuracy is 0.8 + 0.01 * epoch
on both splits.
Environment: FAKE_MAIN_STOP_AFTER=N stops after epoch N with exit status 3
(a preempted run); FAKE_MAIN_SLEEP=S sleeps S seconds per epoch;
FAKE_MAIN_CLASSES=K sets the number of classes (default 5).
"""

import ast
import csv
import json
import os
import sys
import time


def parse(argv):
  config = {"dataset": "fake", "num_epochs": 3, "seed": 0, "tag": "", "validation_fraction": 0.1,
            "num_classes": int(os.environ.get("FAKE_MAIN_CLASSES", "5")),
            "loss": {"name": "cross_entropy", "important_classes": [0], "margin": [0.0], "scale": 1.0}}
  args = {}
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, value = arg[len("--config."):].split("=", 1)
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        pass
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = list(value) if isinstance(value, tuple) else value
      i += 1
    else:
      args[arg.lstrip("-")] = argv[i + 1]
      i += 2
  if isinstance(config["loss"]["important_classes"], int):
    config["loss"]["important_classes"] = [config["loss"]["important_classes"]]
  config["class_names"] = [f"c{k}" for k in range(config["num_classes"])]
  return args, config


def main(argv):
  args, config = parse(argv)
  workdir = args["workdir"]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "calls.txt"), "a") as f:
    f.write(f"{time.time()} start {os.environ.get('CUDA_VISIBLE_DEVICES', '')} "
            f"runs_per_host={os.environ.get('CAMRI_RUNS_PER_HOST', '')}\n")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  path = os.path.join(workdir, "metrics.csv")
  done = 0
  if os.path.exists(path):
    with open(path) as f:
      done = max((int(r["epoch"]) for r in csv.DictReader(f)), default=0)
  num_classes, seed = config["num_classes"], config["seed"]
  recalls = {"test": [0.5 + 0.1 * ((7 * k) % num_classes) / num_classes + 0.001 * seed
                      for k in range(num_classes)],
             "val": [0.5 + 0.1 * ((2 * k + 1) % num_classes) / num_classes + 0.001 * seed
                     for k in range(num_classes)]}
  splits = ("val", "test") if config["validation_fraction"] else ("test",)
  important = config["loss"]["important_classes"]
  fields = ["epoch"] + [f"{split}_{name}" for split in splits
                        for name in ("accuracy", "recall", *(f"recall_{k}" for k in range(num_classes)))]
  stop_after = int(os.environ.get("FAKE_MAIN_STOP_AFTER", "0"))
  for epoch in range(done + 1, config["num_epochs"] + 1):
    time.sleep(float(os.environ.get("FAKE_MAIN_SLEEP", "0")))
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
      writer = csv.writer(f)
      if new:
        writer.writerow(fields)
      writer.writerow([epoch] + [x for split in splits for x in (
          0.8 + 0.01 * epoch, sum(recalls[split][k] for k in important) / len(important),
          *recalls[split])])
    if epoch == stop_after:
      return 3
  with open(os.path.join(workdir, "calls.txt"), "a") as f:
    f.write(f"{time.time()} end\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
