"""The gtsrb builder on tiny archives in the official layout (offline)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from camri.data import gtsrb
from camri.data import manual
from tests.data.gtsrb_archives import TRAIN_DIR
from tests.data.gtsrb_archives import prepare
from tests.data.gtsrb_archives import write_archives

@pytest.fixture(scope="module")
def built(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("gtsrb")
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  expected = write_archives(manual_dir)
  return prepare(tmp_path, manual_dir), expected


def test_class_names_are_the_43_official_names_in_class_id_order():
  names = gtsrb.Gtsrb(data_dir="/nonexistent").info.features["label"].names
  assert len(names) == 43
  assert names[0] == "speed limit (20km/h)"
  assert names[6] == "end of speed limit (80km/h)"
  assert names[13] == "yield"
  assert names[14] == "stop"
  assert names[30] == "beware of ice/snow"
  assert names[42] == "end of no passing by vehicles over 3.5 metric tons"
  assert len(set(names)) == 43


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_image_once_with_its_label_pixels_and_roi(built, split):
  builder, expected = built
  examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
  filenames = [ex["filename"].decode() for ex in examples]
  assert sorted(filenames) == sorted(expected[split])
  assert builder.info.splits[split].num_examples == len(expected[split])
  for ex, filename in zip(examples, filenames):
    image, (x1, y1, x2, y2), label = expected[split][filename]
    assert ex["label"] == label
    np.testing.assert_array_equal(ex["image"], image)
    height, width = image.shape[:2]
    np.testing.assert_allclose(
        ex["roi"], [y1 / height, x1 / width, y2 / height, x2 / width],
        rtol=1e-6)
    # The CSV's pixel coordinates come back exactly.
    assert tuple(np.round(ex["roi"] * [height, width, height, width])) == (
        y1, x1, y2, x2)


def test_train_label_is_the_class_folder(built):
  builder, _ = built
  for ex in tfds.as_numpy(builder.as_dataset(split="train")):
    folder = ex["filename"].decode().split("/")[-2]
    assert ex["label"] == int(folder)


def test_csv_class_id_disagreeing_with_folder_is_an_error(tmp_path):
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  member = TRAIN_DIR + "00014/00001_00000.ppm"
  write_archives(manual_dir, csv_class_of={member: 13})
  with pytest.raises(ValueError, match="00014/00001_00000.ppm has ClassId 13"):
    prepare(tmp_path, manual_dir)


@pytest.mark.parametrize("present", [(), ("GTSRB_Final_Training_Images.zip",
                                          "GTSRB_Final_Test_Images.zip")])
def test_missing_archive_is_a_one_line_error(tmp_path, present):
  manual_dir = tmp_path / "manual"
  if present:
    manual_dir.mkdir()
    for name in present:
      (manual_dir / name).write_bytes(b"not read")
  with pytest.raises(manual.MissingArchiveError) as error:
    prepare(tmp_path, manual_dir)
  message = str(error.value)
  assert "\n" not in message
  assert str(manual_dir) in message
  for archive in gtsrb.ARCHIVES:
    if archive.filename not in present:
      assert archive.filename in message
      assert archive.url in message
  assert ("GTSRB_Final_Test_GT.zip (download it from https://sid.erda.dk/"
          in message)
