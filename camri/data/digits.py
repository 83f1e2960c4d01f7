"""The 8x8 handwritten digits that ship with scikit-learn, as a tfds dataset.

1,797 greyscale 8x8 images of the digits 0-9 (UCI ML hand-written digits test
set, as copied into scikit-learn). It needs no network, so the quickstart and
the tests run offline through the same tfds / tf.data path as every dataset.

Pixels are 0..16 in the source; they are stored as uint8 round(v * 255 / 16) so
that the common pipeline's division by 255 maps them to [0, 1].

Split: stratified by label with `sklearn.model_selection.train_test_split`,
test_size=0.2 and random_state=0: 1,437 train and 360 test images.
"""

import numpy as np
import tensorflow_datasets as tfds

_TEST_FRACTION = 0.2
_SPLIT_SEED = 0


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, with a fixed stratified split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split, random_state=0."}

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(
                names=[str(d) for d in range(10)]),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships with scikit-learn.
    from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    index = np.arange(len(images))
    train_idx, test_idx = model_selection.train_test_split(
        index, test_size=_TEST_FRACTION, random_state=_SPLIT_SEED,
        stratify=digits.target)
    return {
        "train": self._generate_examples(images, digits.target, train_idx),
        "test": self._generate_examples(images, digits.target, test_idx),
    }

  def _generate_examples(self, images, labels, indices):
    for i in sorted(indices):
      yield int(i), {"image": images[i], "label": int(labels[i])}
