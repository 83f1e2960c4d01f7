"""Runs `python -m camri.main` in a subprocess, as a user would."""

import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(compile_cache=None) -> dict[str, str]:
  """The test session's environment (2 CPU devices), importing this checkout.

  Args:
    compile_cache: a directory for JAX's persistent compilation cache, shared
      by the runs of one test module so that each compiles its programs once.
  """
  out = {**os.environ, "PYTHONUNBUFFERED": "1",
         "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
  if compile_cache:
    out["JAX_COMPILATION_CACHE_DIR"] = str(compile_cache)
    out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return out


def command(*args, module="camri.main") -> list[str]:
  return [sys.executable, "-m", module, *map(str, args)]


def run(*args, compile_cache=None, timeout=300, main=None, extra_env=None,
        preexec_fn=None, module="camri.main") -> subprocess.CompletedProcess:
  """Runs camri.main with `args` (or the script `main`, taking the same flags).

  `extra_env` adds environment variables; `preexec_fn` runs in the child
  before it starts (e.g. to set a resource limit).
  """
  cmd = [sys.executable, main, *map(str, args)] if main else command(*args, module=module)
  return subprocess.run(cmd, cwd=ROOT, env={**env(compile_cache), **(extra_env or {})},
                        capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def start(*args, compile_cache=None, module="camri.main") -> subprocess.Popen:
  return subprocess.Popen(command(*args, module=module), cwd=ROOT, env=env(compile_cache),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoint_steps(workdir) -> list[int]:
  """Steps of the complete checkpoints (orbax renames a step's directory when done)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if re.fullmatch(r"\d+", n))


def wait_for_checkpoint(workdir, process: subprocess.Popen, timeout=300) -> int:
  """Polls until `workdir` has a complete checkpoint; returns its step."""
  deadline = time.monotonic() + timeout
  while not checkpoint_steps(workdir):
    if process.poll() is not None:
      raise AssertionError(f"exited with {process.returncode} before its first checkpoint:\n"
                           f"{process.stderr.read()}")
    if time.monotonic() > deadline:
      process.kill()
      raise AssertionError("no checkpoint within the time limit")
    time.sleep(0.02)
  return checkpoint_steps(workdir)[0]


def error_lines(stderr: str) -> list[str]:
  """stderr's non-empty lines."""
  return [line for line in stderr.splitlines() if line.strip()]
