"""Image files on disk: which files are images, the folders holding them, and why one fails.

The image-folder dataset (`camri.data.folder`) and `camri.predict` find and
check their files here, so both take the same files and word a problem the
same way: one line naming the file (`ImageFileError`, exit status 2).

Folders are walked recursively, sorted. A symbolic link is followed, to a file
or a folder alike, except a link back to a folder it lies in (a loop, which
would never end): such links are counted, not followed. A broken link is
refused, naming the link. Hidden files (.DS_Store) are skipped as other
files are, hidden folders (.git/) left out.

TensorFlow decodes every PNG, JPEG and GIF, but of the BMP variants only 24-
and 32-bit ones and 8-bit greyscale: a BMP of 1, 4 or 16 bits fails to decode,
and an 8-bit BMP with a colour palette decodes, wrongly, to its palette
indices. `bmp_problem` finds both from the file's header, before decoding.
"""

import dataclasses
import os
import struct

from camri.config_lib import ConfigError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
FORMATS = "PNG, JPEG, BMP or GIF"


class ImageFileError(ConfigError):
  """An image file or folder that cannot be read: the message is one line naming it."""


def is_image_name(name: str) -> bool:
  return name.lower().endswith(SUFFIXES) and not name.startswith(".")


def check_not_broken(path: str):
  """Raises ImageFileError when `path` is a symbolic link whose target does not exist."""
  if os.path.islink(path) and not os.path.exists(path):
    raise ImageFileError(f"{path} is a broken link (to {os.readlink(path)}): restore its "
                         "target or remove the link")


def entries(folder: str):
  """Yields (name, path, kind) of each entry of `folder`, sorted: kind "folder", "image" or "other".

  Hidden files are "other", hidden folders left out.

  Raises:
    ImageFileError: a broken link, or a folder that cannot be read.
  """
  try:
    names = sorted(os.listdir(folder))
  except OSError as e:
    raise ImageFileError(f"{folder} cannot be read: {e.strerror}") from None
  for name in names:
    path = os.path.join(folder, name)
    if name.startswith("."):
      if not os.path.isdir(path):
        yield name, path, "other"
      continue
    check_not_broken(path)
    kind = "folder" if os.path.isdir(path) else "image" if is_image_name(name) else "other"
    yield name, path, kind


@dataclasses.dataclass
class Found:
  """What a walk found: image paths (sorted); skipped, other files (hidden ones too) and loops."""
  images: list[str] = dataclasses.field(default_factory=list)
  other_files: int = 0
  loops: int = 0


def walk(folder: str, inside=()) -> Found:
  """The image files under `folder` (see the module doc for links and hidden entries).

  `inside`: folders that `folder` lies in, which a link must not lead back to either.

  Raises:
    ImageFileError: a broken link, or a folder that cannot be read.
  """
  found = Found()
  _walk(folder, frozenset(os.path.realpath(f) for f in (*inside, folder)), found)
  found.images.sort()
  return found


def _walk(folder, ancestors, found):
  for _, path, kind in entries(folder):
    if kind == "folder":
      real = os.path.realpath(path)
      if real in ancestors:
        found.loops += 1
      else:
        _walk(path, ancestors | {real}, found)
    elif kind == "image":
      found.images.append(path)
    else:
      found.other_files += 1


# BMP header fields (little-endian): the info header's size at byte 14, then
# (BITMAPINFOHEADER and later) bits per pixel at 28, compression at 30 and the
# palette's colour count at 46; the palette (B, G, R, 0 per colour) follows the
# info header.
_BI_RGB, _BI_BITFIELDS = 0, 3


def bmp_problem(head: bytes) -> str | None:
  """Why a BMP starting with `head` (its first 1078 bytes) would not decode right; None: it would.

  None too for a file that is not a BMP, or whose header is too short to read
  (TensorFlow's decoder then says it does not decode).
  """
  if head[:2] != b"BM" or len(head) < 34:
    return None
  header_size, = struct.unpack_from("<I", head, 14)
  if header_size < 40:
    return "an OS/2 BMP header"
  bits, compression = struct.unpack_from("<HI", head, 28)
  if compression not in (_BI_RGB, _BI_BITFIELDS):
    return "compressed (RLE)"
  if bits in (24, 32):
    return None
  if bits != 8:
    return f"{bits}-bit"
  colours = (struct.unpack_from("<I", head, 46)[0] if len(head) >= 50 else 0) or 256
  palette = head[14 + header_size:14 + header_size + 4 * colours]
  if palette != b"".join(bytes((i, i, i, 0)) for i in range(colours)):
    return "8-bit with a colour palette"
  return None


def _head(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read(1078)  # Header and a 256-colour palette.


def check_bmp(path: str, head: bytes | None = None):
  """Raises ImageFileError if `path` (starting with `head`, if read) is a BMP variant TensorFlow misreads."""
  if head is None:
    try:
      head = _head(path)
    except OSError:
      return  # Reading it for decoding fails too, and says why.
  problem = bmp_problem(head)
  if problem:
    raise ImageFileError(f"{path} is an unsupported BMP variant ({problem}): camri reads 24- "
                         "and 32-bit BMP and 8-bit greyscale; convert it, e.g. to PNG")


def undecodable(path: str) -> ImageFileError:
  """The error for a file TensorFlow failed to decode: a broken link, a BMP variant, not an image."""
  try:
    check_not_broken(path)
    check_bmp(path)
  except ImageFileError as e:
    return e
  except OSError as e:
    return ImageFileError(f"{path} cannot be read: {e.strerror}")
  return ImageFileError(f"{path} does not decode as an image ({FORMATS})")


# Files named in one error at most; the rest are counted.
LISTED_PROBLEMS = 20


def raise_problems(problems: list[ImageFileError]):
  """Raises one ImageFileError naming every file of `problems` (the first `LISTED_PROBLEMS`, and
  how many more), so that one run finds them all; nothing if there are none."""
  if len(problems) == 1:
    raise problems[0]
  if problems:
    more = len(problems) - LISTED_PROBLEMS
    raise ImageFileError(f"{len(problems)} image files cannot be used: "
                         + "; ".join(str(p) for p in problems[:LISTED_PROBLEMS])
                         + (f"; and {more} more" if more > 0 else ""))
