"""`data.validation`: a fixed held-out part of the training set replaces the test split."""

import numpy as np
import pytest

from ep_jax.app import build
from experiments.configs import default


def _config(validation, seed=0):
  config = default.get_config()
  config.data.validation = validation
  config.seed = seed
  return config


def test_validation_is_carved_from_the_training_set_and_fixed_across_seeds():
  train, _, _ = build.load_data(_config(0))
  fit, val, vinfo = build.load_data(_config(300))
  fit1, val1, _ = build.load_data(_config(300, seed=1))
  assert len(fit) + len(val) == len(train) and len(val) == 300
  assert (vinfo.num_train, vinfo.num_test) == (len(train) - 300, 300)
  # The two parts partition the training images; the test split is not read.
  both = np.concatenate([fit.images, val.images]).reshape(len(train), -1)
  orig = train.images.reshape(len(train), -1)
  assert sorted(map(bytes, both)) == sorted(map(bytes, orig))
  np.testing.assert_array_equal(val.images, val1.images)
  np.testing.assert_array_equal(fit.labels, fit1.labels)
  # Near-stratified: every class has about 300/10 held-out examples.
  counts = np.bincount(val.labels, minlength=10)
  assert counts.min() >= 25 and counts.max() <= 35, counts


@pytest.mark.parametrize('bad', [-1, 100000])
def test_bad_validation_size_is_named(bad):
  with pytest.raises(ValueError, match='data.validation'):
    build.load_data(_config(bad))
