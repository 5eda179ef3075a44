"""energy.drive_sources (where each layer's drive comes from) and experiments.drive_sources."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax import energy, network, relaxation
from ep_jax.app import build, data
from ep_jax.app import train
from experiments import drive_sources, gdu
from test_train import tiny_config


def _states(spec, seed, batch=3):
  keys = jax.random.split(jax.random.PRNGKey(seed), len(spec.state_shapes))
  return tuple(jax.random.uniform(k, (batch,) + tuple(s), jnp.float64)
               for k, s in zip(keys, spec.state_shapes))


@pytest.mark.parametrize('readout', ['softmax', 'mse'])
def test_the_parts_sum_to_the_drive_and_are_what_they_say(x64, readout):
  spec = network.make_spec('4,4,M,6,M', input_shape=(8, 8, 2), num_classes=3, dense=(5,),
                           skips=((0, 2),), readout=readout)
  params = network.init_params(spec, jax.random.PRNGKey(0), dtype=jnp.float64)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 2), jnp.float64)
  states = _states(spec, 2)  # any states: the split holds everywhere, not only at a fixed point
  parts = energy.drive_sources(spec, params, x, states)
  n = len(states)
  for l in range(n):
    np.testing.assert_allclose(parts['below'][l] + parts['above'][l] + parts['links'][l],
                               parts['total'][l], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(parts['below'][l],
                               energy.layer_drives(spec, params, x, states)[l], rtol=1e-12)
  # Feedback: linear in the weights above, absent for the top dynamical layer.
  np.testing.assert_array_equal(parts['above'][-1], 0.0)
  layers = list(params['layers'])
  layers[2] = dict(layers[2], w=jnp.zeros_like(layers[2]['w']))
  no_feedback = energy.drive_sources(spec, dict(params, layers=tuple(layers)), x, states)
  np.testing.assert_array_equal(no_feedback['above'][1], 0.0)
  np.testing.assert_allclose(no_feedback['above'][0], parts['above'][0], rtol=1e-12)
  # The link conv1 -> conv3 (8x8 -> 2x2): its drive into conv3, its adjoint into conv1.
  w = params['skips'][0]['w']
  np.testing.assert_allclose(parts['links'][2], energy.skip_drive(w, states[0], 4), rtol=1e-12)
  np.testing.assert_allclose(parts['links'][0], energy.skip_feedback(w, states[2], 4),
                             rtol=1e-12)
  np.testing.assert_array_equal(parts['links'][1], 0.0)
  plain = network.make_spec('4,4,M,6,M', input_shape=(8, 8, 2), num_classes=3, dense=(5,),
                            readout=readout)
  params.pop('skips')
  for part in energy.drive_sources(plain, params, x, states)['links']:
    np.testing.assert_array_equal(part, 0.0)


@pytest.mark.slow
def test_report_of_a_training_run(tmp_path):
  run_dir = str(tmp_path / 'run')
  config = tiny_config(model__layout='3,M,4,M')
  train.train_and_evaluate(config, run_dir, print_fn=lambda _: None)
  lines = []
  report = drive_sources.run(run_dir, split='train', batch_size=8, max_steps=200,
                             print_fn=lines.append)
  assert report['parameters'].startswith('checkpoint 1 (end of epoch 1)')
  assert [r['layer'] for r in report['layers']] == ['conv1', 'conv2']
  assert json.load(open(tmp_path / 'run' / 'drive_sources.json'))['layers'] == report['layers']
  assert len(lines) == 3 and lines[1].count('\n') == 3  # header, rule, two layers
  # The figures are the means of energy.drive_sources at the free fixed point.
  train_split, _, info = build.load_data(config)
  spec = build.build_spec(config, info)
  _, restore = gdu.load_run_params(run_dir)
  params, _ = restore(spec)
  params.pop('signals', None)
  x = jnp.asarray(data.normalize(train_split.images[:8], info))
  free = relaxation.relax(spec, params, x, network.init_states(spec, 8), max_steps=200,
                          tol=1e-5, mode=config.ep.mode)
  parts = energy.drive_sources(spec, params, x, free.states)
  for l, row in enumerate(report['layers']):
    for p in drive_sources.PARTS:
      assert row[f'mean_{p}'] == pytest.approx(float(jnp.mean(parts[p][l])), rel=1e-5, abs=1e-7)
    assert row['mean_total'] == pytest.approx(
        row['mean_below'] + row['mean_above'] + row['mean_links'], abs=1e-5)
  with pytest.raises(ValueError, match='--batch_size'):
    drive_sources.run(run_dir, batch_size=10 ** 6, print_fn=lines.append)
  with pytest.raises(ValueError, match='--split'):
    drive_sources.run(run_dir, split='valid', print_fn=lines.append)
