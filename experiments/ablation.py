r"""Ablation of the layer-wise learning signals on one deep CRNN and data set.

  python -m experiments.ablation --config=experiments/configs/ablation_deep.py --workdir=runs/ablation \
      [--runs=teacher,ep,ep_les,ep_kd,ep_les_kd] [--config.FIELD=VALUE ...]

The config defines the shared network, data and EP / signal settings. Into `--workdir`:

  teacher/     the BP teacher (feed-forward twin, `experiments.train_teacher`), trained first
  ep/          standard EP (the config's estimator; signals.les and signals.kd off)
  ep_les/      EP + LES             (signals.les.enabled)
  ep_kd/       EP + KD              (signals.kd.enabled, teacher_workdir = teacher/)
  ep_les_kd/   EP + LES + KD
  ablation.md  final and best test accuracy, epochs, wall time, per-layer activity at the end
  ablation.json  {"runs": {"bp", "ep", "ep_les", "ep_kd", "ep_les_kd": {final_test_accuracy,
               best_test_accuracy, epochs_done, status (finished | stopped | unfinished),
               wall_s}}}
  *.png        overlays of the runs' per-layer diagnostics (`experiments.plots`)

Extra runs (`--extra='NAME=VARIANT;FIELD=VALUE;...'`, repeatable): variant VARIANT of the
shared config with the given fields changed, e.g. skip links or another init:

  --extra='ep_kd_skip=ep_kd;model.skips=((1,3),(3,5),(5,7))'

trains into NAME/ (and, for a KD variant whose changes touch `model.`, `data.`, `teacher.`
or `seed`, its own teacher into teacher_NAME/), is recorded in `extra_runs.json`, and appears
in both reports under NAME (its teacher under bp_NAME in `ablation.json`).

Running the same command again skips finished runs (a teacher with `teacher.json` for the
configured epochs; an EP run whose `metrics.jsonl` reaches `train.epochs`) and resumes
unfinished EP runs from their checkpoints, then rewrites the report. `--runs` selects runs
(a KD run trains the teacher it needs even if `teacher` is not listed). An EP run stopped by
`NonFiniteError` or `NonConvergenceError` (its relaxation oscillates) gets `diverged.json`
with the message, is not retried (delete the file to retry), and is reported as stopped, with
its last good epoch, while the other runs go on.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import time
from typing import Callable, Optional, Sequence

from absl import app, flags, logging

from ep_jax.app.metrics_io import percent, read_metrics
from experiments import cli

TEACHER = 'teacher'
# name -> (LES on, KD on, description)
VARIANTS = {
    'ep': (False, False, 'standard EP'),
    'ep_les': (True, False, 'EP + LES'),
    'ep_kd': (False, True, 'EP + KD'),
    'ep_les_kd': (True, True, 'EP + LES + KD'),
}
RUNS = (TEACHER,) + tuple(VARIANTS)
REPORT = 'ablation.md'
SUMMARY = 'ablation.json'
EXTRAS = 'extra_runs.json'
# Changes after which a KD extra run needs a teacher of its own.
TEACHER_FIELDS = ('model.', 'data.', 'teacher.', 'seed')
# ablation.json names the teacher by what it is for the comparison: the BP baseline.
SUMMARY_NAMES = {TEACHER: 'bp'}


def variant_config(config, name: str, workdir: str):
  """The config of EP run `name`: the shared config with LES / KD switched per the variant."""
  les, kd, _ = VARIANTS[name]
  c = copy.deepcopy(config)
  c.signals.les.enabled = les
  c.signals.kd.enabled = kd
  c.signals.kd.teacher_workdir = os.path.join(workdir, TEACHER) if kd else ''
  return c


def parse_extra(text: str) -> tuple[str, str, dict]:
  """`'NAME=VARIANT;FIELD=VALUE;...'` -> `(name, variant, {field: value})`; values are Python
  literals where they parse as one (else strings)."""
  head, *changes = [part.strip() for part in text.split(';') if part.strip()]
  name, sep, variant = head.partition('=')
  name, variant = name.strip(), variant.strip()
  if not sep or not name.isidentifier() or name in RUNS + tuple(SUMMARY_NAMES.values()):
    raise ValueError(f'--extra {text!r}: expected NAME=VARIANT[;FIELD=VALUE...] with a new '
                     f'name (not one of {RUNS + ("bp",)})')
  if variant not in VARIANTS:
    raise ValueError(f'--extra {text!r}: unknown variant {variant!r}; known: {tuple(VARIANTS)}')
  overrides = {}
  for change in changes:
    field, sep, value = change.partition('=')
    if not sep or not field.strip():
      raise ValueError(f'--extra {text!r}: expected FIELD=VALUE, got {change!r}')
    try:
      overrides[field.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      overrides[field.strip()] = value.strip()
  return name, variant, overrides


def _set_field(config, field: str, value) -> None:
  *path, last = field.split('.')
  node = config
  for part in path:
    if part not in node:
      raise ValueError(f'unknown config field {field!r}')
    node = node[part]
  if last not in node:
    raise ValueError(f'unknown config field {field!r}')
  node[last] = tuple(value) if isinstance(value, list) else value


def extra_teacher_dir(workdir: str, name: str, variant: str, overrides: dict) -> str:
  """The teacher an extra KD run distils from: its own when its changes alter the teacher."""
  own = any(f.startswith(TEACHER_FIELDS) for f in overrides)
  return os.path.join(workdir, f'{TEACHER}_{name}' if own else TEACHER)


def extra_config(config, name: str, variant: str, overrides: dict, workdir: str):
  """The config of extra run `name`: `overrides` applied to the shared config, then the
  variant's switches (KD reads `extra_teacher_dir`)."""
  c = copy.deepcopy(config)
  for field, value in overrides.items():
    _set_field(c, field, value)
  c = variant_config(c, variant, workdir)
  if VARIANTS[variant][1]:
    c.signals.kd.teacher_workdir = extra_teacher_dir(workdir, name, variant, overrides)
  return c


def read_extras(workdir: str) -> dict:
  """`{name: {'variant', 'overrides'}}` of the extra runs recorded in `workdir`."""
  path = os.path.join(workdir, EXTRAS)
  if not os.path.isfile(path):
    return {}
  with open(path, 'r', encoding='utf-8') as f:
    return json.load(f)


def ep_done(run_dir: str, config) -> bool:
  """The run reached its last epoch or was stopped for good (`diverged.json`)."""
  from ep_jax.app import sweep  # pylint: disable=g-import-not-at-top
  if sweep.is_diverged(run_dir):
    return True
  epochs = [r.get('epoch') for r in read_metrics(run_dir)]
  return int(config.train.epochs) in epochs


def train_teacher(config, teacher_dir: str, print_fn: Callable[[str], None] = print) -> dict:
  """Trains and saves the BP teacher exactly as `python -m experiments.train_teacher` does."""
  from ep_jax.app import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  return teacher_lib.train_from_config(config, teacher_dir,
                                       print_fn=lambda line: print_fn(f'[{TEACHER}] {line}'))


def run_all(config, workdir: str, runs: Sequence[str] = RUNS,
            print_fn: Callable[[str], None] = print, extras: Sequence[str] = ()) -> str:
  """Trains the selected runs and the `extras` (`--extra` strings; skipping finished runs),
  writes the report; returns its path."""
  from ep_jax.app import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  from ep_jax.app import train as train_lib  # pylint: disable=g-import-not-at-top

  unknown = sorted(set(runs) - set(RUNS))
  if unknown:
    raise ValueError(f'unknown runs {unknown}; known: {RUNS}')
  parsed = [parse_extra(text) for text in extras]
  for name, variant, overrides in parsed:  # bad fields fail before anything is trained
    extra_config(config, name, variant, overrides, workdir)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if parsed:
    recorded = read_extras(workdir)
    recorded.update({n: {'variant': v, 'overrides': o} for n, v, o in parsed})
    with open(os.path.join(workdir, EXTRAS), 'w', encoding='utf-8') as f:
      json.dump(recorded, f, indent=2, default=list)
  teacher_dir = os.path.join(workdir, TEACHER)
  needs_teacher = TEACHER in runs or any(VARIANTS[r][1] for r in runs if r in VARIANTS)
  if needs_teacher:
    if teacher_lib.is_trained(teacher_dir, config):
      print_fn(f'[{TEACHER}] done, skipping ({teacher_dir})')
    else:
      print_fn(f'[{TEACHER}] training the BP teacher into {teacher_dir}')
      train_teacher(config, teacher_dir, print_fn=print_fn)
  todo = [n for n in VARIANTS if n in runs and
          not ep_done(os.path.join(workdir, n), variant_config(config, n, workdir))]
  ep_config = config
  if todo and config.model.get('init', 'pytorch') == 'data':
    # One calibration for every run: they share the network, the data and the seed.
    train_split, _, info = train_lib.load_data(config)
    ep_config = train_lib.calibrated_config(config, train_split, info,
                                            print_fn=lambda line: print_fn('[init] ' + line))
  for name in VARIANTS:
    if name not in runs:
      continue
    run_dir = os.path.join(workdir, name)
    c = variant_config(ep_config, name, workdir)
    if ep_done(run_dir, c):
      print_fn(f'[{name}] done, skipping ({run_dir})')
      continue
    print_fn(f'[{name}] {VARIANTS[name][2]}: training into {run_dir}')
    _train_ep(c, run_dir, f'[{name}] ', print_fn)
  for name, variant, overrides in parsed:
    _run_extra(config, workdir, name, variant, overrides, print_fn)
  return write_report(config, workdir, print_fn=print_fn)


def _run_extra(config, workdir, name, variant, overrides, print_fn) -> None:
  from ep_jax.app import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  c = extra_config(config, name, variant, overrides, workdir)
  prefix = f'[{name}] '
  if VARIANTS[variant][1]:
    teacher_dir = c.signals.kd.teacher_workdir
    if not teacher_lib.is_trained(teacher_dir, c):
      print_fn(f'{prefix}training its BP teacher into {teacher_dir}')
      train_teacher(c, teacher_dir, print_fn=lambda line: print_fn(prefix + line))
  run_dir = os.path.join(workdir, name)
  if ep_done(run_dir, c):
    print_fn(f'{prefix}done, skipping ({run_dir})')
    return
  print_fn(f'{prefix}{VARIANTS[variant][2]} with {overrides}: training into {run_dir}')
  _train_ep(c, run_dir, prefix, print_fn)


def _train_ep(config, run_dir: str, prefix: str, print_fn) -> None:
  """Trains (or resumes) one EP run; a run stopped by `NonFiniteError` (or non-convergence)
  gets `diverged.json` and the ablation goes on."""
  from ep_jax.app import sweep  # pylint: disable=g-import-not-at-top
  from ep_jax.app import train as train_lib  # pylint: disable=g-import-not-at-top
  try:
    train_lib.train_and_evaluate(config, run_dir, print_fn=lambda line: print_fn(prefix + line))
  except train_lib.NonFiniteError as e:
    sweep.mark_diverged(run_dir, str(e))
    print_fn(f'{prefix}stopped: {e}')


# ---------------------------------------------------------------------------------- report


def _fmt(value, spec: str = '.4f') -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return 'n/a'
  return format(value, spec)


def _duration(seconds) -> str:
  if seconds is None:
    return 'n/a'
  seconds = float(seconds)
  return f'{seconds:.0f} s ({seconds / 60:.1f} min)'


def summarize_ep(run_dir: str) -> Optional[dict]:
  """Final/best accuracy, epochs, wall time and last-epoch per-layer diagnostics of a run."""
  from ep_jax.app import sweep  # pylint: disable=g-import-not-at-top
  records = read_metrics(run_dir)
  if not records:
    stopped = sweep.diverged_message(run_dir)
    return None if stopped is None else {
        'final_test_accuracy': None, 'best_test_accuracy': None, 'best_epoch': None,
        'epochs': 0, 'wall_time_s': None, 'final_train_loss': None, 'stopped': stopped}
  last, first = records[-1], records[0]
  accs = [(r.get('test_accuracy'), r.get('epoch')) for r in records
          if r.get('test_accuracy') is not None]
  best = max(accs, key=lambda t: t[0]) if accs else (None, None)
  times = [r.get('epoch_time_s') for r in records if r.get('epoch_time_s') is not None]
  return {'final_test_accuracy': last.get('test_accuracy'), 'best_test_accuracy': best[0],
          'best_epoch': best[1], 'epochs': last.get('epoch'),
          'wall_time_s': sum(times) if times else None,
          'final_train_loss': last.get('train_loss'),
          'free_steps_mean': last.get('free_steps_mean'),
          'free_residual_mean': last.get('free_residual_mean'),
          'stopped': sweep.diverged_message(run_dir),
          'last': last, 'first': first}


def summarize_teacher(teacher_dir: str) -> Optional[dict]:
  path = os.path.join(teacher_dir, 'teacher.json')
  if not os.path.isfile(path):
    return None
  with open(path, 'r', encoding='utf-8') as f:
    meta = json.load(f)
  history = meta.get('history', [])
  accs = [(r.get('test_accuracy'), r.get('epoch')) for r in history]
  best = max(accs, key=lambda t: t[0]) if accs else (None, None)
  return {'final_test_accuracy': meta.get('test_accuracy'), 'best_test_accuracy': best[0],
          'best_epoch': best[1], 'epochs': meta.get('epochs'),
          'wall_time_s': meta.get('seconds'), 'final_train_loss':
          history[-1].get('train_loss') if history else None}


def _layer_names(config, count: int) -> list[str]:
  from ep_jax.network import model_layer_names  # pylint: disable=g-import-not-at-top
  names = list(model_layer_names(config.model))
  names += [f'layer{i + 1}' for i in range(len(names), count)]
  return names[:count] if count else names


def _layer_table(summaries: dict, key: str, which: str, config, spec: str) -> list[str]:
  rows = [(name, s[which].get(key)) for name, s in summaries.items()
          if s is not None and 'last' in s and isinstance(s[which].get(key), list)]
  if not rows:
    return ['(not logged)', '']
  count = max(len(v) for _, v in rows)
  names = _layer_names(config, count)
  out = ['| run | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for name, values in rows:
    cells = [_fmt(values[i], spec) if i < len(values) else '' for i in range(count)]
    out.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  out.append('')
  return out


def write_report(config, workdir: str, print_fn: Callable[[str], None] = print) -> str:
  """Writes `ablation.md` and the overlay plots from whatever runs exist in `workdir`."""
  from ep_jax.app import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  from experiments import plots  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(workdir)
  extras = read_extras(workdir)
  summaries = {TEACHER: summarize_teacher(os.path.join(workdir, TEACHER))}
  for name in VARIANTS:
    summaries[name] = summarize_ep(os.path.join(workdir, name))
  descriptions = dict({n: v[2] for n, v in VARIANTS.items()},
                      teacher='BP teacher (feed-forward twin)')
  summary_names = dict(SUMMARY_NAMES)
  ep_names = list(VARIANTS)
  for name, extra in extras.items():
    summaries[name] = summarize_ep(os.path.join(workdir, name))
    descriptions[name] = f"{VARIANTS[extra['variant']][2]}, {extra['overrides']}"
    ep_names.append(name)
    own = os.path.join(workdir, f'{TEACHER}_{name}')
    if os.path.isdir(own):
      summaries[f'{TEACHER}_{name}'] = summarize_teacher(own)
      descriptions[f'{TEACHER}_{name}'] = f"BP teacher of {name}, {extra['overrides']}"
      summary_names[f'{TEACHER}_{name}'] = f'bp_{name}'
  order = ep_names + [n for n in summaries if n == TEACHER or n.startswith(TEACHER + '_')]
  existing = [n for n in order if summaries[n] is not None]
  pngs = plots.plot_runs([os.path.join(workdir, n) for n in existing], out=workdir,
                         labels=existing) if existing else []

  d, m, e, s = config.data, config.model, config.ep, config.signals
  from ep_jax.network import parse_layout  # pylint: disable=g-import-not-at-top
  lines = [
      '# Ablation: layer-wise learning signals in a deep EP CRNN', '',
      f'- **network**: layout `{m.layout}` ({len(parse_layout(m.layout))} conv layers), dense '
      f'{tuple(m.dense)}, {m.activation}, {m.readout} readout',
      f'- **data**: {d.dataset} (train {tuple(d.train_files) or "default"}, test '
      f'{tuple(d.test_files) or "default"}), train_subset={d.train_subset}, '
      f'test_subset={d.test_subset} (0 = all), augment={d.augment}',
      f'- **EP**: {e.estimator}, β={e.beta}, T1={e.free_steps}, T2={e.nudged_steps}, '
      f'tol={e.tol}, mode={e.mode}; {config.train.epochs} epochs, batch '
      f'{config.train.batch_size}, lrs {tuple(config.optim.learning_rates)}, '
      f'{config.optim.schedule}',
      f'- **LES**: {s.les.loss} on {s.les.pool} features, {s.les.head} heads, layers '
      f'{tuple(s.les.layers) or "all hidden"}',
      f'- **KD**: layers {tuple(s.kd.layers) or "all hidden"}, output={s.kd.output} '
      f'(α={s.kd.alpha}, τ={s.kd.temperature}); teacher: {config.teacher.epochs} epochs, lr '
      f'{config.teacher.learning_rate}, init scale '
      f'{teacher_lib.init_scale(config)} (EP: init {m.get("init", "pytorch")}, scale '
      f'{m.init_scale}, readout scale {m.get("readout_init_scale", 1.0)})',
      f'- **κ**: {s.kappa.schedule}, init {s.kappa.init}, min {s.kappa.min}, gamma '
      f'{s.kappa.gamma}, per_layer {tuple(s.kappa.per_layer) or "-"}',
      '',
      '## Accuracy and cost', '',
      'Wall time: the sum of the epochs\' times in `metrics.jsonl` (EP runs: training + '
      'evaluation, first-epoch compilation included) or the teacher\'s training time.', '',
      '| run | what | final test acc | best test acc (epoch) | epochs | wall time | '
      'final train loss | free steps | free residual | status |',
      '|---|---|---|---|---|---|---|---|---|---|',
  ]
  runs_json = {}
  for name in order:
    sm = summaries[name]
    if sm is None:
      lines.append(f'| {name} | {descriptions[name]} | not run | | | | | | | |')
      continue
    status = 'finished'
    if sm.get('stopped'):
      status = f"**stopped** after epoch {sm['epochs']}"
    elif name in ep_names and (sm['epochs'] or 0) < int(config.train.epochs):
      status = 'unfinished'
    runs_json[summary_names.get(name, name)] = {
        'final_test_accuracy': sm['final_test_accuracy'],
        'best_test_accuracy': sm['best_test_accuracy'], 'epochs_done': sm['epochs'],
        'status': status.split()[0].strip('*'), 'wall_s': sm['wall_time_s']}
    lines.append(
        f"| {name} | {descriptions[name]} | {percent(sm['final_test_accuracy'])} | "
        f"{percent(sm['best_test_accuracy'])} ({sm['best_epoch']}) | {sm['epochs']} | "
        f"{_duration(sm['wall_time_s'])} | {_fmt(sm['final_train_loss'])} | "
        f"{_fmt(sm.get('free_steps_mean'), '.1f')} | {_fmt(sm.get('free_residual_mean'), '.1e')} "
        f"| {status} |")
  lines.append('')
  stopped = [(n, summaries[n]['stopped']) for n in ep_names
             if summaries[n] is not None and summaries[n].get('stopped')]
  if stopped:
    lines += ['## Stopped runs', '']
    lines += [f'- **{n}**: {msg}' for n, msg in stopped]
    lines.append('')
  ep_summaries = {n: summaries[n] for n in ep_names}
  tables = (
      ('Mean |s_l| at the free fixed point, last epoch', 'layer_mean_abs_state', 'last', '.4f'),
      ('Mean |s_l| at the free fixed point, first epoch', 'layer_mean_abs_state', 'first',
       '.4f'),
      ('‖s^β − s^0‖ per example (first nudged phase), last epoch', 'layer_nudge_norm', 'last',
       '.3e'),
      ('Fraction of saturated units (at 0 or 1), last epoch', 'layer_saturated_frac', 'last',
       '.3f'),
      ('Input dependence (std of s_l across inputs / mean |s_l|), last epoch',
       'layer_input_dependence', 'last', '.3f'),
      ('Mean |θ_l|, last epoch', 'layer_mean_abs_param', 'last', '.4f'),
  )
  lines += ['## Per-layer activity (epoch means of the training steps)', '']
  for title, key, which, spec in tables:
    lines += [f'### {title}', '']
    lines += _layer_table(ep_summaries, key, which, config, spec)
  lines += ['## Plots', '']
  lines += [f'- [{os.path.basename(p)}]({os.path.basename(p)})' for p in pngs]
  lines.append('')
  path = os.path.join(workdir, REPORT)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines))
  os.replace(path + '.tmp', path)
  summary_path = os.path.join(workdir, SUMMARY)
  with open(summary_path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump({'runs': runs_json}, f, indent=2, sort_keys=True)
  os.replace(summary_path + '.tmp', summary_path)
  print_fn(f'wrote {path} and {len(pngs)} plots')
  return path


# ----------------------------------------------------------------------------------- main


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  if not flags.FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  start = time.time()
  run_all(cli.config_value(_CONFIG), flags.FLAGS.workdir, runs=tuple(flags.FLAGS.runs),
          print_fn=lambda line: print(line, flush=True), extras=tuple(flags.FLAGS.extra or ()))
  print(f'ablation finished in {time.time() - start:.0f} s', flush=True)


def define_flags() -> None:
  """Defines this script's flags (only when run as a script)."""
  global _CONFIG
  _CONFIG = cli.define_config_file(os.path.join(cli.CONFIG_DIR, 'ablation_deep.py'))
  flags.DEFINE_string('workdir', None, 'Output folder (one sub-folder per run).')
  flags.DEFINE_list('runs', list(RUNS), f'Runs to do, from {RUNS}.')
  flags.DEFINE_multi_string('extra', [], "Extra run 'NAME=VARIANT;FIELD=VALUE;...' (repeatable).")


if __name__ == '__main__':
  cli.run(main, define_flags)
