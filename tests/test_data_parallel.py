"""Data parallelism over fake CPU devices (conftest sets 4) equals one device."""

import jax
import numpy as np
import pytest

from ep_jax import train
from test_train import tiny_config


def test_four_devices_equal_one_device(tmp_path):
  assert jax.device_count() >= 4
  results = {}
  for n in (1, 4):
    config = tiny_config(train__num_devices=n, train__epochs=2)
    lines = []
    record = train.train_and_evaluate(config, str(tmp_path / str(n)), print_fn=lines.append)
    assert f'{n} device(s)' in lines[0]
    results[n] = record
  for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'grad_norm'):
    np.testing.assert_allclose(results[4][key], results[1][key], rtol=2e-5, atol=1e-6,
                               err_msg=key)
  np.testing.assert_allclose(results[4]['layer_mean_abs_param'],
                             results[1]['layer_mean_abs_param'], rtol=1e-5)


def test_batch_not_divisible_by_devices(tmp_path):
  with pytest.raises(ValueError, match='not divisible by the 4 devices'):
    train.train_and_evaluate(tiny_config(train__batch_size=34, train__num_devices=4),
                             str(tmp_path))
  with pytest.raises(ValueError, match='devices are visible'):
    train.train_and_evaluate(tiny_config(train__num_devices=64), str(tmp_path))
