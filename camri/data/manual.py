"""Archives a tfds builder reads from its manual download directory.

GTSRB and AwA2 cannot be downloaded by tfds: the user downloads the archives
and puts them, unextracted, in the builder's `manual_dir`: by default
`<data_dir>/downloads/manual`, or the directory given by
`tfds.download.DownloadConfig(manual_dir=...)`.
A builder lists the archives it needs as `Archive`s; `require_archives` checks
all of them before any work and raises `MissingArchiveError`, whose message is
one line naming each missing file, where to download it and the directory to
put it in.
"""

from collections.abc import Sequence
import dataclasses

from etils import epath


@dataclasses.dataclass(frozen=True)
class Archive:
  """A file a builder reads from `manual_dir`, as distributed at `url`."""
  filename: str
  url: str


class MissingArchiveError(FileNotFoundError):
  """An archive a builder needs is not in its manual directory."""


def download_instructions(archives: Sequence[Archive], homepage: str) -> str:
  """Text for a builder's MANUAL_DOWNLOAD_INSTRUCTIONS."""
  lines = [f"Download (see {homepage}):"]
  lines += [f"  {a.filename}  from {a.url}" for a in archives]
  lines.append(
      "and put the zip file(s), unextracted, in the manual directory: "
      "<data_dir>/downloads/manual by default, or the directory given by "
      "tfds.download.DownloadConfig(manual_dir=...).")
  return "\n".join(lines)


def manual_dir(dl_manager) -> epath.Path:
  """The manual directory of a tfds DownloadManager, existing or not."""
  try:
    return dl_manager.manual_dir
  except AssertionError:
    # tfds raises a multi-line error when the directory is missing or empty;
    # require_archives reports the same fact in one line instead.
    path = dl_manager._manual_dir  # pylint: disable=protected-access
    return epath.Path(path)


def require_archives(dl_manager,
                     archives: Sequence[Archive]) -> dict[str, epath.Path]:
  """Paths of `archives` in the manual directory, by filename.

  Args:
    dl_manager: the `tfds.download.DownloadManager` given to
      `_split_generators`.
    archives: the files the builder reads.

  Returns:
    {filename: path} for every archive.

  Raises:
    MissingArchiveError: one or more archives are not there; the one-line
      message names each, its download URL and the directory.
  """
  directory = manual_dir(dl_manager)
  missing = [a for a in archives if not (directory / a.filename).is_file()]
  if missing:
    listed = "; ".join(f"{a.filename} (download it from {a.url})"
                       for a in missing)
    raise MissingArchiveError(
        f"Missing from the tfds manual_dir {directory}: {listed}. Put the "
        f"archive{'s' if len(missing) > 1 else ''} unextracted in {directory}.")
  return {a.filename: directory / a.filename for a in archives}
