"""The command line: a dataset whose archives are missing is a one-line error."""

import os
import subprocess
import sys

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
