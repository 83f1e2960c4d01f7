"""The host feed on a large image folder: `python -m camri.bench_feed --images 200000`.

Writes a synthetic image-folder tree (`--images` PNGs of `--pixels` x
`--pixels` RGB in 10 classes, under train/, and a test/ of 10 per class) in
`--tree`, unless it is there already, prepares it (camri/data/folder.py), then
in a fresh process, as a run resuming there would:

  open: the time to open the prepared data as a resumed run does (the copy
    its workdir is bound to: the tree is not listed), once TensorFlow, JAX
    and tfds are imported;
  resume: then the time to the first batch of a training epoch resumed at
    its middle step (the host feed's `pipeline.train_batches` with
    `start_step`: indexing the records, the epoch's order, reading and
    decoding one batch);
  epoch: the resident memory (VmRSS) before a whole epoch, and its peak
    (VmHWM, reset before the epoch) while the epoch's batches are read.

`--compare` measures, in another fresh process, the same through the path
for data without random access (the whole share read into a shuffle buffer,
the skipped batches decoded), which the host feed took for every dataset
before it read by index.

`--run` then times a whole run resumed mid-epoch: `camri.main` (small_cnn,
the host feed, one epoch) is stopped with SIGTERM after step 100 (or the
epoch's middle step, if sooner) and run again, and the second process's
lines are printed with their time since it started: its phases' ends
(imports, prepare_run, open_dataset, restore_or_init, make_feed), its first
line, and its first step done (the batch read and the step compiled). Where
the run resumes in the epoch changes nothing but which records it reads.

Not part of the tests: preparing 200,000 images takes minutes.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

CLASSES = 10
TEST_PER_CLASS = 10
TEMPLATES = 256  # Distinct images, written round robin.


def write_tree(root: str, images: int, pixels: int):
  """`images` PNGs under root/train/<class>/ and TEST_PER_CLASS per class under root/test/."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  templates = [tf.io.encode_png(rng.integers(0, 256, (pixels, pixels, 3), np.uint8)).numpy()
               for _ in range(TEMPLATES)]
  for split, count in (("train", images), ("test", TEST_PER_CLASS * CLASSES)):
    for k in range(CLASSES):
      os.makedirs(os.path.join(root, split, f"class{k}"), exist_ok=True)
    for i in range(count):
      path = os.path.join(root, split, f"class{i % CLASSES}", f"{i:07d}.png")
      with open(path, "wb") as f:
        f.write(templates[i % TEMPLATES])


def _config(tree: str, data_dir: str, pixels: int, batch_size: int):
  from configs import folder as folder_config  # pylint: disable=g-import-not-at-top
  config = folder_config.get_config(f"path={tree},size={pixels}")
  config.update(data_dir=data_dir, batch_size=batch_size)
  return config


def _memory_mib(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  raise KeyError(field)


def measure(tree: str, data_dir: str, pixels: int, batch_size: int, by_index: bool) -> dict:
  """The figures of the module doc, in this process: the data must be prepared and the run
  in `_workdir(tree)` started. Without `by_index`, of the path for data without random
  access (`pipeline._shuffled_batches`)."""
  from camri.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from camri.data import pipeline  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()  # TensorFlow, JAX and tfds imported.
  config = _config(tree, data_dir, pixels, batch_size)
  dataset = dataset_lib.open_dataset(config, prepare=False, workdir=_workdir(tree))
  steps = dataset.steps_per_epoch(batch_size)
  read = pipeline.train_batches if by_index else pipeline._shuffled_batches  # pylint: disable=protected-access
  batches = lambda start_step: read(
      dataset.builder, dataset.spec, dataset.splits["train"], global_batch_size=batch_size,
      image_size=dataset.image_size, seed=0, epoch=1, start_step=start_step)
  opened = time.perf_counter()
  next(iter(batches(steps // 2)))
  resumed = time.perf_counter()
  before = _memory_mib("VmRSS")
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # Resets VmHWM to the current VmRSS.
  count = sum(len(batch["label"]) for batch in batches(0))
  epoch_s = time.perf_counter() - resumed
  return {"train_examples": dataset.splits["train"].size, "steps": steps,
          "examples_read": count, "open_s": opened - start,
          "resume_to_first_batch_s": resumed - opened, "epoch_s": epoch_s,
          "rss_before_epoch_mib": before, "peak_rss_in_epoch_mib": _memory_mib("VmHWM")}


def _workdir(tree: str) -> str:
  return tree + ".run"


def _announced(module, name: str):
  """`module.name` replaced by a function that prints "<name> done" when it returns."""
  real = getattr(module, name)

  def announced(*args, **kwargs):
    result = real(*args, **kwargs)
    print(f"{name} done", flush=True)
    return result

  setattr(module, name, announced)


def _main_until(step: int, argv):
  """`camri.main` with `argv`, which prints when its phases end ("<function> done"), then
  "step <s> done" and stops with SIGTERM once a call reaches `step` (or passes it)."""
  from camri import main as camri_main  # pylint: disable=g-import-not-at-top  (first: it sets the environment)
  from absl import app  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from camri import feeds  # pylint: disable=g-import-not-at-top
  from camri import prepare  # pylint: disable=g-import-not-at-top
  from camri import train  # pylint: disable=g-import-not-at-top
  from camri.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  print("imports (TensorFlow, JAX, tfds) done", flush=True)
  for module, name in ((prepare, "prepare_run"), (dataset_lib, "open_dataset"),
                       (train, "restore_or_init"), (feeds, "make_feed")):
    _announced(module, name)
  real_call_hooks = train.call_hooks

  def call_hooks(*args, **kwargs):
    def stop(done, steps, sums):
      del steps
      if done >= step:
        jax.block_until_ready(sums)
        print(f"step {done} done", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
      return False

    return [stop, *real_call_hooks(*args, **kwargs)]

  train.call_hooks = call_hooks
  app.run(camri_main.main, argv=[sys.argv[0], *argv], flags_parser=camri_main._parse_flags)  # pylint: disable=protected-access


def _timed_lines(command: list[str]) -> list[tuple[float, str]]:
  """(seconds since the process started, line) of each line `command` prints."""
  start = time.perf_counter()
  with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True) as process:
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in process.stdout]
  if process.returncode not in (0, 143):
    raise RuntimeError(f"{command} exited with {process.returncode}")
  return lines


def resumed_run(tree: str, data_dir: str, pixels: int, batch_size: int, steps: int):
  """`--run` (module doc): the rerun's lines with their times."""
  workdir = tree + ".resume_run"
  shutil.rmtree(workdir, ignore_errors=True)
  run = lambda step: _timed_lines([
      sys.executable, "-m", "camri.bench_feed", "--main_until", str(step), "--config",
      f"configs/folder.py:path={tree},size={pixels}", f"--config.data_dir={data_dir}",
      "--config.data_on_device=false", f"--config.batch_size={batch_size}",
      "--config.num_epochs=1", "--workdir", workdir])
  run(min(steps // 2, 100))
  for seconds, line in run(1):
    print(f"{seconds:6.1f} s  {line}", flush=True)


def main():
  if sys.argv[1:2] == ["--main_until"]:
    _main_until(int(sys.argv[2]), sys.argv[3:])
    return
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=200_000)
  parser.add_argument("--pixels", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--tree", default=None, help="default: /tmp/camri_bench_feed/<images>")
  parser.add_argument("--data_dir", default=None, help="default: <tree>.tfds")
  parser.add_argument("--compare", action="store_true",
                      help="also measure the path without random access")
  parser.add_argument("--run", action="store_true",
                      help="also time a whole run resumed mid-epoch, to its first step")
  parser.add_argument("--measure", choices=("index", "shuffled"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  tree = args.tree or f"/tmp/camri_bench_feed/{args.images}"
  data_dir = args.data_dir or tree + ".tfds"
  if args.measure:
    print(json.dumps(measure(tree, data_dir, args.pixels, args.batch_size,
                             by_index=args.measure == "index")))
    return
  if not os.path.isdir(tree):
    started = time.perf_counter()
    write_tree(tree, args.images, args.pixels)
    print(f"wrote {args.images} images in {time.perf_counter() - started:.0f} s", flush=True)
  started = time.perf_counter()
  from camri import prepare  # pylint: disable=g-import-not-at-top
  from camri.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  config = _config(tree, data_dir, args.pixels, args.batch_size)
  dataset = dataset_lib.open_dataset(config)
  print(f"prepared (or found prepared) in {time.perf_counter() - started:.0f} s", flush=True)
  prepare.prepare_run(config, _workdir(tree))  # The run the measuring processes resume.
  for path in ("index", "shuffled") if args.compare else ("index",):
    result = subprocess.run([sys.executable, "-m", "camri.bench_feed", f"--measure={path}",
                             f"--images={args.images}", f"--pixels={args.pixels}",
                             f"--batch_size={args.batch_size}", f"--tree={tree}",
                             f"--data_dir={data_dir}"],
                            check=True, stdout=subprocess.PIPE, text=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{path}: " + ", ".join(f"{key} {value:.2f}" if isinstance(value, float)
                                  else f"{key} {value}" for key, value in figures.items()),
          flush=True)
  if args.run:
    resumed_run(tree, data_dir, args.pixels, args.batch_size,
                dataset.steps_per_epoch(args.batch_size))


if __name__ == "__main__":
  main()
