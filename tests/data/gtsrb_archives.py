"""Tiny GTSRB archives in the official layout, and the builder prepared from them."""

import functools
import io
import zipfile

import numpy as np
from PIL import Image

from camri.data import gtsrb
from tests.data import manual_builder

_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
TRAIN_DIR = "GTSRB/Final_Training/Images/"
TEST_DIR = "GTSRB/Final_Test/Images/"


def _ppm(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PPM")
  return buf.getvalue()


def random_image(rng, height, width, roi):
  del roi
  return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _csv(rows, with_class=True):
  header = _HEADER if with_class else _HEADER.rsplit(";", 1)[0]
  lines = [header]
  for name, image, roi, label in rows:
    fields = [name, image.shape[1], image.shape[0], *roi]
    lines.append(";".join(map(str, fields + [label] if with_class else fields)))
  # The official CSVs end lines with CRLF.
  return ("\r\n".join(lines) + "\r\n").encode()


def write_archives(directory, seed=0, train_classes=(0, 14, 42),
                   csv_class_of=None, make_image=random_image):
  """Writes the three GTSRB archives.

  Returns {split: {member: (image, roi, label)}}.

  csv_class_of: optional {member: ClassId} overriding what the CSV says.
  make_image: (rng, height, width, roi (x1, y1, x2, y2)) -> uint8 image.
  """
  rng = np.random.default_rng(seed)
  csv_class_of = csv_class_of or {}
  expected = {"train": {}, "test": {}}
  with zipfile.ZipFile(directory / "GTSRB_Final_Training_Images.zip",
                       "w") as zf:
    zf.writestr("GTSRB/Readme-Images.txt", "readme")
    for label in train_classes:
      folder = f"{TRAIN_DIR}{label:05d}/"
      rows = []
      for track, count in ((0, 2), (1, 1)):
        for i in range(count):
          height, width = rng.integers(15, 40, size=2)
          roi = (3, 4, width - 2, height - 5)
          image = make_image(rng, height, width, roi)
          name = f"{track:05d}_{i:05d}.ppm"
          zf.writestr(folder + name, _ppm(image))
          rows.append((name, image, roi,
                       csv_class_of.get(folder + name, label)))
          expected["train"][folder + name] = (image, roi, label)
      zf.writestr(f"{folder}GT-{label:05d}.csv", _csv(rows))
  test_rows = []
  with zipfile.ZipFile(directory / "GTSRB_Final_Test_Images.zip", "w") as zf:
    for i, label in enumerate((14, 3, 14, 41)):
      height, width = rng.integers(15, 40, size=2)
      roi = (5, 6, width - 5, height - 4)
      image = make_image(rng, height, width, roi)
      name = f"{i:05d}.ppm"
      zf.writestr(TEST_DIR + name, _ppm(image))
      test_rows.append((name, image, roi, label))
      expected["test"][TEST_DIR + name] = (image, roi, label)
    zf.writestr(TEST_DIR + "GT-final_test.test.csv",
                _csv(test_rows, with_class=False))
  with zipfile.ZipFile(directory / "GTSRB_Final_Test_GT.zip", "w") as zf:
    zf.writestr("GT-final_test.csv", _csv(test_rows))
  return expected


# prepare(tmp_path, manual_dir) -> the prepared gtsrb builder.
prepare = functools.partial(manual_builder.prepare, gtsrb.Gtsrb)
