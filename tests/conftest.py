"""Test set-up: two simulated CPU devices, quiet TensorFlow, a shared digits copy."""

import os

# Before JAX starts: every test runs data-parallel over 2 simulated devices.
# XLA's CPU compile, not the tiny models' compute, dominates the tests' time:
# LLVM optimisation level 0 compiles about 5x faster (only the compiled code's
# speed changes).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=2"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # pylint: disable=g-import-not-at-top

# submitit configures logging when first imported (logging.config.dictConfig),
# which closes every existing handler; imported inside a test that captures
# output (capsys), that closes absl's handler's stream, i.e. pytest's capture.
# Imported here, while sys.stderr is the session's stream, it closes nothing.
import submitit  # pylint: disable=g-import-not-at-top,unused-import  # noqa: E402,F401


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A tfds data_dir holding the prepared digits dataset."""
  from camri import data  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("tfds"))
  data.get_builder(data.get_spec("digits"), data_dir=path)
  return path


@pytest.fixture
def digits_config(tfds_dir):
  """configs/digits.py, small and quiet, reading the session's digits copy."""
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config()
  config.data_dir = tfds_dir
  config.progress_bar = False
  return config
