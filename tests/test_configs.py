"""Every config loads, overrides type-check, and builds a valid network for its data."""

import glob
import importlib
import math
import os

import ml_collections
import pytest

from ep_jax import network, optim
from ep_jax.app import build, data, train
from ep_jax.app.data import DatasetInfo

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'experiments', 'configs')
NAMES = sorted(os.path.splitext(os.path.basename(p))[0]
               for p in glob.glob(os.path.join(CONFIG_DIR, '*.py'))
               if not p.endswith(('__init__.py', 'vgg_recipe.py')))  # vgg_recipe: a helper
SHAPES = {'digits': ((8, 8, 1), 10), 'mnist': ((28, 28, 1), 10),
          'fashion_mnist': ((28, 28, 1), 10), 'cifar10': ((32, 32, 3), 10),
          'cifar100': ((32, 32, 3), 100)}


@pytest.mark.parametrize('name', NAMES)
def test_config_builds_a_network(name):
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  assert isinstance(config, ml_collections.ConfigDict)
  dataset = config.data.dataset
  shape, classes = SHAPES.get(dataset, ((32, 32, 3), 10))  # npz: the CIFAR-10 shards
  info = DatasetInfo(dataset, shape, classes, 1, 1, (0.0,) * shape[2], (1.0,) * shape[2])
  spec = build.build_spec(config, info)
  build.build_ep_config(config)
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
  spec = build.build_spec(config, info)
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
  ep = build.build_ep_config(config)
  assert (ep.estimator, ep.beta, ep.free_steps, ep.nudged_steps, ep.tol, ep.mode) == (
      'symmetric', 1.0, 250, 25, 0.0, 'sync')
  assert ep.nudged_phases == 'sequential'
  config.ep.nudged_phases = 'vmapped'
  assert build.build_ep_config(config).nudged_phases == 'vmapped'
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


VGG = {'cifar10_vgg11': (8, 10), 'cifar10_vgg13': (10, 10), 'cifar100_vgg16': (13, 100)}


@pytest.mark.parametrize('name', sorted(VGG))
def test_vgg_configs_have_the_published_geometry_and_their_variants(name):
  """VGG-11/13/16 as published (8/10/13 conv layers, five max pools, the preset's widths), the
  recipe in every variant, the signals chosen by the config argument alone."""
  from experiments.configs import vgg_recipe
  module = importlib.import_module(f'experiments.configs.{name}')
  num_conv, classes = VGG[name]
  preset = {8: 'vgg11', 10: 'vgg13', 13: 'vgg16'}[num_conv]
  info = DatasetInfo('cifar', (32, 32, 3), classes, 1, 1, (0.0,) * 3, (1.0,) * 3)
  built = {}
  for variant, (les, kd_layers, kd_output) in vgg_recipe.VARIANTS.items():
    config = module.get_config(variant)
    spec = build.build_spec(config, info)
    assert spec.num_conv == num_conv and spec.layout == network.PRESET_LAYOUTS[preset]
    assert [layer.pool for layer in spec.conv].count('max') == 5
    assert spec.state_shapes[-1][:2] == (1, 1) and spec.skips == ()
    s = config.signals
    assert (s.les.enabled, s.kd.enabled and s.kd.layerwise, s.kd.enabled and s.kd.output) == (
        les, kd_layers, kd_output)
    # What differs between variants is the signals' switches, nothing else.
    switches = ('les.enabled', 'kd.enabled', 'kd.layerwise', 'kd.output', 'kd.train_teacher')
    flat = {k: v for k, v in train._flatten(config.to_dict()).items()
            if not any(k == f'signals.{f}' for f in switches)}
    built[variant] = flat
    assert tuple(s.kd.layers) == tuple(s.les.layers) == tuple(range(num_conv - 4, num_conv))
    assert (s.kd.normalize, s.les.normalize, s.kappa.init) == ('unit', 'unit', 0.025)
    assert (config.model.init, config.ep.mode, config.teacher.init_scale) == (
        'data', 'async', 4.9)
  assert all(b == built['ep'] for b in built.values())
  narrow = build.build_spec(module.get_config('kd,width=8,links'), info)
  assert [c.channels for c in narrow.conv] == [
      int(t) // 8 for t in network.PRESET_LAYOUTS[preset].split(',') if t.isdigit()]
  assert len(narrow.skips) == 3  # the links are valid for the geometry
  for bad in ('bp', 'kd,width=0', 'kd,links=1', 'kd,deep'):
    with pytest.raises(ValueError, match='VGG config'):
      module.get_config(bad)


def _vgg_step_and_nudge_split(name, arg, tmp_path, overrides=()):
  """One train step (batch 2, random CIFAR-sized images) of `name:arg` from its calibrated
  init, a random teacher for KD, and the nudge split at the initial parameters."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ep_jax import train_step
  from ep_jax.app import teacher
  config = importlib.import_module(f'experiments.configs.{name}').get_config(arg)
  config.model.init_batch = 2
  for field, value in overrides:
    node = config
    for part in field.split('.')[:-1]:
      node = node[part]
    node[field.split('.')[-1]] = value
  classes = VGG[name][1]
  rng = np.random.default_rng(0)
  split = data.Split(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
                     np.arange(4, dtype=np.int32) % classes)
  info = DatasetInfo('cifar', (32, 32, 3), classes, 4, 4, (0.5,) * 3, (0.25,) * 3)
  config = train.calibrated_config(config, split, info)
  spec = build.build_spec(config, info)
  if config.signals.kd.enabled:
    tspec = build.build_spec(config, info, readout='softmax')
    tparams = network.init_params(tspec, jax.random.PRNGKey(7), scale=4.9)
    teacher.save_teacher(str(tmp_path / 'teacher'), tspec, tparams, {'test_accuracy': 0.1})
    config.signals.kd.teacher_workdir = str(tmp_path / 'teacher')
  run = train.build_run(config, spec, steps_per_epoch=1)
  ep = build.build_ep_config(config)
  batch = {'image': jnp.asarray(data.normalize(split.images[:2], info)),
           'label': jnp.asarray(split.labels[:2])}
  nudge = jax.jit(train_step.make_nudge_split(spec, ep, run.nudging))(run.state, batch)
  new, metrics = jax.jit(train_step.make_train_step(spec, ep, run.tx, nudging=run.nudging))(
      run.state, batch)
  return config, new, metrics, nudge


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(VGG))
def test_vgg_config_trains_one_finite_step_and_its_signals_nudge(name, tmp_path):
  """`les_kd` (every signal on) at 1/16 of the channels with the long links: one step on CPU
  at batch 2 is finite, and at init each signalled layer's own force is at least 10% of its
  nudge, with the recipe's zero readout and with a PyTorch-scale readout (whose output error
  reaches the layers too)."""
  import jax
  import numpy as np
  for readout in (0.0, 1.0):
    config, new, metrics, nudge = _vgg_step_and_nudge_split(
        name, 'les_kd,width=16,links', tmp_path / f'readout{readout}',
        overrides=[('model.readout_init_scale', readout)])
    assert bool(metrics['finite'])
    assert all(np.all(np.isfinite(np.asarray(leaf)))
               for leaf in jax.tree_util.tree_leaves(new.params))
    layers = list(config.signals.kd.layers)
    total = np.asarray(nudge['layer_nudge_end'])[layers]
    own = np.asarray(nudge['layer_nudge_signal'])[layers]
    assert np.all(total > 0) and np.all(own >= 0.1 * total), (readout, own / total)
