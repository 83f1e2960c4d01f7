"""Prints the peak RSS of decoding an image folder's training split (`pipeline.decoded_split`).

    python tests/decode_peak_main.py TREE DATA_DIR SIZE

One JSON line: "peak", the bytes the process's peak RSS rose by while
decoding, over its RSS before; "stored", the bytes of the decoded images;
"float32", the bytes of the split as float32. tf.data first reads and decodes
the split twice, its batches dropped, so that its own buffers (which the C
allocator keeps for reuse) are in the RSS before.
"""

import json
import sys

import tensorflow_datasets as tfds

from camri import prepare
from camri.data import dataset as dataset_lib
from camri.data import pipeline
from configs import folder


def _status(key: str) -> int:
  with open("/proc/self/status") as f:
    return int(f.read().split(f"{key}:")[1].split()[0]) * 1024


def main(tree, data_dir, size):
  config = folder.get_config(f"path={tree},important=bee,size={size}")
  config.data_dir = data_dir
  config = prepare.validated_config(config)[0]
  dataset = dataset_lib.open_dataset(config)
  split = dataset.splits["train"]
  for _ in range(2):
    examples = pipeline._examples(dataset.builder, dataset.spec, split, dataset.image_size)  # pylint: disable=protected-access
    for _ in tfds.as_numpy(examples.batch(64)):
      pass
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # Resets VmHWM to the current RSS.
  before = _status("VmRSS")
  decoded = pipeline.decoded_split(dataset.builder, dataset.spec, split,
                                   image_size=dataset.image_size)
  print(json.dumps({"peak": _status("VmHWM") - before, "stored": decoded["image"].nbytes,
                    "float32": decoded["image"].size * 4}))


if __name__ == "__main__":
  main(*sys.argv[1:])
