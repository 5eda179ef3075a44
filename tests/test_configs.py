"""Every config loads, overrides type-check, and builds a valid network for its data."""

import glob
import importlib
import os

import ml_collections
import pytest

from ep_jax import network, train
from ep_jax.data import DatasetInfo

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'ep_jax', 'configs')
NAMES = sorted(os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(CONFIG_DIR, '*.py')) if '__init__' not in p)
SHAPES = {'digits': ((8, 8, 1), 10), 'mnist': ((28, 28, 1), 10),
          'fashion_mnist': ((28, 28, 1), 10), 'cifar10': ((32, 32, 3), 10),
          'cifar100': ((32, 32, 3), 100)}


def test_required_configs_exist():
  for name in ('quickstart', 'mnist', 'fashion_mnist', 'cifar10_vgg5', 'cifar10_vgg13',
               'cifar100_vgg16', 'cifar10_vgg13_les', 'cifar10_vgg13_kd',
               'cifar10_vgg13_les_kd', 'cifar100_vgg16_les_kd', 'digits_les', 'digits_kd',
               'digits_les_kd'):
    assert name in NAMES


@pytest.mark.parametrize('name', NAMES)
def test_config_builds_a_network(name):
  config = importlib.import_module(f'ep_jax.configs.{name}').get_config()
  assert isinstance(config, ml_collections.ConfigDict)
  dataset = config.data.dataset
  shape, classes = SHAPES.get(dataset, ((32, 32, 3), 10))  # npz: the CIFAR-10 shards
  info = DatasetInfo(dataset, shape, classes, 1, 1, (0.0,) * shape[2], (1.0,) * shape[2])
  spec = train.build_spec(config, info)
  train.build_ep_config(config)
  rates = config.optim.learning_rates
  assert len(rates) in (1, len(network.synapse_names(spec))), (name, len(rates))


def test_overrides_are_type_checked():
  config = importlib.import_module('ep_jax.configs.default').get_config()
  config.ep.beta = 2  # int into float is fine
  assert config.ep.beta == 2.0
  with pytest.raises(TypeError):
    config.ep.beta = 'large'
  locked = ml_collections.config_dict.FrozenConfigDict(config)
  with pytest.raises(AttributeError):
    locked.ep.nonexistent = 1
