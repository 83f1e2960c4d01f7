"""Image-folder runs from torchvision ResNet-18 weights (configs/folder.py pretrained=), end to end.

Two runs, each then predicted and exported as `tests/data/test_folder_runs.py`
checks a run: fine-tuning RGB images, the trunk at its own learning rate (in
this process, through main's code path: prepare_run, train_and_evaluate), and
a linear probe of greyscale images, each repeated to RGB, through the command
line (--config.freeze_backbone=True), then resumed in this process for a
second epoch, which must equal two epochs run at once. The weights are
random, under torchvision's names (`tests/torchvision_resnet.py`), and are
moved away before predict and export, which must not need them. Scores are
compared within `tests/round_off.py`'s bound, which holds here with room:
evaluation, predict and the artifact differ by at most a few 1e-7 in these
runs' cosines.
"""

import functools
import hashlib
import json
import operator
import os

from flax import traverse_util
import jax
import numpy as np
import pytest
import safetensors.numpy

from camri import inference
from camri import models
from camri import prepare
from camri import run_log
from camri import train
from configs import folder as folder_config
from tests import run_main
from tests import torchvision_resnet
from tests.data import test_folder_runs as folder_runs


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """(a ResNet-18 state dict file, its SHA-256), written once for the module's runs."""
  path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
  safetensors.numpy.save_file(
      torchvision_resnet.state_dict("resnet18", np.random.default_rng(0)), str(path))
  return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _arg(tree, weights, channels):
  """configs/folder.py's argument string of a run from `weights`."""
  return (f"path={tree},important=bee,size={folder_runs.SIZE},channels={channels},"
          f"model=resnet18,pretrained={weights}")


SMALL = {"num_epochs": 1, "batch_size": 8, "eval_batch_size": 8, "progress_bar": False}


def _check_readers(workdir, tree, weights_path, channels, out):
  """predict and export reproduce the run's test scores, the weights file moved away."""
  os.rename(weights_path, str(weights_path) + ".moved")
  try:
    folder_runs.check_run(workdir, tree, channels, True, out, f"pretrained, channels={channels}")
  finally:
    os.rename(str(weights_path) + ".moved", weights_path)
  with open(out / "model.json") as f:
    description = json.load(f)
  assert description["input"]["normalization"] == "imagenet"
  assert "(x - mean) / std with mean (0.485, 0.456, 0.406)" in description["input"]["preparation"]


def _trunk(variables):
  """{(collection, module, ..., leaf): value} of the backbone's trunk."""
  return {(c, *path): np.asarray(leaf) for c, tree in variables.items()
          for path, leaf in traverse_util.flatten_dict(tree["backbone"]).items()
          if path[0] not in models.FEATURE_MODULES}


def test_fine_tuning_trains_every_layer_from_the_weights_and_readers_normalise(
    weights, tmp_path):
  path, sha256 = weights
  tree, workdir = tmp_path / "tree", str(tmp_path / "run")
  folder_runs.write_tree(tree, ("train", "test"), stored_at_size=True, seed=3)
  config = folder_config.get_config(_arg(tree, path, 3))
  config.update(data_dir=str(tmp_path / "tfds"), **SMALL)
  train.train_and_evaluate(prepare.prepare_run(config, workdir), workdir)
  record = run_log.read_config(workdir)
  assert (record["init_checkpoint"], record["init_checkpoint_sha256"]) == (str(path), sha256)
  assert record["input_normalization"] == "imagenet"
  assert (record["backbone_learning_rate"], record["learning_rate"]) == (1e-4, 1e-3)
  run = inference.load_run(workdir)
  start = models.load_backbone(jax.device_get(run.variables), str(path), "resnet18")
  assert not np.array_equal(_trunk(run.variables)[("params", "conv_init", "kernel")],
                            _trunk(start)[("params", "conv_init", "kernel")])
  _check_readers(workdir, tree, path, 3, tmp_path / "out")


def test_linear_probe_keeps_every_trunk_tensor_of_greyscale_runs_bit_identical(
    weights, compile_cache, tmp_path, capsys):
  path, _ = weights
  tree, workdir = tmp_path / "tree", tmp_path / "run"
  folder_runs.write_tree(tree, ("train", "test"), stored_at_size=True, seed=1)
  command = ["--config", f"configs/folder.py:{_arg(tree, path, 1)}",
             f"--config.data_dir={tmp_path / 'tfds'}", "--config.freeze_backbone=True",
             *(f"--config.{k}={v}" for k, v in SMALL.items()), "--workdir", workdir]
  result = run_main.run(*command, compile_cache=compile_cache)
  assert result.returncode == 0, result.stderr
  run = inference.load_run(workdir)
  assert run.config.freeze_backbone and run.config.backbone_learning_rate is None
  assert run.image_shape == (folder_runs.SIZE, folder_runs.SIZE, 1)
  initial = train.create_train_state(run.config, run.model, run.image_shape)
  initial = {"params": initial.params, "batch_stats": initial.batch_stats}
  _assert_trunk_is(run.variables, initial)
  for keys in (("params", "backbone", "feature_dense"), ("params", "backbone", "feature_norm"),
               ("batch_stats", "backbone", "feature_norm"), ("params", "head")):
    before, after = (jax.tree.leaves(functools.reduce(operator.getitem, keys, v))
                     for v in (initial, run.variables))
    assert all(not np.array_equal(a, b) for a, b in zip(after, before)), keys
  _check_readers(workdir, tree, path, 1, tmp_path / "out")

  # Resumed from its checkpoint (the frozen trunk's optimiser state too) for a second epoch,
  # in this process: the command line's resume is tests/test_preemption.py's.
  config = folder_config.get_config(_arg(tree, path, 1))
  config.update(data_dir=str(tmp_path / "tfds"), freeze_backbone=True, **SMALL)
  config.num_epochs = 2
  capsys.readouterr()
  train.train_and_evaluate(prepare.prepare_run(config.copy_and_resolve_references(),
                                               str(workdir)), str(workdir))
  assert "resuming from the checkpoint at step 2 (epoch 1 of 2 done)" in capsys.readouterr().out
  assert [row["epoch"] for row in run_log.read_metrics(workdir)] == [1, 2]
  resumed = inference.load_run(workdir)
  assert resumed.step == 4
  _assert_trunk_is(resumed.variables, initial)
  # And it repeats a run of two epochs from the start, bit for bit.
  uninterrupted = tmp_path / "uninterrupted"
  train.train_and_evaluate(prepare.prepare_run(config, str(uninterrupted)), str(uninterrupted))
  assert ((uninterrupted / "metrics.csv").read_text()
          == (workdir / "metrics.csv").read_text())


def _assert_trunk_is(variables, initial):
  """Every trunk tensor of `variables` is bit for bit `initial`'s: kernels (HWIO), BatchNorm's."""
  trained, loaded = _trunk(variables), _trunk(initial)
  assert trained.keys() == loaded.keys()
  assert {key[-1] for key in trained} == {"kernel", "scale", "bias", "mean", "var"}
  assert loaded[("params", "conv_init", "kernel")].shape == (7, 7, 3, 64)  # HWIO, RGB.
  for key, value in trained.items():
    assert value.dtype == loaded[key].dtype and value.tobytes() == loaded[key].tobytes(), key
