"""`camri.export`: the artifact runs in a process without camri and gives camri.predict's scores."""

import json
import os
import subprocess
import sys

import digits_runs
import numpy as np
import pytest
import round_off
import run_main
import tensorflow as tf
from test_predict import read_csv
from test_predict import write_test_pngs

from camri import export
from camri import inference
from camri import predict

# Only jax and numpy: the artifact's scores for images.npy at two batch sizes.
JAX_ONLY = """
import sys
import jax, numpy as np
images = np.load("images.npy")
model = jax.export.deserialize(open("model.jax", "rb").read())
np.save("scores.npy", np.asarray(model.call(images)))
np.save("scores7.npy", np.asarray(model.call(images[:7])))
assert not {"camri", "flax", "tensorflow"} & set(sys.modules), sorted(sys.modules)
"""


@pytest.fixture(scope="module")
def camri_run(tfds_dir, tmp_path_factory) -> str:
  return digits_runs.shared_run(tfds_dir, tmp_path_factory, "camri")


def test_artifact_without_camri_equals_predict(camri_run, tfds_dir, tmp_path, capsys):
  paths = sorted(write_test_pngs(tfds_dir, str(tmp_path / "png")))
  assert predict.main(["--workdir", camri_run, *paths, "--out", str(tmp_path / "p.csv")]) == 0
  artifact = str(tmp_path / "out" / "model.jax")
  assert export.main(["--workdir", camri_run, "--out", artifact]) == 0
  assert capsys.readouterr().out.splitlines()[-1] == (
      f"exported {camri_run} (step 40) for cpu, cuda, rocm, tpu: uint8 (n, 8, 8, 1) -> "
      f"float32 (n, 10) scores: {artifact}, {tmp_path / 'out' / 'model.json'}")

  with open(tmp_path / "out" / "model.json") as f:
    description = json.load(f)
  assert description["class_names"] == [str(k) for k in range(10)]
  assert (description["image_size"], description["channels"]) == ([8, 8], 1)
  assert (description["loss"], description["important_classes"]) == ("camri", [8])
  assert description["input"]["shape"] == ["n", 8, 8, 1] and description["angular"]
  assert description["platforms"] == ["cpu", "cuda", "rocm", "tpu"]

  images = np.stack([tf.io.decode_png(open(p, "rb").read()).numpy() for p in paths])
  assert images.dtype == np.uint8 and images.shape == (360, 8, 8, 1)
  np.save(tmp_path / "out" / "images.npy", images)
  env = {k: v for k, v in run_main.env().items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", JAX_ONLY], cwd=tmp_path / "out", env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr

  table = read_csv(tmp_path / "p.csv")
  assert [r["path"] for r in table] == paths
  expected = np.array([[float(r[f"score_{k}"]) for k in range(10)] for r in table])
  scores = np.load(tmp_path / "out" / "scores.npy")
  assert scores.dtype == np.float32 and scores.shape == (360, 10)
  round_off.assert_scores_agree(scores, expected)
  round_off.assert_same_predictions([int(r["predicted"]) for r in table], scores)
  # Another batch size compiles another program.
  round_off.assert_scores_agree(np.load(tmp_path / "out" / "scores7.npy"), scores[:7])


def test_a_linear_head_exports_its_logits(tfds_dir, tmp_path_factory):
  workdir = digits_runs.shared_run(tfds_dir, tmp_path_factory, "cross_entropy")
  run = inference.load_run(workdir, prepare_data=False)
  exported = export.export_run(run, platforms=("cpu",))
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
  expected = np.asarray(run.scores(run.variables, images.astype(np.float32) / 255))
  for n in (5, 2):
    round_off.assert_scores_agree(exported.call(images[:n]), expected[:n])
  assert not run.angular


def test_bad_input_is_one_line_status_2_and_nothing_written(camri_run, tmp_path, capsys):
  (tmp_path / "run").mkdir()
  for argv, expected in [
      (["--workdir", str(tmp_path / "nowhere")], "does not exist"),
      (["--workdir", str(tmp_path / "run")], "config.json"),
      (["--workdir", camri_run, "--out", str(tmp_path / "model.json")], "model.json"),
  ]:
    with pytest.raises(SystemExit) as exit_info:
      export.main([*argv, "--out", str(tmp_path / "model.jax")] if "--out" not in argv else argv)
    assert exit_info.value.code == 2
    lines = run_main.error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == ["run"]
