"""Initialisation modes: PyTorch default, He-style, per-layer gains, data-dependent."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax import initialization, network, relaxation


from ep_jax.app import build, data


def _spec(layout='8,8,M,16,16,M,16,16,M,16,16', activation='hard_sigmoid'):
  return network.make_spec(layout, input_shape=(8, 8, 1), num_classes=10,
                           activation=activation)


def _ratio(a, b):
  """Per dynamical layer: max |a_w| / max |b_w| (the gain between two inits, same key)."""
  return [float(jnp.max(jnp.abs(p['w'])) / jnp.max(jnp.abs(q['w'])))
          for p, q in zip(a['layers'], b['layers'])]


def test_modes_scale_pytorch_default_by_their_gains():
  spec, key = _spec(), jax.random.PRNGKey(0)
  base = network.init_params(spec, key)
  np.testing.assert_allclose(_ratio(initialization.init_params(spec, key, mode='pytorch',
                                                               scale=2.0), base), 2.0, rtol=1e-6)
  he = initialization.init_params(spec, key, mode='he')
  np.testing.assert_allclose(_ratio(he, base), math.sqrt(6) / 0.5, rtol=1e-6)
  unit = _spec(activation='hard_sigmoid_unit')
  np.testing.assert_allclose(
      _ratio(initialization.init_params(unit, key, mode='he'), network.init_params(unit, key)),
      math.sqrt(6), rtol=1e-6)
  gains = tuple(0.5 + 0.25 * l for l in range(spec.num_layers))
  np.testing.assert_allclose(
      _ratio(initialization.init_params(spec, key, mode='gains', gains=gains), base), gains,
      rtol=1e-6)
  # Biases scale with their layer; the readout keeps PyTorch's default.
  g = initialization.init_params(spec, key, mode='gains', gains=gains)
  np.testing.assert_allclose(g['layers'][3]['b'], gains[3] * base['layers'][3]['b'], rtol=1e-6)
  np.testing.assert_array_equal(g['readout']['w'], base['readout']['w'])
  # bias_scale multiplies the layers' biases before the gains and leaves the weights.
  h = initialization.init_params(spec, key, mode='gains', gains=gains, bias_scale=0.5)
  np.testing.assert_allclose(h['layers'][3]['b'], 0.5 * g['layers'][3]['b'], rtol=1e-6)
  np.testing.assert_array_equal(h['layers'][3]['w'], g['layers'][3]['w'])
  zero = initialization.init_params(spec, key, mode='he', bias_scale=0.0)
  assert all(not np.any(np.asarray(p['b'])) for p in zero['layers'])


def test_he_gain_gives_the_variance_of_a_half_rectified_unit():
  """U(±g/√fan_in) with g = √6/a has variance 2/(a² fan_in)."""
  spec = network.make_spec('64', input_shape=(8, 8, 32), num_classes=10)
  w = initialization.init_params(spec, jax.random.PRNGKey(1), mode='he')['layers'][0]['w']
  fan_in = 3 * 3 * 32
  np.testing.assert_allclose(float(jnp.var(w)), 2 / (0.5 ** 2 * fan_in), rtol=0.05)


@pytest.mark.parametrize('kwargs, match', [
    (dict(mode='xavier'), 'unknown init mode'),
    (dict(mode='gains', gains=(1.0, 2.0)), 'one gain per dynamical layer'),
    (dict(mode='gains', gains=(1.0,) * 7 + (0.0,)), 'positive'),
    (dict(mode='pytorch', scale=-1.0), 'positive'),
    (dict(bias_scale=-1.0), 'bias init scale'),
])
def test_bad_init_arguments_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    initialization.init_params(_spec(), jax.random.PRNGKey(0), **kwargs)


def test_data_init_puts_every_layer_in_range_and_the_free_phase_converges():
  """On the 8-conv digits net, PyTorch's default leaves the deep layers near silent; the
  data-dependent gains bring every layer's mean |s_l| at the free fixed point into the
  target range, with a converged relaxation (checked here independently of the search)."""
  train, _, info = data.load_dataset('digits')
  x = jnp.asarray(data.normalize(train.images[:64], info))
  spec = _spec()
  params = network.init_params(spec, jax.random.PRNGKey(0))
  zeros = network.init_states(spec, 64)
  before = relaxation.relax(spec, params, x, zeros, max_steps=400, tol=1e-4, mode='async')
  assert min(float(jnp.mean(jnp.abs(s))) for s in before.states) < 0.05
  calibrated, cal = initialization.calibrate_gains(spec, params, x, target=(0.1, 0.3))
  after = relaxation.relax(spec, calibrated, x, zeros, max_steps=400, tol=1e-4, mode='async')
  activity = [float(jnp.mean(jnp.abs(s))) for s in after.states]
  assert float(after.residual) <= 1e-4, after.residual
  assert all(0.1 <= a <= 0.3 for a in activity), activity
  np.testing.assert_allclose(activity, cal.activity, rtol=1e-5)
  np.testing.assert_allclose(_ratio(calibrated, params), cal.gains, rtol=1e-5)


def test_data_init_rejects_a_bad_target():
  spec = _spec('4,M')
  params = network.init_params(spec, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='target'):
    initialization.calibrate_gains(spec, params, jnp.zeros((2, 8, 8, 1)), target=(0.3, 0.1))


@pytest.mark.slow
def test_data_init_is_calibrated_once_and_not_again_on_resume(tmp_path):
  """`train.calibrated_config` turns init='data' into the gains it chooses (the same
  parameters as calibrating in place); a run resumed from a checkpoint does not calibrate."""
  from ep_jax.app import train as train_lib
  from experiments.configs import default
  config = default.get_config()
  config.model.layout = '4,M,4'
  config.model.init = 'data'
  config.data.train_subset = 64
  config.data.test_subset = 32
  config.train.epochs = 1
  train_split, _, info = build.load_data(config)
  resolved = train_lib.calibrated_config(config, train_split, info)
  assert resolved.model.init == 'gains' and len(resolved.model.init_gains) == 2
  assert config.model.init == 'data'  # the caller's config is left as it was
  spec = build.build_spec(config, info)
  params = train_lib.init_model_params(resolved, spec, train_lib.init_key(config))
  with pytest.raises(ValueError, match='calibrated_config'):
    train_lib.init_model_params(config, spec, train_lib.init_key(config))
  order = data.epoch_permutation(len(train_split), config.seed, 0)[:128]
  x = jnp.asarray(data.normalize(train_split.images[order], info))
  start = initialization.init_params(spec, train_lib.init_key(config), mode='data')
  in_place, _ = initialization.calibrate_gains(spec, start, x, mode=config.ep.mode,
                                               max_steps=400)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(in_place)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  lines = []

  class Stop(Exception):
    pass

  def stop_after_epoch_1(line):
    lines.append(line)
    if re.match(r'epoch 1/\d+: train ', line):  # the epoch's line, after its checkpoint
      raise Stop

  config.train.epochs = 2
  with pytest.raises(Stop):
    train_lib.train_and_evaluate(config, str(tmp_path), print_fn=stop_after_epoch_1)
  assert sum(l.startswith('init=data:') for l in lines) == 1
  lines.clear()
  train_lib.train_and_evaluate(config, str(tmp_path), print_fn=lines.append)
  assert any('resumed from' in l for l in lines)
  assert not any(l.startswith('init=data:') for l in lines)
