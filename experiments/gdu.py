r"""Gradient alignment (the GDU property) of the EP estimators on one batch.

  python -m experiments.gdu --config=experiments/configs/ablation_digits.py --workdir=runs/gdu \
      [--betas=0.01,0.03,0.1,0.3,1.0] [--batch_size=8] [--network=config|smooth] \
      [--estimators=one_sided,symmetric,holomorphic] [--config.FIELD=VALUE ...] \
      [--params_from=RUN_DIR [--params_step=N]]

Builds the config's network (initial parameters of seed `config.seed`, as training starts;
with `--params_from`, the parameters of a training run's checkpoint instead, latest or
`--params_step`, and that run's `config.json` replaces `--config`, so the alignment can be
measured at any point of training), takes the first `--batch_size` training examples, and for each estimator and β compares the
EP estimate with the implicit (recurrent backprop) and BPTT gradients, per parameter group,
in float64 with relaxations to `--tol` (`ep_jax.gdu`). Two runs:

* `no_signals`: the plain output cost ℓ;
* `with_signals`: the augmented cost ℓ + Σ κ_l ℓ_l of the config's `signals` (κ at epoch 0).
  If the config enables no signal, LES with fixed random heads on every hidden layer is
  switched on (the other `signals.les.*` fields as configured); KD needs
  `signals.kd.teacher_workdir` and is dropped (with a note) without one.
  `--nosignals` skips this run.

Holomorphic EP needs `smooth_sigmoid` and average pooling: on a hard-sigmoid / max-pool
network it is recorded as skipped; `--network=smooth` runs every estimator on the same network
with those two changes instead.

Writes `gdu.json` (everything), `gdu.md` (tables) and `gdu.png` (relative error vs β vs the
implicit gradient, log-log, one subplot per group; `gdu_bptt.png` the same vs BPTT) into
`--workdir`.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import time
from typing import Any, NamedTuple

from absl import app, flags, logging

from experiments import cli

def signals_config_for_gdu(config) -> tuple[object, str]:
  """The `signals` config of the with-signals run and a sentence saying what it is."""
  sig = copy.deepcopy(config.signals)
  notes = []
  if sig.kd.enabled and not sig.kd.teacher_workdir:
    sig.kd.enabled = False
    notes.append('KD is enabled in the config but has no signals.kd.teacher_workdir: KD '
                 'dropped')
  if not sig.les.enabled and not sig.kd.enabled:
    sig.les.enabled = True
    sig.les.head = 'fixed'
    notes.append('the config enables no learning signal: LES with fixed random heads switched '
                 'on for this check')
  parts = []
  if sig.les.enabled:
    parts.append(f'LES ({sig.les.loss}, {sig.les.head} heads, {sig.les.pool}, layers '
                 f'{tuple(sig.les.layers) or "all hidden"})')
  if sig.kd.enabled:
    parts.append(f'KD (teacher {sig.kd.teacher_workdir}, layers '
                 f'{tuple(sig.kd.layers) or "all hidden"}, output={sig.kd.output})')
  kappa = sig.kappa
  desc = (f"Augmented cost ℓ + Σ κ_l ℓ_l with {' + '.join(parts)}; κ at epoch 0 "
          f'(schedule {kappa.schedule}, init {kappa.init}).')
  if notes:
    desc += ' Note: ' + '; '.join(notes) + '.'
  return sig, desc


def _fmt(value, spec: str = '.2e') -> str:
  return 'n/a' if value is None else format(value, spec)


def markdown(report: dict) -> str:
  """A markdown rendering of `{'meta': ..., 'runs': {run: gdu.gdu_sweep output}}`."""
  from ep_jax.gdu import ALL  # pylint: disable=g-import-not-at-top

  lines = ['# Gradient alignment (GDU): EP estimates vs implicit and BPTT gradients', '']
  meta = report.get('meta', {})
  for key, value in meta.items():
    lines.append(f'- **{key}**: {value}')
  lines.append('')
  lines.append('Cells: relative error ‖g_EP − g_ref‖/‖g_ref‖, with the cosine similarity in '
               'parentheses; one row per parameter group (`all`: every parameter).')
  lines.append('')
  for run_name, run in report['runs'].items():
    lines.append(f'## {run_name}')
    lines.append('')
    if run.get('description'):
      lines.append(run['description'])
      lines.append('')
    ref = run['references']
    lines.append(f"References: free phase {ref['free_steps']} steps, residual "
                 f"{ref['free_residual']:.1e}; implicit adjoint {ref['implicit_steps']} steps, "
                 f"residual {ref['implicit_residual']:.1e}; BPTT {ref['bptt_steps']} steps, "
                 f"BPTT vs implicit: rel err {_fmt(ref['bptt_vs_implicit'][ALL]['rel_err'])}, "
                 f"cos {_fmt(ref['bptt_vs_implicit'][ALL]['cos'], '.8f')}.")
    if ref.get('implicit_norms'):
      lines.append('Implicit gradient norm per group: ' + ', '.join(
          f'{g} {_fmt(v)}' for g, v in ref['implicit_norms'].items()) + '.')
    lines.append('')
    groups = run['groups']
    for name, entry in run['estimators'].items():
      if entry['skipped']:
        lines.append(f'### {name}: skipped')
        lines.append('')
        lines.append(entry['skipped'])
        lines.append('')
        continue
      for ref_name in ('implicit', 'bptt'):
        lines.append(f'### {name} vs {ref_name}')
        lines.append('')
        betas = [r['beta'] for r in entry['results']]
        lines.append('| group | ' + ' | '.join(f'β={b:g}' for b in betas) + ' |')
        lines.append('|---|' + '---|' * len(betas))
        for g in groups:
          cells = []
          for r in entry['results']:
            a = r[ref_name][g]
            cells.append(f"{_fmt(a['rel_err'])} ({_fmt(a['cos'], '.5f')})")
          lines.append(f'| {g} | ' + ' | '.join(cells) + ' |')
        lines.append('')
  return '\n'.join(lines) + '\n'


def plot(report: dict, path: str, *, reference: str = 'implicit') -> None:
  """Relative error vs β (log-log), one subplot per group; a line per estimator and run."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  runs = report['runs']
  groups: list[str] = []
  for run in runs.values():
    groups += [g for g in run['groups'] if g not in groups]
  cols = min(4, len(groups))
  rows = -(-len(groups) // cols)
  fig = Figure(figsize=(4 * cols, 3.2 * rows), dpi=100)
  FigureCanvasAgg(fig)
  styles = ['-', '--', ':', '-.']
  colors = {'one_sided': 'tab:red', 'random_sign': 'tab:orange', 'symmetric': 'tab:blue',
            'holomorphic': 'tab:green'}
  for i, g in enumerate(groups):
    ax = fig.add_subplot(rows, cols, i + 1)
    drawn = False
    for r, (run_name, run) in enumerate(runs.items()):
      for name, entry in run['estimators'].items():
        if entry['skipped']:
          continue
        pts = [(row['beta'], row[reference].get(g, {}).get('rel_err'))
               for row in entry['results']]
        pts = [(b, e) for b, e in pts if e is not None and e > 0]
        if not pts:
          continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[r % len(styles)],
                marker='o', markersize=3, color=colors.get(name), label=f'{name} ({run_name})')
        drawn = True
    if drawn:
      ax.set_xscale('log')
      ax.set_yscale('log')
    ax.set_title(g)
    ax.set_xlabel('β')
    ax.set_ylabel(f'rel. error vs {reference}')
    ax.grid(True, which='both', alpha=0.3)
    if i == 0 and drawn:
      ax.legend(fontsize=7)
  fig.suptitle(f'EP gradient error vs β (reference: {reference})')
  fig.tight_layout()
  fig.savefig(path, format='png')


def run(config, workdir: str, *, betas, batch_size: int = 8,
        estimator_names=('one_sided', 'symmetric', 'holomorphic'), network_mode: str = 'config',
        with_signals: bool = True, tol: float = 1e-12, max_steps: int = 20000,
        bptt_steps: int = 0, holo_points: int = 4, init_scale=None, params_from=None,
        params_step=None, print_fn=print) -> dict:
  """Computes the GDU report and writes gdu.json, gdu.md, gdu.png; returns the report.

  params_from: a training run's workdir: its config and the parameters of its checkpoint
  `params_step` (None: the latest) are used instead of `config` and the initialisation.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from ep_jax import gdu, network, signals  # pylint: disable=g-import-not-at-top
  from ep_jax.app import data  # pylint: disable=g-import-not-at-top
  from ep_jax.app import build, train as train_lib  # pylint: disable=g-import-not-at-top

  start = time.time()
  restore = source = None
  if params_from:
    config, restore = load_run_params(params_from, params_step)
  os.makedirs(workdir, exist_ok=True)
  train_split, _, info = build.load_data(config)
  if batch_size < 1 or batch_size > len(train_split):
    raise ValueError(f'batch_size must be in [1, {len(train_split)}], got {batch_size}')
  x = data.normalize(train_split.images[:batch_size], info)
  labels = np.asarray(train_split.labels[:batch_size])
  config_spec = build.build_spec(config, info)
  spec = gdu.smooth_twin(config_spec) if network_mode == 'smooth' else config_spec
  root = jax.random.PRNGKey(config.seed)
  init_key, _, signal_key = jax.random.split(root, 3)
  if restore is not None:
    params = None  # the checkpoint's, below
  elif init_scale is None:  # the config's init (model.init), as training starts
    params = train_lib.init_model_params(
        train_lib.calibrated_config(config, train_split, info), spec, init_key)
    init_desc = f"model.init={config.model.get('init', 'pytorch')}, scale {config.model.init_scale}"
  else:
    params = network.init_params(spec, init_key, scale=float(init_scale))
    init_desc = f'scale {float(init_scale)}'
  trained_heads = None
  if restore is not None:
    if network_mode == 'smooth':
      raise ValueError('--params_from needs --network=config (the trained network)')
    restored, source = restore(spec)
    restored = jax.tree_util.tree_map(np.asarray, restored)
    trained_heads = restored.pop('signals', None)
    params = restored
  meta = {'config layout': config_spec.layout, 'network': (
              f'{spec.layout} dense {spec.dense}, {spec.activation}, readout {spec.readout}' +
              (' (smooth twin of the config network: smooth_sigmoid, average pooling)'
               if network_mode == 'smooth' else '')),
          'data': f'{info.name}: first {batch_size} training examples',
          'parameters': (source if restore is not None
                         else f'initialisation (seed {config.seed}, {init_desc})'),
          'precision': f'float64, relaxations to residual {tol:g} (at most {max_steps} steps)',
          'betas': ', '.join(f'{float(b):g}' for b in betas),
          'holomorphic K': holo_points}
  print_fn(f'gdu: {meta["network"]}; {meta["data"]}; betas {meta["betas"]}')
  common = dict(betas=[float(b) for b in betas], estimator_names=tuple(estimator_names),
                holo_points=holo_points, max_steps=max_steps, tol=tol,
                bptt_steps=bptt_steps or None, log=print_fn,
                mode=config.ep.get('mode', 'sync'))
  batch = {'image': x, 'label': labels}
  runs = {}
  print_fn('run no_signals')
  runs['no_signals'] = gdu.gdu_sweep(spec, params, x, {'label': labels}, **common)
  runs['no_signals']['description'] = 'Plain output cost ℓ (standard EP).'
  if with_signals:
    sig_config, desc = signals_config_for_gdu(config)
    setup = build.build_signals(sig_config, spec, num_epochs=int(config.train.epochs),
                                rng=signal_key)
    heads = trained_heads if (trained_heads is not None and setup.trainable) else \
        setup.trainable
    p = dict(params, signals=heads) if heads else params
    targets = setup.nudging.targets(setup.frozen, p, batch, 0)
    print_fn(f'run with_signals: {desc}')
    runs['with_signals'] = gdu.gdu_sweep(spec, p, x, targets, cost_fn=setup.nudging.cost,
                                         **common)
    runs['with_signals']['description'] = desc
  meta['seconds'] = round(time.time() - start, 1)
  report = {'meta': meta, 'runs': runs}
  with open(os.path.join(workdir, 'gdu.json'), 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(workdir, 'gdu.md'), 'w', encoding='utf-8') as f:
    f.write(markdown(report))
  plot(report, os.path.join(workdir, 'gdu.png'), reference='implicit')
  plot(report, os.path.join(workdir, 'gdu_bptt.png'), reference='bptt')
  print_fn(f'wrote gdu.json, gdu.md, gdu.png, gdu_bptt.png to {workdir} '
           f'({time.time() - start:.1f}s)')
  return report


def load_run_params(run_dir: str, step=None, flag: str = '--params_from'):
  """`(config, restore)` of a training run: its `config.json` and `restore(spec)`, which
  returns `(params, description)` from checkpoint `step` (None: the latest); `params` includes
  trained signal heads under `'signals'`. Errors name `flag`, the caller's option."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from ep_jax.app import build, train as train_lib  # pylint: disable=g-import-not-at-top
  from ep_jax.app.checkpointing import Checkpointer  # pylint: disable=g-import-not-at-top

  path = os.path.join(run_dir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{flag}: {run_dir!r} has no config.json (not a workdir of '
                            'experiments.train)')
  with open(path, 'r', encoding='utf-8') as f:
    config = ml_collections.ConfigDict(json.load(f))
  kd = config.get('signals', {}).get('kd', {})
  if kd.get('enabled') and kd.get('train_teacher') and not kd.get('teacher_workdir'):
    # The run trained its own teacher into run_dir/teacher (`train.with_teacher`).
    config.signals.kd.teacher_workdir = os.path.join(run_dir, train_lib.TEACHER_DIR)

  def restore(spec):
    num_train = (len(build.load_data(config)[0]) if config.ep.get('warm_start', False)
                 else None)
    target = train_lib.build_run(train_lib.template_config(config), spec, 1,
                                 num_train=num_train).state
    with Checkpointer(os.path.join(run_dir, 'checkpoints')) as ckpt:
      chosen = ckpt.latest_step() if step is None else int(step)
      if chosen is None:
        raise FileNotFoundError(f'{flag}: no checkpoint in {run_dir}/checkpoints')
      state, extra = ckpt.restore(target, step=chosen)
    done = train_lib.epochs_done(extra)
    return dict(state.params), f'checkpoint {chosen} (end of epoch {done}) of {run_dir}'

  return config, restore


class RunBatch(NamedTuple):
  """A trained run's network and parameters with the first examples of one of its splits."""
  config: Any
  spec: Any
  params: dict  # without trained signal heads
  source: str  # which checkpoint
  images: Any  # `(B, H, W, C)` raw images (`data.normalize` with `info` for the network)
  labels: Any
  info: Any


def load_run_batch(run_dir: str, step=None, *, split: str, batch_size: int,
                   flag: str = '--run_dir') -> RunBatch:
  """The run's parameters (checkpoint `step`, None: the latest) and the first `batch_size`
  examples of `split` ('train', or 'test': its evaluation split, the validation examples of a
  run with `data.validation`). Errors name `flag`, `--split` and `--batch_size`."""
  from ep_jax.app import build  # pylint: disable=g-import-not-at-top

  if split not in ('train', 'test'):
    raise ValueError(f"--split must be 'train' or 'test', got {split!r}")
  config, restore = load_run_params(run_dir, step, flag=flag)
  train_split, test_split, info = build.load_data(config)
  examples = train_split if split == 'train' else test_split
  if not 1 <= batch_size <= len(examples):
    raise ValueError(f'--batch_size must be in [1, {len(examples)}], got {batch_size}')
  spec = build.build_spec(config, info)
  params, source = restore(spec)
  params.pop('signals', None)
  return RunBatch(config, spec, params, source, examples.images[:batch_size],
                  examples.labels[:batch_size], info)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  config_path = flags.FLAGS['config'].config_filename
  workdir = _WORKDIR.value or os.path.join(
      'runs', datetime.datetime.now().strftime('gdu-%Y%m%d-%H%M%S-') +
      os.path.splitext(os.path.basename(config_path.split(':')[0]))[0])
  try:
    betas = [float(b) for b in _BETAS.value]
  except ValueError as e:
    raise app.UsageError(f'--betas must be numbers: {e}') from None
  run(cli.config_value(_CONFIG), workdir, betas=betas, batch_size=_BATCH.value,
      estimator_names=tuple(_ESTIMATORS.value), network_mode=_NETWORK.value,
      with_signals=_SIGNALS.value, tol=_TOL.value, max_steps=_MAX_STEPS.value,
      bptt_steps=_BPTT_STEPS.value, holo_points=_HOLO.value, init_scale=_INIT_SCALE.value,
      params_from=_PARAMS_FROM.value, params_step=_PARAMS_STEP.value)


def define_flags() -> None:
  """Defines this script's flags (only when run as a script, so tests can import it)."""
  global _CONFIG, _WORKDIR, _BETAS, _BATCH, _ESTIMATORS, _NETWORK, _SIGNALS, _TOL
  global _MAX_STEPS, _BPTT_STEPS, _HOLO, _INIT_SCALE, _PARAMS_FROM, _PARAMS_STEP
  _CONFIG = cli.define_config_file(os.path.join(cli.CONFIG_DIR, 'quickstart.py'))
  _WORKDIR = flags.DEFINE_string('workdir', None,
                                 'Output folder (default: a new runs/gdu-<time>-<config>).')
  _BETAS = flags.DEFINE_list('betas', ['0.01', '0.03', '0.1', '0.3', '1.0'], 'Values of |β|.')
  _BATCH = flags.DEFINE_integer('batch_size', 8, 'Examples in the batch.')
  _ESTIMATORS = flags.DEFINE_list('estimators', ['one_sided', 'symmetric', 'holomorphic'],
                                  'EP estimators to compare.')
  _NETWORK = flags.DEFINE_enum(
      'network', 'config', ['config', 'smooth'],
      "'config': the config's network (holomorphic skipped unless it is smooth); 'smooth': the "
      'same layers with smooth_sigmoid and average pooling (every estimator runs).')
  _SIGNALS = flags.DEFINE_bool('signals', True, 'Also compute with learning signals.')
  _TOL = flags.DEFINE_float('tol', 1e-12, 'Residual tolerance of every relaxation.')
  _MAX_STEPS = flags.DEFINE_integer('max_steps', 20000, 'Step limit of every relaxation.')
  _BPTT_STEPS = flags.DEFINE_integer('bptt_steps', 0,
                                     'BPTT unrolled steps (0: the free phase\'s step count).')
  _HOLO = flags.DEFINE_integer('holo_points', 4, 'K of the holomorphic estimator.')
  _INIT_SCALE = flags.DEFINE_float('init_scale', None,
                                   'Parameter init scale (default: config.model.init_scale).')
  _PARAMS_FROM = flags.DEFINE_string(
      'params_from', None, "A training run's workdir: use its config and checkpoint parameters.")
  _PARAMS_STEP = flags.DEFINE_integer('params_step', None,
                                      'Checkpoint step of --params_from (default: latest).')


if __name__ == '__main__':
  cli.run(main, define_flags)
