"""Diagnostics plots, gradient alignment (GDU) and the ablation driver, end to end but small."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax import gdu, network
from ep_jax.app import build, data, train
from experiments.configs import ablation_deep, ablation_digits, quickstart
from experiments import ablation, plots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_run(workdir, num_layers, epochs, layout=None, gap_epoch=None, old_keys=False):
  """A fake run's records; `old_keys`: as older runs logged them (other definitions)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for e in range(1, epochs + 1):
      layer = [0.5 / (l + 1) * (1 - 0.1 * e) for l in range(num_layers)]
      record = {'epoch': e, 'train_loss': 2.0 / e, 'test_loss': 2.1 / e,
                'train_accuracy': 0.1 * e, 'test_accuracy': 0.09 * e,
                'free_steps_mean': 30.0, 'free_residual_mean': 10.0 ** -e,
                'layer_mean_abs_state': layer}
      if old_keys:
        record.update(layer_mean_abs_param=layer, layer_nudge_norm=[v * 1e-3 for v in layer],
                      layer_saturated_frac=[0.2] * num_layers,
                      layer_input_dependence=[1.5] * num_layers)
      else:
        record.update(layer_mean_abs_theta=layer, layer_nudge=[v * 1e-2 for v in layer],
                      layer_nudge_output=[v * 5e-3 for v in layer],
                      layer_nudge_signal=[v * 6e-3 for v in layer],
                      layer_zero_frac=[0.2] * num_layers, layer_one_frac=[0.05] * num_layers,
                      layer_input_share=[0.6] * num_layers,
                      layer_nudged_residual=[1e-6] * num_layers)
      if e == gap_epoch:  # NaN written as null, a missing entry and a missing key
        record['layer_mean_abs_state'] = [None] + layer[1:]
        record['free_residual_mean'] = None
        record.pop('layer_nudge', None)
      f.write(json.dumps(record) + '\n')
  if layout:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump({'model': {'layout': layout, 'dense': [], 'readout': 'softmax'}}, f)


@pytest.mark.slow
def test_plots_overlay_runs_with_gaps_and_different_depths(tmp_path):
  a, b = str(tmp_path / 'runs' / 'deep'), str(tmp_path / 'runs' / 'shallow')
  _write_run(a, 4, 4, layout='4,4,M,8,8,M', gap_epoch=2)
  _write_run(b, 2, 3, old_keys=True)  # an older run: its keys are drawn under their titles
  xs, ys = plots.layer_series(plots.load_runs([a])[0].records, 'layer_mean_abs_state')
  assert xs.tolist() == [1, 2, 3, 4] and ys.shape == (4, 4) and math.isnan(ys[1, 0])
  runs = plots.load_runs([a, b])
  assert [r.label for r in runs] == ['deep', 'shallow']
  assert runs[0].layer_names == ('conv1', 'conv2', 'conv3', 'conv4')
  out = str(tmp_path / 'out')
  paths = plots.plot_runs([a, b], out)
  names = sorted(os.path.basename(p) for p in paths)
  for key in (plots.LAYER_KEYS + plots.SCALAR_KEYS + plots.LEGACY_LAYER_KEYS
              + ('layer_nudge_output', 'layer_nudge_signal', 'accuracy')):
    assert f'{key}.png' in names
  for p in paths:
    with open(p, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # The command line: repeated --workdir, output into the first by default.
  proc = subprocess.run([sys.executable, '-m', 'experiments.plots', f'--workdir={a}',
                         f'--workdir={b}'], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert os.path.isfile(os.path.join(a, 'layer_nudge.png'))


def test_ablation_report_tables_of_new_and_older_runs(tmp_path):
  """ablation.md's per-layer tables use the current definitions; an older run's keys get
  their own, labelled tables."""
  workdir = tmp_path / 'ablation'
  _write_run(str(workdir / 'ep'), 2, 2)
  _write_run(str(workdir / 'ep_kd'), 2, 2, old_keys=True)
  report = open(ablation.write_report(_tiny_ablation_config('4,M'), str(workdir),
                                      print_fn=lambda _: None)).read()
  nudge = report.split('### Nudge per unit ‖ds_l/dβ‖')[1].split('###')[0]
  assert '| ep | 4.000e-03 | 2.000e-03 |' in nudge and '| ep_kd |' not in nudge
  older = report.split('### Older runs: ‖s^β − s^0‖ per example')[1].split('###')[0]
  assert '| ep_kd | 4.000e-04 |' in older and '| ep |' not in older
  assert '### Fraction of units at 1, last epoch' in report
  assert '### Older runs: std of s_l across inputs / mean |s_l|' in report


def test_gdu_helpers():
  spec = network.make_spec('3,M,4,A', input_shape=(8, 8, 1), num_classes=3, dense=(5,))
  reason = gdu.holomorphic_unsupported(spec)
  assert reason == ("holomorphic EP needs a holomorphic activation (['smooth_sigmoid']), not "
                    "'hard_sigmoid' and average pooling ('A'), not max pooling ('M') as in "
                    "layout '3,M,4,A'"), reason
  twin = gdu.smooth_twin(spec)
  assert gdu.holomorphic_unsupported(twin) is None
  assert twin.state_shapes == spec.state_shapes and twin.layout == '3,A,4,A'
  params = network.init_params(spec, jax.random.PRNGKey(0))
  result = gdu.compare(params, jax.tree_util.tree_map(lambda p: 2 * p, params), spec)
  assert list(result) == ['conv1', 'conv2', 'dense1', 'readout', 'all']
  for a in result.values():
    assert a['cos'] == pytest.approx(1.0) and a['rel_err'] == pytest.approx(0.5)
    assert a['ref_norm'] == pytest.approx(2 * a['norm'])


@pytest.mark.slow
def test_gdu_symmetric_aligns_with_implicit_and_writes_reports(tmp_path):
  from experiments import gdu as gdu_cli
  config = quickstart.get_config()
  config.model.layout = '3,M,4,M'
  config.model.init_scale = 2.0
  out = str(tmp_path / 'gdu')
  report = gdu_cli.run(config, out, betas=[1e-3, 0.1], batch_size=4,
                       estimator_names=('symmetric', 'holomorphic'), print_fn=lambda _: None)
  for name in ('gdu.json', 'gdu.md', 'gdu.png'):
    assert os.path.getsize(os.path.join(out, name)) > 0
  with open(os.path.join(out, 'gdu.json')) as f:
    saved = json.load(f)
  assert set(saved['runs']) == {'no_signals', 'with_signals'}
  assert 'LES' in saved['runs']['with_signals']['description']
  for run in report['runs'].values():
    ref = run['references']
    assert ref['converged'] and ref['free_residual'] <= 1e-10
    assert ref['bptt_vs_implicit']['all']['rel_err'] < 1e-6
    assert run['groups'][:3] == ['conv1', 'conv2', 'readout']
    norms = ref['implicit_norms']
    assert set(norms) == set(run['groups']) and all(v > 0 for v in norms.values())
    # The groups' norms make up the whole gradient's.
    np.testing.assert_allclose(
        sum(norms[g] ** 2 for g in run['groups'] if g != 'all'), norms['all'] ** 2, rtol=1e-6)
    assert 'holomorphic EP needs' in run['estimators']['holomorphic']['skipped']
    small = run['estimators']['symmetric']['results'][0]
    assert small['beta'] == 1e-3
    for ref_name in ('implicit', 'bptt'):
      assert min(a['cos'] for a in small[ref_name].values()) > 0.99
    large = run['estimators']['symmetric']['results'][1]
    assert small['implicit']['all']['rel_err'] < large['implicit']['all']['rel_err']
  md = open(os.path.join(out, 'gdu.md')).read()
  assert '### symmetric vs implicit' in md and '| conv1 |' in md
  assert 'Implicit gradient norm per group: conv1 ' in md
  with pytest.raises(ValueError, match='BPTT is a reference here'):
    gdu.gdu_sweep(None, {}, None, {}, estimator_names=('bptt',))


@pytest.mark.parametrize('mod', [ablation_digits, ablation_deep])
def test_ablation_runs_differ_only_in_their_signals_and_build_deep_networks(mod):
  """Every EP run of an ablation builds an 8-conv network whose long links are valid for its
  geometry, with one rate per synapse group, and differs from the shared config only in the
  signals' switches (and the teacher it distils from): the comparison is of the signals."""
  config = mod.get_config()
  shape = (8, 8, 1) if config.data.dataset == 'digits' else (32, 32, 3)
  info = data.DatasetInfo('d', shape, 10, 1, 1, (0.0,) * shape[2], (1.0,) * shape[2])
  switches = {'signals.les.enabled', 'signals.kd.enabled', 'signals.kd.layerwise',
              'signals.kd.output', 'signals.kd.teacher_workdir'}
  base = train._flatten(config.to_dict())
  for name, (les, kd_layers, kd_output, _) in ablation.VARIANTS.items():
    c = ablation.variant_config(config, name, '/w')
    spec = build.build_spec(c, info)
    assert spec.num_conv == 8 and len(spec.skips) == len(config.model.skips) == 3
    assert len(network.synapse_names(spec)) == len(c.optim.learning_rates)
    flat = train._flatten(c.to_dict())
    assert {k for k in flat if flat[k] != base[k]} <= switches, name
    s = c.signals
    assert (s.les.enabled, s.kd.enabled and s.kd.layerwise, s.kd.enabled and s.kd.output) == (
        les, kd_layers, kd_output)
    assert s.kd.teacher_workdir == ('/w/teacher' if kd_layers or kd_output else '')


def _tiny_ablation_config(layout):
  """The digits twin with tiny subsets, one epoch and (for compile time) a short `layout`; the
  full 8-layer twin runs the same code (python -m experiments.ablation, ~1.5 min)."""
  config = ablation_digits.get_config()
  config.model.layout = layout
  config.model.skips = ()  # the long links join layers a short layout does not have
  config.optim.learning_rates = (0.1,)
  config.data.train_subset = 64
  config.data.test_subset = 32
  config.train.epochs = 1
  config.train.batch_size = 32
  config.train.eval_batch_size = 32
  config.ep.free_steps = 8
  config.ep.nudged_steps = 4
  config.teacher.epochs = 1
  return config


@pytest.mark.slow
def test_ablation_end_to_end_and_resume(tmp_path):
  config = _tiny_ablation_config('4,M')
  workdir = str(tmp_path / 'ablation')
  lines = []
  path = ablation.run_all(config, workdir, print_fn=lines.append)
  for name in ablation.RUNS:
    assert os.path.isdir(os.path.join(workdir, 'teacher' if name == 'bp' else name))
  with open(os.path.join(workdir, 'ep_les_kd', 'config.json')) as f:
    saved = json.load(f)
  assert saved['signals']['les']['enabled'] and saved['signals']['kd']['enabled']
  assert saved['signals']['kd']['teacher_workdir'] == os.path.join(workdir, 'teacher')
  report = open(path).read()
  for name in ablation.RUNS:
    assert f'| {name} |' in report
  assert 'not run' not in report and '### Mean |s_l| at the free fixed point, last epoch' in report
  assert os.path.isfile(os.path.join(workdir, 'layer_mean_abs_state.png'))
  assert os.path.isfile(os.path.join(workdir, 'accuracy.png'))
  summary = json.load(open(os.path.join(workdir, 'ablation.json')))['runs']
  assert sorted(summary) == sorted(ablation.RUNS)
  with open(os.path.join(workdir, 'ep_kd_output', 'config.json')) as f:
    saved = json.load(f)['signals']['kd']
  assert saved['enabled'] and saved['output'] and not saved['layerwise']
  for name, run in summary.items():
    assert run['status'] == 'finished' and run['epochs_done'] == 1, (name, run)
    assert run['wall_s'] > 0
  bp_history = json.load(open(os.path.join(workdir, 'teacher', 'teacher.json')))['history']
  assert summary['bp']['final_test_accuracy'] == bp_history[-1]['test_accuracy']
  ep_records = [json.loads(l) for l in open(os.path.join(workdir, 'ep', 'metrics.jsonl'))]
  assert summary['ep']['final_test_accuracy'] == ep_records[-1]['test_accuracy']
  # The nudge's split is logged for runs with signals (once per epoch), not for plain EP.
  both = [json.loads(l) for l in open(os.path.join(workdir, 'ep_les_kd', 'metrics.jsonl'))]
  assert 'layer_nudge_signal' in both[-1] and 'layer_nudge_signal' not in ep_records[-1]
  assert '### Nudge per unit the layer-wise signals add' in report
  assert os.path.isfile(os.path.join(workdir, 'ep', 'layers.png'))
  # Running again trains nothing and rewrites the report.
  lines.clear()
  ablation.run_all(config, workdir, print_fn=lines.append)
  assert sum('done, skipping' in l for l in lines) == 7, lines


def _tiny_teacher(spec):
  twin = network.make_spec(spec.layout, input_shape=spec.input_shape, dense=spec.dense,
                           num_classes=spec.num_classes, activation=spec.activation)
  return dict(teacher_params=network.init_params(twin, jax.random.PRNGKey(1)), teacher_spec=twin)


def test_ablation_runs_build_their_signal_settings():
  """Each run switches LES, layer-wise KD and output KD as its name says; the rest of the
  signals config (layers, κ, α) is shared."""
  config = ablation_digits.get_config()
  spec = network.make_spec('4,M,4,M', input_shape=(8, 8, 1), num_classes=10)
  teacher_kw = _tiny_teacher(spec)
  want = {'ep': (False, False, False), 'ep_kd_output': (False, False, True),
          'ep_kd_layers': (False, True, False), 'ep_kd': (False, True, True),
          'ep_les': (True, False, False), 'ep_les_kd': (True, True, True)}
  assert ablation.RUNS == ('bp',) + tuple(want)
  for name, (les, layers, output) in want.items():
    c = ablation.variant_config(config, name, '/w')
    kd = layers or output
    assert (c.signals.les.enabled, c.signals.kd.enabled) == (les, kd), name
    assert c.signals.kd.teacher_workdir == ('/w/teacher' if kd else ''), name
    setup = build.build_signals(c.signals, spec, num_epochs=3, rng=jax.random.PRNGKey(0),
                                **(teacher_kw if kd else {}))
    nudging = setup.nudging
    if not (les or kd):
      assert nudging is None
      continue
    assert (nudging.les is not None) == les and (nudging.kd is not None) == kd, name
    kappa0 = np.asarray(nudging.kappa_fn(0))
    assert bool(np.any(kappa0 > 0)) == (les or layers), name  # a layer-wise signal's weight
    if kd:
      assert (len(nudging.kd.layers) > 0) == layers and nudging.kd.output == output, name
      assert float(nudging.alpha_fn(0)) == config.signals.kd.alpha > 0
  assert config.signals.kd.output and not config.signals.kd.enabled  # left as it was
  assert ablation.resolve_runs(['teacher', 'ep', 'bp']) == ('bp', 'ep')
  with pytest.raises(ValueError, match='unknown runs'):
    ablation.resolve_runs(['ep_foo'])
  assert ablation.parse_seeds('0, 1,2') == (0, 1, 2) and ablation.parse_seeds('') is None
  with pytest.raises(ValueError, match='distinct'):
    ablation.parse_seeds('1,1')


def _fake_teacher_json(teacher_dir, accs, seconds=10.0):
  os.makedirs(teacher_dir, exist_ok=True)
  history = [{'epoch': e + 1, 'test_accuracy': a, 'train_loss': 1.0} for e, a in enumerate(accs)]
  with open(os.path.join(teacher_dir, 'teacher.json'), 'w') as f:
    json.dump({'test_accuracy': accs[-1], 'epochs': len(accs), 'seconds': seconds,
               'history': history}, f)


def _fake_metrics(run_dir, accs):
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
    for e, a in enumerate(accs):
      f.write(json.dumps({'epoch': e + 1, 'test_accuracy': a, 'epoch_time_s': 2.0,
                          'train_loss': 0.5}) + '\n')


def test_ablation_report_aggregates_seeds(tmp_path, monkeypatch):
  """Mean and sample std over seeds of the final and best test accuracy, per seed records,
  '1 seed' for a run that only one seed has."""
  monkeypatch.setattr(plots, 'plot_runs', lambda *a, **k: [])
  config = ablation_digits.get_config()
  config.train.epochs = 2
  workdir = str(tmp_path)
  runs = {0: {'ep': [0.4, 0.5], 'ep_kd': [0.8, 0.7], 'ep_kd_output': [0.6, 0.65]},
          1: {'ep': [0.6, 0.7], 'ep_kd': [0.9, 0.9]}}
  for seed, seed_runs in runs.items():
    for name, accs in seed_runs.items():
      _fake_metrics(os.path.join(workdir, f'seed={seed}', name), accs)
    _fake_teacher_json(os.path.join(workdir, f'seed={seed}', 'teacher'), [0.9, 0.95 + seed / 100])
  path = ablation.write_report(config, workdir, seeds=(0, 1))
  saved = json.load(open(os.path.join(workdir, 'ablation.json')))
  assert saved['seeds'] == [0, 1]
  summary = saved['runs']
  ep = summary['ep']
  assert ep['final_test_accuracy'] == pytest.approx(0.6)  # finals 0.5, 0.7
  assert ep['final_test_accuracy_std'] == pytest.approx(math.sqrt(0.02))  # sample std
  assert ep['best_test_accuracy'] == pytest.approx(0.6) and ep['num_seeds'] == 2
  kd = summary['ep_kd']  # finals 0.7, 0.9; bests 0.8 (epoch 1), 0.9
  assert kd['final_test_accuracy'] == pytest.approx(0.8)
  assert kd['best_test_accuracy'] == pytest.approx(0.85)
  assert kd['best_test_accuracy_std'] == pytest.approx(math.sqrt(0.005))
  assert kd['per_seed']['0']['best_epoch'] == 1 and kd['per_seed']['1']['final_test_accuracy'] == 0.9
  assert kd['status'] == 'finished' and kd['epochs_done'] == 2 and kd['wall_s'] == 8.0
  one = summary['ep_kd_output']
  assert one['num_seeds'] == 1 and one['final_test_accuracy'] == 0.65
  assert one['final_test_accuracy_std'] is None and list(one['per_seed']) == ['0']
  assert summary['bp']['final_test_accuracy'] == pytest.approx(0.955)
  assert 'ep_les' not in summary
  report = open(path).read()
  assert '| ep | standard EP | 60.00% ± 14.14% (2 seeds) | 60.00% ± 14.14% (2 seeds) |' in report
  assert '| ep_kd_output | EP + output KD only | 65.00% (1 seed) | 65.00% (1 seed) |' in report
  assert 's0: 70.00% / 80.00% (1); s1: 90.00% / 90.00% (1)' in report
  assert '| ep_les | EP + LES | not run |' in report and '| bp | BP twin' in report


def test_ablation_seeds_each_train_into_their_folder_with_their_teacher(tmp_path,
                                                                        monkeypatch):
  """--seeds: every run per seed into seed=S/, KD from that seed's BP twin (trained with the
  seed); a second call trains nothing."""
  monkeypatch.setattr(plots, 'plot_runs', lambda *a, **k: [])
  config = ablation_digits.get_config()
  config.model.init = 'pytorch'
  config.train.epochs = 1
  trained = []

  def fake_teacher(c, teacher_dir, print_fn=print):
    trained.append(('bp', c.seed, teacher_dir))
    _fake_teacher_json(teacher_dir, [0.9] * int(c.teacher.epochs))

  def fake_train(c, run_dir, print_fn=print):
    trained.append((os.path.basename(run_dir), c.seed, c.signals.kd.teacher_workdir))
    _fake_metrics(run_dir, [0.5 + c.seed / 10])

  monkeypatch.setattr(ablation, 'train_teacher', fake_teacher)
  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  workdir = str(tmp_path)
  ablation.run_all(config, workdir, runs=('ep', 'ep_kd_output'), seeds=(3, 4),
                   print_fn=lambda _: None)
  for seed in (3, 4):
    root = os.path.join(workdir, f'seed={seed}')
    assert ('bp', seed, os.path.join(root, 'teacher')) in trained
    assert ('ep', seed, '') in trained
    assert ('ep_kd_output', seed, os.path.join(root, 'teacher')) in trained
  assert len(trained) == 6 and config.seed == 0
  summary = json.load(open(os.path.join(workdir, 'ablation.json')))['runs']
  assert summary['ep']['final_test_accuracy'] == pytest.approx(0.85)  # 0.8, 0.9
  assert set(summary['ep']['per_seed']) == {'3', '4'}
  trained.clear()
  ablation.run_all(config, workdir, runs=('ep', 'ep_kd_output'), seeds=(3, 4),
                   print_fn=lambda _: None)
  assert trained == []


def test_ablation_extra_run_specs():
  name, variant, overrides = ablation.parse_extra(
      "ep_kd_skip=ep_kd; model.skips=((1,3),(3,5)) ;optim.optimizer=adam")
  assert (name, variant) == ('ep_kd_skip', 'ep_kd')
  assert overrides == {'model.skips': ((1, 3), (3, 5)), 'optim.optimizer': 'adam'}
  config = ablation_digits.get_config()
  links = config.model.skips
  c = ablation.extra_config(config, name, variant, overrides, '/w')
  assert c.model.skips == ((1, 3), (3, 5)) and c.optim.optimizer == 'adam'
  assert c.signals.kd.enabled and c.signals.kd.teacher_workdir == '/w/teacher_ep_kd_skip'
  assert config.model.skips == links != c.model.skips  # the shared config is left as it was
  # Changes that leave the network and data alone keep the shared teacher.
  c = ablation.extra_config(config, 'kd_b1', 'ep_kd', {'ep.beta': 1.0}, '/w')
  assert c.ep.beta == 1.0 and c.signals.kd.teacher_workdir == '/w/teacher'
  for bad, match in [('ep=ep_kd', 'new name'), ('teacher=ep', 'new name'),
                     ('x=ep_foo', 'unknown variant'),
                     ('x=ep;model.nope=1', 'unknown config field'), ('x=ep;beta', 'FIELD=VALUE')]:
    with pytest.raises(ValueError, match=match):
      name, variant, overrides = ablation.parse_extra(bad)
      ablation.extra_config(config, name, variant, overrides, '/w')


@pytest.mark.slow
def test_ablation_extra_run_trains_with_its_own_teacher_and_is_reported(tmp_path):
  config = _tiny_ablation_config('4,4,M')
  config.model.init = 'pytorch'
  workdir = str(tmp_path / 'ablation')
  lines = []
  path = ablation.run_all(config, workdir, runs=('ep',), print_fn=lines.append,
                          extras=('kd_wide=ep_kd;model.layout=6,4,M',))
  with open(os.path.join(workdir, 'kd_wide', 'config.json')) as f:
    saved = json.load(f)
  assert saved['model']['layout'] == '6,4,M'
  assert saved['signals']['kd']['teacher_workdir'] == os.path.join(workdir, 'teacher_kd_wide')
  teacher = json.load(open(os.path.join(workdir, 'teacher_kd_wide', 'teacher.json')))
  assert teacher['spec']['layout'] == '6,4,M'
  summary = json.load(open(os.path.join(workdir, 'ablation.json')))['runs']
  assert summary['kd_wide']['status'] == 'finished' and summary['kd_wide']['epochs_done'] == 1
  records = [json.loads(l) for l in open(os.path.join(workdir, 'kd_wide', 'metrics.jsonl'))]
  assert summary['kd_wide']['final_test_accuracy'] == records[-1]['test_accuracy']
  assert summary['bp_kd_wide']['final_test_accuracy'] == teacher['test_accuracy']
  assert '| kd_wide | EP + layer-wise and output KD' in open(path).read()
  # Running again (extras remembered in extra_runs.json) trains nothing.
  lines.clear()
  ablation.run_all(config, workdir, runs=('ep',), print_fn=lines.append,
                   extras=('kd_wide=ep_kd;model.layout=6,4,M',))
  assert sum('done, skipping' in l for l in lines) == 2, lines


@pytest.mark.slow
def test_ablation_reports_a_stopped_run_and_goes_on(tmp_path, monkeypatch):
  """A run stopped by NonConvergenceError is marked, reported, not retried; others go on."""
  config = ablation_digits.get_config()
  config.train.epochs = 2
  trained = []

  def fake_train(c, run_dir, print_fn=print):
    name = os.path.basename(run_dir)
    trained.append(name)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps({'epoch': 1, 'test_accuracy': 0.5, 'epoch_time_s': 1.0}) + '\n')
      if name == 'ep_les':
        raise train.NonConvergenceError('the free phase did not converge at epoch 2: boom')
      f.write(json.dumps({'epoch': 2, 'test_accuracy': 0.6, 'epoch_time_s': 1.0}) + '\n')
    return {}

  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  workdir = str(tmp_path)
  lines = []
  path = ablation.run_all(config, workdir, runs=('ep', 'ep_les'), print_fn=lines.append)
  assert trained == ['ep', 'ep_les']
  report = open(path).read()
  assert '**stopped** after epoch 1' in report and 'did not converge at epoch 2: boom' in report
  assert '| ep | standard EP | 60.00% (1 seed) |' in report
  assert report.count('| finished |') == 1
  summary = json.load(open(os.path.join(workdir, 'ablation.json')))['runs']
  assert summary['ep_les']['status'] == 'stopped' and summary['ep_les']['epochs_done'] == 1
  assert summary['ep']['status'] == 'finished' and summary['ep']['best_test_accuracy'] == 0.6
  trained.clear()
  ablation.run_all(config, workdir, runs=('ep', 'ep_les'), print_fn=lines.append)
  assert trained == []  # neither the finished nor the stopped run is retried


@pytest.mark.slow
def test_gdu_at_a_training_checkpoint(tmp_path):
  """--params_from: the alignment at a run's checkpoint (its config and trained parameters)."""
  from experiments import gdu as gdu_cli
  from test_train import tiny_config
  run_dir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(model__layout='3,M,4,M'), run_dir,
                           print_fn=lambda _: None)
  out = str(tmp_path / 'gdu')
  report = gdu_cli.run(None, out, betas=[1e-3], batch_size=4, estimator_names=('symmetric',),
                       with_signals=False, params_from=run_dir, print_fn=lambda _: None)
  assert report['meta']['parameters'].startswith('checkpoint 1 (end of epoch 1) of ')
  assert report['meta']['config layout'] == '3,M,4,M'
  small = report['runs']['no_signals']['estimators']['symmetric']['results'][0]
  assert small['implicit']['all']['cos'] > 0.999
  with pytest.raises(ValueError, match='--network=config'):
    gdu_cli.run(None, out, betas=[1e-3], params_from=run_dir, network_mode='smooth',
                print_fn=lambda _: None)
  with pytest.raises(FileNotFoundError, match='no config.json'):
    gdu_cli.run(None, out, betas=[1e-3], params_from=str(tmp_path), print_fn=lambda _: None)


@pytest.mark.slow
def test_gdu_relaxes_with_the_update_schedule_it_is_given():
  """A strongly coupled net oscillates under sync updates and settles under async ones: the
  analysis of an async-trained network must use async relaxations."""
  spec = network.make_spec('8,8,8', input_shape=(8, 8, 2), num_classes=4)
  params = jax.tree.map(lambda p: 6.0 * p, network.init_params(spec, jax.random.PRNGKey(0)))
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 2))
  targets = {'label': jnp.arange(3) % 4}
  common = dict(betas=[0.01], estimator_names=['symmetric'], max_steps=3000, tol=1e-10,
                bptt_steps=50)
  sync = gdu.gdu_sweep(spec, params, x, targets, mode='sync', **common)
  asyn = gdu.gdu_sweep(spec, params, x, targets, mode='async', **common)
  assert not sync['references']['converged']
  assert asyn['references']['converged'], asyn['references']
  assert asyn['estimators']['symmetric']['results'][0]['implicit']['all']['cos'] > 0.999
