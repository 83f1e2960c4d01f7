"""Shared set-up for the launcher tests: a stand-in trainer, `fake_main`."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def fake_env(monkeypatch):
  """Makes `python -m fake_main` (and `launch`, for submitit's workers) importable in subprocesses."""
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([FAKE_DIR, REPO]))
  monkeypatch.delenv("FAKE_MAIN_STOP_AFTER", raising=False)
  monkeypatch.delenv("FAKE_MAIN_SLEEP", raising=False)
  monkeypatch.delenv("FAKE_MAIN_CLASSES", raising=False)
