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
