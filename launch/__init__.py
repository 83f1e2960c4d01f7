"""Grids of camri runs: sweeps (`launch.hyper`), executors, the paper's protocol."""
