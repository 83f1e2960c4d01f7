"""Shared set-up for the launcher tests: a stand-in trainer, `fake_main`, and tiny image trees."""

import os

import numpy as np
from PIL import Image
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


@pytest.fixture
def image_tree(tmp_path):
  """Writes a tiny image-folder tree: 8x8 RGB PNGs whose classes differ in brightness.

  Returns a function (name, classes) -> the tree's path, tmp_path/<name> by default.
  """
  def write(name="signs", classes=("ant", "bee", "cow", "dog"),
            counts=(("train", 8), ("val", 4), ("test", 4))):
    root = tmp_path / name
    rng = np.random.default_rng(0)
    for split, count in counts:
      for k, class_name in enumerate(classes):
        os.makedirs(root / split / class_name)
        for i in range(count):
          pixels = rng.normal(40 + 50 * k, 30, (8, 8, 3)).clip(0, 255).astype(np.uint8)
          Image.fromarray(pixels).save(root / split / class_name / f"{i}.png")
    return root
  return write
