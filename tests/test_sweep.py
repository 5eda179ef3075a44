"""Sweeps: grid parsing and errors, resume of a partly finished sweep, vmapped-seed equivalence,
the generated sbatch script (ep_jax/app/sweep.py, experiments/sweep.py)."""

import csv
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from ep_jax.app import metrics_io
from ep_jax.app import sweep
from ep_jax.app import train
from experiments.configs import default
from ep_jax.app.metrics_io import read_metrics
from test_train import REPO, tiny_config

QUICKSTART = os.path.join(REPO, 'experiments', 'configs', 'quickstart.py')


def _env():
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))


# ----------------------------------------------------------------------------- grid parsing


def test_parse_grid_product_and_names(tmp_path):
  config = default.get_config()
  grid = sweep.parse_grid(
      " optim.learning_rates=[0.05, (0.2,0.1,0.05)] ; ep.beta=[0.5, 1] ;"
      " model.layout=['8,M', 'a;b'];", config)
  assert grid == [('optim.learning_rates', [(0.05,), (0.2, 0.1, 0.05)]),
                  ('ep.beta', [0.5, 1.0]), ('model.layout', ['8,M', 'a;b'])]
  assert isinstance(grid[1][1][1], float)  # as the config stores it
  plan = sweep.make_sweep(config, 'ep.beta=[0.5,1.0];optim.learning_rates=[(0.1,),0.2]', 3,
                          str(tmp_path))
  assert plan.seeds == (0, 1, 2) and plan.fields == ('ep.beta', 'optim.learning_rates')
  names = [p.name for p in plan.points]
  assert names == ['ep.beta=0.5,optim.learning_rates=(0.1,)',
                   'ep.beta=0.5,optim.learning_rates=(0.2,)',
                   'ep.beta=1.0,optim.learning_rates=(0.1,)',
                   'ep.beta=1.0,optim.learning_rates=(0.2,)']
  # Stable whatever the order of the grid's fields.
  swapped = sweep.make_sweep(config, 'optim.learning_rates=[(0.1,),0.2];ep.beta=[0.5,1.0]', 1,
                             str(tmp_path))
  assert sorted(p.name for p in swapped.points) == sorted(names)
  assert len(plan.runs()) == 12
  assert plan.run_dir(plan.points[0], 2) == str(
      tmp_path / 'ep.beta=0.5,optim.learning_rates=(0.1,)' / 'seed=2')
  cfg = sweep.apply_overrides(config, plan.points[3].overrides, seed=7)
  assert (cfg.ep.beta, cfg.optim.learning_rates, cfg.seed) == (1.0, (0.2,), 7)
  assert config.ep.beta == 0.5 and config.seed == 0  # the base config is untouched
  # Unsafe characters are sanitised; names that clash after that get a hash.
  odd = sweep.expand(sweep.parse_grid("model.layout=['a/b', 'a b', 'c']", config))
  assert odd[2].name == 'model.layout=c'
  assert odd[0].name != odd[1].name and all('/' not in p.name and ' ' not in p.name
                                            for p in odd)
  assert odd[0].name.startswith('model.layout=a_b-')
  assert [p.name for p in sweep.make_sweep(config, '', 1, str(tmp_path)).points] == ['base']
  base = default.get_config()
  base.seed = 10
  assert sweep.make_sweep(base, '', 2, str(tmp_path)).seeds == (10, 11)


@pytest.mark.parametrize('grid, message', [
    ('optim.lr=[0.05,0.1]', r"unknown config field 'optim.lr'.*config.optim has no 'lr'.*"
                            r'optim.learning_rates'),
    ('nothing.beta=[1]', r"unknown config field 'nothing.beta'.*config has no 'nothing'"),
    ('ep.beta.x=[1]', r"unknown config field 'ep.beta.x'"),
    ('ep=[1]', r"'ep' in the grid is a config section"),
    ('ep.beta=0.5', r"must be a list literal such as \[0.5\]"),
    ('ep.beta=[0.5,', r"malformed values for 'ep.beta'"),
    ('ep.beta=[1e-1, x]', r"malformed values for 'ep.beta'"),
    ('ep.beta=[]', r"empty value list for 'ep.beta'"),
    ('ep.beta', r"malformed grid entry 'ep.beta'"),
    ('ep.beta:[1,2]', r'malformed grid entry'),
    ('ep beta=[1]', r"malformed grid field 'ep beta'"),
    ('ep.beta=[1];ep.beta=[2]', r"'ep.beta' appears twice"),
    ('ep.beta=[0.5,0.5]', r"value 0.5 appears twice"),
    ('ep.free_steps=[10,2.5]', r"value 2.5 does not fit 'ep.free_steps'"),
    ("ep.beta=['big']", r"value 'big' does not fit 'ep.beta'"),
    ('seed=[0,1]', r'use --seeds'),
])
def test_grid_errors(grid, message):
  with pytest.raises(sweep.GridError, match=message):
    sweep.parse_grid(grid, default.get_config())


def test_bad_seed_count(tmp_path):
  with pytest.raises(sweep.GridError, match='positive integer'):
    sweep.make_sweep(default.get_config(), '', 0, str(tmp_path))


# ----------------------------------------------------------------------------- local launcher


class _Stop(Exception):
  pass


def _stop_after_epoch_1(line):
  if re.match(r'epoch 1/\d+: (train|test) ', line):  # after the epoch's checkpoint
    raise _Stop(line)


@pytest.fixture
def no_curves(monkeypatch):
  """Skips curves.png (matplotlib per epoch and run): these tests are about other things."""
  monkeypatch.setattr(metrics_io, 'plot_curves', lambda *a, **k: None)


@pytest.mark.slow
def test_resume_partly_finished_sweep_and_results(tmp_path, monkeypatch, no_curves):
  config = tiny_config(train__epochs=2, train__num_devices=1, data__train_subset=96,
                       data__test_subset=64)
  plan = sweep.make_sweep(config, 'optim.learning_rates=[0.1,0.05,1e38]', 1, str(tmp_path))
  done, interrupted, diverging = plan.points
  # One run finished (its metrics.jsonl has the final epoch), one killed after its first
  # epoch, one not started (it will diverge).
  os.makedirs(plan.run_dir(done, 0))
  with open(os.path.join(plan.run_dir(done, 0), 'metrics.jsonl'), 'w') as f:
    for epoch, acc, seconds in ((1, 0.5, 3.0), (2, 0.25, 1.0)):
      f.write(json.dumps({'epoch': epoch, 'test_accuracy': acc, 'epoch_time_s': seconds}) + '\n')
  with pytest.raises(_Stop):
    train.train_and_evaluate(sweep.apply_overrides(config, interrupted.overrides, seed=0),
                             plan.run_dir(interrupted, 0), print_fn=_stop_after_epoch_1)
  assert len(read_metrics(plan.run_dir(interrupted, 0))) == 1
  calls = []
  real = train.train_and_evaluate

  def spy(cfg, workdir, print_fn=print):
    calls.append(os.path.relpath(workdir, tmp_path))
    if cfg.optim.learning_rates == (1e38,):
      raise train.NonFiniteError('non-finite training at epoch 1, step 2: ...')
    return real(cfg, workdir, print_fn=print_fn)

  monkeypatch.setattr(sweep.train_lib, 'train_and_evaluate', spy)
  lines = []
  rows = sweep.run_local(config, plan, print_fn=lines.append)
  assert calls == [f'{interrupted.name}/seed=0', f'{diverging.name}/seed=0']
  assert f'[1/3] {done.name}: all 1 seed(s) finished, skipped' in lines
  assert any(l.startswith('resumed from') for l in lines)
  assert [r['epoch'] for r in read_metrics(plan.run_dir(interrupted, 0))] == [1, 2]
  marker = os.path.join(plan.run_dir(diverging, 0), sweep.DIVERGED_FILE)
  assert 'non-finite' in json.load(open(marker))['error']

  # Results: one row per configuration, from each run's metrics.jsonl.
  with open(tmp_path / 'sweep.csv') as f:
    table = list(csv.DictReader(f))
  assert [r['name'] for r in table] == [p.name for p in plan.points]
  assert [r['optim.learning_rates'] for r in table] == ['(0.1,)', '(0.05,)', '(1e+38,)']
  assert [float(table[0][k]) for k in ('final_acc_mean', 'max_acc_mean',
                                        'epoch_time_s_mean')] == [0.25, 0.5, 2.0]
  assert [r['eval_split'] for r in table] == ['test'] * 3
  records = read_metrics(plan.run_dir(interrupted, 0))
  row = table[1]
  assert float(row['final_acc_mean']) == pytest.approx(records[-1]['test_accuracy'])
  assert float(row['max_acc_mean']) == pytest.approx(max(r['test_accuracy'] for r in records))
  assert np.isnan(float(row['final_acc_std'])) and row['finished'] == '1'  # one seed
  assert (table[2]['finished'], table[2]['diverged']) == ('0', '1')
  assert np.isnan(float(table[2]['final_acc_mean']))
  assert rows[1]['final_acc_mean'] == pytest.approx(float(row['final_acc_mean']))
  md = open(tmp_path / 'sweep.md').read()
  assert '| optim.learning_rates | seeds done | diverged | final test acc' in md
  assert '| `(0.1,)` | 1/1 | 0 | 25.00 | 50.00 | 2.00 |' in md  # one seed: no spread
  assert 'No best point: the runs evaluate on the test split' in md
  assert any(l.startswith('no best point: the runs evaluate on the test split') for l in lines)
  assert (tmp_path / 'sweep_optim.learning_rates.png').stat().st_size > 1000
  plan_json = json.load(open(tmp_path / sweep.PLAN_FILE))
  assert plan_json['points'][0]['runs'] == [f'{done.name}/seed=0']

  # Everything is finished or diverged now: a second call trains nothing.
  calls.clear()
  sweep.run_local(config, plan, print_fn=lambda _: None)
  assert calls == []


def test_mean_and_sample_std_over_seeds(tmp_path):
  plan = sweep.make_sweep(default.get_config(), 'ep.beta=[0.5]', 3, str(tmp_path))
  for seed, acc in zip(plan.seeds, (0.5, 0.6, 0.7)):
    os.makedirs(plan.run_dir(plan.points[0], seed))
    with open(os.path.join(plan.run_dir(plan.points[0], seed), 'metrics.jsonl'), 'w') as f:
      f.write(json.dumps({'epoch': 1, 'test_accuracy': acc, 'epoch_time_s': 1.0}) + '\n')
  (row,) = sweep.aggregate(plan, epochs=1, print_fn=lambda _: None)
  assert row['final_acc_mean'] == pytest.approx(0.6)
  assert row['final_acc_std'] == pytest.approx(0.1)  # ddof=1
  assert row['finished'] == 3


def _fake_run(run_dir, accs, validation=None, seconds=1.0):
  """A finished run: metrics.jsonl with `accs` per epoch, config.json unless validation=None."""
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
    for epoch, acc in enumerate(accs, 1):
      f.write(json.dumps({'epoch': epoch, 'test_accuracy': acc, 'epoch_time_s': seconds}) + '\n')
  if validation is not None:
    with open(os.path.join(run_dir, 'config.json'), 'w') as f:
      json.dump({'seed': 0, 'data': {'validation': validation}}, f)


def _errorbars(fig):
  """The number of error bars drawn in each axes of `fig`."""
  from matplotlib.container import ErrorbarContainer
  return [sum(len(c.lines[2][0].get_segments()) for c in ax.containers
              if isinstance(c, ErrorbarContainer)) for ax in fig.axes]


def test_one_seed_has_no_spread_and_best_is_chosen_on_validation(tmp_path):
  plan = sweep.make_sweep(default.get_config(), 'ep.beta=[0.5,1.0,2.0]', 1, str(tmp_path))
  # Point 0 peaks highest (max over epochs) but ends lower than point 1: the final validation
  # accuracy picks point 1.
  for point, accs in zip(plan.points, ((0.9, 0.6), (0.5, 0.95), (0.2, 0.3))):
    _fake_run(plan.run_dir(point, 0), accs, validation=100)
  lines = []
  rows = sweep.aggregate(plan, epochs=2, print_fn=lines.append)
  assert [r['eval_split'] for r in rows] == ['validation=100'] * 3
  assert all(np.isnan(r['final_acc_std']) and np.isnan(r['max_acc_std']) for r in rows)
  assert lines[0] == ('best on validation accuracy (validation=100): ep.beta=1.0 final '
                      'validation accuracy 95.00% (1 seed)')
  best, _ = sweep.choose_best(rows)
  assert best['name'] == 'ep.beta=1.0'
  table = list(csv.DictReader(open(tmp_path / 'sweep.csv')))
  assert table[1]['final_acc_mean'] == '0.95' and table[1]['eval_split'] == 'validation=100'
  assert np.isnan(float(table[1]['final_acc_std']))
  md = open(tmp_path / 'sweep.md').read()
  assert '±' not in md.split('\n', 3)[3]  # no spread anywhere below the header paragraph
  assert 'on the validation split (validation=100' in md
  assert '| ep.beta | seeds done | diverged | final validation acc | max validation acc |' in md
  assert '| `1.0` | 1/1 | 0 | 95.00 | 95.00 | 1.00 |' in md
  assert 'Best on validation accuracy (validation=100): ep.beta=1.0' in md
  assert _errorbars(sweep.field_figure(plan, rows, 'ep.beta')) == [0, 0]

  # Two seeds: mean ± sample std, and error bars.
  two = sweep.make_sweep(default.get_config(), 'ep.beta=[0.5,1.0]', 2, str(tmp_path / 'two'))
  for point in two.points:
    for seed, acc in zip(two.seeds, (0.5, 0.7)):
      _fake_run(two.run_dir(point, seed), (acc,), validation=100)
  lines.clear()
  rows = sweep.aggregate(two, epochs=1, print_fn=lines.append)
  assert lines[0].endswith('final validation accuracy 60.00 ± 14.14% (2 seeds)')
  assert '| `0.5` | 2/2 | 0 | 60.00 ± 14.14 | 60.00 ± 14.14 | 1.00 ± 0.00 |' in open(
      tmp_path / 'two' / 'sweep.md').read()
  assert _errorbars(sweep.field_figure(two, rows, 'ep.beta')) == [2, 2]


def test_no_best_point_without_a_validation_split(tmp_path):
  config = default.get_config()
  plan = sweep.make_sweep(config, 'ep.beta=[0.5,1.0]', 1, str(tmp_path / 'test'))
  for point, acc in zip(plan.points, (0.4, 0.8)):
    _fake_run(plan.run_dir(point, 0), (acc,), validation=0)
  lines = []
  rows = sweep.aggregate(plan, epochs=1, print_fn=lines.append)
  assert [r['eval_split'] for r in rows] == ['test', 'test']
  assert sweep.choose_best(rows)[0] is None
  assert lines[0].startswith('no best point: the runs evaluate on the test split '
                             '(data.validation=0)')
  assert '--config.data.validation=N' in lines[0]
  md = open(tmp_path / 'test' / 'sweep.md').read()
  assert 'final test acc' in md and 'No best point' in md and 'Best on' not in md

  # Points evaluated on different splits are not compared.
  mixed = sweep.make_sweep(config, 'data.validation=[0,100]', 1, str(tmp_path / 'mixed'))
  for point, n in zip(mixed.points, (0, 100)):
    _fake_run(mixed.run_dir(point, 0), (0.5,), validation=n)
  lines.clear()
  rows = sweep.aggregate(mixed, epochs=1, print_fn=lines.append)
  assert [r['eval_split'] for r in rows] == ['test', 'validation=100']
  assert lines[0].startswith('no best point: the finished configurations evaluate on '
                             'different splits (test, validation=100)')
  md = open(tmp_path / 'mixed' / 'sweep.md').read()
  assert '| evaluated on | final evaluation acc |' in md and '| validation=100 |' in md

  # Without config.json the split comes from the config, else it is unknown: no best either.
  bare = sweep.make_sweep(config, 'ep.beta=[0.5]', 1, str(tmp_path / 'bare'))
  _fake_run(bare.run_dir(bare.points[0], 0), (0.5,))
  lines.clear()
  (row,) = sweep.aggregate(bare, epochs=1, print_fn=lines.append)
  assert row['eval_split'] == '' and 'an unknown split' in lines[0]
  config.data.validation = 10
  (row,) = sweep.aggregate(bare, epochs=1, print_fn=lines.append, config=config)
  assert row['eval_split'] == 'validation=10'


# ----------------------------------------------------------------------------- vmapped seeds


@pytest.mark.slow
def test_vmapped_seeds_equal_separate_runs_and_resume(tmp_path, no_curves):
  config = tiny_config(train__epochs=2, train__num_devices=1)
  config.seed = 3
  plan = sweep.make_sweep(config, '', 2, str(tmp_path / 'sweep'))
  assert plan.seeds == (3, 4)
  # Killed after epoch 1 (its stacked checkpoint is saved), then resumed.
  with pytest.raises(_Stop):
    sweep.run_local(config, plan, vmap_seeds=True, print_fn=_stop_after_epoch_1)
  lines = []
  sweep.run_local(config, plan, vmap_seeds=True, print_fn=lines.append)
  assert any(l.startswith('resumed from') and 'vmap_checkpoints/seeds=3,4' in l for l in lines)
  for seed in plan.seeds:
    separate = tmp_path / f'separate{seed}'
    train.train_and_evaluate(sweep.apply_overrides(config, (), seed=seed), str(separate),
                             print_fn=lambda _: None)
    expected = read_metrics(separate)
    run_dir = plan.run_dir(plan.points[0], seed)
    got = read_metrics(run_dir)
    assert [r['epoch'] for r in got] == [1, 2]
    for a, b in zip(expected, got):
      assert set(a) - {'vmapped_seeds'} <= set(b)  # the same record layout
      for key in sweep.CORE_FIELDS + ('layer_mean_abs_state', 'layer_nudge'):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7, err_msg=key)
      assert b['vmapped_seeds'] == 2
    assert json.load(open(os.path.join(run_dir, 'config.json')))['seed'] == seed
  assert read_metrics(plan.run_dir(plan.points[0], 3)) != read_metrics(
      plan.run_dir(plan.points[0], 4))  # the seeds differ
  rows = list(csv.DictReader(open(tmp_path / 'sweep' / 'sweep.csv')))
  assert rows[0]['name'] == 'base' and rows[0]['finished'] == '2'
  lines.clear()
  sweep.run_local(config, plan, vmap_seeds=True, print_fn=lines.append)
  assert lines[0] == '[1/1] base: all 2 seed(s) finished, skipped'


def test_vmapped_seeds_stop_on_non_converging_relaxation(tmp_path, no_curves):
  config = tiny_config(train__epochs=2, train__num_devices=1, model__layout='6,M,6,M',
                       ep__free_steps=2, ep__max_residual=1e-9)
  plan = sweep.make_sweep(config, '', 2, str(tmp_path / 'sweep'))
  lines = []
  sweep.run_local(config, plan, vmap_seeds=True, print_fn=lines.append)
  for seed in plan.seeds:
    run_dir = plan.run_dir(plan.points[0], seed)
    assert sweep.is_diverged(run_dir)
    message = json.load(open(os.path.join(run_dir, sweep.DIVERGED_FILE)))['error']
    assert f'seed {seed} (vmapped)' in message and 'did not converge at epoch 1' in message
    assert read_metrics(run_dir) == []
  rows = list(csv.DictReader(open(tmp_path / 'sweep' / 'sweep.csv')))
  assert rows[0]['diverged'] == '2'


# ----------------------------------------------------------------------------- slurm


def _stub_python(tmp_path):
  """An executable that prints its arguments, one a line, then `<END>`."""
  stub = tmp_path / 'stub_python'
  stub.write_text('#!/bin/bash\nprintf "%s\\n" "$@" "<END>"\n')
  stub.chmod(0o755)
  return str(stub)


def _run_task(script, task, tmp_path, python_env=True):
  """Runs array task `task` of `script` (with a stub $PYTHON unless `python_env` is False);
  returns each call's argv."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
  env['SLURM_ARRAY_TASK_ID'] = str(task)
  if python_env:
    env['PYTHON'] = _stub_python(tmp_path)
  out = subprocess.run(['bash', script], capture_output=True, text=True, timeout=60, env=env)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0].startswith(f'task {task}: ')
  calls, current = [], []
  for line in lines[1:]:
    if line == '<END>':
      calls.append(current)
      current = []
    else:
      current.append(line)
  return calls


def _parse_train_argv(argv):
  """The config and workdir that experiments.train would get from `argv`."""
  assert argv[:2] == ['-m', 'experiments.train']
  values, args = flags.FlagValues(), ['train', *argv[2:]]
  config_flag = config_flags.DEFINE_config_file('config', QUICKSTART, flag_values=values,
                                                sys_argv=args)
  workdir = flags.DEFINE_string('workdir', None, '', flag_values=values)
  values(args)
  return config_flag.value, workdir.value


@pytest.mark.slow
def test_slurm_script_from_the_cli(tmp_path):
  workdir = tmp_path / 'sw'
  grid = "optim.learning_rates=[0.05,(0.2,0.1)];model.layout=['8,M', '16,M']"
  cli = [sys.executable, '-m', 'experiments.sweep', f'--grid={grid}', '--seeds=2',
         '--launcher=slurm', f'--workdir={workdir}', '--config.train.epochs=3',
         '--config.ep.beta=0.25', '--config.seed=5', '--sbatch=--time=01:00:00']
  out = subprocess.run(cli, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  script = workdir / sweep.SLURM_FILE
  assert f'sbatch {script}' in out.stdout and '--launcher=local' in out.stdout
  assert not any(os.scandir(workdir / 'slurm'))  # nothing ran
  text = script.read_text()
  assert text.startswith('#!/bin/bash\n')
  assert '#SBATCH --array=0-3\n' in text and '#SBATCH --time=01:00:00\n' in text
  assert f'#SBATCH --output={workdir}/slurm/%A_%a.out' in text
  assert subprocess.run(['bash', '-n', str(script)]).returncode == 0

  plan = sweep.make_sweep(default.get_config(), grid, 2, str(workdir))
  base = default.get_config()
  base.train.epochs, base.ep.beta = 3, 0.25
  for task in (0, 3):
    point = plan.points[task]
    calls = _run_task(script, task, tmp_path)
    assert len(calls) == 2  # one experiments.train per seed, in turn
    for seed, argv in zip((5, 6), calls):
      config, run_dir = _parse_train_argv(argv)
      assert run_dir == str(workdir / point.name / f'seed={seed}')
      want = sweep.apply_overrides(base, point.overrides, seed=seed)
      assert config.to_dict() == want.to_dict()

  bad = subprocess.run([*cli[:3], '--grid=optim.lr=[0.1]', f'--workdir={tmp_path / "b"}'],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "unknown config field 'optim.lr'" in bad.stderr


def test_slurm_script_vmapped_seeds(tmp_path):
  config = default.get_config()
  plan = sweep.make_sweep(config, "ep.beta=[0.5,1.0];model.layout=['8,M']", 3, str(tmp_path))
  path, command = sweep.write_slurm(plan, QUICKSTART, {'train.epochs': 2, 'ep.beta': 0.1},
                                    vmap_seeds=True)
  assert command == f'sbatch {shlex.quote(path)}'
  assert '#SBATCH --array=0-1\n' in open(path).read()
  (argv,) = _run_task(path, 1, tmp_path)
  assert argv == ['-m', 'experiments.sweep', f'--config={QUICKSTART}', '--config.train.epochs=2',
                  "--grid=ep.beta=[1.0];model.layout=['8,M']", '--seeds=3', '--vmap_seeds',
                  '--launcher=local', '--noaggregate', f'--workdir={tmp_path}']
  # The task's single-point grid names the same folder as the full sweep.
  single = sweep.make_sweep(config, argv[4][len('--grid='):], 3, str(tmp_path))
  assert single.points[0].name == plan.points[1].name


def _default_python(script):
  (line,) = [l for l in open(script).read().splitlines() if l.startswith('PYTHON=')]
  match = re.fullmatch(r'PYTHON=\$\{PYTHON:-(.+)\}', line)
  assert match, line
  (path,) = shlex.split(match.group(1))
  return path


def test_slurm_script_names_the_interpreter_that_wrote_it(tmp_path):
  plan = sweep.make_sweep(default.get_config(), 'ep.beta=[0.5]', 1, str(tmp_path / 'a'))
  path, _ = sweep.write_slurm(plan, QUICKSTART, {})
  python = _default_python(path)
  assert python == sys.executable and os.path.isfile(python) and os.access(python, os.X_OK)
  check = subprocess.run([python, '-c', 'import ep_jax, experiments'], cwd=REPO, env=_env(),
                         capture_output=True, timeout=120)
  assert check.returncode == 0, check.stderr
  # The default runs when the environment has no PYTHON (a stub here, in a path with a space).
  stub_dir = tmp_path / 'my env'
  stub_dir.mkdir()
  plan = sweep.make_sweep(default.get_config(), 'ep.beta=[0.5]', 1, str(tmp_path / 'b'))
  path, _ = sweep.write_slurm(plan, QUICKSTART, {}, python=_stub_python(stub_dir))
  assert _default_python(path) == str(stub_dir / 'stub_python')
  (argv,) = _run_task(path, 0, tmp_path, python_env=False)
  assert argv[:2] == ['-m', 'experiments.train']
  # A missing interpreter stops the task at once, naming it.
  plan = sweep.make_sweep(default.get_config(), 'ep.beta=[0.5]', 1, str(tmp_path / 'c'))
  path, _ = sweep.write_slurm(plan, QUICKSTART, {}, python=str(tmp_path / 'gone' / 'python'))
  env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
  out = subprocess.run(['bash', path], capture_output=True, text=True, timeout=60,
                       env=dict(env, SLURM_ARRAY_TASK_ID='0'))
  assert out.returncode == 1 and out.stdout == ''
  assert f'error: no Python interpreter {tmp_path}/gone/python' in out.stderr


def test_diverged_marker_round_trip(tmp_path):
  """`mark_diverged` writes the message that `diverged_message` (the ablation's report) reads."""
  run_dir = str(tmp_path / 'run')
  assert sweep.diverged_message(run_dir) is None and not sweep.is_diverged(run_dir)
  sweep.mark_diverged(run_dir, 'the free phase did not converge at epoch 3')
  assert sweep.is_diverged(run_dir)
  assert sweep.diverged_message(run_dir) == 'the free phase did not converge at epoch 3'
  with open(os.path.join(run_dir, sweep.DIVERGED_FILE), 'w') as f:
    f.write('{not json')
  assert sweep.diverged_message(run_dir) == 'diverged (unreadable diverged.json)'
