"""The command lines: --help exits 0 and says where configs and losses are; a quiet start."""

import subprocess
import sys

import pytest
import run_main

from camri import objectives


def _run(*args, env=None):
  return subprocess.run([sys.executable, *args], cwd=run_main.ROOT, env=env or run_main.env(),
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module, flag", [
    ("camri.main", "--help"), ("camri.main", "-h"), ("camri.bench", "--help")])
def test_help_exits_0_and_points_to_the_config_table_and_the_losses(module, flag):
  result = _run("-m", module, flag)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""
  text = " ".join(result.stdout.split())  # Unwrapped.
  assert f"python -m {module}" in text and "--config: Path to a config file." in text
  assert 'the fields and their meaning are in README.md, section "Configs"' in text
  losses = text.split("defaults in docs/losses.md): ")[1].removesuffix(".").split(", ")
  assert sorted(losses) == sorted(objectives.OBJECTIVES)


def test_tensorflow_and_jax_start_without_log_lines():
  # What `camri.plots angles` and `camri.main` load: JAX, and TensorFlow for the
  # input pipeline. Without camri's settings TensorFlow prints absl's "All log
  # messages before absl::InitializeLog() ..." and a oneDNN notice.
  env = {k: v for k, v in run_main.env().items()
         if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
  code = ("import camri.features, jax, tensorflow as tf; "
          "print(jax.numpy.ones(2).sum(), tf.constant(2.0).numpy())")
  result = _run("-c", code, env=env)
  assert result.returncode == 0, result.stderr
  assert (result.stdout, result.stderr) == ("2.0 2.0\n", "")
