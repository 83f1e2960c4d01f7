"""`camri.predict` on digits runs (tests/digits_runs.py): the run's own test predictions, bias,
bad input.

The digits test split is written to PNG files (tfds stores the encoded PNG
bytes, written as they are), so predicting on that folder must reproduce
predictions/test.npz and metrics.csv's test accuracy, up to float32 round-off
(`round_off`).
"""

import csv
import os
import shutil
import subprocess
import sys

import digits_runs
import numpy as np
from PIL import Image
import pytest
import round_off
import run_main
import tensorflow as tf
import tensorflow_datasets as tfds

from camri import data
from camri import posthoc
from camri import predict
from camri import run_log

# An angular head, a linear head, and a distance-based prediction rule.
LOSSES = ("camri", "cross_entropy", "lgm")


def write_test_pngs(tfds_dir, folder) -> dict[str, str]:
  """The digits test split as PNG files in two subfolders, and a note to skip; {path: tfds id}."""
  builder = data.get_builder(data.get_spec("digits"), tfds_dir, prepare=False)
  ds = builder.as_dataset(split="test", shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()},
                          read_config=tfds.ReadConfig(add_tfds_id=True))
  paths = {}
  for i, example in enumerate(tfds.as_numpy(ds)):
    path = os.path.join(folder, "odd" if i % 2 else "even", f"{i:03d}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(example["image"])
    paths[path] = example["tfds_id"].decode()
  with open(os.path.join(folder, "notes.txt"), "w") as f:
    f.write("not an image")
  return paths


def read_csv(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tfds_dir, tmp_path_factory) -> dict[str, str]:
  return {loss: digits_runs.shared_run(tfds_dir, tmp_path_factory, loss)
          for loss in LOSSES}


@pytest.fixture(scope="module")
def pngs(tfds_dir, tmp_path_factory) -> tuple[str, dict[str, str]]:
  folder = str(tmp_path_factory.mktemp("digits_png"))
  return folder, write_test_pngs(tfds_dir, folder)


@pytest.mark.parametrize("loss", LOSSES)
def test_predict_reproduces_the_runs_test_predictions(runs, pngs, loss, tmp_path, capsys):
  folder, ids = pngs
  out = str(tmp_path / "predictions.csv")
  assert predict.main(["--workdir", runs[loss], folder, "--out", out, "--batch-size", "100"]) == 0
  assert capsys.readouterr().out == (
      f"predicted 360 images with {runs[loss]} (step 40): {out}\n")

  table = read_csv(out)
  classes = [str(k) for k in range(10)]
  angular = loss == "camri"
  assert list(table[0]) == (["path", "predicted"] + [f"score_{c}" for c in classes] +
                            ([f"angle_{c}" for c in classes] if angular else []))
  assert [r["path"] for r in table] == sorted(ids)  # Walked recursively, sorted; notes.txt skipped.
  saved = run_log.read_predictions(runs[loss], "test")
  order = {tfds_id: i for i, tfds_id in enumerate(saved["ids"])}
  table.sort(key=lambda r: order[ids[r["path"]]])
  scores = np.array([[float(r[f"score_{c}"]) for c in classes] for r in table])
  round_off.assert_scores_agree(scores, saved["scores"])  # Another batch size, another program.
  predicted = np.array([int(r["predicted"]) for r in table])
  np.testing.assert_array_equal(predicted, np.argmax(scores, axis=1))
  last = run_log.read_metrics(runs[loss])[-1]
  round_off.assert_same_predictions(predicted, saved["scores"], saved["labels"],
                                    accuracy=last["test_accuracy"])
  if angular:
    angles = np.array([[float(r[f"angle_{c}"]) for c in classes] for r in table])
    np.testing.assert_allclose(angles, np.degrees(np.arccos(scores)), atol=1e-3)


def test_bias_moves_predictions_to_the_class_as_posthoc_does(runs, pngs, tmp_path):
  folder, _ = pngs
  plain, biased = str(tmp_path / "plain.csv"), str(tmp_path / "biased.csv")
  predict.main(["--workdir", runs["cross_entropy"], folder, "--out", plain])
  predict.main(["--workdir", runs["cross_entropy"], folder, "--out", biased, "--bias", "8=1.5"])
  plain, biased = read_csv(plain), read_csv(biased)
  scores = np.array([[float(r[f"score_{k}"]) for k in range(10)] for r in plain])
  assert [r["predicted"] for r in biased] == [
      str(k) for k in posthoc.predict_with_bias(scores, 8, 1.5)]
  assert ([r["score_8"] for r in biased] == [r["score_8"] for r in plain])  # Scores unbiased.
  count = lambda table: sum(r["predicted"] == "8" for r in table)
  assert count(biased) > count(plain)
  assert predict.parse_bias("8=-0.25", ("7", "8")) == (1, -0.25)  # A name before an index.
  assert predict.parse_bias("1=2", ("cat", "dog")) == (1, 2.0)


def _error(argv, capsys) -> str:
  with pytest.raises(SystemExit) as exit_info:
    predict.main(argv)
  assert exit_info.value.code == 2
  lines = run_main.error_lines(capsys.readouterr().err)
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  return lines[0]


def test_bad_input_is_one_line_status_2_and_nothing_written(runs, pngs, tmp_path, capsys):
  folder, ids = pngs
  workdir = runs["camri"]
  out = str(tmp_path / "out.csv")
  no_checkpoint = tmp_path / "no_checkpoint"
  no_checkpoint.mkdir()
  shutil.copy(os.path.join(workdir, run_log.CONFIG_FILE), no_checkpoint)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "readme.txt").write_text("no images here")
  not_image = tmp_path / "broken.png"
  not_image.write_bytes(b"not a png")
  also_not = tmp_path / "also_broken.jpg"
  also_not.write_bytes(b"not a jpeg")
  big = tmp_path / "big.png"
  big.write_bytes(tf.io.encode_png(
      np.zeros((16, 16, 1), np.uint8)).numpy())
  links = tmp_path / "links"
  links.mkdir()
  os.symlink(tmp_path / "gone.png", links / "gone.png")
  bmp = {}
  for mode, name in (("1", "bits"), ("P", "palette")):  # A palette BMP decodes, to its indices.
    bmp[name] = tmp_path / f"{name}.bmp"
    colours = np.arange(192, dtype=np.uint8).reshape(8, 8, 3)
    Image.fromarray(colours, "RGB").convert(mode).save(bmp[name])
  first = sorted(ids)[0]
  cases = [
      (["--workdir", str(tmp_path / "nowhere"), folder], "--workdir", "nowhere", "does not exist"),
      (["--workdir", str(empty), folder], str(empty), run_log.CONFIG_FILE),
      (["--workdir", str(no_checkpoint), folder], str(no_checkpoint), "no checkpoint"),
      (["--workdir", workdir, str(tmp_path / "missing")], "missing", "does not exist"),
      (["--workdir", workdir, str(empty)], "no image files", str(empty)),
      (["--workdir", workdir, first, str(not_image)], str(not_image), "does not decode"),
      (["--workdir", workdir, str(not_image), first, str(also_not)],  # Every one, in one run.
       "2 image files cannot be used: ", f"{not_image} does not decode",
       f"{also_not} does not decode"),
      (["--workdir", workdir, str(big)], str(big), "is 16x16", "8x8"),
      (["--workdir", workdir, str(links)], f"{links / 'gone.png'} is a broken link (to "
       f"{tmp_path / 'gone.png'})"),
      (["--workdir", workdir, str(links / "gone.png")], "gone.png is a broken link"),
      (["--workdir", workdir, str(bmp["bits"])], "bits.bmp is an unsupported BMP variant (1-bit)"),
      (["--workdir", workdir, str(bmp["palette"])],
       "palette.bmp is an unsupported BMP variant (8-bit with a colour palette)"),
      (["--workdir", workdir, folder, "--bias", "cat=0.1"], "--bias=cat=0.1",
       "not a class of this dataset"),
      (["--workdir", workdir, folder, "--bias", "10=0.1"], "--bias=10=0.1", "0..9"),
      (["--workdir", workdir, folder, "--bias", "8"], "--bias=8", "CLASS=B"),
      (["--workdir", workdir, folder, "--bias", "8=nan"], "--bias=8=nan", "finite"),
      (["--workdir", workdir, folder, "--bias", "8=inf"], "--bias=8=inf", "finite"),
      (["--workdir", workdir, folder, "--bias", "8=-inf"], "--bias=8=-inf", "finite"),
      (["--workdir", workdir, folder, "--batch-size", "0"], "--batch-size=0"),
  ]
  for argv, *expected in cases:
    line = _error([*argv, "--out", out], capsys)
    assert all(e in line for e in expected), (line, expected)
    assert not os.path.exists(out)
  assert os.listdir(no_checkpoint) == [run_log.CONFIG_FILE]  # Read-only: nothing created.


def _command(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "camri.predict", *map(str, args)],
                        cwd=run_main.ROOT, env=run_main.env(), capture_output=True, text=True,
                        timeout=300)


def test_command_line_is_quiet_and_help_exits_0(runs, pngs, tmp_path):
  folder, _ = pngs
  help_run = _command("--help")
  assert help_run.returncode == 0 and "--bias CLASS=B" in help_run.stdout
  out = tmp_path / "p.csv"
  result = _command("--workdir", runs["lgm"], folder, "--out", out)
  assert result.returncode == 0, result.stderr
  assert result.stdout == f"predicted 360 images with {runs['lgm']} (step 40): {out}\n"
  assert result.stderr == ""  # No progress bar off a terminal, no library notes.
  assert len(read_csv(out)) == 360
