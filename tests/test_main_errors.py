"""Bad input to `python -m camri.main`: one line on stderr, status 2, nothing written.

Each case runs the real command line in a subprocess. Validation happens before
TensorFlow loads and before any compute, so each costs about two seconds.
"""

import json
import os

import pytest
import run_main

DIGITS = "configs/digits.py"

# (config argument and overrides, strings the error line must contain).
BAD_INPUTS = {
    "unknown_dataset": (
        [DIGITS, "--config.dataset=imagenet"],
        ["config.dataset='imagenet'", "'cifar10'", "'digits'"]),
    "unknown_model": (
        [DIGITS, "--config.model=vit"],
        ["config.model='vit'", "'reference_cnn'", "'small_cnn'"]),
    "unknown_loss": (
        [DIGITS, "--config.loss.name=focal"],
        ["config.loss.name='focal'", "'arcface'", "'camri'", "'cross_entropy'"]),
    "unknown_conv_weight_grad": (
        [DIGITS, "--config.conv_weight_grad=fast"],
        ["config.conv_weight_grad='fast'", "'auto'", "'xla'", "'taps'"]),
    "class_index_out_of_range": (
        [f"{DIGITS}:important=10"],
        ["config.loss.important_classes=10", "0..9"]),
    "unknown_class_name": (
        ["configs/cifar10.py:important=unicorn"],
        ["config.loss.important_classes='unicorn'", "airplane", "cat"]),
    "negative_margin": (
        [DIGITS, "--config.loss.margin=(-0.1,)"],
        ["config.loss.margin=(-0.1,)", "[0, pi)"]),
    "margin_pi": (
        [DIGITS, "--config.loss.margin=(3.1416,)"],
        ["config.loss.margin=(3.1416,)", "[0, pi)"]),
    "zero_scale": (
        [DIGITS, "--config.loss.scale=0"],
        ["config.loss.scale=0", "> 0"]),
    "zero_batch": (
        [DIGITS, "--config.batch_size=0"],
        ["config.batch_size=0", ">= 1"]),
    "batch_not_divisible": (
        [DIGITS, "--config.batch_size=63"],
        ["config.batch_size=63", "divisible by the device count (2)"]),
    "zero_epochs": (
        [DIGITS, "--config.num_epochs=0"],
        ["config.num_epochs=0", ">= 1"]),
    "bad_config_argument": (
        [f"{DIGITS}:bogus=1"],
        ["'bogus=1'", "'important'", "'loss'"]),
    "unknown_config_field": (
        [DIGITS, "--config.nm_epochs=3"],
        ["'nm_epochs'", "num_epochs"]),
    "missing_config_file": (
        ["configs/nonexistent.py"],
        ["--config", "configs/nonexistent.py"]),
    "missing_weights_file": (
        [DIGITS, "--config.model=resnet18", "--config.init_checkpoint=/nowhere/r18.safetensors"],
        ["config.init_checkpoint='/nowhere/r18.safetensors'", "no such file"]),
    "comma_in_a_folder_path": (
        ["configs/folder.py:path=/data/x,y,size=28"],
        ["config argument path='/data/x,y'", "--config.folder=/data/x,y"]),
    "comma_in_a_class_name": (
        ["configs/folder.py:path=/data/x,important=red,green"],
        ["config argument important='red,green'", "important=<index>"]),
}


def assert_refused(result, expected, workdir):
  lines = run_main.error_lines(result.stderr)
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
  for text in expected:
    assert text in lines[0]
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(name, tmp_path):
  args, expected = BAD_INPUTS[name]
  workdir = tmp_path / "run"
  result = run_main.run("--config", *args, "--workdir", workdir, timeout=120)
  assert_refused(result, expected, workdir)


def test_batch_larger_than_the_training_split(tfds_dir, tmp_path):
  # Known only once the data is prepared; still before the workdir is written.
  workdir = tmp_path / "run"
  result = run_main.run("--config", DIGITS, f"--config.data_dir={tfds_dir}",
                        "--config.batch_size=2000", "--workdir", workdir)
  assert_refused(result, ["config.batch_size=2000", "at most 1292", "1292 examples"], workdir)


def _snapshot(directory):
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[path] = (f.read(), os.stat(path).st_mtime_ns)
  return out


@pytest.fixture
def existing_run(digits_config, tmp_path):
  """A workdir holding a 3-epoch digits run (config.json, metrics.csv, a checkpoint file)."""
  from camri import prepare  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "existing"
  digits_config.num_epochs = 3
  prepare.prepare_run(digits_config, str(workdir))
  (workdir / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n2,0.25\n3,0.125\n")
  (workdir / "checkpoints" / "66").mkdir(parents=True)
  (workdir / "checkpoints" / "66" / "_CHECKPOINT_METADATA").write_text("{}")
  return workdir


def test_a_feed_the_run_cannot_take_is_refused_before_anything_is_written(digits_config,
                                                                         tmp_path):
  """A population's data must be on the devices: prepare_run refuses data_on_device=false
  (exit 2) before it writes, not training once it has opened the data and the checkpoints."""
  from camri import prepare  # pylint: disable=g-import-not-at-top
  digits_config.data_on_device = "false"
  workdir = tmp_path / "member"
  with pytest.raises(prepare.ConfigError, match=r"^config.data_on_device='false' is invalid for "
                     "a population of 2 runs"):
    prepare.prepare_run(digits_config, str(workdir),
                        population={"file": "p.json", "population": 0, "size": 2, "member": 0})
  assert not workdir.exists()


@pytest.mark.parametrize("overrides, expected", [
    (["--config.loss.scale=8"], ["holds a run with a different config", "loss.scale: 16.0 -> 8.0",
                                 "delete"]),
    (["--config.num_epochs=2"], ["config.num_epochs=2", "already holds 3 trained epochs"]),
])
def test_workdir_of_another_run_is_refused_and_untouched(existing_run, tfds_dir, overrides,
                                                         expected):
  before = _snapshot(existing_run)
  result = run_main.run("--config", DIGITS, f"--config.data_dir={tfds_dir}", *overrides,
                        "--workdir", existing_run, timeout=120)
  lines = run_main.error_lines(result.stderr)
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert "Traceback" not in result.stderr
  for text in expected:
    assert text in lines[0]
  assert str(existing_run) in lines[0]
  assert _snapshot(existing_run) == before


def test_run_files_without_config_json_are_refused(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "metrics.csv").write_text("epoch\n1\n")
  result = run_main.run("--config", DIGITS, f"--config.data_dir={tfds_dir}",
                        "--workdir", workdir, timeout=120)
  lines = run_main.error_lines(result.stderr)
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert "metrics.csv and checkpoints but no config.json" in lines[0]
  assert sorted(os.listdir(workdir)) == ["checkpoints", "metrics.csv"]


def test_a_growing_num_epochs_is_accepted(existing_run):
  from camri import prepare  # pylint: disable=g-import-not-at-top
  record = json.loads((existing_run / "config.json").read_text())
  record["num_epochs"] = 5
  prepare.check_workdir(str(existing_run), record)  # No error.
