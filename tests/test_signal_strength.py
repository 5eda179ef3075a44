"""experiments.signal_strength: per-layer nudges of each signal setting."""

from experiments.configs import default
from experiments import signal_strength


def test_unit_normalisation_nudges_the_bottom_layer_harder():
  config = default.get_config()
  config.model.layout = '6,M,6'
  config.ep.mode = 'async'
  result = signal_strength.measure(config, '', [1.0], batch_size=16)
  rows = {r['setting']: r['rms_nudge'] for r in result['rows']}
  assert sorted(rows) == ['LES mean κ=1', 'LES unit κ=1', 'output only']  # no teacher: no KD
  assert result['layers'] == ['conv1', 'conv2'] and result['free_residual'] <= 1e-5
  # conv1 is 4x4 after its pool: 'unit' multiplies its LES force by H·W = 16.
  assert rows['LES unit κ=1'][0] > 4 * rows['LES mean κ=1'][0] > 0
  assert rows['output only'][0] > 0
  assert '| output only |' in signal_strength.table(result)


def test_only_teacher_reports_the_teachers_activations_against_a_forward_pass(tmp_path):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ep_jax import feedforward, network
  from ep_jax.app import data, teacher
  from ep_jax.app import train as train_lib
  config = default.get_config()
  config.model.layout = '6,M,6'
  train_split, _, info = train_lib.load_data(config)
  spec = train_lib.build_spec(config, info)
  params = network.init_params(spec, jax.random.PRNGKey(3), scale=4.9)
  teacher.save_teacher(str(tmp_path), spec, params, {'test_accuracy': 0.5})
  result = signal_strength.measure(config, str(tmp_path), [1.0], batch_size=16, only_teacher=True)
  assert result['rows'] == []
  got = result['teacher']
  acts, _ = feedforward.forward(
      spec, params, jnp.asarray(data.normalize(train_split.images[:16], info)))
  np.testing.assert_allclose(got['mean_abs'], [float(jnp.mean(jnp.abs(a))) for a in acts],
                             rtol=1e-6)
  assert got['layers'] == ['conv1', 'conv2']
  assert all(0 <= f <= 1 for f in got['zero_frac'] + got['one_frac'])
  assert all(0 < d < 1 for d in got['input_share'])  # the inputs differ, so do the activations
  table = signal_strength.teacher_table(got)
  assert table.count('\n') == 5 and 'input share' in table


def test_curvature_reports_each_layers_kd_stiffness_rate_and_kappa_cap():
  import pytest
  config = default.get_config()
  config.model.layout = '6,M,6'
  config.ep.mode = 'async'
  config.optim.learning_rates = (0.2, 0.05, 0.1)  # conv1, conv2, readout
  config.optim.momentum = 0.9
  config.signals.kappa.init = 0.5
  config.signals.kappa.per_layer = (0.5, 0.25)
  result = signal_strength.kd_stiffness(config, batch_size=16, margin=2.0)
  assert result['layers'] == ['conv1', 'conv2'] and result['free_residual'] <= 1e-5
  assert result['rate'] == [0.2, 0.05] and result['kappa'] == [0.5, 0.25]
  assert all(v > 0 for v in result['lambda'])
  for eta, k, lam, prod, cap in zip(result['rate'], result['kappa'], result['lambda'],
                                    result['product'], result['kappa_cap']):
    assert prod == pytest.approx(eta * k * lam) and cap == pytest.approx(2.0 / (eta * lam))
  assert result['divergence_bound'] == pytest.approx(3.8)
  assert '| η_l κ_l λ_l |' in signal_strength.stiffness_table(result)
  # KD on conv2 only: conv1 has no κ; conv2's weights see a cost with fewer residuals.
  config.signals.kd.layers = (1,)
  config.signals.kappa.per_layer = ()
  config.optim.optimizer = 'adam'
  top = signal_strength.kd_stiffness(config, batch_size=16, margin=2.0)
  assert top['kappa'] == [0.0, 0.5] and top['product'][0] == 0.0
  assert 0 < top['lambda'][1] < result['lambda'][1]
  assert top['divergence_bound'] is None
  with pytest.raises(ValueError, match='margin'):
    signal_strength.kd_stiffness(config, batch_size=16, margin=0.0)
