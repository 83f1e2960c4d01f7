"""camri/memory.py: the host's memory under cgroups and shared runs, the device feed's peak."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from camri import memory

GIB = 2**30


def _tree(root, cgroup: str, files: dict[str, str]):
  """A fake /proc/self/cgroup holding `cgroup`, and files under /sys/fs/cgroup."""
  os.makedirs(root / "proc/self")
  (root / "proc/self/cgroup").write_text(cgroup)
  for path, text in files.items():
    os.makedirs((root / "sys/fs/cgroup" / path).parent, exist_ok=True)
    (root / "sys/fs/cgroup" / path).write_text(text + "\n")
  return str(root)


@pytest.mark.parametrize("cgroup, files, expected", [
    # cgroup v2, a Slurm job: the job's limit, above the step's cgroup which has none.
    ("0::/system.slice/slurmstepd.scope/job_7/step_0\n",
     {"memory.max": "max", "system.slice/slurmstepd.scope/job_7/memory.max": str(4 * GIB),
      "system.slice/slurmstepd.scope/job_7/step_0/memory.max": "max"}, 4 * GIB),
    # v2, nested limits: the tightest wins, wherever it is.
    ("0::/a/b\n", {"a/memory.max": str(GIB), "a/b/memory.max": str(3 * GIB)}, GIB),
    ("0::/\n", {"memory.max": "max"}, None),  # v2 without a limit.
    # v1 in a container: the host's path is not mounted; the mount's root has the limit.
    ("12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
     {"memory/memory.limit_in_bytes": str(2 * GIB)}, 2 * GIB),
    ("4:memory:/\n", {"memory/memory.limit_in_bytes": "9223372036854771712"},
     9223372036854771712),  # v1's "unlimited": a number above any RAM.
    ("1:cpu:/x\n", {}, None),  # No memory controller.
])
def test_cgroup_memory_limit_is_the_tightest_of_the_cgroups_above(tmp_path, cgroup, files,
                                                                   expected):
  assert memory.cgroup_memory_limit(_tree(tmp_path, cgroup, files)) == expected


def test_host_memory_is_the_tightest_limit_shared_by_the_runs_beside(tmp_path, monkeypatch):
  root = _tree(tmp_path, "0::/job\n", {"job/memory.max": str(8 * GIB)})
  monkeypatch.setattr(memory, "physical_memory", lambda: 64 * GIB)
  monkeypatch.delenv(memory.RUNS_PER_HOST, raising=False)
  assert memory.host_memory_limit(root) == 8 * GIB
  monkeypatch.setenv(memory.RUNS_PER_HOST, "4")  # launch.grid --parallel 4.
  assert memory.host_memory_limit(root) == 2 * GIB
  monkeypatch.setattr(memory, "physical_memory", lambda: 4 * GIB)
  assert memory.host_memory_limit(root) == GIB
  assert memory.host_memory_limit(str(tmp_path / "none")) == GIB  # No cgroup file: the RAM.


@pytest.mark.parametrize("shape, itemsize, backend, expected", [
    ((32, 32, 3), 1, "gpu", 3072),
    ((32, 32, 3), 4, "cpu", 12288),
    ((32, 32, 3), 1, "tpu", 32 * 32 * 128),  # C to 128; W=32 already a multiple of 32 uint8.
    ((28, 28, 1), 1, "tpu", 28 * 32 * 128),  # W to 32 rows of uint8.
    ((28, 28, 1), 4, "tpu", 28 * 32 * 128 * 4),  # W to 8 rows of float32 (28 -> 32).
    ((30, 30, 3), 4, "tpu", 30 * 32 * 128 * 4),
    ((8, 8, 256), 4, "tpu", 8 * 8 * 256 * 4),  # Already tiled: no padding.
])
def test_tpu_images_count_their_tile_padding(shape, itemsize, backend, expected):
  assert memory.device_image_bytes(shape, itemsize, backend) == expected


def test_feed_bytes_adds_up_the_peak():
  """CIFAR-10-like: 45,000 train, 5,000 val, 10,000 test uint8 32x32x3, two runs."""
  sizes = {"train": 45_000, "val": 5_000, "test": 10_000}
  image = 32 * 32 * 3
  decoding = memory.DECODE_BATCHES_IN_FLIGHT * memory.DECODE_BATCH_BYTES
  host, device = memory.feed_bytes(sizes, (32, 32, 3), 1, runs=2, backend="gpu")
  # Training split, then the larger of the test split twice (20,000) and 2 gathered epochs.
  assert host == image * (45_000 + 90_000) + decoding
  assert device == image * (15_000 + 4 * 45_000)
  host_cpu, device_cpu = memory.feed_bytes(sizes, (32, 32, 3), 1, runs=2, backend="cpu")
  assert (host_cpu, device_cpu) == (host + device, device)
  _, device_tpu = memory.feed_bytes(sizes, (32, 32, 3), 1, runs=2, backend="tpu")
  assert device_tpu == device * 128 // 3


def test_decoding_a_folder_peaks_at_its_stored_size_and_a_few_batches(tmp_path):
  """The peak RSS of `pipeline.decoded_split`, measured in a process of its own.

  135 training images of 256x256x3 (uint8, 26.5 MB; 106 MB as float32). What
  decoding holds is the uint8 arrays and at most `DECODE_BATCHES_IN_FLIGHT`
  float32 batches of `DECODE_BATCH_BYTES`. tf.data's own buffers, which the C
  allocator keeps in per-thread arenas, still move the RSS by some tens of MB
  from one run to the next (one arena, MALLOC_ARENA_MAX=1, steadies them):
  the bound allows one float32 copy of the split for them (78 to 107 MB were
  measured, against a bound of 158 MB). Holding every float32 batch and then
  their concatenation, as decoding did, takes two float32 copies, over the
  bound (252 and 258 MB).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tests import run_main  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, count in (("train", 50), ("test", 1)):
    for name in ("ant", "bee", "cow"):
      os.makedirs(tmp_path / "tree" / split / name)
      for i in range(count):
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "tree" / split / name / f"{i}.png")
  result = subprocess.run(
      [sys.executable, os.path.join(run_main.ROOT, "tests", "decode_peak_main.py"),
       str(tmp_path / "tree"), str(tmp_path / "tfds"), "256"],
      env={**run_main.env(), "MALLOC_ARENA_MAX": "1"}, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr
  measured = json.loads(result.stdout.splitlines()[-1])
  # uint8, the pixels as stored: 150 images less the validation split's 15.
  assert measured["stored"] == 135 * 256 * 256 * 3
  decoding = memory.DECODE_BATCHES_IN_FLIGHT * memory.DECODE_BATCH_BYTES
  assert measured["peak"] <= measured["stored"] + decoding + measured["float32"], measured
