"""An epoch's order: tf.data's shuffle of n positions, computed in NumPy with 4 bytes each.

The training order has always been `tf.data.Dataset.range(n).shuffle(b,
seed=s, reshuffle_each_iteration=False)` with a buffer b >= n. That buffer
holds n scalar tensors, about 200 bytes each, so the order alone grew the
host feed's memory with the split. This module computes the same
permutation, bit for bit, in one int32 array, so every run keeps its order
and a run checkpointed before resumes on the batches it would have had.

What tf.data does (tensorflow/core/kernels/data/shuffle_dataset_op.cc): with
every element in the buffer, the i-th element out is buffer[i + r_i mod
(n - i)], swapped into place i (a Fisher-Yates shuffle), where r_i is the
i-th uint32 of Philox4x32-10 (tensorflow/core/lib/random/philox_random.h)
keyed by the op's seeds. Those are tf.random's `get_seed(s)`: (87654321,
s mod (2^31 - 1)) in a process that sets no global seed, as camri never does.
"""

import numpy as np

_GRAPH_SEED = 87654321  # tf.random's DEFAULT_GRAPH_SEED, with no global seed set.
_MAX_INT32 = 2**31 - 1
_CHUNK = 1 << 16  # Positions per vectorised step: memory beyond the order stays constant.
_LOW = np.uint64(0xFFFFFFFF)


def philox_uint32(key: int, counter_high: int, first_block: int, blocks: int) -> np.ndarray:
  """4 * `blocks` uint32 of TensorFlow's PhiloxRandom(seed_lo=key, seed_hi=counter_high),
  from its `first_block`-th output of 4 on."""
  counter = np.arange(first_block, first_block + blocks, dtype=np.uint64)
  c0, c1 = counter & _LOW, counter >> np.uint64(32)
  c2 = np.full(blocks, counter_high & 0xFFFFFFFF, np.uint64)
  c3 = np.full(blocks, counter_high >> 32, np.uint64)
  k0, k1 = np.uint64(key & 0xFFFFFFFF), np.uint64(key >> 32)
  for _ in range(10):
    p0, p1 = c0 * np.uint64(0xD2511F53), c2 * np.uint64(0xCD9E8D57)
    c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _LOW,
                      (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _LOW)
    k0, k1 = (k0 + np.uint64(0x9E3779B9)) & _LOW, (k1 + np.uint64(0xBB67AE85)) & _LOW
  return np.stack([c0, c1, c2, c3], 1).astype(np.uint32).reshape(-1)


def tf_data_order(n: int, take: int, seed: int) -> np.ndarray:
  """int32 (take,): the first `take` of `tf.data.Dataset.range(n).shuffle(b, seed=seed,
  reshuffle_each_iteration=False)`, any b >= n."""
  order = np.arange(n, dtype=np.int32)
  swap = memoryview(order)
  for start in range(0, take, _CHUNK):
    stop = min(take, start + _CHUNK)
    draws = philox_uint32(_GRAPH_SEED, seed % _MAX_INT32, start // 4,
                          (stop - start + 3) // 4)[:stop - start]
    positions = np.arange(start, stop, dtype=np.int64)
    targets = positions + draws.astype(np.int64) % (n - positions)
    for i, j in enumerate(targets.tolist(), start):
      swap[i], swap[j] = swap[j], swap[i]
  return order[:take]
