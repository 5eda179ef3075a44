"""The linear symmetric chain: closed forms against direct solves."""

import math

import numpy as np
import pytest

from experiments import linear_chain


@pytest.mark.parametrize('depth,gain', [(8, 0.25), (8, 0.45), (4, 0.49), (8, 0.5), (3, 0.1)])
def test_closed_forms_match_the_matrix(depth, gain):
  np.testing.assert_allclose(linear_chain.closed_form(depth, gain),
                             linear_chain.response(depth, gain), rtol=1e-10)
  rho = np.max(np.abs(np.linalg.eigvalsh(linear_chain.coupling(depth, gain))))
  assert rho == pytest.approx(2 * gain * math.cos(math.pi / (depth + 1)), rel=1e-12)
  r = linear_chain.attenuation(gain)
  assert gain == pytest.approx(r / (1 + r * r), rel=1e-12)  # the inverse the docs use


def test_table_rows():
  rows = linear_chain.table(8, [0.25, 0.52, 0.55], 1e-4)
  assert rows[0]['top_response'] == pytest.approx(rows[0]['top_response_closed_form'])
  assert rows[0]['top_response'] < 1e-4 < rows[0]['per_layer'][0]
  assert rows[0]['sync_steps_to_tol'] == 10
  assert 'attenuation' not in rows[1] and rows[1]['spectral_radius'] < 1  # settles above 1/2
  assert rows[1]['top_response'] > rows[0]['top_response']
  assert rows[2]['spectral_radius'] > 1 and rows[2]['sync_steps_to_tol'] is None
  with pytest.raises(ValueError, match='gain'):
    linear_chain.attenuation(0.6)


def test_drive_normalisation_runs_and_records_every_round():
  from experiments import drive_normalisation
  from experiments.configs import quickstart
  config = quickstart.get_config()
  config.model.layout = '4,M,4'
  lines = []
  history = drive_normalisation.normalise(config, target_std=0.3, centre=1.0, rounds=2,
                                          rate=0.25, damping=0.5, batch_size=16, max_steps=40,
                                          tol=1e-4, print_fn=lines.append)
  assert [h['round'] for h in history] == [0, 1, 2] and len(lines) == 3
  for h in history:
    assert len(h['input_share']) == len(h['drive_std']) == 2
  # A round moves the drives' batch-std towards the target.
  first, last = history[0]['drive_std'], history[-1]['drive_std']
  assert all(abs(b - 0.3) < abs(a - 0.3) for a, b in zip(first, last)), (first, last)
