"""The German Traffic Sign Recognition Benchmark (GTSRB) as a tfds dataset.

43 classes of traffic signs, 39,209 training and 12,630 test images (the
"Final" release of the IJCNN 2011 competition; Stallkamp et al., Neural
Networks 32, 2012). Images are 15x15 to 250x250 RGB crops around one sign each,
with a border of about 10% (at least 5 pixels) around the sign.

Features:
  image: uint8 (height, width, 3), the .ppm re-encoded losslessly as PNG.
  label: ClassId 0..42; `names` are the official sign names, lowercased
    ('speed limit (20km/h)', ..., 'stop' is 14, ...).
  roi: tfds.features.BBox(ymin, xmin, ymax, xmax), the CSV's Roi.Y1, Roi.X1,
    Roi.Y2, Roi.X2 (pixels of this image) divided by its height or width, so
    in [0, 1]; `round(ymin * height)` etc. gives back the CSV's integers, and
    `image[y1:y2, x1:x2]` is the crop PIL's `crop((x1, y1, x2, y2))` makes.
  filename: the image's path inside its archive, e.g.
    'GTSRB/Final_Training/Images/00014/00003_00029.ppm'.

Splits: the official ones. `train` reads the class folders of the training
archive, each labelled by its GT-<class>.csv (whose ClassId must equal the
folder's); `test` reads the test images, labelled by GT-final_test.csv from
GTSRB_Final_Test_GT.zip (the test archive's own CSV has no ClassId).

The archives are read in place (zipfile), never extracted.
"""

import csv
import io
import zipfile

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from camri.data import manual

HOMEPAGE = "https://benchmark.ini.rub.de/gtsrb_dataset.html"
_ARCHIVE_URL = ("https://sid.erda.dk/public/archives/"
                "daaeac0d7ce1152aea9b61d9f1e19370/")
TRAIN_ARCHIVE = manual.Archive(
    "GTSRB_Final_Training_Images.zip",
    _ARCHIVE_URL + "GTSRB_Final_Training_Images.zip")
TEST_ARCHIVE = manual.Archive(
    "GTSRB_Final_Test_Images.zip", _ARCHIVE_URL + "GTSRB_Final_Test_Images.zip")
TEST_LABELS_ARCHIVE = manual.Archive(
    "GTSRB_Final_Test_GT.zip", _ARCHIVE_URL + "GTSRB_Final_Test_GT.zip")
ARCHIVES = (TRAIN_ARCHIVE, TEST_ARCHIVE, TEST_LABELS_ARCHIVE)

_TRAIN_DIR = "GTSRB/Final_Training/Images/"
_TEST_DIR = "GTSRB/Final_Test/Images/"
_TEST_LABELS_CSV = "GT-final_test.csv"
_CSV_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2",
                "Roi.Y2", "ClassId")

# Official ClassId order 0..42.
CLASS_NAMES = (
    "speed limit (20km/h)",
    "speed limit (30km/h)",
    "speed limit (50km/h)",
    "speed limit (60km/h)",
    "speed limit (70km/h)",
    "speed limit (80km/h)",
    "end of speed limit (80km/h)",
    "speed limit (100km/h)",
    "speed limit (120km/h)",
    "no passing",
    "no passing for vehicles over 3.5 metric tons",
    "right-of-way at the next intersection",
    "priority road",
    "yield",
    "stop",
    "no vehicles",
    "vehicles over 3.5 metric tons prohibited",
    "no entry",
    "general caution",
    "dangerous curve to the left",
    "dangerous curve to the right",
    "double curve",
    "bumpy road",
    "slippery road",
    "road narrows on the right",
    "road work",
    "traffic signals",
    "pedestrians",
    "children crossing",
    "bicycles crossing",
    "beware of ice/snow",
    "wild animals crossing",
    "end of all speed and passing limits",
    "turn right ahead",
    "turn left ahead",
    "ahead only",
    "go straight or right",
    "go straight or left",
    "keep right",
    "keep left",
    "roundabout mandatory",
    "end of no passing",
    "end of no passing by vehicles over 3.5 metric tons",
)

_CITATION = """\
@article{stallkamp2012gtsrb,
  title = {Man vs. computer: Benchmarking machine learning algorithms for
           traffic sign recognition},
  author = {Stallkamp, J. and Schlipsing, M. and Salmen, J. and Igel, C.},
  journal = {Neural Networks},
  volume = {32},
  pages = {323--332},
  year = {2012},
}"""


class Gtsrb(tfds.core.GeneratorBasedBuilder):
  """GTSRB, official train/test split, images with their sign's ROI box."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Official Final_Training / Final_Test split; roi as a "
               "normalised BBox.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.download_instructions(
      ARCHIVES, HOMEPAGE)

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3),
                                         encoding_format="png"),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "roi": tfds.features.BBoxFeature(),
            "filename": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=HOMEPAGE,
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    paths = manual.require_archives(dl_manager, ARCHIVES)
    return {
        "train": self._generate_examples(
            read_train_split(paths[TRAIN_ARCHIVE.filename])),
        "test": self._generate_examples(
            read_test_split(paths[TEST_ARCHIVE.filename],
                          paths[TEST_LABELS_ARCHIVE.filename])),
    }

  def _generate_examples(self, examples):
    yield from examples


def read_train_split(archive):
  """(key, example) for each image of GTSRB_Final_Training_Images.zip."""
  with archive.open("rb") as f, zipfile.ZipFile(f) as zf:
    members = [n for n in zf.namelist()
               if n.startswith(_TRAIN_DIR) and not n.endswith("/")]
    folders = sorted({n[len(_TRAIN_DIR):].split("/")[0] for n in members})
    for folder in folders:
      if not (len(folder) == 5 and folder.isdigit()
              and int(folder) < len(CLASS_NAMES)):
        raise ValueError(f"{archive.name}: {_TRAIN_DIR}{folder} is not a "
                         f"class folder 00000..{len(CLASS_NAMES) - 1:05d}.")
      prefix = f"{_TRAIN_DIR}{folder}/"
      rows = _read_csv(zf, f"{prefix}GT-{folder}.csv", archive.name)
      images = [n for n in members
                if n.startswith(prefix) and n.endswith(".ppm")]
      _check_same_files(archive.name, prefix, rows, images)
      for member in sorted(images):
        row = rows[member[len(prefix):]]
        if int(row["ClassId"]) != int(folder):
          raise ValueError(f"{archive.name}: {member} has ClassId "
                           f"{row['ClassId']} in its CSV but is in class "
                           f"folder {folder}.")
        yield member, _example(zf, member, row)


def read_test_split(archive, labels_archive):
  """(key, example) for each image of GTSRB_Final_Test_Images.zip."""
  with labels_archive.open("rb") as f, zipfile.ZipFile(f) as zf:
    rows = _read_csv(zf, _TEST_LABELS_CSV, labels_archive.name)
  with archive.open("rb") as f, zipfile.ZipFile(f) as zf:
    images = [n for n in zf.namelist()
              if n.startswith(_TEST_DIR) and n.endswith(".ppm")]
    _check_same_files(archive.name, _TEST_DIR, rows, images)
    for member in sorted(images):
      yield member, _example(zf, member, rows[member[len(_TEST_DIR):]])


def _read_csv(zf, member, archive_name):
  """Rows of a GTSRB ground-truth CSV in `zf`, keyed by Filename."""
  try:
    data = zf.read(member)
  except KeyError:
    raise ValueError(f"{archive_name} has no {member}.") from None
  reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")), delimiter=";")
  missing = [c for c in _CSV_COLUMNS if c not in (reader.fieldnames or ())]
  if missing:
    raise ValueError(f"{archive_name}: {member} lacks the columns {missing}; "
                     f"expected the header {';'.join(_CSV_COLUMNS)}.")
  return {row["Filename"]: row for row in reader}


def _check_same_files(archive_name, prefix, rows, images):
  listed = set(rows)
  found = {n[len(prefix):] for n in images}
  if listed != found:
    raise ValueError(
        f"{archive_name}: the ground-truth CSV for {prefix} and the .ppm files "
        f"there differ: only in the CSV {sorted(listed - found)[:5]}, only in "
        f"the archive {sorted(found - listed)[:5]}.")


def _example(zf, member, row):
  """The feature dict of one image and its CSV row."""
  with Image.open(io.BytesIO(zf.read(member))) as im:
    image = np.asarray(im.convert("RGB"))
  height, width = image.shape[:2]
  if (int(row["Width"]), int(row["Height"])) != (width, height):
    raise ValueError(f"{member} is {width}x{height} but its CSV row says "
                     f"{row['Width']}x{row['Height']}.")
  x1, y1, x2, y2 = (int(row[c]) for c in
                    ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
  if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height):
    raise ValueError(f"{member}: ROI x1,y1,x2,y2 = {x1},{y1},{x2},{y2} must "
                     f"satisfy 0 <= x1 <= x2 <= {width} and 0 <= y1 <= y2 <= "
                     f"{height}.")
  return {
      "image": image,
      "label": int(row["ClassId"]),
      "roi": tfds.features.BBox(ymin=y1 / height, xmin=x1 / width,
                                ymax=y2 / height, xmax=x2 / width),
      "filename": member,
  }
