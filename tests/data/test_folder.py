"""The folder dataset: a user's image tree, its checks, its reuse, and a run on it."""

import gc
import os
import shutil
import unicodedata
import weakref

import numpy as np
from PIL import Image
import pytest

from camri import prepare
from camri import run_log
from camri.data import folder
from camri.data import image_files
from camri.data import pipeline
from camri.data import stratify
from configs import folder as folder_config
from tests import run_main

CLASSES = ("cat", "dog", "emu")


def _pixels(rng, mode, height, width):
  shape = {"L": (height, width), "RGB": (height, width, 3), "RGBA": (height, width, 4)}[mode]
  return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_image(path, rng, mode="RGB", size=(10, 14), frames=1):
  """Writes a random image; the format is the suffix's. Returns its pixels (first frame)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = _pixels(rng, mode, *size)
  image = Image.fromarray(pixels, mode)
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".gif":
    images = [image] + [Image.fromarray(_pixels(rng, mode, *size), mode)
                        for _ in range(frames - 1)]
    images = [i.convert("P") for i in images]
    images[0].save(path, save_all=True, append_images=images[1:])
    return np.asarray(images[0].convert("RGB"))
  image.save(path, **({"quality": 95} if suffix in (".jpg", ".jpeg") else {}))
  return pixels


def write_tree(root, counts=None, test=True, seed=0):
  """A tree of PNG and JPEG images of mixed sizes, one greyscale, one RGBA, a BMP and
  an animated GIF, plus two files that are not images; returns {path under root: pixels}."""
  rng = np.random.default_rng(seed)
  counts = counts or {"train": 12, "test": 3}
  images = {}
  for split, count in counts.items():
    if split == "test" and not test:
      continue
    for label, name in enumerate(CLASSES):
      for i in range(count):
        suffix = (".png", ".jpg")[(i + label) % 2]
        mode = "RGB"
        if (split, name, i) == ("train", "cat", 0):
          mode = "L"
        if (split, name, i) == ("train", "dog", 1):
          mode, suffix = "RGBA", ".png"
        if (name, i) == ("emu", 2):
          suffix = ".bmp"
        if (name, i) == ("dog", 2):
          suffix = ".gif"
        path = f"{split}/{name}/{i:03d}{suffix}"
        size = tuple(int(s) for s in rng.integers(6, 24, size=2))
        images[path] = write_image(os.path.join(root, path), rng, mode, size,
                                   frames=2 if suffix == ".gif" else 1)
  with open(os.path.join(root, "train", "notes.txt"), "w") as f:
    f.write("not an image")
  with open(os.path.join(root, "train", "cat", ".DS_Store"), "wb") as f:
    f.write(b"\0\1")
  return images


def config_for(root, data_dir, arg=""):
  config = folder_config.get_config(f"path={root},size=8{',' + arg if arg else ''}")
  config.data_dir = str(data_dir)
  config.batch_size = 8
  config.progress_bar = False
  return config


# --- the tree ---------------------------------------------------------------


def test_scan_lists_classes_splits_and_skipped_files(tmp_path):
  write_tree(tmp_path)
  tree = folder.scan(str(tmp_path))
  assert tree.class_names == CLASSES and tree.root == str(tmp_path)
  assert {k: len(v) for k, v in tree.files.items()} == {"train": 36, "test": 9}
  assert ("train/dog/002.gif", 1) in tree.files["train"]
  assert ("test/emu/000.png", 2) in tree.files["test"]
  assert tree.skipped == 2 and not tree.test_from_train
  assert folder.describe(tree) == (
      f"image folder {tmp_path}: 3 classes, images train 36, test 9; "
      "skipped 2 files that are not images")


def test_without_test_folder_the_stratified_awa2_split_takes_20_percent(tmp_path):
  write_tree(tmp_path, counts={"train": 11}, test=False)
  tree = folder.scan(str(tmp_path))
  assert tree.test_from_train
  by_label = {label: sorted(p.split("/", 1)[1] for p, l in tree.files["train"] + tree.files["test"]
                            if l == label) for label in range(3)}
  expected = stratify.stratified_split(by_label, 0.2, seed=0)
  assert sorted(p.split("/", 1)[1] for p, _ in tree.files["test"]) == expected["test"]
  assert [sum(l == k for _, l in tree.files["test"]) for k in range(3)] == [2, 2, 2]
  assert all(p.startswith("train/") for p, _ in tree.files["test"])
  assert len(tree.files["train"]) == 27
  assert "(test: 20% of each class of train/, seed 0)" in folder.describe(tree)


def test_fingerprint_follows_names_sizes_and_mtimes(tmp_path):
  write_tree(tmp_path)
  first = folder.scan(str(tmp_path)).fingerprint
  assert folder.scan(str(tmp_path)).fingerprint == first
  (tmp_path / "train" / "cat" / "readme.txt").write_text("skipped, not listed")
  assert folder.scan(str(tmp_path)).fingerprint == first
  os.utime(tmp_path / "train" / "cat" / "000.png", ns=(1, 1))
  touched = folder.scan(str(tmp_path)).fingerprint
  assert touched != first
  os.rename(tmp_path / "train" / "cat" / "001.jpg", tmp_path / "train" / "cat" / "009.jpg")
  assert folder.scan(str(tmp_path)).fingerprint not in (first, touched)


# --- decoding -----------------------------------------------------------------


def test_every_format_decodes_to_the_requested_channels(tmp_path):
  rng = np.random.default_rng(1)
  grey = write_image(str(tmp_path / "g.png"), rng, "L")
  rgba = write_image(str(tmp_path / "a.png"), rng, "RGBA")
  bmp = write_image(str(tmp_path / "b.bmp"), rng, "RGB")
  gif = write_image(str(tmp_path / "c.gif"), rng, "RGB", frames=3)

  def decode(name, channels):
    return pipeline.decode_image((tmp_path / name).read_bytes(), channels).numpy()

  np.testing.assert_array_equal(decode("g.png", 3), np.repeat(grey[..., None], 3, axis=-1))
  np.testing.assert_array_equal(decode("a.png", 3), rgba[..., :3])
  np.testing.assert_array_equal(decode("b.bmp", 3), bmp)
  np.testing.assert_array_equal(decode("c.gif", 3), gif)  # The first of 3 frames.
  np.testing.assert_array_equal(decode("g.png", 1), grey[..., None])
  for name, rgb in (("a.png", rgba[..., :3]), ("b.bmp", bmp), ("c.gif", gif)):
    luma = rgb.astype(np.float64) @ [0.2989, 0.587, 0.114]
    got = decode(name, 1)
    assert got.shape == (*rgb.shape[:2], 1)
    np.testing.assert_allclose(got[..., 0], luma, atol=1)


# --- bad input: one line naming the path, nothing written ---------------------


def _make_bad(root, case):
  """Writes a tree at `root` with the fault `case`; returns (root, the path the error names)."""
  rng = np.random.default_rng(2)
  if case == "missing_path":
    return str(root), str(root)
  write_tree(root, counts={"train": 3, "test": 1})
  if case == "no_train_folder":
    os.rename(root / "train", root / "training")
    return str(root), str(root)
  if case == "path_is_the_train_folder":
    return str(root / "train"), f"did you mean path={root}?"
  if case == "class_without_images":
    (root / "train" / "fox").mkdir()
    (root / "train" / "fox" / "about.txt").write_text("no images here")
    return str(root), str(root / "train" / "fox")
  if case == "single_class":
    for name in ("dog", "emu"):
      for path in (root / "train" / name).iterdir():
        path.unlink()
      (root / "train" / name).rmdir()
    return str(root), str(root / "train")
  if case == "test_class_not_in_train":
    write_image(str(root / "test" / "yak" / "0.png"), rng)
    return str(root), str(root / "test")
  if case == "image_outside_a_class_folder":
    write_image(str(root / "train" / "loose.png"), rng)
    return str(root), str(root / "train" / "loose.png")
  if case == "image_does_not_decode":
    (root / "train" / "emu" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return str(root), str(root / "train" / "emu" / "broken.jpg")
  if case == "broken_link":
    os.symlink(root / "elsewhere" / "gone.png", root / "train" / "emu" / "gone.png")
    return str(root), str(root / "train" / "emu" / "gone.png")
  if case in ("bmp_1_bit", "bmp_colour_palette"):
    mode = "1" if case == "bmp_1_bit" else "P"
    image = Image.fromarray(_pixels(rng, "RGB", 5, 7), "RGB").convert(mode)
    image.save(root / "train" / "emu" / "odd.bmp")
    return str(root), str(root / "train" / "emu" / "odd.bmp")
  if case == "one_class_name_in_two_unicode_forms":
    for form in ("NFC", "NFD"):
      write_image(str(root / "train" / unicodedata.normalize(form, "ñandú") / "0.png"), rng)
    return str(root), str(root / "train")
  raise ValueError(case)


BAD_TREES = {
    "missing_path": "does not exist",
    "no_train_folder": "has no train/ folder",
    "path_is_the_train_folder": f"{os.sep}train has no train/ folder",
    "class_without_images": "has no images",
    "single_class": "has one class folder (cat)",
    "test_class_not_in_train": "has classes that train/ lacks: yak",
    "image_outside_a_class_folder": "is not in a class folder",
    "image_does_not_decode": "does not decode as an image",
    "broken_link": "is a broken link (to ",
    "bmp_1_bit": "is an unsupported BMP variant (1-bit)",
    # TensorFlow decodes it, to its palette indices.
    "bmp_colour_palette": "is an unsupported BMP variant (8-bit with a colour palette)",
    "one_class_name_in_two_unicode_forms": "one name in two Unicode forms",
}


@pytest.mark.parametrize("case", list(BAD_TREES))
def test_bad_tree_is_refused_in_one_line_with_nothing_written(case, tmp_path):
  root, named = _make_bad(tmp_path / "tree", case)
  before = sorted(os.walk(root)) if os.path.exists(root) else None
  workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
  with pytest.raises(image_files.ImageFileError) as error:
    prepare.prepare_run(config_for(root, data_dir), str(workdir))
  message = str(error.value)
  assert "\n" not in message and named in message and BAD_TREES[case] in message
  assert isinstance(error.value, prepare.ConfigError)  # main: exit 2.
  assert not workdir.exists() and not data_dir.exists()
  assert (sorted(os.walk(root)) if os.path.exists(root) else None) == before


def test_every_image_that_does_not_decode_is_named_in_one_error(tmp_path):
  root = tmp_path / "tree"
  write_tree(root, counts={"train": 3, "test": 1})
  broken = [root / "train" / name / f"broken{i}.jpg" for i, name in enumerate(("cat", "dog"))]
  broken.append(root / "test" / "emu" / "broken.png")
  for path in broken:
    path.write_bytes(b"\xff\xd8 not really a jpeg")
  with pytest.raises(image_files.ImageFileError) as error:
    prepare.prepare_run(config_for(root, tmp_path / "tfds"), str(tmp_path / "run"))
  message = str(error.value)
  assert message.startswith("3 image files cannot be used: ") and "\n" not in message
  assert all(f"{path} does not decode as an image" in message for path in broken), message


def test_a_long_list_of_bad_files_names_the_first_20_and_counts_the_rest():
  problems = [image_files.ImageFileError(f"f{i}.png does not decode") for i in range(25)]
  with pytest.raises(image_files.ImageFileError) as error:
    image_files.raise_problems(problems)
  assert str(error.value) == ("25 image files cannot be used: "
                              + "; ".join(f"f{i}.png does not decode" for i in range(20))
                              + "; and 5 more")
  with pytest.raises(image_files.ImageFileError, match=r"^f0.png does not decode$"):
    image_files.raise_problems(problems[:1])
  image_files.raise_problems([])


@pytest.mark.parametrize("arg, expected", [
    ("size=0", "config.image_size=0 is invalid"),
    ("channels=4", "config.channels=4 is invalid"),
])
def test_image_size_and_channels_are_checked_before_the_tree_is_read(arg, expected, tmp_path):
  write_tree(tmp_path / "tree", counts={"train": 2})
  with pytest.raises(prepare.ConfigError, match=expected):
    prepare.validated_config(config_for(tmp_path / "tree", tmp_path / "tfds", arg))
  assert not (tmp_path / "tfds").exists()


@pytest.mark.parametrize("case, says", [
    ("image_does_not_decode", "does not decode as an image (PNG, JPEG, BMP or GIF)"),
    ("broken_link", "is a broken link (to {root}/elsewhere/gone.png): restore its target or "
                    "remove the link"),
])
def test_bad_tree_from_the_command_line_exits_2_with_one_line(case, says, tmp_path):
  root, named = _make_bad(tmp_path / "tree", case)
  workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
  result = run_main.run("--config", f"configs/folder.py:path={root}",
                        f"--config.data_dir={data_dir}", "--workdir", workdir, timeout=120)
  lines = run_main.error_lines(result.stderr)
  assert result.returncode == 2, result.stderr
  assert lines == [f"error: {named} {says.format(root=root)}"]
  assert not workdir.exists() and not data_dir.exists()


# --- prepared once, again when the tree changes -------------------------------


def test_unchanged_tree_is_not_decoded_again_and_a_new_image_prepares_again(
    tmp_path, monkeypatch, capsys):
  from camri.data import dataset  # pylint: disable=g-import-not-at-top
  write_tree(tmp_path / "tree")
  decoded = []
  check = folder.check_decodes
  monkeypatch.setattr(folder, "check_decodes",
                      lambda tree, channels: decoded.append(tree) or check(tree, channels))
  config, _ = prepare.validated_config(config_for(tmp_path / "tree", tmp_path / "tfds"))

  first = dataset.open_dataset(config)
  said = capsys.readouterr().out
  assert len(decoded) == 1 and "skipped 2 files" in said
  assert "Downloading" not in said and "downloaded" not in said  # The tree is local.
  assert f"image folder prepared in {first.builder.data_dir}" in said
  again = dataset.open_dataset(config)
  assert len(decoded) == 1 and "image folder" not in capsys.readouterr().out
  assert again.builder.data_path == first.builder.data_path

  write_image(str(tmp_path / "tree" / "train" / "emu" / "new.png"), np.random.default_rng(3))
  changed = dataset.open_dataset(config)
  assert len(decoded) == 2 and changed.builder.data_path != first.builder.data_path
  assert changed.describe() == "train 34, val 3, test 9"
  assert first.describe() == "train 33, val 3, test 9"


def test_a_run_reads_its_own_prepared_copy_whatever_the_tree_does(tmp_path, monkeypatch):
  from camri.data import dataset  # pylint: disable=g-import-not-at-top
  tree = tmp_path / "tree"
  write_tree(tree)
  workdir = str(tmp_path / "run")
  config = config_for(tree, tmp_path / "tfds")
  scanned, scan = [], folder.scan

  def spied_scan(path):
    listed = scan(path)
    scanned.append(weakref.ref(listed))
    return listed

  with monkeypatch.context() as patch:
    patch.setattr(folder, "scan", spied_scan)
    prepare.prepare_run(config.copy_and_resolve_references(), workdir)
  gc.collect()
  # The listing is not kept for the run's life (tfds keeps the builders that held it).
  assert scanned and not [ref for ref in scanned if ref() is not None]
  bound = run_log.read_config(workdir)["prepared_data"]
  assert bound == folder.builder_config(folder.scan(str(tree)), 3).name

  # One image added, one removed (set aside), one touched (as rsync or git checkout do).
  touched = tree / "train" / "cat" / "000.png"
  times = (touched.stat().st_atime_ns, touched.stat().st_mtime_ns)
  write_image(str(tree / "train" / "emu" / "new.png"), np.random.default_rng(3))
  os.rename(tree / "train" / "dog" / "003.png", tmp_path / "aside.png")
  os.utime(touched, ns=(1, 1))
  resolved = prepare.prepare_run(config.copy_and_resolve_references(), workdir)  # Resumes.
  assert run_log.read_config(workdir)["prepared_data"] == bound
  data = dataset.open_dataset(resolved, workdir=workdir)  # As training and readers open it.
  assert data.builder.builder_config.name == bound
  assert data.describe() == "train 33, val 3, test 9"  # The copy's, not the tree's (33 + 3 - 1 + 1).

  shutil.rmtree(os.path.dirname(data.builder.data_dir))  # The copy is deleted.
  with pytest.raises(folder.FolderError) as error:
    prepare.prepare_run(config.copy_and_resolve_references(), workdir)
  assert str(error.value).startswith(
      "the image tree changed since this run started: 1 added, 1 removed, 1 modified "
      f"({tree}), and the run's prepared copy ")
  with pytest.raises(folder.FolderError, match="1 added, 1 removed, 1 modified"):
    dataset.open_dataset(resolved, workdir=workdir)

  # The tree as it was: the same copy is prepared again, and the run goes on.
  os.remove(tree / "train" / "emu" / "new.png")
  os.rename(tmp_path / "aside.png", tree / "train" / "dog" / "003.png")
  os.utime(touched, ns=times)
  prepare.prepare_run(config.copy_and_resolve_references(), workdir)
  assert dataset.open_dataset(resolved, workdir=workdir).builder.is_prepared()


def test_val_folder_is_the_validation_split(tmp_path):
  from camri.data import dataset  # pylint: disable=g-import-not-at-top
  write_tree(tmp_path / "tree", counts={"train": 4, "val": 2, "test": 1})
  config, _ = prepare.validated_config(config_for(tmp_path / "tree", tmp_path / "tfds"))
  data = dataset.open_dataset(config)
  assert data.describe() == "train 12, val 6, test 3"
  assert data.splits["val"].tfds_split == "val" and data.splits["val"].held_out is None
  assert data.image_shape == (8, 8, 3) and data.class_names == CLASSES


# --- the config -----------------------------------------------------------------


def test_config_important_by_folder_name_and_cross_entropy_without_one(tmp_path, monkeypatch):
  write_tree(tmp_path / "tree", counts={"train": 3})  # 20% of 3: one test image each.
  monkeypatch.chdir(tmp_path)
  config = folder_config.get_config("path=tree,important=Dog,channels=1")
  assert config.folder == str(tmp_path / "tree") and config.channels == 1
  resolved, names = prepare.validated_config(config)
  assert names == list(CLASSES) and resolved.loss.name == "camri"
  assert resolved.loss.important_classes == (1,)
  plain, _ = prepare.validated_config(folder_config.get_config("path=tree"))
  assert plain.loss.name == "cross_entropy" and plain.loss.important_classes == ()
  assert plain.image_size == 64 and plain.model == "small_cnn"


# --- classes without images in a split ----------------------------------------


def _remove_images(folder_path, keep):
  for path in sorted(folder_path.iterdir())[keep:]:
    path.unlink()
  if not keep:
    folder_path.rmdir()


@pytest.mark.parametrize("layout, counts, emptied, split, advice", [
    ("test/ lacks it", {"train": 4, "test": 1}, ("test", 0), "test",
     "add images to {tree}/test/emu/"),
    ("val/ lacks it", {"train": 4, "val": 1, "test": 1}, ("val", 0), "validation",
     "add images to {tree}/val/emu/"),
    ("held out of train/ by 10%, 4 are too few", {"train": 12, "test": 1}, ("train", 4),
     "validation", "the validation split holds out validation_fraction=0.1 of each class of "
     "the training split, rounded, and emu has 4 training images; add images to "
     "{tree}/train/emu/ or make a val/ folder"),
    ("20% of train/ where there is no test/, 2 are too few", {"train": 12}, ("train", 2),
     "test", "the test split takes 20% of each class of train/, rounded, and emu has 2 "
     "there; add images to {tree}/train/emu/ or make a test/ folder"),
])
def test_an_important_class_without_images_in_an_evaluated_split_is_refused(
    layout, counts, emptied, split, advice, tmp_path):
  del layout  # The case's name.
  tree, workdir, data_dir = tmp_path / "tree", tmp_path / "run", tmp_path / "tfds"
  write_tree(tree, counts=counts, test="test" in counts)
  _remove_images(tree / emptied[0] / "emu", keep=emptied[1])
  with pytest.raises(folder.FolderError) as error:
    prepare.prepare_run(config_for(tree, data_dir, "important=emu"), str(workdir))
  assert str(error.value) == (f"important class 'emu' has no image in the {split} split, where "
                              f"its recall would be nan: {advice.format(tree=tree)}")
  assert not workdir.exists() and not data_dir.exists()


def test_another_class_without_images_in_a_split_is_one_warning(tmp_path, capsys):
  tree = tmp_path / "tree"
  write_tree(tree, counts={"train": 4, "test": 1})
  _remove_images(tree / "test" / "emu", keep=0)
  _remove_images(tree / "test" / "dog", keep=0)
  prepare.prepare_run(config_for(tree, tmp_path / "tfds", "important=cat"), str(tmp_path / "run"))
  warnings = [l for l in capsys.readouterr().err.splitlines() if "warning" in l]
  assert warnings == [f"warning: image folder {tree}: the test split has no image of dog, emu "
                      "(recall and precision nan there)"]


# --- links, names -------------------------------------------------------------------


def test_links_are_followed_inside_class_folders_and_loops_are_counted(tmp_path):
  from camri import predict  # pylint: disable=g-import-not-at-top
  tree = tmp_path / "tree"
  write_tree(tree, counts={"train": 3, "test": 1})
  rng = np.random.default_rng(4)
  for name in ("a.png", "b.jpg"):
    write_image(str(tmp_path / "extra" / name), rng)
  cat = tree / "train" / "cat"
  os.symlink(tmp_path / "extra", cat / "more")  # A linked folder, as a linked class folder.
  os.symlink(cat, cat / "again")  # Back into its own folder: not followed.
  os.symlink(tree / "train" / "dog" / "000.jpg", cat / "linked.jpg")  # A linked file.
  scanned = folder.scan(str(tree))
  cats = sorted(p for p, label in scanned.files["train"] if label == 0)
  assert cats == ["train/cat/000.png", "train/cat/001.jpg", "train/cat/002.png",
                  "train/cat/linked.jpg", "train/cat/more/a.png", "train/cat/more/b.jpg"]
  assert scanned.loops == 1 and folder.describe(scanned).endswith(
      "; skipped 2 files that are not images and 1 folder link that loops back")
  # camri.predict finds the same images in a folder.
  assert predict.find_images([str(cat)]) == [str(tree / p) for p in cats]


def test_class_names_exact_first_then_ignoring_case_in_nfc_for_important_and_bias(tmp_path):
  from camri import predict  # pylint: disable=g-import-not-at-top
  tree = tmp_path / "tree"
  nfc, nfd = (unicodedata.normalize(form, "ñandú") for form in ("NFC", "NFD"))
  rng = np.random.default_rng(5)
  for name in ("Red", "red", "blue", nfd):  # nfd: as macOS names a folder.
    for i in range(3):
      write_image(str(tree / "train" / name / f"{i}.png"), rng)
  names = folder.scan(str(tree)).class_names
  assert names == ("Red", "blue", "red", nfc)

  def important(name):
    return prepare.validated_config(config_for(tree, tmp_path / "tfds", f"important={name}"))[0]

  for given, expected in (("red", 2), ("Red", 0), ("BLUE", 1), (nfc, 3), (nfd, 3), ("2", 2)):
    assert important(given).loss.important_classes == (expected,), given
    assert predict.parse_bias(f"{given}=0.5", names) == (expected, 0.5), given
  with pytest.raises(prepare.ConfigError, match=r"config.loss.important_classes='RED' is "
                     r"invalid: it names 2 classes that differ only in case \(Red, red\)"):
    important("RED")
  with pytest.raises(predict.PredictError, match=r"--bias=RED=1 is invalid: it names 2 classes"):
    predict.parse_bias("RED=1", names)


def test_a_comma_in_the_config_string_points_to_the_field():
  with pytest.raises(prepare.ConfigError) as error:
    folder_config.get_config("path=/data/a,b,c,important=cat")
  assert str(error.value) == (
      "config argument path='/data/a,b,c' is invalid: commas separate the arguments, so a "
      "value cannot hold one; leave path= out and give the tree as --config.folder=/data/a,b,c")
  with pytest.raises(prepare.ConfigError, match=r"important='a,b' .* \(important=<index>"):
    folder_config.get_config("path=/data,important=a,b")
