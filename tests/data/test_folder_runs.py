"""Image-folder runs end to end, for every option: train and evaluate, predict, export.

Four one-epoch runs through main's code path (prepare_run, train_and_evaluate;
the command line reads folder configs in `tests/test_pretrained_runs.py`) cover
`channels` 1 and 3, images stored at the run's `size` and at other sizes, and
trees with both val/ and test/, with one of them, and with neither. Every
split folder of every tree mixes greyscale, RGB, RGBA, palette and 16-bit
(greyscale and RGB) PNGs and RGB and greyscale JPEGs. The two runs of one
channel count build the same model (SIZE x SIZE inputs, 3 classes) in one
test, so the second compiles nothing: it reads the first's programs from the
compilation cache (conftest.py's, in this process).

Tolerances: the run's evaluation, `camri.predict` and the exported artifact
compute the same float32 model in different compiled programs, which may sum
in another order; `tests/round_off.py` bounds how far their scores may differ,
and predictions may differ only at near ties.
"""

import csv
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from camri import export
from camri import inference
from camri import predict
from camri import prepare
from camri import run_log
from camri import train
from camri.data import folder
from camri.data import pipeline
from configs import folder as folder_config
from tests import round_off

CLASSES = ("ant", "bee", "cow")
SIZE = 8
# File name suffix -> how the image is stored.
KINDS = ("grey.png", "rgb.png", "rgba.png", "palette.png", "grey16.png", "rgb16.png",
         "rgb.jpg", "grey.jpg")


def write_kind(path, rng, kind, size):
  """Writes a random image of `kind` (one of KINDS) and `size` (height, width)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if "16" in kind:  # PIL writes no 16-bit RGB PNG; TensorFlow writes both.
    depth = 1 if kind.startswith("grey") else 3
    pixels = rng.integers(0, 65536, size=(*size, depth), dtype=np.uint16)
    with open(path, "wb") as f:
      f.write(tf.io.encode_png(pixels).numpy())
    return
  mode = {"grey": "L", "rgb": "RGB", "rgba": "RGBA", "palette": "RGB"}[kind.split(".")[0]]
  depth = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
  image = Image.fromarray(rng.integers(0, 256, size=(*size, depth), dtype=np.uint8).squeeze(), mode)
  if kind.startswith("palette"):
    image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
  image.save(path, **({"quality": 95} if kind.endswith(".jpg") else {}))


def write_tree(root, splits, stored_at_size, seed):
  """One image of every kind per class in each of `splits`, SIZE x SIZE or of random sizes."""
  rng = np.random.default_rng(seed)
  for split in splits:
    for name in CLASSES:
      for i, kind in enumerate(KINDS):
        size = (SIZE, SIZE) if stored_at_size else tuple(int(s) for s in rng.integers(5, 20, 2))
        write_kind(os.path.join(root, split, name, f"{i}_{kind}"), rng, kind, size)


# channels -> its two runs: (the tree's folders, images stored at the run's size).
LAYOUTS = {
    1: [(("train", "val", "test"), True), (("train", "test"), False)],
    3: [(("train", "val"), True), (("train",), False)],
}


@pytest.mark.parametrize("channels", sorted(LAYOUTS))
def test_runs_train_evaluate_predict_and_export(channels, tmp_path, capsys):
  for i, (splits, stored_at_size) in enumerate(LAYOUTS[channels]):
    tree, workdir = tmp_path / f"tree{i}", tmp_path / f"run{i}"
    write_tree(tree, splits, stored_at_size, seed=10 * channels + i)
    config = folder_config.get_config(
        f"path={tree},important=bee,size={SIZE},channels={channels}")
    config.update(data_dir=str(tmp_path / "tfds"), num_epochs=1, batch_size=8,
                  progress_bar=False)
    train.train_and_evaluate(prepare.prepare_run(config, str(workdir)), str(workdir))
    layout = f"channels={channels}, {'/, '.join(splits)}/, stored at size: {stored_at_size}"
    assert folder.describe(folder.scan(str(tree))) in capsys.readouterr().out, layout
    record = run_log.read_config(workdir)
    assert (record["class_names"], record["folder"]) == (list(CLASSES), str(tree))
    assert (record["loss"]["important_classes"], record["channels"]) == ([1], channels)
    # Readers need no tree: predict, export and the run's own prepared copy.
    os.rename(tree, tmp_path / f"moved{i}")
    check_run(workdir, tmp_path / f"moved{i}", channels, stored_at_size, tmp_path / f"out{i}",
               layout)


def check_run(workdir, tree, channels, stored_at_size, out, layout):
  [row] = run_log.read_metrics(workdir)
  run = inference.load_run(workdir)
  assert run.image_shape == (SIZE, SIZE, channels), layout
  for split in ("val", "test"):
    saved = run_log.read_predictions(workdir, split)
    assert saved["scores"].shape == (len(saved["ids"]), len(CLASSES)), layout
    accuracy = np.mean(np.argmax(saved["scores"], axis=1) == saved["labels"])
    assert accuracy == row[f"{split}_accuracy"], layout  # The same pass: exactly.

  # camri.predict on the test split's files gives the scores the run saved.
  saved = run_log.read_predictions(workdir, "test")
  files = _files(run, "test")
  assert sorted(files.values()) == sorted(p for p, _ in folder.scan(str(tree)).files["test"])
  assert len(files) == len(saved["ids"]), layout
  paths = [os.path.join(tree, files[i]) for i in saved["ids"]]
  csv_path = str(out / "predictions.csv")
  assert predict.main(["--workdir", str(workdir), *paths, "--out", csv_path]) == 0
  with open(csv_path, newline="") as f:
    table = list(csv.DictReader(f))
  assert [r["path"] for r in table] == paths
  scores = np.array([[float(r[f"score_{c}"]) for c in CLASSES] for r in table])
  round_off.assert_scores_agree(scores, saved["scores"])
  predicted = np.array([CLASSES.index(r["predicted"]) for r in table])
  round_off.assert_same_predictions(predicted, saved["scores"], saved["labels"],
                                    accuracy=row["test_accuracy"])

  # camri.export: the artifact's scores of the uint8 images model.json asks for.
  artifact = out / "model.jax"
  assert export.main(["--workdir", str(workdir), "--out", str(artifact)]) == 0
  with open(out / "model.json") as f:
    description = json.load(f)
  assert description["input"]["shape"] == ["n", SIZE, SIZE, channels], layout
  assert "16-bit PNG's value v becomes v // 256" in description["input"]["preparation"]
  model = jax.export.deserialize(artifact.read_bytes())
  images = np.stack([_prepared_as_uint8(run, p) for p in paths])
  got = np.asarray(model.call(images))
  if stored_at_size:  # Nothing is resized: the artifact's input is predict's, exactly.
    round_off.assert_scores_agree(got, scores)
  else:  # Resized on floats, then rounded to uint8: the artifact is the run's model on those.
    expected = np.asarray(run.scores(run.variables, images.astype(np.float32) / 255))
    round_off.assert_scores_agree(got, expected)


def _files(run, split) -> dict[str, str]:
  """{tfds id: path under the tree} of a split of the run's prepared copy."""
  ds = run.dataset.builder.as_dataset(
      split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(add_tfds_id=True))
  return {ex["tfds_id"].decode(): ex["filename"].decode() for ex in tfds.as_numpy(ds)}


def _prepared_as_uint8(run, path) -> np.ndarray:
  """The image as model.json says to prepare it: camri's preprocessing, in uint8."""
  image = pipeline.preprocess_image(tf.io.read_file(path), spec=run.spec, image_size=SIZE,
                                    channels=run.image_shape[-1])
  return np.round(image.numpy() * 255).astype(np.uint8)
