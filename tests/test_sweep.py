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
  assert [float(table[0][k]) for k in ('final_test_acc_mean', 'best_test_acc_mean',
                                        'epoch_time_s_mean')] == [0.25, 0.5, 2.0]
  records = read_metrics(plan.run_dir(interrupted, 0))
  row = table[1]
  assert float(row['final_test_acc_mean']) == pytest.approx(records[-1]['test_accuracy'])
  assert float(row['best_test_acc_mean']) == pytest.approx(
      max(r['test_accuracy'] for r in records))
  assert float(row['final_test_acc_std']) == 0.0 and row['finished'] == '1'
  assert (table[2]['finished'], table[2]['diverged']) == ('0', '1')
  assert np.isnan(float(table[2]['final_test_acc_mean']))
  assert rows[1]['final_test_acc_mean'] == pytest.approx(float(row['final_test_acc_mean']))
  md = open(tmp_path / 'sweep.md').read()
  assert '| optim.learning_rates | seeds done | diverged | final test acc' in md
  assert '| `(0.1,)` | 1/1 | 0 | 25.00 ± 0.00 | 50.00 ± 0.00 | 2.00 ± 0.00 |' in md
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
  assert row['final_test_acc_mean'] == pytest.approx(0.6)
  assert row['final_test_acc_std'] == pytest.approx(0.1)  # ddof=1
  assert row['finished'] == 3


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
      for key in sweep.CORE_FIELDS + ('layer_mean_abs_state', 'layer_nudge_norm'):
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


def _run_task(script, task, tmp_path):
  """Runs array task `task` of `script` with a stub $PYTHON; returns each call's argv."""
  stub = tmp_path / 'stub_python'
  stub.write_text('#!/bin/bash\nprintf "%s\\n" "$@" "<END>"\n')
  stub.chmod(0o755)
  out = subprocess.run(['bash', script], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, SLURM_ARRAY_TASK_ID=str(task), PYTHON=str(stub)))
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
