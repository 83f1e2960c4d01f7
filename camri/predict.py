"""Predicts the class of image files: `python -m camri.predict --workdir RUN IMAGE_OR_DIR...`.

The run's config and newest checkpoint are restored read-only
(`camri.inference.load_run`); the run's dataset is not read or prepared. Each
image is preprocessed exactly as evaluation preprocesses a stored image
(`camri.data.pipeline.preprocess_image` with the run's image size and channels;
no ROI crop: give GTSRB images cropped to the sign), and batches run sharded
over every local device.

The CSV has one row per image, in the order given (directories walked
recursively for .png, .jpg, .jpeg, .bmp and .gif files, sorted): `path`,
`predicted` (the class name), `score_<class>` (the loss's prediction-rule
scores, whose argmax is the prediction) and, for the angular heads (CAMRI,
ArcFace, CosFace, NormFace), `angle_<class>`: the angle in degrees between
the feature and each class weight.

`--bias CLASS=B` adds B to that class's score before the argmax (ties go to
CLASS): the post-hoc operating point of `camri.posthoc`.

Images are found and checked as the image-folder dataset finds and checks
them (`camri.data.image_files`): links are followed, a broken one is refused,
and so is a BMP variant TensorFlow does not decode right.

Exit status: 0 written; 2 bad input (no run or checkpoint in --workdir, a path
that does not exist, a broken link, no image found, a file that does not decode,
an unknown --bias class or a bias that is not a finite number): one line
`error: ...` on stderr, nothing written; 6 the CSV could not be written (the
line names it and the OS error).
"""

import argparse
import csv
import io
import itertools
import math
import os
import sys

import jax
import numpy as np
import tqdm

from camri import config_lib
from camri import posthoc
from camri import run_log
# camri.inference, camri.train and camri.data load TensorFlow (seconds): they are
# imported where used, so that --help and a bad command line answer at once.


class PredictError(ValueError):
  """Bad input to predict: the message is the one-line error."""


def find_images(paths) -> list[str]:
  """The files named, and the image files under the directories named (recursively, sorted)."""
  from camri.data import image_files  # pylint: disable=g-import-not-at-top
  found = []
  for path in paths:
    image_files.check_not_broken(path)
    if os.path.isfile(path):
      found.append(path)
    elif os.path.isdir(path):
      found += image_files.walk(path).images
    else:
      raise PredictError(f"{path} does not exist")
  if not found:
    raise PredictError(f"no image files ({', '.join(image_files.SUFFIXES)}) in "
                       f"{', '.join(paths)}")
  return found


def parse_bias(text: str, class_names) -> tuple[int, float]:
  """"CLASS=B" -> (class index, B); CLASS is read as `important=` is (`config_lib.find_class`)."""
  name, sep, value = text.rpartition("=")
  try:
    bias = float(value)
  except ValueError:
    bias = None
  if not sep or bias is None:
    raise PredictError(f"--bias={text} is invalid: give CLASS=B, e.g. "
                       f"--bias={class_names[0]}=0.1")
  if not math.isfinite(bias):
    raise PredictError(f"--bias={text} is invalid: B must be a finite number (an infinite or "
                       "nan bias predicts one class for every image)")
  try:
    return config_lib.find_class(name, class_names), bias
  except ValueError as e:
    raise PredictError(f"--bias={text} is invalid: {e}") from None


def preprocessed_images(paths, run):
  """Yields each image as the run's evaluation preprocesses it: (H, W, C) float32 in [0, 1].

  Raises:
    ImageFileError: once every image is read, naming each file that does not
      decode (or, with config.image_size 0, has another size than the run's
      images): `image_files.raise_problems`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from camri.data import image_files  # pylint: disable=g-import-not-at-top
  from camri.data import pipeline  # pylint: disable=g-import-not-at-top

  def preprocess(path):
    return pipeline.preprocess_image(
        tf.io.read_file(path), spec=run.spec, image_size=run.config.image_size,
        channels=run.image_shape[-1], stored_shape=run.image_shape)

  ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(
      preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  iterator = iter(ds.prefetch(tf.data.AUTOTUNE))
  problems = []
  for path in paths:
    problem = None
    try:
      image_files.check_bmp(path)  # Some BMP variants decode, to the wrong pixels.
    except image_files.ImageFileError as e:
      problem = e
    try:
      image = next(iterator)  # After a failed image, the next ones still come.
    except tf.errors.OpError:
      problem = problem or image_files.ImageFileError(_why_not(path, run))
    if problem:
      problems.append(problem)
    elif not problems:  # Once one failed, the rest is only checked.
      yield image.numpy()
  image_files.raise_problems(problems)


def _why_not(path, run) -> str:
  """Why an image failed preprocessing: it does not decode, or (image_size 0) its size."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from camri.data import image_files  # pylint: disable=g-import-not-at-top
  try:
    decoded = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
  except tf.errors.OpError:
    return str(image_files.undecodable(path))
  height, width, _ = run.image_shape
  return (f"{path} is {decoded.shape[0]}x{decoded.shape[1]}: the run takes {height}x{width} "
          "images (its config.image_size=0 keeps the dataset's stored size); resize it")


def make_forward(run, sharding):
  """jit(variables, images) -> {"scores", and "cosine" for an angular head}, batch-sharded."""

  def forward(variables, images):
    outputs = run.apply(variables, images)
    out = {"scores": run.objective.scores(outputs)}
    if run.angular:
      out["cosine"] = outputs["cosine"]
    return out

  return jax.jit(forward, out_shardings=sharding.batch)


def predict(run, images, count: int, batch_size: int, progress=True) -> dict:
  """{"scores": (N, K), and "cosine": (N, K) for an angular head} of `images`, float32.

  Batches of `batch_size` (a multiple of the device count) are sharded over
  every device; the last is padded to full size (one compile) and the
  padding's rows dropped.
  """
  from camri import feeds  # pylint: disable=g-import-not-at-top

  sharding = feeds.Sharding.over_all_devices()
  forward = make_forward(run, sharding)
  images = iter(images)
  kept = []
  with tqdm.tqdm(total=count, unit="img", disable=None if progress else True,
                 file=sys.stderr) as bar:
    while batch := list(itertools.islice(images, batch_size)):
      n = len(batch)
      batch = np.stack(batch + [np.zeros_like(batch[0])] * (batch_size - n))
      out = forward(run.variables, sharding.put_batch({"image": batch})["image"])
      kept.append({k: feeds.local_rows(v)[:n] for k, v in out.items()})
      bar.update(n)
  return {k: np.concatenate([b[k] for b in kept]).astype(np.float32) for k in kept[0]}


def rows(paths, class_names, outputs, bias=None) -> list[dict]:
  """The CSV's rows: path, predicted, score_<class>..., angle_<class>... (angular heads)."""
  scores = outputs["scores"]
  if bias is None:
    predicted = np.argmax(scores, axis=1)
  else:
    predicted = posthoc.predict_with_bias(scores, *bias)
  columns = {f"score_{name}": scores[:, k] for k, name in enumerate(class_names)}
  if "cosine" in outputs:
    angles = np.degrees(np.arccos(np.clip(outputs["cosine"], -1.0, 1.0)))
    columns |= {f"angle_{name}": angles[:, k] for k, name in enumerate(class_names)}
  return [{"path": path, "predicted": class_names[predicted[i]],
           **{key: str(np.float32(value[i])) for key, value in columns.items()}}
          for i, path in enumerate(paths)]


def write_csv(path, table: list[dict]):
  """Writes `table` to `path` atomically (a reader never sees half a file)."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
  writer.writeheader()
  writer.writerows(table)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  run_log.atomic_write(path, buffer.getvalue())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m camri.predict", description=__doc__.split("\n\n", 1)[0],
      epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR",
                      help="image files, or directories searched recursively for them")
  parser.add_argument("--workdir", required=True, help="a camri.main run with a checkpoint")
  parser.add_argument("--out", default="predictions.csv", help="the CSV to write")
  parser.add_argument("--bias", metavar="CLASS=B",
                      help="add B to the score of CLASS (a class name or index) before the argmax")
  parser.add_argument("--batch-size", type=int, metavar="N",
                      help="images per batch over all devices (default: the run's "
                      "eval_batch_size), rounded up to a multiple of the device count")
  args = parser.parse_args(argv)
  if args.batch_size is not None and args.batch_size < 1:
    parser.exit(2, f"error: --batch-size={args.batch_size} is invalid: must be >= 1\n")
  if not os.path.isdir(args.workdir):
    parser.exit(2, f"error: --workdir {args.workdir} does not exist\n")
  from camri import inference  # pylint: disable=g-import-not-at-top
  from camri import prepare  # pylint: disable=g-import-not-at-top
  from camri.config_lib import ConfigError  # pylint: disable=g-import-not-at-top

  prepare.setup_runtime(reader=True)
  try:
    images = find_images(args.paths)
    run = inference.load_run(args.workdir, prepare_data=False)
    bias = parse_bias(args.bias, run.class_names) if args.bias is not None else None
    devices = jax.device_count()
    batch_size = -(-(args.batch_size or run.config.eval_batch_size) // devices) * devices
    outputs = predict(run, preprocessed_images(images, run), len(images), batch_size)
  except (PredictError, inference.RunNotFoundError, ConfigError) as e:
    parser.exit(2, f"error: {e}\n")
  try:
    write_csv(args.out, rows(images, run.class_names, outputs, bias))
  except OSError as e:
    parser.exit(6, f"error: writing {e.filename or args.out} failed: {e.strerror}\n")
  print(f"predicted {len(images)} images with {run.workdir} (step {run.step}): {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
