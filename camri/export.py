"""Exports a trained run's model: `python -m camri.export --workdir RUN --out model.jax`.

The artifact is a `jax.export` serialisation of the model's prediction rule
with the parameters baked in, lowered for CPU, CUDA, ROCm and TPU. It runs in
any Python process with jax installed, without camri, TensorFlow or flax:

    import jax, numpy as np
    model = jax.export.deserialize(open("model.jax", "rb").read())
    scores = model.call(images)  # uint8 (n, H, W, C) -> float32 (n, K)

Inside, the images are scaled to [0, 1] (x / 255, float32) as camri's
preprocessing does, then normalised as the model's weights expect (a run from
ImageNet weights: greyscale repeated to RGB, then ImageNet's mean and std; the
model itself does it, `camri.models.normalize`), and the output is the loss's
prediction-rule scores (`camri.objectives`), whose argmax is the predicted
class. Decoding, cropping and resizing are TensorFlow ops and are not exported:
the input is already at the run's image size. `model.json`, next to the
artifact, holds the class names, the image size and channels, the loss, the
important classes and this input contract (its normalisation too).

Exit status: 0 written; 2 no run or checkpoint in --workdir: one line
`error: ...` on stderr, nothing written; 6 a file could not be written (the line
names it and the OS error).
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

from camri import run_log

# jax.export lowers for every platform on any machine: the artifact runs anywhere.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def export_run(run, platforms=PLATFORMS):
  """The run's prediction rule as a `jax.export.Exported`: uint8 (n, H, W, C) -> float32 (n, K)."""
  from camri import feeds  # pylint: disable=g-import-not-at-top  (loads TensorFlow)
  variables = jax.device_get(run.variables)  # Host arrays: constants of the program.

  def scores(images):
    return run.scores(variables, feeds.to_float(images))

  height, width, channels = run.image_shape
  images = jax.ShapeDtypeStruct(
      jax.export.symbolic_shape(f"n, {height}, {width}, {channels}"), jnp.uint8)
  return jax.export.export(jax.jit(scores), platforms=platforms)(images)


def _preparation(run) -> str:
  """How an image becomes the artifact's input, as camri's evaluation prepares it."""
  height, width, channels = run.image_shape
  mode = {1: "greyscale (from colour: TensorFlow's rgb_to_grayscale, luma 0.2989 R + "
             "0.587 G + 0.114 B)", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels} channels")
  steps = [f"decode as {mode}, 8 bits per value (a 16-bit PNG's value v becomes v // 256, "
           "its high byte, as TensorFlow's PNG decoder does)"]
  if run.spec.roi_key:
    steps.append(f"crop to the object's box ({run.spec.roi_key}), as the dataset's images are")
  elif run.spec.centre_crop:
    steps.append("crop the largest centred square")
  if run.config.image_size:
    steps.append(f"resize to {height}x{width} (camri: tf.image.resize, bilinear, antialias, "
                 "on [0, 1] floats)")
  else:
    steps.append(f"images must be {height}x{width}, the dataset's stored size "
                 "(config.image_size=0: camri does not resize)")
  inside = "divides by 255"
  if run.config.input_normalization != "none":
    from camri import models  # pylint: disable=g-import-not-at-top
    mean, std = models.NORMALIZATIONS[run.config.input_normalization]
    inside += (f", then normalises as config.input_normalization={run.config.input_normalization!r}"
               f" asks: {'greyscale repeated to RGB, ' if channels == 1 else ''}"
               f"(x - mean) / std with mean {mean}, std {std}")
  return "; ".join(steps) + f"; then uint8 0..255 into the artifact, which {inside}"


def describe(run, exported, artifact: str) -> dict:
  """model.json: what a user of the artifact needs to know."""
  height, width, channels = run.image_shape
  important = [int(k) for k in run.config.loss.get("important_classes", ())]
  angular = run.angular
  return {
      "artifact": os.path.basename(artifact),
      "class_names": list(run.class_names),
      "image_size": [height, width],
      "channels": channels,
      "loss": run.config.loss.name,
      "important_classes": important,
      "important_class_names": [run.class_names[k] for k in important],
      "input": {"dtype": "uint8", "shape": ["n", height, width, channels],
                "preparation": _preparation(run),
                "normalization": run.config.input_normalization},
      "output": {"dtype": "float32", "shape": ["n", len(run.class_names)],
                 "scores": ("cos(theta_k), the cosine to each class weight (angle: "
                            "degrees(arccos(clip(score, -1, 1))))" if angular else
                            f"the prediction rule of loss {run.config.loss.name}"),
                 "predicted": "argmax over the classes"},
      "angular": angular,
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "usage": f"jax.export.deserialize(open({os.path.basename(artifact)!r}, 'rb')"
               ".read()).call(images)",
      "run": {"workdir": os.path.abspath(run.workdir), "step": run.step,
              "dataset": run.config.dataset, "config_image_size": run.config.image_size},
  }


def description_path(artifact: str) -> str:
  """model.jax -> model.json."""
  return os.path.splitext(artifact)[0] + ".json"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m camri.export", description=__doc__.split("\n\n", 1)[0],
      epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a camri.main run with a checkpoint")
  parser.add_argument("--out", default="model.jax", help="the artifact to write; its "
                      "description goes next to it with the suffix .json (model.json)")
  args = parser.parse_args(argv)
  description = description_path(args.out)
  if description == args.out:
    parser.exit(2, f"error: --out {args.out} is invalid: its description goes to "
                f"{description}; name the artifact e.g. model.jax\n")
  if not os.path.isdir(args.workdir):
    parser.exit(2, f"error: --workdir {args.workdir} does not exist\n")
  from camri import inference  # pylint: disable=g-import-not-at-top
  from camri import prepare  # pylint: disable=g-import-not-at-top
  from camri.config_lib import ConfigError  # pylint: disable=g-import-not-at-top

  prepare.setup_runtime(reader=True)
  try:
    run = inference.load_run(args.workdir, prepare_data=False)
  except (inference.RunNotFoundError, ConfigError) as e:
    parser.exit(2, f"error: {e}\n")
  exported = export_run(run)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  try:
    run_log.atomic_write(args.out, exported.serialize())
    run_log.atomic_write(description, json.dumps(describe(run, exported, args.out), indent=2) + "\n")
  except OSError as e:
    parser.exit(6, f"error: writing {e.filename} failed: {e.strerror}\n")
  height, width, channels = run.image_shape
  print(f"exported {run.workdir} (step {run.step}) for {', '.join(exported.platforms)}: "
        f"uint8 (n, {height}, {width}, {channels}) -> float32 (n, {len(run.class_names)}) "
        f"scores: {args.out}, {description}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
