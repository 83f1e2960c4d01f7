"""What the train step sees through a feed: its batches, after augmentation."""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from camri import feeds
from camri import train


@flax.struct.dataclass
class _Steps:
  step: jax.Array


def _seen_by_the_step(state, sums, batch, run):
  """A train step that returns, as its sums, the batch it is given."""
  del sums, run
  return state.replace(step=state.step + 1), {"image": batch["image"], "label": batch["label"]}


def seen_batches(config, dataset, on_device, epoch, start_step, steps=None):
  """The global batches the train step sees through a feed in `epoch`, from `start_step` on
  (`steps` of them; None: to the epoch's end)."""
  config = config.copy_and_resolve_references()
  config.steps_per_call = 1
  unused_eval_step = lambda *args: args
  feed = feeds.make_feed(config, dataset, feeds.Sharding.over_all_devices(), _seen_by_the_step,
                         unused_eval_step, on_device=on_device,
                         runs=train.run_arrays(config, dataset.num_classes))
  state = _Steps(jnp.int32(epoch * dataset.steps_per_epoch(config.batch_size) + start_step))
  seen = []
  for _, call in feed.train_calls(epoch, start_step):
    if len(seen) == steps:
      break
    state, batch = call(state, {})
    seen.append(jax.device_get(batch))
  return seen


def local_rows(global_batch_size: int) -> np.ndarray:
  """The rows of a global batch that come from this process, in its local batch's order."""
  indices = feeds.Sharding.over_all_devices().batch.addressable_devices_indices_map(
      (global_batch_size,))
  return np.unique(np.concatenate([np.arange(global_batch_size)[index]
                                   for index in indices.values()]))


def crop_offsets(raw, augmented) -> set[tuple[int, int]]:
  """The (top, left) windows of `raw` padded by 1/8 of its side (as `feeds.augment` crops)
  that are `augmented`."""
  height, width, _ = raw.shape
  pad = max(1, height // 8)
  padded = np.pad(raw, ((pad, pad), (pad, pad), (0, 0)))
  return {(top, left) for top in range(2 * pad + 1) for left in range(2 * pad + 1)
          if np.array_equal(padded[top:top + height, left:left + width], augmented)}
