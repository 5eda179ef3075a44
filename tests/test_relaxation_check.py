"""experiments.relaxation_check and relaxation.residual_trace."""

import json

import numpy as np
import pytest

from ep_jax import energy, network, relaxation
from ep_jax.app import build, data
from ep_jax.app import train
from experiments import relaxation_check
from test_relaxation import _net
from test_train import tiny_config


def test_residual_trace_is_relax_fixed_step_by_step():
  spec, params, x = _net()
  s0 = network.init_states(spec, 3)
  trace = relaxation.residual_trace(spec, params, x, s0, steps=12, mode='async')
  assert trace.shape == (12, len(spec.layer_names))
  for t in (1, 5, 12):
    fixed = relaxation.relax_fixed(spec, params, x, s0, steps=t, mode='async')
    np.testing.assert_allclose(trace[t - 1], fixed.layer_residuals, rtol=1e-6, atol=1e-8)
  with pytest.raises(ValueError, match='unknown relaxation mode'):
    relaxation.residual_trace(spec, params, x, s0, steps=2, mode='jacobi')


def test_summarize_reads_the_trace():
  residual = np.array([1.0, 0.1, 1e-3, 5e-4, 1e-4, 2e-4, 3e-4, 2e-4, 1e-4, 2e-4])
  trace = np.stack([residual, residual / 10], axis=1)  # the max over layers is column 0
  out = relaxation_check.summarize(trace, tols=[1e-3, 1e-4, 1e-6], at=[2, 10, 11])
  assert out['steps_to_tol'] == {'0.001': 3, '0.0001': 5, '1e-06': None}
  assert out['residual_at'] == {'2': 0.1, '10': 2e-4}  # T beyond the trace is left out
  assert out['final_residual'] == 2e-4 and out['tail_max'] == 2e-4
  assert not out['settles']  # reached 1e-4 once, then moved again
  settled = relaxation_check.summarize(trace, tols=[1e-3], at=[])
  assert settled['settles']


@pytest.mark.slow
def test_report_of_a_training_run_matches_relax(tmp_path):
  """The steps to each tolerance are the steps `relax(..., tol)` takes on the same batch."""
  run_dir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(model__layout='3,M,4,M'), run_dir,
                           print_fn=lambda _: None)
  lines = []
  report = relaxation_check.run(run_dir, batch_size=8, tols=(1e-2, 1e-4), max_steps=80,
                                at=(10, 80, 500), print_fn=lines.append)
  assert report['parameters'].startswith('checkpoint 1 (end of epoch 1)')
  assert set(report['modes']) == {'sync', 'async'}
  assert json.load(open(tmp_path / 'run' / 'relaxation_check.json'))['modes'] == json.loads(
      json.dumps(report['modes']))
  assert lines[1].startswith('| mode | steps to 0.01 | steps to 0.0001 | residual at 10 |')
  assert len(lines[1].splitlines()) == 4  # header, rule, one row per mode
  assert len(lines) == 3 and lines[-1].startswith('wrote ')

  config = tiny_config(model__layout='3,M,4,M')
  train_split, _, info = build.load_data(config)
  spec = build.build_spec(config, info)
  _, restore = relaxation_check.load_run_params(run_dir)
  params, _ = restore(spec)
  params.pop('signals', None)
  x = data.normalize(train_split.images[:8], info)
  for mode, summary in report['modes'].items():
    for tol in (1e-2, 1e-4):
      out = relaxation.relax(spec, params, x, network.init_states(spec, 8), max_steps=80,
                             tol=tol, mode=mode)
      expected = int(out.steps) if float(out.residual) <= tol else None
      assert summary['steps_to_tol'][f'{tol:g}'] == expected, (mode, tol)
    assert set(summary['residual_at']) == {'10', '80'}
    assert set(summary['accuracy_at']) == {'10', '80'}  # 500 is beyond max_steps
    for t in (10, 80):  # one relaxation read at 10 and 80 = two relaxations from zero
      out = relaxation.relax(spec, params, x, network.init_states(spec, 8), max_steps=t,
                             tol=0.0, mode=mode)
      expected = float(np.mean(np.argmax(energy.logits(spec, params, out.states), -1) ==
                               train_split.labels[:8]))
      assert summary['accuracy_at'][str(t)] == pytest.approx(expected), (mode, t)


def test_bad_arguments_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match='--run_dir: .* has no config.json'):
    relaxation_check.run(str(tmp_path), print_fn=lambda _: None)
  for kwargs, match in (({'modes': ('sync', 'jacobi')}, 'unknown mode'),
                        ({'tols': (1e-3, -1.0)}, '--tols must be positive'),
                        ({'max_steps': 0}, '--max_steps must be >= 1'),
                        ({'split': 'val'}, '--split')):
    with pytest.raises(ValueError, match=match):
      relaxation_check.run(str(tmp_path), print_fn=lambda _: None, **kwargs)


def test_solver_comparison_counts_the_steps_relax_takes():
  """Per mode, solver and phase, the steps to each τ are those of `relax(..., tol=τ)` with
  that solver, from zeros (free) or from the common free fixed point (nudged)."""
  spec, params, x = _net()
  labels = np.array([0, 1, 2])
  out = relaxation_check.solver_comparison(spec, params, x, labels, modes=('async',),
                                           solvers=('plain', 'anderson'), tols=(1e-3, 1e-6),
                                           max_steps=200, beta=0.5, memory=3)
  assert set(out['async']) == {'plain', 'anderson'}
  assert set(out['async']['plain']) == {'free', 'nudged+', 'nudged-'}
  zeros = network.init_states(spec, 3)
  for name, solver in (('plain', None), ('anderson', relaxation.Solver('anderson', memory=3))):
    for tol in (1e-3, 1e-6):
      want = relaxation.relax(spec, params, x, zeros, max_steps=200, tol=tol, mode='async',
                              solver=solver)
      row = out['async'][name]['free'][f'{tol:g}']
      assert row['steps'] == int(want.steps) and row['residual'] <= tol
      assert row['seconds'] > 0
  table = relaxation_check.solver_markdown(out, (1e-3, 1e-6))
  assert len(table.splitlines()) == 2 + 2 * 3
  with pytest.raises(ValueError, match='unknown solver'):
    relaxation_check.solver_of('broyden')
