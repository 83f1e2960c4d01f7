"""Preparing a tfds dataset whose files tfds downloads: fail fast, leave nothing half-made.

Left to itself, tfds retries a connection 10 times with exponential backoff
(about 3.5 minutes of urllib3 "Retrying ..." warnings on a machine without
internet), has no connect timeout, and leaves the download's `.tmp` directory
and an empty `<data_dir>/<name>/` behind. `download_and_prepare` tries each
download once, gives up on a server that does not answer within
`CONNECT_TIMEOUT_S`, and on failure removes what the attempt made and raises
`DownloadError`, whose one-line message says how to get the dataset instead.

tfds's progress bars are off while a dataset that tfds fetches itself (one
without manual archives, such as cifar10) is prepared: on a failure they
would surround the error line. tfds still prints, on stdout, the size of the
dataset and where it goes. The bars of the manual datasets' long preparation
stay.
"""

import contextlib
import functools
import re
import urllib.error
import urllib.parse

from etils import epath
import requests
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import downloader

CONNECT_TIMEOUT_S = 20
# Longest wait for the next bytes of a download under way.
READ_TIMEOUT_S = 60
# What a failed attempt leaves: tfds's partial downloads (`<file>.tmp.<uuid>`)
# and unfinished dataset directories (`incomplete.<id>_<version>`).
_PARTIAL = re.compile(r"\.tmp\.|^incomplete\.")
_ERRORS = (requests.RequestException, urllib.error.URLError, tfds.download.DownloadError)


class DownloadError(ConnectionError):
  """A dataset's files could not be downloaded."""


@contextlib.contextmanager
def _fail_fast(progress_bars: bool):
  """tfds's downloads: one try each, with timeouts."""
  retries, request = downloader.MAX_RETRIES, requests.Session.request
  downloader.MAX_RETRIES = 0
  # A timeout the caller passes wins; tfds passes none.
  requests.Session.request = functools.partialmethod(
      request, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
  tfds.display_progress_bar(progress_bars)
  try:
    yield
  finally:
    downloader.MAX_RETRIES, requests.Session.request = retries, request
    tfds.display_progress_bar(True)


def _directories(builder) -> list[epath.Path]:
  """The directories a tfds attempt may create, children after their parents."""
  root = epath.Path(builder.data_dir_root)
  downloads = root / "downloads"
  return [root, root / builder.name, downloads, downloads / builder.name,
          downloads / "extracted"]


def _listing(directory: epath.Path) -> set[str] | None:
  return {p.name for p in directory.iterdir()} if directory.is_dir() else None


def _remove_leftovers(before: dict[epath.Path, set[str] | None]):
  """Removes the partial files and the now empty directories made since `before`."""
  for directory in reversed(list(before)):
    if not directory.is_dir():
      continue
    for path in directory.iterdir():
      if not _PARTIAL.search(path.name) or path.name in (before[directory] or ()):
        continue
      if path.is_dir():
        path.rmtree()
      else:
        path.unlink()
    if before[directory] is None and not any(directory.iterdir()):
      directory.rmdir()


def _message(builder, error) -> str:
  url = getattr(getattr(error, "request", None), "url", None)
  server = f" from {urllib.parse.urlsplit(url).hostname}" if url else ""
  cause = error.args[0] if error.args and isinstance(error.args[0], Exception) else error
  cause = getattr(cause, "reason", cause)  # urllib3's MaxRetryError wraps the cause.
  copy = epath.Path(builder.data_dir_root) / builder.name
  return (f"dataset {builder.name!r} could not be downloaded{server} "
          f"({type(cause).__name__}): run once where tfds can download it, then copy that "
          f"<data_dir>/{builder.name} to {copy} here, or point config.data_dir at a "
          "directory holding such a copy")


def download_and_prepare(builder):
  """`builder.download_and_prepare()`, trying each download once.

  Raises:
    DownloadError: a download failed (no connection, a timeout, an HTTP
      error); the partial downloads and the directories the attempt made
      are removed first.
  """
  before = {d: _listing(d) for d in _directories(builder)}
  try:
    with _fail_fast(progress_bars=bool(builder.MANUAL_DOWNLOAD_INSTRUCTIONS)):
      builder.download_and_prepare()
  except _ERRORS as e:
    _remove_leftovers(before)
    raise DownloadError(_message(builder, e)) from e
