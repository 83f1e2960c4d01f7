"""Times the train step: `python -m camri.bench --config configs/cifar10.py --steps 100`.

Compiles the config's train step, runs it on synthetic data of the config's
shapes (global batch sharded over every device, as in training) and prints
each convolution's weight gradient (camri/models/conv.py) and the throughput;
the last line is `img/s <number>`. No dataset is read.

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
flags.mark_flags_as_required(["config"])


@dataclasses.dataclass
class _Variant:
  """One config's compiled step, its state and the time spent in timed steps."""
  weight_grad: str
  step: Any
  state: Any
  sums: Any
  choices: list
  compile_s: float
  rounds: list[float] = dataclasses.field(default_factory=list)  # Seconds per timed round.

  def run(self, batch, steps: int) -> float:
    import jax  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
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
  step = jax.jit(train.make_train_step(objective, config.seed), donate_argnums=(0, 1),
                 out_shardings=(sharding.replicated, sharding.replicated))
  variant = _Variant(config.conv_weight_grad, step, state, sums, [], 0.0)
  with conv.recorded_choices() as variant.choices:
    variant.compile_s = variant.run(batch, 1)
  variant.run(batch, 2)
  return variant


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

  rounds = min(_ROUNDS.value, _STEPS.value) if len(variants) > 1 else 1
  for r in range(rounds):
    steps = _STEPS.value * (r + 1) // rounds - _STEPS.value * r // rounds
    for variant in variants[::-1] if r % 2 else variants:  # Neither always goes first.
      variant.rounds.append(variant.run(batch, steps))

  print(f"devices {jax.device_count()} x {jax.devices()[0].device_kind}  "
        f"model {config.model}  loss {config.loss.name}  batch {config.batch_size}  "
        f"image {'x'.join(map(str, shape))}")
  print("conv weight gradient (" + " | ".join(v.weight_grad for v in variants) + "):")
  for layer in zip(*(v.choices for v in variants)):
    print(f"  {layer[0]}" + "".join(f" | {c.method}" for c in layer[1:]))
  images = _STEPS.value * config.batch_size
  for variant in variants[::-1]:
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
  print(f"img/s {images / sum(variants[0].rounds):.1f}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
