"""The memory a run's data takes in the device feed, and the memory the host gives a run.

`config.data_on_device="auto"` (`feeds.fits_on_devices`) puts the data on the
devices when `feed_bytes` of it fits in a share of `host_memory_limit` and of
the devices' memory.

The host's memory is the tightest of its physical RAM and the cgroup limits
of this process's cgroup and every cgroup above it (what Slurm's `--mem` and
containers set; cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`), divided
by the runs that share the machine: the environment's `CAMRI_RUNS_PER_HOST`,
which `launch.grid`'s local executor sets to its `--parallel`.
"""

import math
import os

# Runs started side by side on this machine (launch.grid --parallel N); unset: 1.
RUNS_PER_HOST = "CAMRI_RUNS_PER_HOST"

# The float32 bytes `pipeline.decoded_split` decodes at a time.
DECODE_BATCH_BYTES = 4 << 20
# Those batches in flight while decoding, at most: the one tf.data builds, the
# one prefetched, the one being stored, and its conversion's temporaries (x *
# 255 and its round trip through `pipeline.PIXEL_VALUES`; a uint8 copy, a bool
# comparison: half a batch).
DECODE_BATCHES_IN_FLIGHT = 6


def cgroup_memory_limit(root: str = "/") -> int | None:
  """The tightest memory limit of this process's cgroups and their ancestors, in bytes; None: none.

  `root` is where /proc and /sys are found (a fake tree in tests). Each
  hierarchy line of /proc/self/cgroup ("ID:controllers:path") names a cgroup:
  v2's ("0::path") under /sys/fs/cgroup, v1's memory controller under
  /sys/fs/cgroup/memory. Inside a container the path may be the host's, above
  the container's own mount: walking up to the mount's root finds its limit.
  """
  try:
    with open(os.path.join(root, "proc/self/cgroup")) as f:
      lines = f.read().splitlines()
  except OSError:
    return None
  limits = []
  for line in lines:
    _, controllers, path = line.split(":", 2)
    if controllers == "":
      mount, file = "sys/fs/cgroup", "memory.max"
    elif "memory" in controllers.split(","):
      mount, file = "sys/fs/cgroup/memory", "memory.limit_in_bytes"
    else:
      continue
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
      try:
        with open(os.path.join(root, mount, *parts[:depth], file)) as f:
          value = f.read().strip()
      except OSError:
        continue
      if value != "max":  # v2's "no limit"; v1's is a huge number, above the RAM.
        limits.append(int(value))
  return min(limits, default=None)


def physical_memory() -> int:
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def runs_per_host() -> int:
  """`CAMRI_RUNS_PER_HOST`, the runs sharing this machine (at least 1)."""
  value = os.environ.get(RUNS_PER_HOST, "")
  return max(1, int(value)) if value.strip().isdigit() else 1


def host_memory_limit(root: str = "/") -> int:
  """The bytes of host memory this run may count on: the tightest of the physical RAM and the
  cgroup limits, divided by the runs sharing the machine."""
  limits = [physical_memory(), cgroup_memory_limit(root)]
  return min(limit for limit in limits if limit is not None) // runs_per_host()


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def device_image_bytes(shape, itemsize: int, backend: str) -> int:
  """The device memory of one (H, W, C) image in a batch array of `itemsize`-byte values.

  XLA:TPU lays an array out in tiles over its last two dimensions, (W, C)
  here: C is padded to a multiple of 128 and W to one of 8 32-bit rows (8 *
  4 // itemsize values: 32 for uint8), so a 32x32x3 uint8 image takes
  32 x 32 x 128 bytes, 43 times its values. GPU and CPU store it dense.
  """
  height, width, channels = shape
  if backend == "tpu":
    width, channels = _round_up(width, 8 * 4 // itemsize), _round_up(channels, 128)
  return height * width * channels * itemsize


def feed_bytes(split_sizes: dict[str, int], shape, itemsize: int, runs: int,
               backend: str) -> tuple[int, int]:
  """(host bytes, device bytes) at the device feed's peak, for this process's share of the
  splits (`split_sizes`: examples per split, "train" and the evaluation splits).

  The host holds the training split as stored (`itemsize`: 1 for uint8, 4 for
  float32) for the whole run, plus the larger of: an evaluation split while
  it is decoded and padded into batches (two copies), or each of the `runs`'
  next epoch gathered in order before its transfer; plus the decoding's
  batches in flight. The devices hold the evaluation splits and two epochs of
  training batches per run (the one training and the next, sent meanwhile).
  On CPU the devices' memory is the host's: the host holds both.
  """
  stored = math.prod(shape) * itemsize
  train = split_sizes["train"]
  largest_eval = max((n for name, n in split_sizes.items() if name != "train"), default=0)
  host = (stored * (train + max(2 * largest_eval, runs * train))
          + DECODE_BATCHES_IN_FLIGHT * DECODE_BATCH_BYTES)
  evaluated = sum(n for name, n in split_sizes.items() if name != "train")
  device = device_image_bytes(shape, itemsize, backend) * (evaluated + 2 * runs * train)
  return (host + device if backend == "cpu" else host), device

