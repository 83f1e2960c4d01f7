"""The awa2 builder and its split on a tiny AwA2-data.zip (offline)."""

import functools
import hashlib
import io
import random
import zipfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from camri.data import awa2
from camri.data import manual
from camri.data import stratify
from tests.data import manual_builder

# The official classes.txt order.
_CLASSES_TXT = "".join(
    f"{i}\t{name}\n" for i, name in enumerate((
        "antelope", "grizzly+bear", "killer+whale", "beaver", "dalmatian",
        "persian+cat", "horse", "german+shepherd", "blue+whale", "siamese+cat",
        "skunk", "mole", "tiger", "hippopotamus", "leopard", "moose",
        "spider+monkey", "humpback+whale", "elephant", "gorilla", "ox", "fox",
        "sheep", "seal", "chimpanzee", "hamster", "squirrel", "rhinoceros",
        "rabbit", "bat", "giraffe", "wolf", "chihuahua", "rat", "weasel",
        "otter", "buffalo", "zebra", "giant+panda", "deer", "bobcat", "pig",
        "lion", "mouse", "polar+bear", "collie", "walrus", "raccoon", "cow",
        "dolphin"), start=1))
_IMAGE_DIR = "Animals_with_Attributes2/JPEGImages/"
_COUNTS = {"antelope": 10, "grizzly+bear": 3, "dolphin": 7, "mole": 1}


def _jpeg(rng, mode):
  height, width = rng.integers(8, 24, size=2)
  channels = {"RGB": (3,), "L": ()}[mode]
  pixels = rng.integers(0, 256, size=(height, width, *channels), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
  return buf.getvalue(), (height, width)


def write_archive(path, classes_txt=_CLASSES_TXT, counts=None):
  """Writes AwA2-data.zip; returns {'<class>/<file>': (jpeg bytes, (h, w))}."""
  rng = np.random.default_rng(0)
  images = {}
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("Animals_with_Attributes2/classes.txt", classes_txt)
    zf.writestr("Animals_with_Attributes2/README-images.txt", "readme")
    for name, count in (counts or _COUNTS).items():
      zf.writestr(f"{_IMAGE_DIR}{name}/", b"")
      for i in range(count):
        # One greyscale JPEG: it must still decode to 3 channels.
        data, shape = _jpeg(rng, "L" if (name, i) == ("mole", 0) else "RGB")
        filename = f"{name}/{name}_{10001 + i}.jpg"
        zf.writestr(_IMAGE_DIR + filename, data)
        images[filename] = (data, shape)
  return images


# prepare(tmp_path, manual_dir) -> the prepared awa2 builder.
prepare = functools.partial(manual_builder.prepare, awa2.Awa2)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("awa2")
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  images = write_archive(manual_dir / "AwA2-data.zip")
  return prepare(tmp_path, manual_dir), images


def _read(builder, split, **kwargs):
  return {ex["filename"].decode(): ex for ex in
          tfds.as_numpy(builder.as_dataset(split=split, **kwargs))}


def test_class_names_are_classes_txt_in_order():
  names = awa2.Awa2(data_dir="/nonexistent").info.features["label"].names
  expected = [line.split("\t")[1] for line in _CLASSES_TXT.splitlines()]
  assert names == expected
  assert len(names) == 50 and names[0] == "antelope" and names[49] == "dolphin"


def test_every_image_once_with_its_folder_label_and_bytes(built):
  builder, images = built
  index_of = {line.split("\t")[1]: int(line.split("\t")[0]) - 1
              for line in _CLASSES_TXT.splitlines()}
  raw = {split: _read(builder, split,
                      decoders={"image": tfds.decode.SkipDecoding()})
         for split in ("train", "test")}
  assert not set(raw["train"]) & set(raw["test"])
  assert sorted([*raw["train"], *raw["test"]]) == sorted(images)
  for split in ("train", "test"):
    assert builder.info.splits[split].num_examples == len(raw[split])
    for filename, ex in raw[split].items():
      assert ex["label"] == index_of[filename.split("/")[0]]
      assert ex["image"] == images[filename][0]  # Stored without re-encoding.


def test_images_decode_to_three_channels(built):
  builder, images = built
  for split in ("train", "test"):
    for filename, ex in _read(builder, split).items():
      assert ex["image"].shape == (*images[filename][1], 3)
      assert ex["image"].dtype == np.uint8


def test_builder_split_is_stratified_and_matches_its_definition(built):
  builder, images = built
  test = set(_read(builder, "test"))
  for name, count in _COUNTS.items():
    in_class = sorted(f for f in images if f.startswith(name + "/"))
    n_test = int(np.floor(0.2 * count + 0.5))
    assert sum(f in test for f in in_class) == n_test
    by_hash = sorted(in_class,
                     key=lambda f: hashlib.sha256(f"0:{f}".encode()).digest())
    assert set(by_hash[:n_test]) <= test
  assert len(test) == 2 + 1 + 1 + 0


def test_stratified_split_counts_cover_and_reproducibility():
  files = {label: [f"c{label}/img_{i:05d}.jpg" for i in range(n)]
           for label, n in ((0, 100), (3, 37), (7, 1000), (9, 1), (11, 2))}
  split = stratify.stratified_split(files, 0.2, seed=0)
  everything = sorted(f for names in files.values() for f in names)
  assert sorted(split["train"] + split["test"]) == everything
  assert len(set(split["train"]) & set(split["test"])) == 0
  expected_test = {0: 20, 3: 7, 7: 200, 9: 0, 11: 0}
  for label, n_test in expected_test.items():
    assert sum(f.startswith(f"c{label}/") for f in split["test"]) == n_test
  # Same result whatever the order of the input lists.
  shuffled = {label: random.Random(1).sample(names, len(names))
              for label, names in files.items()}
  assert stratify.stratified_split(shuffled, 0.2, seed=0) == split
  # A class's split does not depend on the other classes.
  alone = stratify.stratified_split({3: files[3]}, 0.2, seed=0)
  assert alone["test"] == [f for f in split["test"] if f.startswith("c3/")]
  # The seed matters.
  assert stratify.stratified_split(files, 0.2, seed=1)["test"] != split["test"]


def test_stratified_split_rejects_a_fraction_outside_0_1():
  with pytest.raises(ValueError, match="test_fraction must be in"):
    stratify.stratified_split({0: ["a.jpg"]}, 1.5, seed=0)


def test_classes_txt_in_another_order_is_an_error(tmp_path):
  lines = _CLASSES_TXT.splitlines()
  swapped = "\n".join(lines[:1] + [lines[2], lines[1]] + lines[3:])
  with pytest.raises(ValueError, match="line 2 is"):
    awa2.check_class_names(swapped)
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  write_archive(manual_dir / "AwA2-data.zip", classes_txt=swapped)
  with pytest.raises(ValueError, match="classes.txt should list"):
    prepare(tmp_path, manual_dir)


def test_image_outside_a_class_folder_is_an_error():
  with pytest.raises(ValueError, match="not in a class folder"):
    awa2.files_by_label([_IMAGE_DIR + "unicorn/unicorn_1.jpg"])


@pytest.mark.parametrize("make_dir", [False, True])
def test_missing_archive_is_a_one_line_error(tmp_path, make_dir):
  manual_dir = tmp_path / "manual"
  if make_dir:
    manual_dir.mkdir()
    (manual_dir / "AwA2-base.zip").write_bytes(b"not this one")
  with pytest.raises(manual.MissingArchiveError) as error:
    prepare(tmp_path, manual_dir)
  message = str(error.value)
  assert "\n" not in message
  assert "AwA2-data.zip" in message
  assert "https://cvml.ista.ac.at/AwA2/AwA2-data.zip" in message
  assert str(manual_dir) in message
