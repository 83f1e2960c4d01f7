"""The command line: a dataset it cannot get is a one-line error, and nothing is left behind."""

import os
import subprocess
import sys
import time

import run_main

from camri.data import gtsrb

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_missing_gtsrb_archives_are_one_error_line_and_nothing_is_written(tmp_path):
  data_dir, workdir = tmp_path / "tfds", tmp_path / "run"
  env = {**os.environ, "PYTHONPATH": _ROOT, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(
      [sys.executable, "-m", "camri.main", "--config", "configs/gtsrb.py",
       "--workdir", str(workdir), f"--config.data_dir={data_dir}"],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr + result.stdout
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, result.stderr
  manual_dir = str(data_dir / "downloads" / "manual")
  assert f"Put the archives unextracted in {manual_dir}." in errors[0]
  for archive in gtsrb.ARCHIVES:
    assert f"{archive.filename} (download it from {archive.url})" in errors[0]
  assert not workdir.exists()


def test_cifar10_download_without_internet_stops_at_once_in_one_line_leaving_nothing(tmp_path):
  # tfds left alone retries for 3.5 minutes and leaves a .tmp download and an
  # empty cifar10/ behind.
  data_dir, workdir = tmp_path / "tfds", tmp_path / "run"
  (data_dir / "other").mkdir(parents=True)
  (data_dir / "other" / "keep.txt").write_text("not the attempt's")
  start = time.monotonic()
  result = run_main.run("--config", "configs/cifar10.py", "--workdir", workdir,
                        f"--config.data_dir={data_dir}", main="tests/offline_main.py", timeout=120)
  assert time.monotonic() - start < 60
  assert result.returncode == 2, result.stderr
  lines = run_main.error_lines(result.stderr)
  assert lines == [
      "error: dataset 'cifar10' could not be downloaded from www.cs.toronto.edu "
      "(NameResolutionError): run once where tfds can download it, then copy that "
      f"<data_dir>/cifar10 to {data_dir}/cifar10 here, or point config.data_dir at a directory "
      "holding such a copy"]
  assert sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")) == [
      "other", "other/keep.txt"]
  assert not workdir.exists()
