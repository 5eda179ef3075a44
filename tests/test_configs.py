"""Every config loads, overrides type-check, and builds a valid network for its data."""

import glob
import importlib
import math
import os

import ml_collections
import pytest

from ep_jax import network, optim
from ep_jax.app import data, train
from ep_jax.app.data import DatasetInfo

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'experiments', 'configs')
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
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  assert isinstance(config, ml_collections.ConfigDict)
  dataset = config.data.dataset
  shape, classes = SHAPES.get(dataset, ((32, 32, 3), 10))  # npz: the CIFAR-10 shards
  info = DatasetInfo(dataset, shape, classes, 1, 1, (0.0,) * shape[2], (1.0,) * shape[2])
  spec = train.build_spec(config, info)
  train.build_ep_config(config)
  rates = config.optim.learning_rates
  assert len(rates) in (1, len(network.synapse_names(spec))), (name, len(rates))


@pytest.mark.parametrize('name', NAMES)
def test_config_passes_check_config(name, tmp_path, monkeypatch):
  """`train.check_config` (what every script runs before loading data) accepts every shipped
  config, with or without the tfds extra; the distillation configs only lack their teacher,
  and say so."""
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  config.train.num_devices = 1  # the tests run on 4 fake CPU devices; a plain CPU has one
  try:
    data.check_dataset_name(config.data.dataset)
  except ImportError as e:  # a tfds dataset without the tfds extra: its first check
    assert data.TFDS_EXTRA_HINT in str(e)
    # check_config loads no data: the rest of the config is checked as if tfds were there.
    monkeypatch.setattr(data, '_tfds_installed', lambda: True)
  if config.signals.kd.enabled:
    config.signals.kd.teacher_workdir = str(tmp_path / 'no_teacher')
    with pytest.raises(FileNotFoundError, match='signals.kd.teacher_workdir: no teacher in'):
      train.check_config(config)
  else:
    train.check_config(config)


@pytest.mark.parametrize('name', ['cifar10_vgg5', 'cifar10_npz_vgg5'])
def test_cifar10_vgg5_is_the_reference_recipe(name):
  """Laborieux et al. (2021): vgg5 with paddings 1,1,1,0, 3·std inputs, edge-padded crops,
  symmetric EP β = 1, T1/T2 = 250/25 fixed, per-layer rates and 3e-4 decay, cosine per epoch
  over 100 of 120 epochs."""
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  info = data.DatasetInfo('cifar10', (32, 32, 3), 10, 50000, 10000, (0.5,) * 3, (0.25,) * 3)
  spec = train.build_spec(config, info)
  assert spec.paddings == ('SAME', 'SAME', 'SAME', 'VALID') and spec.kernel_sizes == (3,) * 4
  assert spec.state_shapes == ((16, 16, 128), (8, 8, 256), (4, 4, 512), (1, 1, 512))
  assert all(layer.pool == 'max' for layer in spec.conv) and spec.pool_ties == 'first'
  assert (spec.readout, spec.activation, config.model.init_scale) == ('softmax',
                                                                       'hard_sigmoid', 1.0)
  normalised = data.with_statistics(info, config.data.mean, config.data.std)
  assert normalised.mean == (0.4914, 0.4822, 0.4465)
  assert normalised.std == pytest.approx((0.6069, 0.5982, 0.6030))
  d = config.data
  assert (d.augment, d.crop_padding, d.crop_mode, d.flip) == (True, 4, 'edge', True)
  ep = train.build_ep_config(config)
  assert (ep.estimator, ep.beta, ep.free_steps, ep.nudged_steps, ep.tol, ep.mode) == (
      'symmetric', 1.0, 250, 25, 0.0, 'sync')
  assert ep.nudged_phases == 'sequential'
  config.ep.nudged_phases = 'vmapped'
  assert train.build_ep_config(config).nudged_phases == 'vmapped'
  o = config.optim
  assert tuple(o.learning_rates) == (0.25, 0.15, 0.1, 0.08, 0.05)
  assert (o.momentum, o.weight_decay, config.train.batch_size, config.train.epochs) == (
      0.9, 3e-4, 128, 120)
  run = train.build_run(config, spec, steps_per_epoch=3)
  epoch1 = 1e-5 + (0.25 - 1e-5) * (1 + math.cos(math.pi / 100)) / 2
  for epoch, expected in ((0, 0.25), (1, epoch1), (100, 1e-5), (119, 1e-5)):
    rates = optim.current_learning_rates(spec, learning_rates=run.rates, step=3 * epoch + 2,
                                         **run.lr_kwargs)
    assert rates[0] == pytest.approx(expected, rel=1e-4)
