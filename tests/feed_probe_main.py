"""`python -m camri.main` that first records, in each process, the batches its train step
would see through either feed.

    python tests/feed_probe_main.py OUT_DIR <camri.main flags>

Before the run's feed is made, each process writes OUT_DIR/p<process index>.npz:
the first 3 global batches' images through the host feed ("host"), the device
feed ("device") and the host feed without augmentation ("raw"), and the rows of
a global batch that are this process's ("rows"). The run then trains as usual.
"""

import os
import sys

from absl import app
import numpy as np

STEPS = 3


def _record(out_dir, config, dataset):
  import jax  # pylint: disable=g-import-not-at-top
  from tests import feed_probe  # pylint: disable=g-import-not-at-top
  raw_config = config.copy_and_resolve_references()
  raw_config.augment = ()
  images = {name: np.stack([batch["image"] for batch in feed_probe.seen_batches(
      c, dataset, on_device, epoch=0, start_step=0, steps=STEPS)])
            for name, c, on_device in (("host", config, False), ("device", config, True),
                                       ("raw", raw_config, False))}
  np.savez(os.path.join(out_dir, f"p{jax.process_index()}.npz"),
           rows=feed_probe.local_rows(config.batch_size), **images)


if __name__ == "__main__":
  # The entry point first: it sets the environment before TensorFlow loads.
  from camri import main  # pylint: disable=g-import-not-at-top
  from camri import feeds  # pylint: disable=g-import-not-at-top,g-bad-import-order
  out_dir, real_make_feed = sys.argv[1], feeds.make_feed

  def make_feed(config, dataset, *args, **kwargs):
    feeds.make_feed = real_make_feed  # Records once; the probe's own feeds are plain.
    _record(out_dir, config, dataset)
    return real_make_feed(config, dataset, *args, **kwargs)

  feeds.make_feed = make_feed
  app.run(main.main, argv=[sys.argv[0], *sys.argv[2:]], flags_parser=main._parse_flags)  # pylint: disable=protected-access
