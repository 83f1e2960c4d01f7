"""`python -m camri.bench`: the layers' convolution methods and a side-by-side timing."""

import re
import subprocess
import sys

import run_main


def test_bench_prints_each_layers_methods_and_times_two_side_by_side(tfds_dir):
  """And a population of 3 runs, in the same rounds, with its speed-up over one run; the
  step fed from tf.data and from device memory; the FLOPs per image, of the config's own
  step: XLA's convolutions (tap matmuls, timed beside it, count every position and their
  own bookkeeping).

  small_cnn on 8x8 digits: four 3x3 SAME convolutions, 8x8 1 -> 32 and 32 -> 32,
  4x4 32 -> 64 and 64 -> 64. At the window positions inside the image they make
  15,488 + 495,616 + 204,800 + 409,600 = 1,125,504 multiply-adds per image,
  2 FLOPs each, in the forward pass, as many in the weight gradient and in the
  input gradient (none for the image): 6.72 MFLOP, at the least. Counted at
  every position, padding included, 8.92 MFLOP; the dense layers add 0.03 and the elementwise ops
  (BatchNorm, ReLU, pooling, the loss, Adam) on ~6,000 activations and ~70,000
  parameters over 64 images well under 0.35: at most 9.3 MFLOP.
  """
  result = subprocess.run(
      [sys.executable, "-m", "camri.bench", "--config", "configs/digits.py",
       f"--config.data_dir={tfds_dir}", "--config.conv_weight_grad=xla",
       "--compare_conv_weight_grad=taps", "--steps=2", "--rounds=2", "--population=3",
       "--input=synthetic,tfdata,device"],
      cwd=run_main.ROOT, env=run_main.env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  # small_cnn on 8x8 digits: two 3x3 convolutions at 8x8, two after pooling at 4x4.
  start = lines.index("convolutions (xla | taps):")
  assert lines[start + 1:start + 5] == [
      "  8x8x1 -> 32, 3x3 stride 1x1: xla | taps", "  8x8x32 -> 32, 3x3 stride 1x1: xla | taps",
      "  4x4x32 -> 64, 3x3 stride 1x1: xla | taps", "  4x4x64 -> 64, 3x3 stride 1x1: xla | taps"]
  assert re.fullmatch(r"conv_weight_grad=taps: .* img/s [\d.]+", lines[start + 5])
  assert re.fullmatch(r"conv_weight_grad=xla: .* img/s [\d.]+", lines[start + 6])
  assert re.fullmatch(
      r"speed-up [\d.]+x \(xla over taps; median of 2 rounds, range [\d.]+-[\d.]+\)",
      lines[start + 7])
  flops = re.fullmatch(r"FLOPs per image ([\d.]+) MFLOP \(train step, forward and backward\)  "
                       r"achieved [\d.]+ TFLOP/s  \(peak unknown: --peak_tflops\)",
                       lines[start + 8])
  assert 6.72 <= float(flops.group(1)) <= 9.3, lines[start + 8]
  for line, name in zip(lines[start + 9:start + 11], ("tfdata", "device")):
    assert re.fullmatch(rf"input {name}: step [\d.]+ ms  img/s [\d.]+  overhead [+-]\d+% of the "
                        r"synthetic step", line), line
  assert re.fullmatch(r"population 3 \(vmap\): compile\+first step [\d.]+ s  step [\d.]+ ms  "
                      r"img/s [\d.]+ summed over the members, [\d.]+ per member  "
                      r"speed-up [\d.]+x over K=1", lines[start + 11])
  assert re.fullmatch(r"img/s [\d.]+", lines[-1])
