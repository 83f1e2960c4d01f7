"""Test set-up: two simulated CPU devices, quiet TensorFlow, a shared digits copy.

And, for the end-to-end tests of `camri.main` (test_preemption.py,
test_faults.py): a short digits command line, a JAX compilation cache per
pytest worker, and one uninterrupted run of it per test session.
"""

import fcntl
import os
import shutil

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


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="session", autouse=True)
def _in_process_compile_cache(compile_cache):
  """The tests in this process share the worker's compilation cache with its subprocesses.

  A test builds its step functions afresh (new closures), so `jax.jit`'s own cache
  misses and XLA compiles again a program it compiled for another run or test: the
  members of a population alone, the runs of one config. The persistent cache
  recognises the program; the executable it loads is the one a compile gives.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", str(compile_cache))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture(scope="session")
def digits_args(tfds_dir):
  """camri.main's arguments but --workdir: digits, 3 epochs of 323 steps (batch size 4)."""
  return ["--config", "configs/digits.py", f"--config.data_dir={tfds_dir}",
          "--config.num_epochs=3", "--config.batch_size=4", "--config.progress_bar=False"]


@pytest.fixture(scope="session")
def reference(digits_args, compile_cache, tmp_path_factory, worker_id):
  """An uninterrupted run's workdir, made once for all pytest-xdist workers; copy to change."""
  import run_main  # pylint: disable=g-import-not-at-top
  from camri import run_log  # pylint: disable=g-import-not-at-top
  shared = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    shared = shared.parent  # The session's directory, above each worker's.
  workdir = shared / "reference_run"
  with open(shared / "reference_run.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not run_log.is_finished(workdir):
      shutil.rmtree(workdir, ignore_errors=True)
      result = run_main.run(*digits_args, "--workdir", workdir, compile_cache=compile_cache)
      assert result.returncode == 0, result.stderr
  assert [r["epoch"] for r in run_log.read_metrics(workdir)] == [1, 2, 3]
  return workdir


@pytest.fixture(autouse=True)
def _restore_log_levels():
  """Entry points called in-process (predict, plots) quiet the logs for good; not across tests."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  verbosity = absl_logging.get_verbosity()
  tensorflow_level = logging.getLogger("tensorflow").level
  yield
  absl_logging.set_verbosity(verbosity)
  logging.getLogger("tensorflow").setLevel(tensorflow_level)
