"""experiments.signal_strength: per-layer nudges of each signal setting."""

from experiments.configs import default
from experiments import signal_strength


def test_unit_normalisation_scales_the_les_nudge_by_the_pooled_size():
  """LES on conv1 (4x4 after its pool) alone: 'unit' multiplies its force by H·W = 16, so at a
  small β, where the hard sigmoid's response is linear, every layer's nudge is 16 times the
  'mean' one (with a zero readout the output error nudges nothing)."""
  import numpy as np
  config = default.get_config()
  config.model.layout = '6,M,6'
  config.ep.mode = 'async'
  config.ep.beta = 0.02
  config.signals.les.layers = (0,)
  config.model.readout_init_scale = 0.0  # a zero readout: the output error nudges nothing
  result = signal_strength.measure(config, '', [1.0], batch_size=16)
  rows = {r['setting']: r['rms_nudge'] for r in result['rows']}
  assert sorted(rows) == ['LES mean κ=1', 'LES unit κ=1', 'output only']  # no teacher: no KD
  assert result['layers'] == ['conv1', 'conv2'] and result['free_residual'] <= 1e-5
  mean, unit = (np.asarray(rows[k]) for k in ('LES mean κ=1', 'LES unit κ=1'))
  assert np.all(np.asarray(rows['output only']) < 1e-2 * mean)  # relaxation noise only
  np.testing.assert_allclose(unit / mean, [16.0, 16.0], rtol=0.02)
  assert '| output only |' in signal_strength.table(result)


def test_only_teacher_reports_the_teachers_activations_against_a_forward_pass(tmp_path):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ep_jax import feedforward, network
  from ep_jax.app import build, data, teacher
  config = default.get_config()
  config.model.layout = '6,M,6'
  train_split, _, info = build.load_data(config)
  spec = build.build_spec(config, info)
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
  for l, a in enumerate(acts):  # the fractions and the input share, from the activations
    a = np.asarray(a)
    np.testing.assert_allclose(got['zero_frac'][l], np.mean(a <= 1e-3), rtol=1e-6)
    np.testing.assert_allclose(got['one_frac'][l], np.mean(a >= 1 - 1e-3), rtol=1e-6)
    share = np.mean(np.var(a, axis=0)) / (np.mean(a ** 2) + 1e-6)
    np.testing.assert_allclose(got['input_share'][l], share, rtol=1e-4)
  table = signal_strength.teacher_table(got)
  for key in ('mean_abs', 'input_share', 'zero_frac', 'one_frac'):
    assert ' | '.join(f'{v:.3f}' for v in got[key]) in table


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


def test_curvature_of_the_les_losses_is_their_gauss_newton_eigenvalue():
  """`--signal=les`: λ_l of the config's LES losses (fixed heads as training draws them),
  checked against `signals.signal_curvature` of the same cost; per-unit LES on a conv layer
  multiplies the loss by H·W, and so λ (unit vs mean)."""
  import pytest
  config = default.get_config()
  config.model.layout = '6,M,6'
  config.ep.mode = 'async'
  config.signals.kappa.init = 0.1
  config.signals.les.normalize = 'mean'
  mean = signal_strength.kd_stiffness(config, batch_size=16, signal='les')
  assert mean['signal'] == 'les' and all(v > 0 for v in mean['lambda'])
  assert mean['kappa'] == [0.1, 0.1]
  assert '| λ_l (LES Gauss-Newton) |' in signal_strength.stiffness_table(mean)
  config.signals.les.normalize = 'unit'
  unit = signal_strength.kd_stiffness(config, batch_size=16, signal='les')
  # conv1 (8x8 digits, SAME) has 8·8 positions before its pool; the LES features are pooled
  # over conv1's state (4x4 after the pool): the factor is that state's H·W = 16.
  assert unit['lambda'][0] == pytest.approx(16 * mean['lambda'][0], rel=1e-3)
  with pytest.raises(ValueError, match='unknown signal'):
    signal_strength.kd_stiffness(config, batch_size=16, signal='both')
