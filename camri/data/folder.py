"""A user's image-folder tree as a tfds dataset.

    <path>/train/<class>/<image>    required, at least 2 classes
    <path>/val/<class>/<image>      optional: the validation split
    <path>/test/<class>/<image>     optional

Class names are the folder names under train/ in Unicode NFC (macOS writes
names in NFD), sorted; val/ and test/ may lack a class but not add one. Images
are PNG, JPEG, BMP or GIF (first frame), greyscale, RGB or RGBA in any size;
other files (.txt, .DS_Store) are skipped and counted. Links are followed and
broken ones refused (`camri.data.image_files`).
Without test/, 20% of each class of train/ goes to test: the seeded stratified
split of AwA2 (`camri.data.stratify`, seed 0, names '<class>/<file>').
Without val/, the validation split is held out of train by
`config.validation_fraction`, as for every dataset. A run whose important
class has no image in the test or the validation split is refused before it
starts (its recall there would be nan); any other class without is a warning.

The tree is prepared once into tfds records in data_dir, under a builder config
named after its absolute path and a fingerprint of its images' names, sizes and
modification times (and the channel count): a run on an unchanged tree reads
the records and decodes nothing; any change prepares a new copy (old copies
are left in `<data_dir>/folder/`, where they may be deleted). A run is bound to
the copy it started on (config.json's "prepared_data"): resuming, extending or
reading it reads that copy, whatever the tree does now. Only where that copy
is gone and the tree changed is the run refused, saying what changed, from the
list of files the run recorded when it started (`TREE_FILE` in its workdir).

The original file bytes are stored, not re-encoded: a photo stays as small as
its JPEG, and the pipeline (and prediction on new files) decodes exactly the
bytes the user has. Each image is decoded once while preparing, with the
pipeline's own `decode_image`, so a file that would fail in training is
refused before it. tfds's own image decoder does not take a GIF's first
frame or turn BMP and GIF into 1 channel: read this dataset through
`camri.data.pipeline`.

Features:
  image: the file's bytes; the pipeline decodes them to uint8
    (height, width, channels).
  label: the class index in the sorted class names.
  filename: the path under the tree, e.g. 'train/cat/0001.jpg'.
"""

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import unicodedata

import tensorflow_datasets as tfds

from camri import run_log
from camri.config_lib import ConfigError
from camri.data import image_files
from camri.data import stratify

IMAGE_SUFFIXES = image_files.SUFFIXES
SPLITS = ("train", "val", "test")
SPLIT_WORDS = {"val": "validation", "test": "test"}
TEST_FRACTION = 0.2
SPLIT_SEED = 0
CHANNELS = (1, 3)
TREE_FILE = "image_tree.json"  # In a run's workdir: the files of the tree it started on.


class FolderError(image_files.ImageFileError):
  """An image-folder tree the dataset cannot read: refused like a bad config (one line, status 2)."""


@dataclasses.dataclass(frozen=True)
class Tree:
  """The images of an image-folder tree.

  Attributes:
    root: the tree's absolute path.
    class_names: the class folder names of train/ (NFC), sorted.
    files: {split: ((path under root, label), ...)}: "train", "test" (made
      from train/ where the tree has no test/) and "val" where it has val/.
    test_from_train: whether the test split was split off train/.
    skipped: files that are not images.
    loops: links to a folder they lie in, not followed.
    listing: ((path under root, size, modification time in ns), ...) of
      every image, sorted.
  """
  root: str
  class_names: tuple[str, ...]
  files: dict[str, tuple[tuple[str, int], ...]]
  test_from_train: bool
  skipped: int
  loops: int
  listing: tuple[tuple[str, int, int], ...]

  @property
  def fingerprint(self) -> str:
    """SHA-256 of the images' paths, sizes and modification times."""
    digest = hashlib.sha256()
    for path, size, mtime_ns in self.listing:
      digest.update(f"{path}\0{size}\0{mtime_ns}\n".encode())
    return digest.hexdigest()

  def class_counts(self, split: str) -> list[int]:
    counts = collections.Counter(label for _, label in self.files[split])
    return [counts[k] for k in range(len(self.class_names))]


def _class_folders(root: str, split: str) -> tuple[dict[str, list[str]], int, int]:
  """({class name: its image paths under root}, files skipped, loops) of one split folder."""
  folder = os.path.join(root, split)
  images, on_disk, skipped, loops = {}, {}, 0, 0
  for entry, path, kind in image_files.entries(folder):
    if kind == "image":
      raise FolderError(f"{path} is not in a class folder: put images in {folder}/<class>/")
    if kind == "other":
      skipped += 1
      continue
    name = unicodedata.normalize("NFC", entry)
    if name in on_disk:
      raise FolderError(f"{folder} has class folders {on_disk[name]!r} and {entry!r}, one "
                        "name in two Unicode forms: merge them")
    found = image_files.walk(path, inside=(root, folder))
    if not found.images:
      raise FolderError(f"class folder {path} has no images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    on_disk[name] = entry
    # The walk's paths are joined onto root: cutting it off is relpath without its
    # normalisation, which took half of a 10,000-image scan.
    images[name] = [p[len(os.path.join(root, "")):] for p in found.images]
    skipped += found.other_files
    loops += found.loops
  if not images:
    raise FolderError(f"{folder} has no class folders: put images in {folder}/<class>/")
  return images, skipped, loops


# root -> its Tree, while `one_scan_per_tree` holds; None outside it.
_shared_scans: dict[str, "Tree"] | None = None


@contextlib.contextmanager
def one_scan_per_tree():
  """Within it, `scan` lists and checks each tree once, and later calls get that listing.

  A population prepares its members one after the other, each a new run that scans
  its tree (a 10,000-image tree took 0.6 s, twice a member), although they train
  on one dataset by construction; they share the first member's scan.
  """
  global _shared_scans
  outer = _shared_scans
  _shared_scans = {} if outer is None else outer
  try:
    yield
  finally:
    _shared_scans = outer


def scan(path: str) -> Tree:
  """The tree at `path`, checked; raises FolderError or ImageFileError (one line naming the path)."""
  root = os.path.abspath(os.path.expanduser(path))
  if _shared_scans is None:
    return _scan(root)
  if root not in _shared_scans:
    _shared_scans[root] = _scan(root)
  return _shared_scans[root]


def _scan(root: str) -> Tree:
  if not os.path.isdir(root):
    raise FolderError(f"image folder {root} does not exist")
  if not os.path.isdir(os.path.join(root, "train")):
    parent = os.path.dirname(root)
    if os.path.basename(root) in SPLITS and os.path.isdir(os.path.join(parent, "train")):
      raise FolderError(f"image folder {root} has no train/ folder: did you mean "
                        f"path={parent}?")
    raise FolderError(f"image folder {root} has no train/ folder: put images in "
                      f"{root}/train/<class>/")
  by_split, skipped, loops = {}, 0, 0
  for split in SPLITS:
    if split == "train" or os.path.isdir(os.path.join(root, split)):
      by_split[split], split_skipped, split_loops = _class_folders(root, split)
      skipped, loops = skipped + split_skipped, loops + split_loops
  class_names = tuple(sorted(by_split["train"]))
  if len(class_names) < 2:
    raise FolderError(f"{os.path.join(root, 'train')} has one class folder "
                      f"({class_names[0]}): a classifier needs at least 2")
  for split in ("val", "test"):
    extra = sorted(set(by_split.get(split, ())) - set(class_names))
    if extra:
      raise FolderError(f"{os.path.join(root, split)} has classes that train/ lacks: "
                        f"{', '.join(extra)}")

  labelled = {split: {class_names.index(c): paths for c, paths in classes.items()}
              for split, classes in by_split.items()}
  test_from_train = "test" not in labelled
  if test_from_train:
    # Split on '<class>/<file>' as AwA2 does, so the choice ignores the root.
    by_name = {label: [p.split(os.sep, 1)[1] for p in paths]
               for label, paths in labelled["train"].items()}
    label_of = {name: label for label, names in by_name.items() for name in names}
    chosen = stratify.stratified_split(by_name, TEST_FRACTION, SPLIT_SEED)
    for split, names in chosen.items():
      labelled[split] = collections.defaultdict(list)
      for name in names:
        labelled[split][label_of[name]].append(os.path.join("train", name))
  files = {split: tuple(sorted((p, label) for label, paths in classes.items() for p in paths))
           for split, classes in labelled.items()}
  listing = []
  for path_ in sorted(p for split in files.values() for p, _ in split):
    stat = os.stat(os.path.join(root, path_))
    listing.append((path_, stat.st_size, stat.st_mtime_ns))
  return Tree(root=root, class_names=class_names, files=files,
              test_from_train=test_from_train, skipped=skipped, loops=loops,
              listing=tuple(listing))


def eval_counts(tree: Tree, validation_fraction: float) -> dict[str, list[int]]:
  """Images of each class in the splits a run on `tree` evaluates: {"val" (if any), "test": counts}.

  The held-out validation split (no val/) takes `stratify.held_out_count` of
  each class of the training split, as `camri.data.splits` holds it out.
  """
  counts = {"test": tree.class_counts("test")}
  if "val" in tree.files:
    counts["val"] = tree.class_counts("val")
  else:
    held_out = [stratify.held_out_count(n, validation_fraction)
                for n in tree.class_counts("train")]
    if sum(held_out):  # Otherwise there is no validation split.
      counts["val"] = held_out
  return counts


def check_classes(config, builder):
  """Refuses a run whose important class has no image in an evaluated split; warns for other classes.

  Raises:
    FolderError: naming the split and the class, and where its images come from.
  """
  tree = builder.builder_config.tree
  if tree is None:  # The run's own prepared copy: checked when the run started.
    return
  fraction = config.get("validation_fraction", 0.0)
  missing = {split: [k for k, n in enumerate(counts) if n == 0]
             for split, counts in eval_counts(tree, fraction).items()}
  for split, labels in missing.items():
    for k in set(labels) & set(config.loss.important_classes):
      raise FolderError(f"important class {tree.class_names[k]!r} has no image in the "
                        f"{SPLIT_WORDS[split]} split, where its recall would be nan: "
                        f"{_how_to_add(tree, split, k, fraction)}")
  lacking = [f"the {SPLIT_WORDS[split]} split has no image of "
             f"{', '.join(tree.class_names[k] for k in labels)}"
             for split, labels in missing.items() if labels]
  if lacking:
    print(f"warning: image folder {tree.root}: {'; '.join(lacking)} (recall and precision "
          "nan there)", file=sys.stderr, flush=True)


def _how_to_add(tree: Tree, split: str, label: int, fraction: float) -> str:
  name = tree.class_names[label]
  if split in tree.files and not (split == "test" and tree.test_from_train):
    return f"add images to {os.path.join(tree.root, split, name)}/"
  train = tree.class_counts("train")[label]
  if split == "test":
    return (f"the test split takes {TEST_FRACTION:.0%} of each class of train/, rounded, and "
            f"{name} has {train} there; add images to {os.path.join(tree.root, 'train', name)}/ "
            "or make a test/ folder")
  return (f"the validation split holds out validation_fraction={fraction:g} of each class of "
          f"the training split, rounded, and {name} has {train} training images; add images to "
          f"{os.path.join(tree.root, 'train', name)}/ or make a val/ folder")


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """One prepared copy of a tree: named '<path hash>-<fingerprint>-c<channels>'.

  `tree` is None for a copy read without reading the tree (a run's own copy).
  """
  tree: Tree | None = None
  class_names: tuple[str, ...] = ()
  channels: int = 3


def _path_hash(root: str) -> str:
  return hashlib.sha256(root.encode()).hexdigest()[:12]


def _description(root: str, channels: int) -> str:
  return f"The images of {root}, as {channels} channels."


def builder_config(tree: Tree, channels: int) -> FolderConfig:
  return FolderConfig(name=f"{_path_hash(tree.root)}-{tree.fingerprint[:16]}-c{channels}",
                      description=_description(tree.root, channels),
                      tree=tree, class_names=tree.class_names, channels=channels)


def builder_kwargs(config, workdir=None) -> dict:
  """tfds.builder's config for `config.folder` (DatasetSpec.builder_kwargs).

  For the run in `workdir`, the prepared copy it is bound to where that copy
  exists (the tree is not read); otherwise the tree as it is now.

  Raises:
    ConfigError: config.folder is unset, image_size is 0 or channels not 1 or 3.
    FolderError: the tree cannot be read (see `scan`), or it changed since the
      run in `workdir` started and that run's copy is gone.
  """
  if not config.get("folder"):
    raise ConfigError(f"config.folder={config.get('folder')!r} is invalid: dataset "
                      "'folder' reads an image-folder tree, use configs/folder.py:path=DIR")
  if not config.image_size:
    raise ConfigError("config.image_size=0 is invalid: images of a folder vary in size, "
                      "set image_size (e.g. size=64)")
  channels = config.get("channels", 3)
  if channels not in CHANNELS:
    raise ConfigError(f"config.channels={channels!r} is invalid: choose 1 (greyscale) or 3 (RGB)")
  root = os.path.abspath(os.path.expanduser(config.folder))
  record = run_log.read_config(workdir) if workdir else None
  bound = (record or {}).get("prepared_data")
  if not (bound and bound.startswith(_path_hash(root) + "-") and bound.endswith(f"-c{channels}")):
    bound = None  # A run of another tree or channel count: its config's difference refuses it.
  if bound:
    copy = FolderConfig(name=bound, description=_description(root, channels),
                        class_names=tuple(record["class_names"]), channels=channels)
    copy_builder = tfds.builder("folder", config=copy, data_dir=config.get("data_dir"))
    if copy_builder.is_prepared():
      return {"config": copy}
  current = builder_config(scan(root), channels)
  if bound and current.name != bound:
    raise FolderError(_changed(current.tree, workdir, copy_builder.data_dir))
  return {"config": current}


def _changed(tree: Tree, workdir, gone_copy) -> str:
  """Why the run in `workdir` cannot go on: its tree changed, and its prepared copy is gone."""
  try:
    with open(os.path.join(workdir, TREE_FILE)) as f:
      before = {path: (size, mtime) for path, size, mtime in json.load(f)["files"]}
  except (OSError, ValueError, KeyError):
    counts = "(what changed is unknown: the run recorded no list of its files)"
  else:
    now = {path: (size, mtime) for path, size, mtime in tree.listing}
    modified = sum(before[p] != now[p] for p in before.keys() & now.keys())
    counts = (f"{len(now.keys() - before.keys())} added, {len(before.keys() - now.keys())} "
              f"removed, {modified} modified")
  return (f"the image tree changed since this run started: {counts} ({tree.root}), and the "
          f"run's prepared copy {gone_copy} is gone: restore the tree as it was, or train a "
          "new run (another --workdir)")


def run_files(builder) -> dict[str, str]:
  """{TREE_FILE: the tree's file list}, written in a run's workdir when it starts; {} for a bound copy."""
  tree = builder.builder_config.tree
  if tree is None:
    return {}
  return {TREE_FILE: json.dumps({"root": tree.root, "files": [list(f) for f in tree.listing]})}


def release_tree(builder):
  """Drops the tree that `builder`'s config holds (about 0.3 KiB an image), once the run's
  checks and files are done: tfds keeps every builder whose `info` was read (an lru_cache
  by builder) as long as the process lives."""
  if isinstance(builder.builder_config, FolderConfig):
    builder.builder_config.tree = None


def check_decodes(tree: Tree, channels: int):
  """Decodes every image of `tree` as the pipeline will; one ImageFileError names every one that
  fails (`image_files.raise_problems`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from camri.data import pipeline  # pylint: disable=g-import-not-at-top
  problems = []
  for files in tree.files.values():
    for path, _ in files:
      full = os.path.join(tree.root, path)
      encoded = _read(full)
      try:
        image_files.check_bmp(full, encoded)
        pipeline.decode_image(encoded, channels)
      except image_files.ImageFileError as e:
        problems.append(e)
      except tf.errors.InvalidArgumentError:
        problems.append(image_files.undecodable(full))
  image_files.raise_problems(problems)


def _read(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


class Folder(tfds.core.GeneratorBasedBuilder):
  """An image-folder tree; the config comes from `builder_kwargs` (one per tree)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "train/, val/, test/ class folders; test split "
                            f"{TEST_FRACTION:.0%} of train/ where there is no test/."}

  def _create_builder_config(self, builder_config, version):
    # Each tree is its own config, built by `builder_config`; tfds would log a
    # warning about a custom config on every run.
    del version
    return builder_config

  def _info(self):
    channels = self.builder_config.channels
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, channels)),
            "label": tfds.features.ClassLabel(names=self.builder_config.class_names),
            "filename": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def download_and_prepare(self, **kwargs):  # pylint: disable=arguments-differ
    """Checks that every image decodes before tfds creates a file, then prepares."""
    if not self.data_path.exists():  # What tfds checks: a prepared copy is reused.
      check_decodes(self.builder_config.tree, self.builder_config.channels)
      print(describe(self.builder_config.tree), flush=True)
    super().download_and_prepare(**kwargs)

  # tfds announces "Downloading and preparing dataset" and "downloaded": a tree
  # is local, and `describe` has said what is being prepared.
  def _log_download_bytes(self):
    pass

  def _log_download_done(self):
    print(f"image folder prepared in {self.data_dir}", flush=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # The tree is local.
    tree = self.builder_config.tree
    return {split: self._generate_examples(tree, files) for split, files in tree.files.items()}

  def _generate_examples(self, tree, files):
    for path, label in files:
      yield path, {"image": _read(os.path.join(tree.root, path)), "label": label,
                   "filename": path}


def describe(tree: Tree) -> str:
  """One line: the tree, its classes and split sizes, and what was skipped."""
  sizes = ", ".join(f"{split} {len(tree.files[split])}" for split in SPLITS
                    if split in tree.files)
  made = (f" (test: {TEST_FRACTION:.0%} of each class of train/, seed {SPLIT_SEED})"
          if tree.test_from_train else "")
  skipped = []
  if tree.skipped:
    skipped.append(f"{tree.skipped} file{'s' if tree.skipped > 1 else ''} that "
                   f"{'are not images' if tree.skipped > 1 else 'is not an image'}")
  if tree.loops:
    skipped.append(f"{tree.loops} folder link{'s' if tree.loops > 1 else ''} that "
                   f"loop{'' if tree.loops > 1 else 's'} back")
  return (f"image folder {tree.root}: {len(tree.class_names)} classes, "
          f"images {sizes}{made}{'; skipped ' + ' and '.join(skipped) if skipped else ''}")
