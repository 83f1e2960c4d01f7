"""camri: CAMRI loss and class-sensitive image classification in JAX/Flax."""

import importlib.util as _importlib_util
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
# TensorFlow imports Keras 3 at start-up, and through it scikit-learn (1.6 s
# of every process's start on the 2-core CPU the CI runs on: importing the
# train loop took 3.8 s with them, 2.2 s without), unless told to use tf_keras;
# where tf_keras is not installed it then skips the import. camri uses no
# Keras, and none of its programs touches `tf.keras`.
if _importlib_util.find_spec("tf_keras") is None:
  _os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
