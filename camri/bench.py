"""Times the train step: `python -m camri.bench --config configs/cifar10.py --steps 100`.

Compiles the config's train step, runs it on synthetic data of the config's
shapes (global batch sharded over every device, as in training) and prints
how each convolution computes its forward pass and gradients (XLA's or tap
matmuls, camri/models/conv.py), the throughput,
the step's FLOPs per image (XLA's cost analysis of the compiled step: forward
and backward, all devices) and the TFLOP/s they make; with a known device or
`--peak_tflops`, the fraction of its peak. The last line is `img/s <number>`.
No dataset is read.

`--input synthetic,tfdata,device` also times the same step fed from the
config's dataset, from tf.data on the host and from device memory (camri/feeds.py,
with config.steps_per_call), and prints each one's input overhead: how much
longer its steps take than the synthetic ones.

`--population K` also times a population of K runs (camri/members.py: K
train states stacked, each with its own batch, config.member_axis) in the same
process, and prints the img/s summed over the members and the speed-up over
the single run (K=1).

`--compare_conv_weight_grad=xla` also times the step with that
config.conv_weight_grad, in rounds alternating with the config's own (so load
from other processes falls on both alike), and prints the speed-up.
"""

import dataclasses
import sys
import time
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

from camri import cli
from camri import config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps (after 3 warm-up steps).")
_COMPARE = flags.DEFINE_enum(
    "compare_conv_weight_grad", None, config_lib.CONV_WEIGHT_GRADS,
    "Also time the step with this config.conv_weight_grad, alternating with the config's.")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 5, "With --compare_conv_weight_grad: alternations, each of about "
    "steps/rounds steps, the two taking turns to go first.")
INPUTS = ("synthetic", "tfdata", "device")
_INPUTS = flags.DEFINE_list(
    "input", ["synthetic"], "How the timed steps are fed, comma-separated: synthetic arrays on "
    "the devices, the dataset through tf.data, or the dataset in device memory.")
flags.register_validator("input", lambda values: set(values) <= set(INPUTS),
                         f"each value must be one of {list(INPUTS)}")
_POPULATION = flags.DEFINE_integer(
    "population", 0, "Also time a population of this many runs (0: none).")
_PEAK = flags.DEFINE_float(
    "peak_tflops", None, "The devices' peak TFLOP/s, for the fraction achieved "
    "(default: from a table of known devices).")
flags.mark_flags_as_required(["config"])

# Dense peak TFLOP/s per device at the precision XLA gives float32 convolutions
# and matmuls by default (TF32 tensor cores on NVIDIA, bfloat16 passes on TPU),
# from the vendors' datasheets; matched against jax's device_kind.
PEAK_TFLOPS = {"H200": 494.7, "H100": 494.7, "A100": 156.0, "L4": 60.0, "TPU v5 lite": 197.0,
               "TPU v4": 275.0}


@dataclasses.dataclass
class _Variant:
  """One config's compiled step, its state and the time spent in timed steps."""
  weight_grad: str
  step: Any
  state: Any
  sums: Any
  choices: list
  compile_s: float
  flops: float  # Of one step, all devices.
  rounds: list[float] = dataclasses.field(default_factory=list)  # Seconds per timed round.
  batch: Any = None  # The batch it takes, where not the bench's (a population's).

  def run(self, batch, steps: int) -> float:
    import jax  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    batch = batch if self.batch is None else self.batch
    for _ in range(steps):
      self.state, self.sums = self.step(self.state, self.sums, batch)
    jax.block_until_ready((self.state, self.sums))
    return time.perf_counter() - start


def _compile(config, num_classes, shape, sharding, batch) -> _Variant:
  """The train step of `config`, compiled and run 3 times; its convolutions' choices."""
  import jax  # pylint: disable=g-import-not-at-top
  from camri import train  # pylint: disable=g-import-not-at-top
  from camri.models import conv  # pylint: disable=g-import-not-at-top
  model, objective = train.make_model(config, num_classes)
  state = jax.device_put(train.create_train_state(config, model, shape), sharding.replicated)
  sums = jax.device_put(train.empty_train_sums(num_classes), sharding.replicated)
  start = time.perf_counter()
  with conv.recorded_choices() as choices:
    step = jax.jit(train.make_train_step(objective, config.seed), donate_argnums=(0, 1),
                   out_shardings=(sharding.replicated, sharding.replicated)
                   ).lower(state, sums, batch).compile()
  # The partitioned program is one device's share.
  flops = step.cost_analysis()["flops"] * jax.device_count()
  variant = _Variant(config.conv_weight_grad, step, state, sums, choices, 0.0, flops)
  variant.compile_s = time.perf_counter() - start + variant.run(batch, 1)
  variant.run(batch, 2)
  return variant


def _compile_population(config, count: int, num_classes, shape, batch) -> _Variant:
  """The train step of a population of `count` runs (seeds 0..count-1), each its own batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from camri import members as members_lib  # pylint: disable=g-import-not-at-top
  from camri import train  # pylint: disable=g-import-not-at-top
  sharding = train.Sharding.over_all_devices(count)
  model, objective = train.make_model(config, num_classes)
  configs = [config.copy_and_resolve_references() for _ in range(count)]
  for seed, member in enumerate(configs):
    member.seed = seed
  states = [train.create_train_state(c, model, shape) for c in configs]
  put = lambda tree: jax.device_put(members_lib.stack(tree), sharding.state)
  state = put([s.replace(tx=states[0].tx) for s in states])
  sums = put([train.empty_train_sums(num_classes)] * count)
  runs = put([train.run_arrays(c, num_classes) for c in configs])
  member_batch = jax.device_put({k: jnp.stack([x] * count) for k, x in batch.items()},
                                sharding.run_batch)
  axis = members_lib.member_axis(config, _STEPS.value)
  step = members_lib.map_members(train.make_train_step(objective, 0), axis, (0, 0, 0, 0))
  start = time.perf_counter()
  compiled = jax.jit(lambda state, sums, batch: step(state, sums, batch, runs),
                     donate_argnums=(0, 1), out_shardings=(sharding.state, sharding.state)
                     ).lower(state, sums, member_batch).compile()
  flops = compiled.cost_analysis()["flops"] * jax.device_count()
  variant = _Variant(f"population {count} ({axis})", compiled, state, sums, [], 0.0, flops,
                     batch=member_batch)
  variant.compile_s = time.perf_counter() - start + variant.run(member_batch, 1)
  variant.run(member_batch, 2)
  return variant


def _time_feed(config, on_device: bool, steps: int) -> float:
  """Seconds per step of `steps` train steps fed from the dataset, after one warm-up call.

  Whole epochs' costs are included: building the tf.data pipeline, or the
  transfer of the epoch's batches.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from camri import feeds  # pylint: disable=g-import-not-at-top
  from camri import train  # pylint: disable=g-import-not-at-top
  from camri.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  dataset = dataset_lib.open_dataset(config)
  config = config.copy_and_resolve_references()
  config.num_epochs = steps // dataset.steps_per_epoch(config.batch_size) + 2  # As many as run.
  sharding = train.Sharding.over_all_devices()
  model, objective = train.make_model(config, dataset.num_classes)
  feed = feeds.make_feed(config, dataset, sharding, train.make_train_step(objective, config.seed),
                         train.make_eval_step(objective), on_device=on_device,
                         runs=train.run_arrays(config, dataset.num_classes))
  state = jax.device_put(train.create_train_state(config, model, dataset.image_shape),
                         sharding.replicated)
  sums = jax.device_put(train.empty_train_sums(dataset.num_classes), sharding.replicated)

  def calls():
    epoch = 0
    while True:
      yield from feed.train_calls(epoch, 0)
      epoch += 1

  calls = calls()
  _, call = next(calls)
  state, sums = jax.block_until_ready(call(state, sums))
  done, start = 0, time.perf_counter()
  while done < steps:
    count, call = next(calls)
    state, sums = call(state, sums)
    done += count
  jax.block_until_ready((state, sums))
  return (time.perf_counter() - start) / done


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from camri import data as data_lib  # pylint: disable=g-import-not-at-top
  from camri import prepare  # pylint: disable=g-import-not-at-top
  from camri import train  # pylint: disable=g-import-not-at-top

  prepare.setup_runtime()
  prepare.keep_accelerators_for_jax()
  for flag in (_STEPS, _ROUNDS):
    if flag.value < 1:
      print(f"error: --{flag.name}={flag.value} is invalid: must be >= 1", file=sys.stderr)
      sys.exit(2)
  try:
    config, class_names = prepare.validated_config(_CONFIG.value)
    _, builder = data_lib.builder_for(config, prepare=False)
    shape = data_lib.image_shape(builder, config.image_size)
  except (prepare.ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

  sharding = train.Sharding.over_all_devices()
  rng = np.random.default_rng(0)
  local = config.batch_size // jax.process_count()
  batch = sharding.put_batch({
      "image": rng.random((local, *shape), np.float32),
      "label": rng.integers(0, len(class_names), (local,)).astype(np.int32),
      "mask": np.ones((local,), np.float32)})
  configs = [config]
  if _COMPARE.value is not None:
    other = config.copy_and_resolve_references()
    other.conv_weight_grad = _COMPARE.value
    configs.append(other)
  variants = [_compile(c, len(class_names), shape, sharding, batch) for c in configs]
  population = (_compile_population(config, _POPULATION.value, len(class_names), shape, batch)
                if _POPULATION.value else None)
  timed = variants + ([population] if population else [])

  rounds = min(_ROUNDS.value, _STEPS.value) if len(timed) > 1 else 1
  for r in range(rounds):
    steps = _STEPS.value * (r + 1) // rounds - _STEPS.value * r // rounds
    for variant in timed[::-1] if r % 2 else timed:  # None always goes first.
      variant.rounds.append(variant.run(batch, steps))

  print(f"devices {jax.device_count()} x {jax.devices()[0].device_kind}  "
        f"model {config.model}  loss {config.loss.name}  batch {config.batch_size}  "
        f"image {'x'.join(map(str, shape))}")
  print("convolutions (" + " | ".join(v.weight_grad for v in variants) + "):")
  for layer in zip(*(v.choices for v in variants)):
    print(f"  {layer[0]}" + "".join(f" | {c.method}" for c in layer[1:]))
  images = _STEPS.value * config.batch_size
  for variant in variants[::-1]:  # The config's own last, above its FLOPs.
    elapsed = sum(variant.rounds)
    print(f"conv_weight_grad={variant.weight_grad}: compile+first step "
          f"{variant.compile_s:.2f} s  step {1e3 * elapsed / _STEPS.value:.2f} ms  "
          f"img/s {images / elapsed:.1f}")
  if len(variants) > 1:
    # Each round's two timings are minutes apart at most: their ratio cancels
    # slow changes in load, and the median passes over bursts.
    ratios = np.divide(variants[1].rounds, variants[0].rounds)
    print(f"speed-up {np.median(ratios):.2f}x ({variants[0].weight_grad} over "
          f"{variants[1].weight_grad}; median of {rounds} rounds, range "
          f"{ratios.min():.2f}-{ratios.max():.2f})")
  synthetic = sum(variants[0].rounds) / _STEPS.value
  flops_per_image = variants[0].flops / config.batch_size
  tflops = variants[0].flops / synthetic / 1e12
  peak = _PEAK.value or next((p for kind, p in PEAK_TFLOPS.items()
                              if kind in jax.devices()[0].device_kind), None)
  print(f"FLOPs per image {flops_per_image / 1e6:.2f} MFLOP (train step, forward and "
        f"backward)  achieved {tflops:.4f} TFLOP/s" + (
            f"  {tflops / (peak * jax.device_count()):.1%} of peak {peak:g} TFLOP/s per device"
            if peak else "  (peak unknown: --peak_tflops)"))
  for name in ("tfdata", "device"):
    if name in _INPUTS.value:
      seconds = _time_feed(config, name == "device", _STEPS.value)
      print(f"input {name}: step {1e3 * seconds:.2f} ms  img/s {config.batch_size / seconds:.1f}"
            f"  overhead {seconds / synthetic - 1:+.0%} of the synthetic step")
  if population:
    elapsed = sum(population.rounds)
    summed = _POPULATION.value * images / elapsed
    print(f"{population.weight_grad}: compile+first step {population.compile_s:.2f} s  step "
          f"{1e3 * elapsed / _STEPS.value:.2f} ms  img/s {summed:.1f} summed over the members, "
          f"{summed / _POPULATION.value:.1f} per member  speed-up "
          f"{summed / (images / sum(variants[0].rounds)):.2f}x over K=1")
  print(f"img/s {images / sum(variants[0].rounds):.1f}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
