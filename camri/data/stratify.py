"""A seeded, stratified split of files into train and test, by hash order.

Within each class, files are ordered by the SHA-256 of '<seed>:<name>' and the
first round(fraction * n) (halves rounded up) go to test. The split depends
only on the names, not on library versions, listing order or which other files
are present. AwA2 and the image-folder dataset (a tree without test/) split
this way.
"""

from collections.abc import Hashable, Mapping, Sequence
import hashlib
import math


def held_out_count(n: int, test_fraction: float) -> int:
  """How many of a class's `n` files go to test: round(test_fraction * n), halves rounded up."""
  return math.floor(test_fraction * n + 0.5)


def stratified_split(files: Mapping[Hashable, Sequence[str]], test_fraction: float,
                     seed: int) -> dict[str, list[str]]:
  """Splits each class's files into train and test by a seeded hash order.

  Args:
    files: {label: filenames of that class}.
    test_fraction: share of each class that goes to test, in [0, 1].
    seed: changes the order, hence which files go to test.

  Returns:
    {"train": filenames, "test": filenames}, each sorted; every filename is in
    exactly one, and class k contributes round(test_fraction * n_k) (halves
    rounded up) of its n_k files to test.
  """
  if not 0 <= test_fraction <= 1:
    raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}.")
  train, test = [], []
  for names in files.values():
    order = sorted(
        names,
        key=lambda n: (hashlib.sha256(f"{seed}:{n}".encode()).digest(), n))
    n_test = held_out_count(len(order), test_fraction)
    test += order[:n_test]
    train += order[n_test:]
  return {"train": sorted(train), "test": sorted(test)}
