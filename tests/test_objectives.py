"""Every loss of the zoo: selectable by config.loss.name, predicts by its rule, trains digits."""

import csv
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camri import config_lib
from camri import losses
from camri import objectives
from camri import prepare
from camri import run_log
from camri import train
from configs import digits
from tests import digits_runs
from tests import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(objectives.OBJECTIVES)
CLI_LOSS = "nirvana"  # Trained through `python -m camri.main`; the others in-process.


def _config(tfds_dir, name, **loss_fields):
  config = digits.get_config(f"loss={name}")
  config.data_dir = tfds_dir
  config.progress_bar = False
  for field, value in loss_fields.items():
    config.loss[field] = value
  return config


def test_registry_defaults_and_checks_cover_every_field():
  base = config_lib.base_config().loss
  assert set(config_lib.LOSS_DEFAULTS) == set(objectives.OBJECTIVES)
  for name, (_, used) in objectives.OBJECTIVES.items():
    hyper = set(used) - {"important_classes"}
    assert hyper == set(config_lib.LOSS_DEFAULTS[name]), name
    for field in hyper:
      assert field in base and base[field] is None, field  # None: the loss's default.
      assert field == "margin" or field in config_lib.LOSS_FIELD_CHECKS, field


def test_docs_table_lists_every_loss_with_its_defaults():
  with open(os.path.join(ROOT, "docs", "losses.md")) as f:
    rows = [line.split(" | ") for line in f if line.startswith("| `")]
  table = {row[0].strip("| `"): row[4] for row in rows}
  assert set(table) == set(objectives.OBJECTIVES)
  for name, cell in table.items():
    documented = {field: eval(value, {"pi": math.pi})  # pylint: disable=eval-used
                  for field, value in re.findall(r"`(\w+)` = `([^`]+)`", cell)}
    defaults = config_lib.LOSS_DEFAULTS[name]
    assert set(documented) == set(defaults), name
    for field, value in defaults.items():
      assert np.allclose(documented[field], value) if isinstance(value, (tuple, float)) \
          else documented[field] == value, (name, field)


def test_defaults_follow_the_name_and_set_values_win(tfds_dir):
  config, _ = prepare.validated_config(_config(tfds_dir, "arcface", scale=8.0))
  assert config.loss.margin == (0.5,) and config.loss.scale == 8.0
  camri_config = _config(tfds_dir, "camri")
  camri_config.loss.name = "cosface"  # As --config.loss.name=cosface does.
  config, _ = prepare.validated_config(camri_config)
  assert config.loss.margin == (0.35,) and config.loss.scale == 64.0
  assert config.loss.radius is None  # Not read by CosFace.


@pytest.mark.parametrize("name, fields, message", [
    ("wce", {"important_weight": 0.0}, "config.loss.important_weight=0.0 is invalid: must be > 0"),
    ("wce", {"important_classes": ()}, "config.loss.important_classes=() is invalid: loss 'wce' "
                                       "needs at least one important class"),
    ("rwwce", {"fn_weight": -1.0}, "config.loss.fn_weight=-1.0 is invalid: must be > 0"),
    ("rwwce", {"fp_weight": -1.0}, "config.loss.fp_weight=-1.0 is invalid: must be >= 0"),
    ("camri", {"margin": (4.0,)}, "config.loss.margin=(4.0,) is invalid: margins are radians in [0, pi)"),
    ("arcface", {"margin": (0.1, 0.2)}, "config.loss.margin=(0.1, 0.2) is invalid: loss 'arcface' takes one margin"),
    ("cosface", {"margin": (-0.1,)}, "config.loss.margin=(-0.1,) is invalid: margins must be >= 0"),
    ("normface", {"scale": 0.0}, "config.loss.scale=0.0 is invalid: must be > 0"),
    ("nirvana", {"radius": 0.0}, "config.loss.radius=0.0 is invalid: must be > 0"),
    ("nirvana", {"hinge_margin": -1.0}, "config.loss.hinge_margin=-1.0 is invalid: must be >= 0, or None"),
    ("cc_loss", {"reduction": 0}, "config.loss.reduction=0 is invalid: must be an integer >= 1"),
    ("competing_ratio", {"beta": float("nan")}, "config.loss.beta=nan is invalid: must be >= 0"),
    ("lgm", {"likelihood_weight": -0.1}, "config.loss.likelihood_weight=-0.1 is invalid: must be >= 0"),
    ("em_softmax", {"num_heads": 0}, "config.loss.num_heads=0 is invalid: must be an integer >= 1"),
])
def test_bad_loss_fields_are_named_in_one_line(tfds_dir, name, fields, message):
  with pytest.raises(config_lib.ConfigError) as error:
    prepare.validated_config(_config(tfds_dir, name, **fields))
  assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_nirvana_needs_a_feature_dim_for_its_simplex(tfds_dir):
  config = _config(tfds_dir, "nirvana")
  config.feature_dim = 8
  with pytest.raises(config_lib.ConfigError, match=r"^config\.feature_dim=8 is invalid: .* >= "
                                                   r"num_classes - 1 = 9$"):
    prepare.validated_config(config)


def _normalize(x, axis):
  return x / np.linalg.norm(x, axis=axis, keepdims=True)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _numpy_rule(name, z, head, num_classes):
  """(class vectors (K, D) or None, predictions (N,)) from features and head parameters."""
  if name in ("cross_entropy", "wce", "rwwce", "competing_ratio", "cc_loss"):
    dense = head["linear"]["Dense_0"] if name == "cc_loss" else head["Dense_0"]
    return dense["kernel"].T, np.argmax(z @ dense["kernel"] + dense["bias"], -1)
  if name in ("camri", "arcface", "cosface", "class_sensitive_cosface", "normface"):
    vectors = head["kernel"].T
    return vectors, np.argmax(_normalize(z, -1) @ _normalize(vectors, -1).T, -1)
  if name in ("nirvana", "lgm"):
    vectors = (np.asarray(losses.simplex_centers(num_classes, z.shape[-1], 200.0))
               if name == "nirvana" else head["means"])
    return vectors, np.argmin(((z[:, None, :] - vectors[None]) ** 2).sum(-1), -1)
  assert name == "em_softmax"
  probabilities = _softmax(np.einsum("nd,vdk->vnk", z, head["kernel"])).mean(0)
  return None, np.argmax(probabilities, -1)


def _forward(config, labels):
  """Parameters, outputs, scores and per-example losses of a fresh model on random images.

  Eager, not jitted: the backbone's ops are compiled once for every loss.
  """
  model, objective = train.make_model(config, 10)
  images = jax.random.uniform(jax.random.key(1), (labels.shape[0], 8, 8, 1))
  variables = model.init(jax.random.key(0), images, train=False)
  outputs = model.apply(variables, images, train=False)
  return variables, outputs, objective.scores(outputs), objective.loss(outputs, labels)


@pytest.mark.parametrize("name", NAMES)
def test_scores_argmax_is_the_losses_prediction_rule(tfds_dir, name):
  config, _ = prepare.validated_config(_config(tfds_dir, name))
  variables, outputs, scores, per_example = _forward(config, jnp.arange(16) % 10)
  z = np.asarray(outputs["features"], np.float64)
  head = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"].get("head", {}))
  vectors, expected = _numpy_rule(name, z, head, 10)
  np.testing.assert_array_equal(np.argmax(scores, -1), expected)
  if vectors is None:
    assert "cosine" not in outputs
  else:  # The cosines the angle statistics read: to each class's own vector.
    np.testing.assert_allclose(outputs["cosine"], _normalize(z, -1) @ _normalize(vectors, -1).T,
                               atol=1e-5)
  assert per_example.shape == (16,) and np.all(np.isfinite(per_example))


# The margin family's public losses, from features and weights; the objectives
# apply the same core to the head's cosines.
PUBLIC_MARGIN_LOSSES = {
    "camri": lambda c, f, w, t: losses.camri_loss(
        f, w, t, losses.margin_vector(10, c.important_classes, c.margin), c.scale),
    "arcface": lambda c, f, w, t: losses.arcface_loss(f, w, t, c.margin[0], c.scale),
    "cosface": lambda c, f, w, t: losses.cosface_loss(f, w, t, c.margin[0], c.scale),
    "class_sensitive_cosface": lambda c, f, w, t: losses.class_sensitive_cosface_loss(
        f, w, t, losses.margin_vector(10, c.important_classes, c.margin), c.scale),
    "normface": lambda c, f, w, t: losses.normface_loss(f, w, t, c.scale),
}


@pytest.mark.parametrize("name", sorted(PUBLIC_MARGIN_LOSSES))
def test_margin_objectives_are_the_public_losses(tfds_dir, name):
  config, _ = prepare.validated_config(_config(tfds_dir, name))
  labels = jnp.arange(16) % 10  # The important class among them.
  _, outputs, _, per_example = _forward(config, labels)
  want = PUBLIC_MARGIN_LOSSES[name](config.loss, outputs["features"], outputs["weights"], labels)
  np.testing.assert_allclose(per_example, want, rtol=1e-5, atol=1e-6)


def test_nirvana_hinge_is_selected_by_the_config(tfds_dir):
  config, _ = prepare.validated_config(_config(tfds_dir, "nirvana", hinge=True))
  labels = jnp.array([0, 3, 5, 9])
  _, outputs, _, per_example = _forward(config, labels)
  z = np.asarray(outputs["features"], np.float64)
  centers = np.asarray(losses.simplex_centers(10, 64, 200.0), np.float64)
  margin = 200.0 * math.sqrt(2 * 10 / 9) / 10  # The centres' distance / 10.
  expected = 0.25 * np.maximum(((z - centers[labels]) ** 2).sum(-1) - margin, 0.0)
  np.testing.assert_allclose(per_example, expected, rtol=1e-5)


def _check_trained(workdir, name, accuracy):
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  for field, default in config_lib.LOSS_DEFAULTS[name].items():
    assert record["loss"][field] == (list(default) if isinstance(default, tuple) else default)
  assert accuracy >= 0.8, f"{name}: test accuracy {accuracy:.3f} after 2 epochs"


@pytest.mark.parametrize("name", [n for n in NAMES if n != CLI_LOSS])
def test_every_loss_trains_digits_with_its_defaults(tfds_dir, tmp_path_factory, name):
  """Each run is trained once for the session; test_predict.py and test_export.py read some."""
  workdir = digits_runs.shared_run(tfds_dir, tmp_path_factory, name)
  _check_trained(workdir, name, run_log.read_metrics(workdir)[-1]["test_accuracy"])


def test_main_trains_a_loss_picked_in_the_config_argument(tfds_dir, tmp_path):
  workdir = str(tmp_path / CLI_LOSS)
  result = run_main.run(f"--config=configs/digits.py:loss={CLI_LOSS}", f"--workdir={workdir}",
                        "--config.num_epochs=2", f"--config.data_dir={tfds_dir}",
                        "--config.progress_bar=False",
                        extra_env={"XDG_CACHE_HOME": str(tmp_path / "cache"),
                                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "done: epoch 2" in result.stdout
  # The run kept its compiled train step in the default compilation cache (every program:
  # the minimum compile time is 0 here, 1 s by default).
  assert any(name.startswith("jit__train_steps-")
             for name in os.listdir(tmp_path / "cache" / "camri" / "jax"))
  with open(os.path.join(workdir, "metrics.csv")) as f:
    last = list(csv.DictReader(f))[-1]
  _check_trained(workdir, CLI_LOSS, float(last["test_accuracy"]))
