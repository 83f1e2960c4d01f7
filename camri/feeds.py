"""How batches reach the train and eval steps: from tf.data on the host, or from device memory.

`HostFeed`: tf.data reads each epoch's examples by index, in its order
(`pipeline.train_batches`), decodes and batches them on the host, and each
step's batch is copied to the devices, one step per call.

`DeviceFeed`: every split is decoded once, through the same preprocessing,
into this process's arrays. The evaluation splits stay on the devices, padded
into batches as `eval_batches` pads them, and each is evaluated in one jitted
pass (one call per batch on CPU, see `steps_per_call`). Each epoch's training
batches are copied to the devices in one transfer, prepared in a thread while
the previous epoch trains, and `steps_per_call` train steps run per call, in a
jitted loop; only the conversion to float, the scaling and the augmentation
run there. Images are kept as uint8 where that loses nothing (no resizing),
float32 otherwise.

Both feed the same examples in the same batches (`pipeline.epoch_order`), and
both augment on the devices, in the train step's program (`fed_batch`): each
example by its own key, from (seed, epoch, global example id), so the two give
the step the same images bit for bit, with augmentation or without, on any
number of processes, and a run may resume on either feed. Their metrics agree
to float32 round-off (the programs differ).

A run on a frozen trunk's output computed once (camri/trunk.py) is fed by a
`DeviceFeed` of those features in place of the images.

A population (camri/members.py) is fed by a `DeviceFeed`: its members share
the evaluation splits on the devices, and each member's epoch (its own
order, stacked on a leading member axis) is copied in the same one transfer.
"""

from collections.abc import Callable, Iterator
import concurrent.futures
import dataclasses
import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from camri import members
from camri import memory
from camri import metrics
from camri import trunk
from camri.data import pipeline
from camri.data.dataset import Dataset

# The share of each device's memory (and of the host's) that `auto` lets a dataset take.
DEVICE_MEMORY_FRACTION = 0.25

FEATURE_STEPS_PER_CALL = 1000  # The most `steps_per_call` runs on a frozen trunk's output.

# One call: (the number of train steps it runs, (state, sums) -> (state, sums)).
Call = tuple[int, Callable]


@dataclasses.dataclass
class Sharding:
  """The device mesh, ("members", "data"), and how arrays are laid out on it.

  A single run (`members` 0) has one member group: its state is replicated and
  its batch split over every device. A population of K runs stacks their
  states on a leading axis, split over gcd(K, devices) groups of devices
  ("members"), and splits each member's batch over its group's devices
  ("data"): 64 members on 8 devices are 8 per device; 2 on 8 are 2 x 4-way
  data parallel.
  """
  mesh: jax.sharding.Mesh
  members: int = 0  # K of a population; 0: a single run, its state not stacked.

  @classmethod
  def over_all_devices(cls, members: int = 0):
    groups = math.gcd(members, jax.device_count()) if members else 1
    mesh = jax.make_mesh((groups, jax.device_count() // groups), ("members", "data"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    return cls(mesh, members)

  def _named(self, *spec) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))

  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return self._named()

  @property
  def batch(self) -> jax.sharding.NamedSharding:
    """A global batch, shared by every member: split over "data"."""
    return self._named("data")

  @property
  def batches(self) -> jax.sharding.NamedSharding:
    """(steps, global batch, ...) arrays: each batch sharded like `batch`."""
    return self._named(None, "data")

  @property
  def state(self) -> jax.sharding.NamedSharding:
    """The train state and anything else per run: stacked over "members" in a population."""
    return self._named("members") if self.members else self.replicated

  @property
  def run_batch(self) -> jax.sharding.NamedSharding:
    """Each run's batch of one step: `batch`, stacked over "members" in a population."""
    return self._named("members", "data") if self.members else self.batch

  @property
  def run_batches(self) -> jax.sharding.NamedSharding:
    """Each run's training batches: `batches`, stacked over "members" in a population."""
    return self._named("members", None, "data") if self.members else self.batches

  def put_batch(self, local_batch, keep_on_host=("id",)):
    """A global array from this process's slice of the batch; `keep_on_host` keys are left out."""
    return {key: jax.make_array_from_process_local_data(self.batch, x)
            for key, x in local_batch.items() if key not in keep_on_host}

  def put_batches(self, local_batches, sharding=None):
    """`put_batch` for (steps, local batch, ...) arrays: every step's batch at once."""
    return {key: jax.make_array_from_process_local_data(sharding or self.batches, x)
            for key, x in local_batches.items()}


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in its local batch's order (each
  row once, where devices of other member groups hold copies)."""
  shards = sorted((s for s in x.addressable_shards if s.replica_id == 0),
                  key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])


def local_columns(x: jax.Array) -> np.ndarray:
  """`local_rows` of each step of a (steps, global batch, ...) array: (steps, local batch, ...)."""
  shards = sorted((s for s in x.addressable_shards if s.replica_id == 0),
                  key=lambda s: s.index[1].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards], axis=1)


@dataclasses.dataclass(frozen=True)
class Predictions:
  """This process's examples of a split through the model."""
  ids: np.ndarray  # (N,) str: tfds ids.
  labels: np.ndarray  # (N,) int64.
  # (N, K) float32: the prediction rule's scores (argmax = prediction); a
  # population's have a leading member axis, (members, N, K).
  scores: np.ndarray

  @classmethod
  def of_real(cls, ids, labels, scores, mask):
    real = mask > 0
    return cls(ids[real].astype(str), labels[real].astype(np.int64),
               np.compress(real, scores, axis=-2).astype(np.float32))

  def of_member(self, member: int) -> "Predictions":
    """A population member's predictions."""
    return dataclasses.replace(self, scores=self.scores[member])


class HostFeed:
  """tf.data on the host; one step per call; a single run only."""

  def __init__(self, config, dataset: Dataset, sharding: Sharding, train_step, eval_step,
               runs):
    if sharding.members:
      raise ValueError("a population's data must be on the devices")
    self.config, self.dataset, self.sharding = config, dataset, sharding
    self._runs = jax.device_put(runs, sharding.replicated)
    steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
    self._train_step = jax.jit(fed_step(train_step, steps_per_epoch, tuple(config.augment)),
                               donate_argnums=(0, 1),
                               out_shardings=(sharding.state, sharding.state))
    self._eval_step = jax.jit(eval_step, donate_argnums=1,
                              out_shardings=(sharding.state, sharding.batch))

  def describe(self) -> str:
    return "data from tf.data on the host, 1 step per call"

  def train_calls(self, epoch: int, start_step: int) -> Iterator[Call]:
    batches = self.dataset.train_batches(
        global_batch_size=self.config.batch_size, seed=self.config.seed, epoch=epoch,
        start_step=start_step)
    for batch in batches:
      yield 1, functools.partial(self._step, batch=batch)

  def _step(self, state, sums, batch):
    return self._train_step(state, sums, self.sharding.put_batch(batch), self._runs)

  def evaluate(self, state, split: str, keep_predictions: bool):
    sums = jax.device_put(metrics.empty(self.dataset.num_classes), self.sharding.state)
    kept = []
    for batch in self.dataset.eval_batches(split,
                                           global_batch_size=self.config.eval_batch_size):
      sums, scores = self._eval_step(state, sums, self.sharding.put_batch(batch), self._runs)
      if keep_predictions:
        kept.append(Predictions.of_real(batch["id"], batch["label"], local_rows(scores),
                                        batch["mask"]))
    if not keep_predictions:
      return sums, None
    return sums, Predictions(*(np.concatenate(column) for column in
                               zip(*(dataclasses.astuple(p) for p in kept))))


def to_float(images):
  """Images as the model sees them: uint8 as `pipeline.PIXEL_VALUES` (k / 255), float32 as is."""
  if images.dtype == jnp.uint8:
    return jnp.asarray(pipeline.PIXEL_VALUES)[images]
  return images


def augment(images, keys, augmentations):
  """(B, H, W, C) images, each augmented with its own key: crop, then flip."""

  def one(image, key):
    crop_key, flip_key = jax.random.split(key)
    if "crop" in augmentations:
      height, width, channels = image.shape
      pad = max(1, height // 8)
      padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
      top, left = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
      image = lax.dynamic_slice(padded, (top, left, 0), (height, width, channels))
    if "flip" in augmentations:
      image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    return image

  return jax.vmap(one)(images, keys)


# A run's random streams are keys folded into key(seed): dropout folds the step
# (camri/state.py), an int32, below 2^31; augmentation folds this tag first,
# which no step reaches, then the epoch and the example's id.
AUGMENTATION_STREAM = np.uint32(2**31)


def augmentation_keys(seed, epoch, examples):
  """Each example's augmentation key in `epoch` of the run with `seed`; `examples` are
  global example ids (`pipeline.first_example`)."""
  stream = jax.random.fold_in(jax.random.key(seed), AUGMENTATION_STREAM)
  epoch_key = jax.random.fold_in(stream, epoch)
  return jax.vmap(functools.partial(jax.random.fold_in, epoch_key))(examples)


def fed_batch(batch, step, steps_per_epoch: int, seed, augmentations):
  """A feed's training batch (images as stored, labels, global example ids) as the train
  step of `step` takes it: images as floats (`to_float`), each augmented by its key of
  the step's epoch (`augmentation_keys`), and mask 1."""
  image = to_float(batch["image"])
  if augmentations:
    keys = augmentation_keys(seed, step // steps_per_epoch, batch["example"])
    image = augment(image, keys, augmentations)
  return {"image": image, "label": batch["label"],
          "mask": jnp.ones(batch["label"].shape, jnp.float32)}


def fed_step(train_step, steps_per_epoch: int, augmentations):
  """`train_step` (state, sums, batch, run) -> (state, sums) taking a feed's batch
  (`fed_batch`); `run` is camri/state.py's `run_arrays`."""

  def step(state, sums, batch, run):
    return train_step(state, sums, fed_batch(batch, state.step, steps_per_epoch, run["seed"],
                                             augmentations), run)

  return step


def _train_steps(train_step, augmentations, steps_per_call: int, member_axis, on_features: bool,
                 state, sums, batches, runs):
  """The next `steps_per_call` steps (fewer where the epoch ends) of the epoch whose
  `batches` are on the devices; with 1, the step is outside any loop.

  Where in which epoch the run is follows from `state.step`, so a call takes no
  scalar from the host. A population (`member_axis` "vmap" or "unroll",
  `members.map_members`) steps every member at once: its states, sums,
  batches and `runs` arrays have a leading member axis, and its members share
  a step count. `on_features` (batches of a frozen trunk's output): the steps see
  the state without the trunk (`trunk.without_trunk`), whose arrays pass untouched.
  """
  stacked = member_axis is not None
  steps_per_epoch = batches["label"].shape[int(stacked)]
  whole, start = state, jnp.ravel(state.step)[0] % steps_per_epoch
  if on_features:
    state = trunk.without_trunk(state)

  run_step = fed_step(train_step, steps_per_epoch, augmentations)
  step = members.map_members(run_step, member_axis, (0, 0, 0, 0)) if stacked else run_step

  def body(i, carry):
    batch = jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, start + i, int(stacked),
                                                            keepdims=False), batches)
    return step(*carry, batch, runs)

  count = jnp.minimum(steps_per_call, steps_per_epoch - start)
  state, sums = (body(0, (state, sums)) if steps_per_call == 1
                 else lax.fori_loop(0, count, body, (state, sums)))
  return (trunk.with_trunk(state, whole) if on_features else state), sums


def _eval_batches(eval_step, looped: bool, member_axis, state, sums, batches, start, runs):
  """Metric sums and scores of an evaluation split on the devices: of every batch in one
  loop ((steps, batch, K) scores), or without `looped`, of batch `start` ((batch, K)).

  A population's members (`member_axis`) see the same batches; their sums and
  scores have a leading member axis (scores (members, ...) of the above).
  """
  stacked = member_axis is not None

  def run_eval(state, sums, batch, run):
    new_sums, scores = eval_step(state, sums, {**batch, "image": to_float(batch["image"])}, run)
    return jax.tree.map(lambda new, old: new.astype(old.dtype), new_sums, sums), scores

  evaluate = (members.map_members(run_eval, member_axis, (0, 0, None, 0)) if stacked
              else run_eval)
  body = lambda sums, batch: evaluate(state, sums, batch, runs)
  if not looped:
    return body(sums, jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, start, keepdims=False),
                                   batches))
  sums, scores = lax.scan(body, sums, batches)
  return sums, jnp.moveaxis(scores, 0, 1) if stacked else scores


def steps_per_call(config, steps_per_epoch: int, on_features: bool = False) -> int:
  """`config.steps_per_call`, where 0 (auto) is 1 on CPU and 50 elsewhere, and on a frozen
  trunk's output (`on_features`) the epoch's steps, at most `FEATURE_STEPS_PER_CALL`.

  XLA:CPU runs a convolution inside a loop many times slower than outside
  one (20x for cifar10's reference_cnn), so on CPU each call is one step. The
  steps on a trunk's output have no convolution: there, a call per step costs
  more than the step.
  """
  if config.steps_per_call:
    return config.steps_per_call
  if on_features:
    return min(steps_per_epoch, FEATURE_STEPS_PER_CALL)
  return 1 if jax.default_backend() == "cpu" else 50


def evaluates_in_one_call(steps_per_call: int, on_features: bool = False) -> bool:
  """Whether a split on the devices is evaluated in one call (a loop over its batches): with
  several steps per call, but not on CPU, where XLA runs the loop's convolutions as slowly as
  the train steps' (`steps_per_call`), unless there are none (`on_features`)."""
  return steps_per_call > 1 and (on_features or jax.default_backend() != "cpu")


class DeviceFeed:
  """The splits in device memory; `steps_per_call` steps per call; one run or a population.

  A population's members share the evaluation splits; each trains on its own
  epoch order (its seed's), stacked into (members, steps, batch, ...) arrays.
  `split_arrays`: each split's arrays as `decoded_split` gives them, when not the
  decoded images (a frozen trunk's features, camri/trunk.py).
  """

  def __init__(self, config, dataset: Dataset, sharding: Sharding, train_step, eval_step,
               runs, split_arrays=None):
    self.config, self.dataset, self.sharding = config, dataset, sharding
    on_features = split_arrays is not None
    steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
    self.steps_per_call = steps_per_call(config, steps_per_epoch, on_features)
    stacked = bool(sharding.members)
    axis = (members.member_axis(config, steps_per_epoch * config.num_epochs, on_features)
            if stacked else None)
    self._eval_looped = evaluates_in_one_call(self.steps_per_call, on_features)
    looped = self._eval_looped
    self._seeds = [int(seed) for seed in np.ravel(runs["seed"])]
    self._runs = jax.device_put(runs, sharding.state)
    self._arrays = (split_arrays.get if split_arrays is not None
                    else functools.partial(_decoded, dataset))
    self._train = self._arrays("train")
    self._preparer = concurrent.futures.ThreadPoolExecutor(1, "camri-next-epoch")
    self._upcoming = None  # (epoch, future of its batches)
    self._first_example = pipeline.first_example(dataset.builder, dataset.splits["train"])
    self._eval_arrays, self._eval_ids = {}, {}
    for split in dataset.eval_splits:
      self._eval_arrays[split], self._eval_ids[split] = self._put_eval_split(split)
    self._run = jax.jit(
        functools.partial(_train_steps, train_step, tuple(config.augment), self.steps_per_call,
                          axis, on_features),
        donate_argnums=(0, 1), out_shardings=(sharding.state, sharding.state))
    scores_sharding = sharding.batches if looped else sharding.batch
    self._eval = jax.jit(
        functools.partial(_eval_batches, eval_step, looped, axis), donate_argnums=1,
        out_shardings=(sharding.state, None if stacked else scores_sharding))
    # XLA:CPU's simulated devices share one thread pool: with several calls in
    # flight, one device's collective can hold the threads the others need to
    # join it, until XLA aborts. So there, each call is waited for.
    self._wait = jax.default_backend() == "cpu" and jax.local_device_count() > 1

  def describe(self) -> str:
    images = [self._train["image"], *(b["image"] for b in self._eval_arrays.values())]
    size = sum(image.nbytes for image in images) / 2**20
    calls = "1 step" if self.steps_per_call == 1 else f"{self.steps_per_call} steps"
    return f"data on the devices ({images[0].dtype}, {size:.1f} MiB), {calls} per call"

  def _put_eval_split(self, split):
    """A split as (eval steps, global batch) arrays on the devices, and its padded ids."""
    arrays = self._arrays(split)
    local_batch = self.config.eval_batch_size // jax.process_count()
    steps = pipeline.eval_steps(self.dataset.builder, self.dataset.splits[split],
                                self.config.eval_batch_size)
    padded = {key: x.reshape(steps, local_batch, *x.shape[1:])
              for key, x in pipeline.pad_batch(arrays, steps * local_batch).items()}
    ids = padded.pop("id")
    return self.sharding.put_batches(padded), ids

  def _epoch_batches(self, epoch: int):
    """The training batches of `epoch`, in order, on the devices: each run's, stacked in a
    population."""
    orders = np.stack([pipeline.epoch_order(
        self.dataset.builder, self.dataset.splits["train"], local_size=len(self._train["label"]),
        global_batch_size=self.config.batch_size, seed=seed, epoch=epoch)
                       for seed in self._seeds])
    if not self.sharding.members:
      orders = orders[0]
    return self.sharding.put_batches({
        "image": self._train["image"][orders], "label": self._train["label"][orders],
        "example": (orders + self._first_example).astype(np.int32)},
                                     self.sharding.run_batches)

  def train_calls(self, epoch: int, start_step: int) -> Iterator[Call]:
    """The calls of `epoch` from `start_step` on; the next epoch's batches are prepared
    meanwhile, in a thread."""
    upcoming, self._upcoming = self._upcoming, None
    if upcoming is not None and upcoming[0] == epoch:
      batches = upcoming[1].result()
    else:
      batches = self._epoch_batches(epoch)
    if epoch + 1 < self.config.num_epochs:
      self._upcoming = (epoch + 1, self._preparer.submit(self._epoch_batches, epoch + 1))
    steps = batches["label"].shape[int(bool(self.sharding.members))]
    for start in range(start_step, steps, self.steps_per_call):
      count = min(self.steps_per_call, steps - start)
      yield count, functools.partial(self._call, self._run, batches=batches, runs=self._runs)

  def _call(self, function, *args, **kwargs):
    result = function(*args, **kwargs)
    return jax.block_until_ready(result) if self._wait else result

  def evaluate(self, state, split: str, keep_predictions: bool):
    """(metric sums, `Predictions` or None) of `split`; a population's with a member axis."""
    stacked = bool(self.sharding.members)
    empty = metrics.empty(self.dataset.num_classes)
    if stacked:
      empty = jax.tree.map(lambda x: np.broadcast_to(x, (self.sharding.members, *x.shape)), empty)
    sums = jax.device_put(empty, self.sharding.state)
    batches = self._eval_arrays[split]
    if self._eval_looped:
      sums, scores = self._call(self._eval, state, sums, batches, None, self._runs)
      if keep_predictions:
        scores = np.asarray(scores) if stacked else local_columns(scores)
    else:
      scores = []
      rows_of = np.asarray if stacked else local_rows
      for start in range(len(self._eval_ids[split])):
        sums, batch_scores = self._call(self._eval, state, sums, batches, np.int32(start),
                                        self._runs)
        scores.append(rows_of(batch_scores) if keep_predictions else None)
      scores = np.stack(scores, axis=int(stacked)) if keep_predictions else None
    if not keep_predictions:
      return sums, None
    ids, labels, mask = (np.reshape(x, (-1,)) for x in (
        self._eval_ids[split], local_columns(batches["label"]), local_columns(batches["mask"])))
    scores = np.reshape(scores, (*scores.shape[:-3], -1, scores.shape[-1]))  # Steps x batch.
    return sums, Predictions.of_real(ids, labels, scores, mask)


def _decoded(dataset: Dataset, split: str) -> dict[str, np.ndarray]:
  return pipeline.decoded_split(dataset.builder, dataset.spec, dataset.splits[split],
                                image_size=dataset.image_size)


def fits_on_devices(dataset: Dataset, runs: int = 1) -> bool:
  """Whether the device feed's peak (`memory.feed_bytes`: this process's share of every split,
  two epochs' copies of the training split for each of `runs`, what decoding holds meanwhile)
  takes at most `DEVICE_MEMORY_FRACTION` of its devices' memory and of the host's.
  """
  itemsize = 1 if pipeline.keeps_stored_pixels(dataset.builder, dataset.image_size) else 4
  shares = {name: -(-split.size // jax.process_count()) for name, split in dataset.splits.items()}
  host, device = memory.feed_bytes(shares, dataset.image_shape, itemsize, runs,
                                   jax.default_backend())
  device_limit = _device_memory()
  return (host <= DEVICE_MEMORY_FRACTION * memory.host_memory_limit()
          and (device_limit is None or device <= DEVICE_MEMORY_FRACTION * device_limit))


def _device_memory() -> int | None:
  """The bytes of this process's devices' memory, where they report it (not on CPU)."""
  stats = [device.memory_stats() or {} for device in jax.local_devices()
           if device.platform != "cpu"]
  if stats and all(s.get("bytes_limit") for s in stats):
    return sum(int(s["bytes_limit"]) for s in stats)
  return None


def make_feed(config, dataset: Dataset, sharding: Sharding, train_step, eval_step,
              on_device: bool, runs, split_arrays=None) -> HostFeed | DeviceFeed:
  """A `DeviceFeed` if `on_device` or of `split_arrays` (`DeviceFeed`'s), else a `HostFeed`;
  `runs` is `train.run_arrays` (stacked for a population), what the steps take besides the
  state."""
  if split_arrays is not None:
    return DeviceFeed(config, dataset, sharding, train_step, eval_step, runs, split_arrays)
  feed = DeviceFeed if on_device else HostFeed
  return feed(config, dataset, sharding, train_step, eval_step, runs)
