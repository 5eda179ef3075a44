r"""Ablation of the learning signals on one deep CRNN and data set: which signal does what.

  python -m experiments.ablation --config=experiments/configs/ablation_deep.py --workdir=runs/ablation \
      [--runs=bp,ep,ep_kd_output,ep_kd_layers,ep_kd,ep_les,ep_les_kd] [--seeds=0,1,2] \
      [--config.FIELD=VALUE ...]

The config defines the shared network, data and EP / signal settings (layers, κ, α, τ); each
run sets `signals.les.enabled`, `signals.kd.enabled`, `kd.layerwise` and `kd.output` itself.
Into `--workdir`:

  teacher/       bp: the BP twin (feed-forward, `experiments.train_teacher`), the KD teacher
  ep/            standard EP (the config's estimator; no signal)
  ep_kd_output/  EP + output distillation only (soft labels, weight α(e); no layer-wise KD)
  ep_kd_layers/  EP + layer-wise KD only (kd.output off)
  ep_kd/         EP + layer-wise and output KD
  ep_les/        EP + LES
  ep_les_kd/     EP + LES + layer-wise and output KD
  ablation.md    final and best test accuracy (per seed, mean ± sample std over seeds), epochs,
                 wall time, per-layer activity at the end
  ablation.json  {"seeds": [...], "runs": {"bp", "ep", ...: {final_test_accuracy,
                 best_test_accuracy (means over seeds), final_test_accuracy_std,
                 best_test_accuracy_std (sample std; null for one seed), num_seeds,
                 epochs_done (fewest), status (finished | stopped | unfinished | mixed),
                 wall_s (sum), per_seed: {seed: {the same for that seed}}}}}
  *.png          overlays of the runs' per-layer diagnostics (`experiments.plots`)

`teacher` is still accepted for `bp` in `--runs` (its folder keeps the name); `ep_kd` and
`ep_les_kd` are the runs of those names before output KD had a run of its own (the ablation
configs have `kd.output` on). `--seeds=0,1,2` trains every run for each seed into
`seed=S/` (same layout; seed S's BP twin, trained with `seed=S`, is its KD teacher and its data
init is calibrated for it); without `--seeds` the runs use `config.seed` in the layout above.
Per-layer tables and plots show the first seed.

Extra runs (`--extra='NAME=VARIANT;FIELD=VALUE;...'`, repeatable): variant VARIANT of the
shared config with the given fields changed, e.g. skip links or another init:

  --extra='ep_kd_skip=ep_kd;model.skips=((1,3),(3,5),(5,7))'

trains into NAME/ (and, for a KD variant whose changes touch `model.`, `data.`, `teacher.`
or `seed`, its own teacher into teacher_NAME/), is recorded in `extra_runs.json`, and appears
in both reports under NAME (its teacher under bp_NAME in `ablation.json`).

Running the same command again skips finished runs (a teacher with `teacher.json` for the
configured epochs; an EP run whose `metrics.jsonl` reaches `train.epochs`) and resumes
unfinished EP runs from their checkpoints, then rewrites the report. `--runs` selects runs
(a KD run trains the teacher it needs even if `bp` is not listed). An EP run stopped by
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
import statistics
import time
from typing import Callable, Optional, Sequence

from absl import app, flags, logging

from ep_jax.app.metrics_io import percent, read_metrics
from experiments import cli

BP = 'bp'
TEACHER = 'teacher'  # the BP twin's folder (and the run's former name, still accepted)
# name -> (LES on, layer-wise KD on, output KD on, description)
VARIANTS = {
    'ep': (False, False, False, 'standard EP'),
    'ep_kd_output': (False, False, True, 'EP + output KD only'),
    'ep_kd_layers': (False, True, False, 'EP + layer-wise KD only'),
    'ep_kd': (False, True, True, 'EP + layer-wise and output KD'),
    'ep_les': (True, False, False, 'EP + LES'),
    'ep_les_kd': (True, True, True, 'EP + LES + layer-wise and output KD'),
}
RUNS = (BP,) + tuple(VARIANTS)
RUN_ALIASES = {TEACHER: BP}
REPORT = 'ablation.md'
SUMMARY = 'ablation.json'
EXTRAS = 'extra_runs.json'
# Changes after which a KD extra run needs a teacher of its own.
TEACHER_FIELDS = ('model.', 'data.', 'teacher.', 'seed')
# ablation.json names the teacher by what it is for the comparison: the BP baseline.
SUMMARY_NAMES = {TEACHER: BP}


def uses_kd(variant: str) -> bool:
  """The variant distils from the teacher (layer-wise or at the output)."""
  return VARIANTS[variant][1] or VARIANTS[variant][2]


def resolve_runs(runs: Sequence[str]) -> tuple[str, ...]:
  """`runs` with the former names mapped (`teacher` -> `bp`); ValueError for unknown ones."""
  resolved = tuple(dict.fromkeys(RUN_ALIASES.get(r, r) for r in runs))
  unknown = sorted(set(resolved) - set(RUNS))
  if unknown:
    raise ValueError(f'unknown runs {unknown}; known: {RUNS} (and {tuple(RUN_ALIASES)})')
  return resolved


def variant_config(config, name: str, workdir: str):
  """The config of EP run `name`: the shared config with LES, layer-wise KD and output KD
  switched per the variant (KD distils from `workdir/teacher`)."""
  les, kd_layers, kd_output, _ = VARIANTS[name]
  c = copy.deepcopy(config)
  kd = kd_layers or kd_output
  c.signals.les.enabled = les
  c.signals.kd.enabled = kd
  c.signals.kd.layerwise = kd_layers
  c.signals.kd.output = kd_output if kd else bool(config.signals.kd.output)
  c.signals.kd.teacher_workdir = os.path.join(workdir, TEACHER) if kd else ''
  return c


def parse_extra(text: str) -> tuple[str, str, dict]:
  """`'NAME=VARIANT;FIELD=VALUE;...'` -> `(name, variant, {field: value})`; values are Python
  literals where they parse as one (else strings)."""
  head, *changes = [part.strip() for part in text.split(';') if part.strip()]
  name, sep, variant = head.partition('=')
  name, variant = name.strip(), variant.strip()
  taken = RUNS + tuple(RUN_ALIASES)
  if not sep or not name.isidentifier() or name in taken:
    raise ValueError(f'--extra {text!r}: expected NAME=VARIANT[;FIELD=VALUE...] with a new '
                     f'name (not one of {taken})')
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
  if uses_kd(variant):
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
                                       print_fn=lambda line: print_fn(f'[{BP}] {line}'))


def seed_dir(workdir: str, seed: Optional[int]) -> str:
  """Where seed `seed`'s runs go: `workdir/seed=S`, or `workdir` itself for None (no --seeds)."""
  return workdir if seed is None else os.path.join(workdir, f'seed={int(seed)}')


def parse_seeds(text) -> Optional[tuple[int, ...]]:
  """`'0,1,2'` (or a sequence) -> `(0, 1, 2)`; '' or None -> None (the config's seed, no
  seed folders)."""
  if text is None or (isinstance(text, str) and not text.strip()):
    return None
  items = text.split(',') if isinstance(text, str) else list(text)
  seeds = tuple(int(str(v).strip()) for v in items if str(v).strip())
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'--seeds must be distinct integers, e.g. 0,1,2; got {text!r}')
  return seeds


def run_all(config, workdir: str, runs: Sequence[str] = RUNS,
            print_fn: Callable[[str], None] = print, extras: Sequence[str] = (),
            seeds: Optional[Sequence[int]] = None) -> str:
  """Trains the selected runs and the `extras` (`--extra` strings; skipping finished runs),
  for each of `seeds` (None: `config.seed`, no seed folders), writes the report; returns its
  path."""
  runs = resolve_runs(runs)
  seeds = None if seeds is None else tuple(int(v) for v in seeds)
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
  for seed in seeds or (None,):
    c = copy.deepcopy(config)
    if seed is not None:
      c.seed = seed
      print_fn(f'[seed {seed}] into {seed_dir(workdir, seed)}')
    _run_seed(c, seed_dir(workdir, seed), runs, parsed, print_fn)
  return write_report(config, workdir, print_fn=print_fn, seeds=seeds)


def _run_seed(config, workdir: str, runs: Sequence[str], parsed, print_fn) -> None:
  """The selected runs and extras of one seed (`config.seed`) into `workdir`."""
  from ep_jax.app import build, teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  from ep_jax.app import train as train_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  teacher_dir = os.path.join(workdir, TEACHER)
  if BP in runs or any(uses_kd(r) for r in runs if r in VARIANTS):
    if teacher_lib.is_trained(teacher_dir, config):
      print_fn(f'[{BP}] done, skipping ({teacher_dir})')
    else:
      print_fn(f'[{BP}] training the BP twin (the KD teacher) into {teacher_dir}')
      train_teacher(config, teacher_dir, print_fn=print_fn)
  todo = [n for n in VARIANTS if n in runs and
          not ep_done(os.path.join(workdir, n), variant_config(config, n, workdir))]
  ep_config = config
  if todo and config.model.get('init', 'pytorch') == 'data':
    # One calibration for every run of the seed: they share the network, the data and the seed.
    train_split, _, info = build.load_data(config)
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
    print_fn(f'[{name}] {VARIANTS[name][3]}: training into {run_dir}')
    _train_ep(c, run_dir, f'[{name}] ', print_fn)
  for name, variant, overrides in parsed:
    _run_extra(config, workdir, name, variant, overrides, print_fn)


def _run_extra(config, workdir, name, variant, overrides, print_fn) -> None:
  from ep_jax.app import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  c = extra_config(config, name, variant, overrides, workdir)
  prefix = f'[{name}] '
  if uses_kd(variant):
    teacher_dir = c.signals.kd.teacher_workdir
    if not teacher_lib.is_trained(teacher_dir, c):
      print_fn(f'{prefix}training its BP teacher into {teacher_dir}')
      train_teacher(c, teacher_dir, print_fn=lambda line: print_fn(prefix + line))
  run_dir = os.path.join(workdir, name)
  if ep_done(run_dir, c):
    print_fn(f'{prefix}done, skipping ({run_dir})')
    return
  print_fn(f'{prefix}{VARIANTS[variant][3]} with {overrides}: training into {run_dir}')
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
  from ep_jax.app.build import model_layer_names  # pylint: disable=g-import-not-at-top
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


def seed_summaries(workdir: str, extras: dict) -> tuple[list[str], dict, dict, list[str]]:
  """`(order, summaries, descriptions, ep_names)` of the runs in one seed's folder, keyed by
  folder name (`teacher`, `ep`, ..., extras, `teacher_NAME`); a summary is None if not run."""
  summaries = {TEACHER: summarize_teacher(os.path.join(workdir, TEACHER))}
  for name in VARIANTS:
    summaries[name] = summarize_ep(os.path.join(workdir, name))
  descriptions = dict({n: v[3] for n, v in VARIANTS.items()},
                      teacher='BP twin (feed-forward; the KD teacher)')
  ep_names = list(VARIANTS)
  for name, extra in extras.items():
    summaries[name] = summarize_ep(os.path.join(workdir, name))
    descriptions[name] = f"{VARIANTS[extra['variant']][3]}, {extra['overrides']}"
    ep_names.append(name)
    own = os.path.join(workdir, f'{TEACHER}_{name}')
    if os.path.isdir(own):
      summaries[f'{TEACHER}_{name}'] = summarize_teacher(own)
      descriptions[f'{TEACHER}_{name}'] = f"BP teacher of {name}, {extra['overrides']}"
  order = ep_names + [n for n in summaries if n == TEACHER or n.startswith(TEACHER + '_')]
  return order, summaries, descriptions, ep_names


def summary_name(name: str) -> str:
  """The report's name of folder `name`: `teacher` -> `bp`, `teacher_X` -> `bp_X`."""
  if name.startswith(TEACHER + '_'):
    return f'{BP}_{name[len(TEACHER) + 1:]}'
  return SUMMARY_NAMES.get(name, name)


def run_record(sm: dict, is_ep: bool, epochs: int) -> dict:
  """One seed's `ablation.json` record of a run from its summary."""
  status = 'finished'
  if sm.get('stopped'):
    status = 'stopped'
  elif is_ep and (sm['epochs'] or 0) < int(epochs):
    status = 'unfinished'
  return {'final_test_accuracy': sm['final_test_accuracy'],
          'best_test_accuracy': sm['best_test_accuracy'], 'best_epoch': sm['best_epoch'],
          'epochs_done': sm['epochs'], 'status': status, 'wall_s': sm['wall_time_s'],
          'final_train_loss': sm.get('final_train_loss'),
          'free_steps_mean': sm.get('free_steps_mean'),
          'free_residual_mean': sm.get('free_residual_mean')}


def _mean(values: list):
  return None if not values else values[0] if len(values) == 1 else statistics.fmean(values)


def aggregate(per_seed: dict) -> dict:
  """`{seed: record or None}` -> the run's `ablation.json` entry: mean and sample standard
  deviation over the seeds of the final and best test accuracy (std None for one seed),
  `num_seeds` (seeds with a final accuracy), the fewest epochs done, the seeds' common status
  (else 'mixed'), the summed wall time and `per_seed`."""
  records = {str(k): r for k, r in per_seed.items() if r is not None}
  out = {}
  for key in ('final_test_accuracy', 'best_test_accuracy'):
    values = [r[key] for r in records.values() if r.get(key) is not None]
    out[key] = _mean(values)
    out[key + '_std'] = statistics.stdev(values) if len(values) >= 2 else None
    if key == 'final_test_accuracy':
      out['num_seeds'] = len(values)
  statuses = {r['status'] for r in records.values()}
  out['status'] = statuses.pop() if len(statuses) == 1 else 'mixed'
  epochs = [r['epochs_done'] for r in records.values() if r.get('epochs_done') is not None]
  out['epochs_done'] = min(epochs) if epochs else None
  walls = [r['wall_s'] for r in records.values() if r.get('wall_s') is not None]
  out['wall_s'] = sum(walls) if walls else None
  out['per_seed'] = records
  return out


def mean_std_text(mean, std, n: int) -> str:
  """'95.12% ± 0.61% (3 seeds)', '95.56% (1 seed)' or 'n/a' (`percent`)."""
  if mean is None or not n:
    return 'n/a'
  if n == 1 or std is None:
    return f'{percent(mean)} ({n} seed{"s" if n > 1 else ""})'
  return f'{percent(mean)} ± {percent(std)} ({n} seeds)'


def _status_text(per_seed: dict, markdown_stopped: dict) -> str:
  """One seed: its status ('**stopped** after epoch N' when stopped); several: 'finished' when
  all are, else each seed's."""
  texts = {seed: markdown_stopped.get(seed) or r['status'] for seed, r in per_seed.items()}
  if len(texts) == 1:
    return next(iter(texts.values()))
  if set(texts.values()) == {'finished'}:
    return 'finished'
  return '; '.join(f'seed {seed}: {text}' for seed, text in texts.items())


def accuracy_row(name: str, description: str, entry: dict, stopped: dict) -> str:
  """The accuracy table's row of a run from its `aggregate` entry."""
  per_seed = entry['per_seed']
  if not per_seed:
    return f'| {name} | {description} | not run | | | | | | | | |'
  seeds = '; '.join(
      f"s{seed}: {percent(r['final_test_accuracy'])} / {percent(r['best_test_accuracy'])} "
      f"({r['best_epoch']})" for seed, r in per_seed.items())
  epochs = sorted({r['epochs_done'] for r in per_seed.values()}, key=lambda v: (v is None, v))
  epochs_text = (str(epochs[0]) if len(epochs) == 1
                 else f'{epochs[0]}-{epochs[-1]}' if None not in epochs else 'n/a')

  def mean_of(key):
    return _mean([r[key] for r in per_seed.values() if r.get(key) is not None])

  final, best = (mean_std_text(entry[k], entry[k + '_std'], entry['num_seeds'])
                 for k in ('final_test_accuracy', 'best_test_accuracy'))
  return (f"| {name} | {description} | {final} | {best} | "
          f"{seeds} | {epochs_text} | {_duration(entry['wall_s'])} | "
          f"{_fmt(mean_of('final_train_loss'))} | {_fmt(mean_of('free_steps_mean'), '.1f')} | "
          f"{_fmt(mean_of('free_residual_mean'), '.1e')} | {_status_text(per_seed, stopped)} |")


def write_report(config, workdir: str, print_fn: Callable[[str], None] = print,
                 seeds: Optional[Sequence[int]] = None) -> str:
  """Writes `ablation.md`, `ablation.json` and the overlay plots from whatever runs exist in
  `workdir` (`seed=S/` for each of `seeds`; None: `workdir` itself, seed `config.seed`)."""
  from ep_jax.app import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  from experiments import plots  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(workdir)
  extras = read_extras(workdir)
  seed_list = [int(config.seed)] if seeds is None else [int(v) for v in seeds]
  by_seed = {seed: seed_summaries(seed_dir(workdir, None if seeds is None else seed), extras)
             for seed in seed_list}
  first = seed_list[0]
  first_dir = seed_dir(workdir, None if seeds is None else first)
  order, summaries, descriptions, ep_names = by_seed[first]
  existing = [n for n in order if summaries[n] is not None]
  pngs = plots.plot_runs([os.path.join(first_dir, n) for n in existing], out=workdir,
                         labels=[summary_name(n) for n in existing]) if existing else []

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
      f'- **KD**: layers {tuple(s.kd.layers) or "all hidden"} (layer-wise KD runs), output '
      f'weight α={s.kd.alpha} ({s.kd.get("alpha_schedule", "constant")}, min '
      f'{s.kd.get("alpha_min", 0.0)}; output KD runs), τ={s.kd.temperature}; teacher: '
      f'{config.teacher.epochs} epochs, lr {config.teacher.learning_rate}, init scale '
      f'{teacher_lib.init_scale(config)} (EP: init {m.get("init", "pytorch")}, scale '
      f'{m.init_scale}, readout scale {m.get("readout_init_scale", 1.0)})',
      f'- **κ**: {s.kappa.schedule}, init {s.kappa.init}, min {s.kappa.min}, gamma '
      f'{s.kappa.gamma}, per_layer {tuple(s.kappa.per_layer) or "-"}',
      f'- **seeds**: {", ".join(map(str, seed_list))} (each seed its own BP twin as teacher)',
      '',
      '## Accuracy and cost', '',
      'Test accuracy: the mean over the seeds ± the sample standard deviation; per seed: final '
      '/ best (its epoch). Wall time: the sum over the seeds of the epochs\' times in '
      '`metrics.jsonl` (EP runs: training + evaluation, first-epoch compilation included) or '
      'of the teacher\'s training time; train loss, free steps and residual: seed means.', '',
      '| run | what | final test acc | best test acc | per seed | epochs | wall time | '
      'final train loss | free steps | free residual | status |',
      '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  all_order = list(order)
  for seed in seed_list[1:]:
    all_order += [n for n in by_seed[seed][0] if n not in all_order]
  runs_json, stopped = {}, []
  for name in all_order:
    per_seed, stopped_text = {}, {}
    for seed in seed_list:
      _, seed_sums, _, seed_ep = by_seed[seed]
      sm = seed_sums.get(name)
      if sm is None:
        continue
      per_seed[seed] = run_record(sm, name in seed_ep, config.train.epochs)
      if sm.get('stopped'):
        stopped_text[str(seed)] = f"**stopped** after epoch {sm['epochs']}"
        stopped.append((name, seed, sm['stopped']))
    entry = aggregate(per_seed)
    description = descriptions.get(name) or by_seed[seed_list[-1]][2].get(name, '')
    lines.append(accuracy_row(summary_name(name), description, entry, stopped_text))
    if per_seed:
      runs_json[summary_name(name)] = entry
  lines.append('')
  if stopped:
    lines += ['## Stopped runs', '']
    lines += [f'- **{n}**' + (f' (seed {seed})' if len(seed_list) > 1 else '') + f': {msg}'
              for n, seed, msg in stopped]
    lines.append('')
  ep_summaries = {n: summaries[n] for n in ep_names}
  tables = (
      ('Mean |s_l| at the free fixed point, last epoch', 'layer_mean_abs_state', 'last', '.4f'),
      ('Mean |s_l| at the free fixed point, first epoch', 'layer_mean_abs_state', 'first',
       '.4f'),
      ('Nudge per unit ‖ds_l/dβ‖ / √n_l (the estimator\'s stencil on the states: symmetric '
       '½‖s^β − s^{−β}‖ / (β√n_l), one-sided ‖s^β − s^0‖ / (β√n_l)), last epoch', 'layer_nudge',
       'last', '.3e'),
      ('Nudge per unit from the output error alone (signals\' κ at 0; one batch at the end '
       'of the last epoch)', 'layer_nudge_output', 'last', '.3e'),
      ('Nudge per unit the layer-wise signals add (total − output part, as vectors; same '
       'batch)', 'layer_nudge_signal', 'last', '.3e'),
      ('Final residual of the nudged phases (max over the phases), last epoch',
       'layer_nudged_residual', 'last', '.1e'),
      ('Fraction of units at 0, last epoch', 'layer_zero_frac', 'last', '.3f'),
      ('Fraction of units at 1, last epoch', 'layer_one_frac', 'last', '.3f'),
      ('Input share (share of the mean square s_l that varies across inputs, in [0, 1)), '
       'last epoch', 'layer_input_share', 'last', '.3f'),
      ('Mean |θ_l| (weights, bias and the links into layer l), last epoch',
       'layer_mean_abs_theta', 'last', '.4f'),
  )
  # Older runs' records, with their own definitions; listed only where some run has them.
  legacy = (
      ('Older runs: ‖s^β − s^0‖ per example (first nudged phase, not per unit, not /β), last '
       'epoch', 'layer_nudge_norm', 'last', '.3e'),
      ('Older runs: fraction of units at 0 or 1, last epoch', 'layer_saturated_frac', 'last',
       '.3f'),
      ('Older runs: std of s_l across inputs / mean |s_l|, last epoch',
       'layer_input_dependence', 'last', '.3f'),
      ('Older runs: mean |w_l| (weights only), last epoch', 'layer_mean_abs_param', 'last',
       '.4f'),
  )
  logged = {k for s in ep_summaries.values() if s is not None and 'last' in s
            for k in s['last']}
  tables += tuple(t for t in legacy if t[1] in logged)
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
    json.dump({'seeds': seed_list, 'runs': runs_json}, f, indent=2, sort_keys=True)
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
          print_fn=lambda line: print(line, flush=True), extras=tuple(flags.FLAGS.extra or ()),
          seeds=parse_seeds(flags.FLAGS.seeds))
  print(f'ablation finished in {time.time() - start:.0f} s', flush=True)


def define_flags() -> None:
  """Defines this script's flags (only when run as a script)."""
  global _CONFIG
  _CONFIG = cli.define_config_file(os.path.join(cli.CONFIG_DIR, 'ablation_deep.py'))
  flags.DEFINE_string('workdir', None, 'Output folder (one sub-folder per run).')
  flags.DEFINE_list('runs', list(RUNS), f'Runs to do, from {RUNS} (teacher = bp).')
  flags.DEFINE_string('seeds', '', "Seeds, e.g. '0,1,2': every run per seed into seed=S/; "
                      "'' = config.seed, no seed folders.")
  flags.DEFINE_multi_string('extra', [], "Extra run 'NAME=VARIANT;FIELD=VALUE;...' (repeatable).")


if __name__ == '__main__':
  cli.run(main, define_flags)
