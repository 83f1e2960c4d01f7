"""Animals with Attributes 2 (AwA2) as a tfds image classification dataset.

37,322 JPEG images of 50 animal classes (Xian et al., "Zero-Shot Learning - A
Comprehensive Evaluation of the Good, the Bad and the Ugly", TPAMI 2019),
read from AwA2-data.zip without extracting it. The JPEG bytes are stored as
distributed (no re-encoding); they decode to uint8 (height, width, 3).

Features:
  image: the JPEG, decoded to uint8 (height, width, 3).
  label: class index 0..49 in the order of the archive's classes.txt
    ('antelope' is 0, 'dolphin' is 49); names are spelled as there, e.g.
    'grizzly+bear', and are also the image folder names.
  filename: the image's path under JPEGImages/, e.g.
    'antelope/antelope_10001.jpg'.

Split: AwA2 has no standard classification split (its proposed splits are for
zero-shot learning, with disjoint classes), so this builder makes one:
stratified, 20% of each class to `test`, the rest to `train`, every image in
exactly one. Within a class, images are ordered by the SHA-256 of
'<seed>:<filename>' (seed 0, filename as in the `filename` feature) and the
first round(0.2 * n) (halves rounded up) go to `test`. The split depends only
on the file names, not on library versions, file order or which other files
are present.
"""

from collections.abc import Sequence
import zipfile

import tensorflow_datasets as tfds

from camri.data import manual
from camri.data.stratify import stratified_split

HOMEPAGE = "https://cvml.ista.ac.at/AwA2/"
ARCHIVE = manual.Archive("AwA2-data.zip",
                         "https://cvml.ista.ac.at/AwA2/AwA2-data.zip")
TEST_FRACTION = 0.2
SPLIT_SEED = 0

_ROOT = "Animals_with_Attributes2/"
_IMAGE_DIR = _ROOT + "JPEGImages/"
_CLASSES_TXT = _ROOT + "classes.txt"
_IMAGE_SUFFIXES = (".jpg", ".jpeg")

# The order of Animals_with_Attributes2/classes.txt; checked against it.
CLASS_NAMES = (
    "antelope", "grizzly+bear", "killer+whale", "beaver", "dalmatian",
    "persian+cat", "horse", "german+shepherd", "blue+whale", "siamese+cat",
    "skunk", "mole", "tiger", "hippopotamus", "leopard", "moose",
    "spider+monkey", "humpback+whale", "elephant", "gorilla", "ox", "fox",
    "sheep", "seal", "chimpanzee", "hamster", "squirrel", "rhinoceros",
    "rabbit", "bat", "giraffe", "wolf", "chihuahua", "rat", "weasel", "otter",
    "buffalo", "zebra", "giant+panda", "deer", "bobcat", "pig", "lion",
    "mouse", "polar+bear", "collie", "walrus", "raccoon", "cow", "dolphin",
)

_CITATION = """\
@article{xian2019zeroshot,
  title = {Zero-Shot Learning - A Comprehensive Evaluation of the Good, the
           Bad and the Ugly},
  author = {Xian, Yongqin and Lampert, Christoph H. and Schiele, Bernt and
            Akata, Zeynep},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  volume = {41},
  number = {9},
  pages = {2251--2265},
  year = {2019},
}"""


class Awa2(tfds.core.GeneratorBasedBuilder):
  """AwA2 images with a seeded, stratified 80/20 train/test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": f"Stratified split, {TEST_FRACTION:.0%} of each class to test, "
               f"chosen by SHA-256 of '{SPLIT_SEED}:<class>/<file>'.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.download_instructions(
      (ARCHIVE,), HOMEPAGE)

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3),
                                         encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "filename": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=HOMEPAGE,
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    archive = manual.require_archives(dl_manager, (ARCHIVE,))[ARCHIVE.filename]
    with archive.open("rb") as f, zipfile.ZipFile(f) as zf:
      check_class_names(zf.read(_CLASSES_TXT).decode("utf-8"))
      files = files_by_label(zf.namelist())
    splits = stratified_split(files, TEST_FRACTION, SPLIT_SEED)
    return {name: self._generate_examples(archive, filenames)
            for name, filenames in splits.items()}

  def _generate_examples(self, archive, filenames):
    with archive.open("rb") as f, zipfile.ZipFile(f) as zf:
      for filename in filenames:
        yield filename, {
            "image": zf.read(_IMAGE_DIR + filename),
            "label": CLASS_NAMES.index(filename.split("/")[0]),
            "filename": filename,
        }


def check_class_names(classes_txt: str) -> None:
  """Raises ValueError unless classes.txt lists CLASS_NAMES 1..50 in order."""
  rows = [line.split() for line in classes_txt.splitlines() if line.strip()]
  expected = [[str(i + 1), name] for i, name in enumerate(CLASS_NAMES)]
  if rows != expected:
    first = next((i for i, (r, e) in enumerate(zip(rows, expected)) if r != e),
                 min(len(rows), len(expected)))
    raise ValueError(
        f"{_CLASSES_TXT} should list the 50 AwA2 classes as '<index>\\t<name>' "
        f"lines 1..50 in the order of awa2.CLASS_NAMES; line {first + 1} is "
        f"{rows[first] if first < len(rows) else 'missing'}, expected "
        f"{expected[first] if first < len(expected) else 'no line'}.")


def files_by_label(members: Sequence[str]) -> dict[int, list[str]]:
  """Image paths under JPEGImages/ ('<class>/<file>'), sorted, by label."""
  files = {}
  for member in members:
    if not member.startswith(_IMAGE_DIR) or member.endswith("/"):
      continue
    filename = member[len(_IMAGE_DIR):]
    if not filename.lower().endswith(_IMAGE_SUFFIXES):
      continue
    folder = filename.split("/")[0]
    if folder not in CLASS_NAMES or filename.count("/") != 1:
      raise ValueError(f"{member} is not in a class folder "
                       f"{_IMAGE_DIR}<name from classes.txt>/.")
    files.setdefault(CLASS_NAMES.index(folder), []).append(filename)
  return {label: sorted(names) for label, names in sorted(files.items())}
