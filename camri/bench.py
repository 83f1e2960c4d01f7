"""Times the train step: `python -m camri.bench --config configs/cifar10.py --steps 100`.

Compiles the config's train step, runs it on synthetic data of the config's
shapes (global batch sharded over every device, as in training) and prints the
throughput; the last line is `img/s <number>`. No dataset is read.
"""

import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from camri import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps (after 3 warm-up steps).")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from camri import data as data_lib  # pylint: disable=g-import-not-at-top
  from camri import prepare  # pylint: disable=g-import-not-at-top
  from camri import train  # pylint: disable=g-import-not-at-top

  prepare.setup_runtime()
  prepare.keep_accelerators_for_jax()
  if _STEPS.value < 1:
    print(f"error: --steps={_STEPS.value} is invalid: must be >= 1", file=sys.stderr)
    sys.exit(2)
  try:
    config, class_names = prepare.validated_config(_CONFIG.value)
    _, builder = data_lib.builder_for(config, prepare=False)
    shape = data_lib.image_shape(builder, config.image_size)
  except (prepare.ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

  sharding = train.Sharding.over_all_devices()
  model, objective = train.make_model(config, len(class_names))
  state = jax.device_put(train.create_train_state(config, model, shape), sharding.replicated)
  sums = jax.device_put(train.empty_train_sums(len(class_names)), sharding.replicated)
  rng = np.random.default_rng(0)
  local = config.batch_size // jax.process_count()
  batch = sharding.put_batch({
      "image": rng.random((local, *shape), np.float32),
      "label": rng.integers(0, len(class_names), (local,)).astype(np.int32),
      "mask": np.ones((local,), np.float32)})
  step = jax.jit(train.make_train_step(objective, config.seed), donate_argnums=(0, 1),
                 out_shardings=(sharding.replicated, sharding.replicated))

  start = time.perf_counter()
  state, sums = step(state, sums, batch)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - start
  for _ in range(2):
    state, sums = step(state, sums, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, sums = step(state, sums, batch)
  jax.block_until_ready((state, sums))
  elapsed = time.perf_counter() - start
  images = _STEPS.value * config.batch_size
  print(f"devices {jax.device_count()} x {jax.devices()[0].device_kind}  "
        f"model {config.model}  loss {config.loss.name}  batch {config.batch_size}  "
        f"image {'x'.join(map(str, shape))}")
  print(f"compile+first step {compile_s:.2f} s  step {1e3 * elapsed / _STEPS.value:.2f} ms")
  print(f"img/s {images / elapsed:.1f}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
