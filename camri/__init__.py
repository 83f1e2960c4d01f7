"""camri: CAMRI loss and class-sensitive image classification in JAX/Flax."""

import os as _os

# Every entry point (camri.main, camri.plots, launch.*, ...) and every program
# importing camri passes here before TensorFlow loads, which is when these are
# read. Without them TensorFlow prints absl's "All log messages before
# absl::InitializeLog() ..." and oneDNN's start-up notice, which
# TF_CPP_MIN_LOG_LEVEL alone does not silence. TensorFlow only runs the input
# pipeline here (decode, cast, resize), which oneDNN does not change. Values
# already set in the environment win.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
