"""Hyper-parameter sweeps: grid parsing, launchers (local, vmapped seeds, slurm), aggregation.

A grid is `FIELD=[V1,V2,...];FIELD=[...]`: FIELD a config path (`ep.beta`,
`optim.learning_rates`), the values a Python list literal (`ast.literal_eval`). The sweep is the
product of the grid and the seeds `config.seed + i`, i < num_seeds. Layout under `workdir`:

    sweep.json                      the plan (fields, points, seeds, run folders)
    <point>/seed=<s>/               one `train_and_evaluate` workdir per run (metrics.jsonl, ...)
    <point>/vmap_checkpoints/seeds=<s,...>/   --vmap_seeds only: the stacked state per epoch
    sweep.csv, sweep.md, sweep_<field>.png    the aggregated results

`<point>` names the overrides sorted by field, e.g. `ep.beta=0.5,optim.learning_rates=(0.1,)`
(characters outside `[A-Za-z0-9._,=+()-]` become `_`; a short hash is appended on a clash).

A run whose metrics.jsonl has the final epoch is finished and skipped; an interrupted one is
resumed from its checkpoint by running it again. A run stopped by `NonFiniteError` (NaN/inf,
or `NonConvergenceError`: a relaxation that oscillates instead of settling) gets a
`diverged.json` marker with the message, is not retried, and is counted as diverged in the
results.

Results are the mean ± sample std over a point's finished seeds (one seed: its value, no
spread). A run records its evaluation as `test_accuracy`; with `data.validation = N > 0` that
is the accuracy on N held-out training examples, not on the test split, and `eval_split`
(`validation=N` | `test`) says which. The best point is the highest mean final validation
accuracy; runs evaluated on the test split (`data.validation = 0`) get no best point, with a
line asking for `--config.data.validation=N` (`choose_best`).
"""

from __future__ import annotations

import ast
import copy
import csv
import dataclasses
import difflib
import hashlib
import itertools
import importlib.util
import json
import math
import os
import re
import shlex
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ep_jax import estimators, optim
from ep_jax.app import build
from ep_jax.app import data as data_lib
from ep_jax.app import train as train_lib
from ep_jax.app.checkpointing import Checkpointer
from ep_jax.app.loop import EpochRun, evaluate, mean_over_steps, run_epoch
from ep_jax.app.metrics_io import MetricsWriter, ProgressReporter, percent, read_metrics
from ep_jax.train_step import make_eval_step, make_train_step

__all__ = [
    'CORE_FIELDS', 'DIVERGED_FILE', 'GridError', 'PLAN_FILE', 'Point', 'SLURM_FILE', 'Sweep',
    'aggregate', 'apply_overrides', 'check_field', 'choose_best', 'diverged_message', 'expand',
    'field_figure', 'format_override', 'format_value', 'get_field', 'is_diverged', 'is_finished',
    'make_sweep', 'mark_diverged', 'parse_grid', 'plot_field', 'point_name', 'run_local',
    'set_field', 'split_name', 'train_vmapped_seeds', 'write_plan', 'write_slurm',
]

PLAN_FILE = 'sweep.json'
DIVERGED_FILE = 'diverged.json'
SLURM_FILE = 'sweep.sbatch'
CORE_FIELDS = ('epoch', 'step', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
               'free_steps_mean', 'free_residual_mean', 'nudged_steps_mean',
               'eval_free_steps_mean', 'grad_norm', 'lr', 'lrs')


class GridError(ValueError):
  """A malformed grid, or one naming a field the config does not have."""


# ----------------------------------------------------------------------------- grid parsing


def _split_top_level(text: str, sep: str = ';') -> list[str]:
  """Splits on `sep` outside brackets and string quotes."""
  parts, depth, quote, start, i = [], 0, None, 0, 0
  while i < len(text):
    ch = text[i]
    if quote:
      if ch == '\\':
        i += 1
      elif ch == quote:
        quote = None
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == sep and depth == 0:
      parts.append(text[start:i])
      start = i + 1
    i += 1
  parts.append(text[start:])
  return parts


def _leaf_fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  out = []
  for key, value in config.items():
    path = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      out.extend(_leaf_fields(value, path + '.'))
    else:
      out.append(path)
  return out


def check_field(config: ml_collections.ConfigDict, field: str) -> None:
  """Raises GridError unless `field` is a leaf of `config` (a clear message, with suggestions)."""
  node = config
  parts = field.split('.')
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      close = difflib.get_close_matches(field, _leaf_fields(config), n=3, cutoff=0.5)
      where = 'config' if i == 0 else 'config.' + '.'.join(parts[:i])
      hint = f'; did you mean {" or ".join(close)}?' if close else ''
      raise GridError(f'unknown config field {field!r} in the grid ({where} has no {part!r})'
                      f'{hint}')
    node = node[part]
  if isinstance(node, ml_collections.ConfigDict):
    raise GridError(f'{field!r} in the grid is a config section, not a field; name one of '
                    f'{sorted(node.keys())}')


def get_field(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for part in field.split('.'):
    node = node[part]
  return node


def _normalise(current: Any, value: Any) -> Any:
  """Lists become tuples; a scalar for a tuple field becomes a 1-tuple
  (so `optim.learning_rates=[0.05,0.1]` sweeps one rate for every group)."""
  if isinstance(value, list):
    value = tuple(value)
  if isinstance(current, tuple) and isinstance(value, (int, float)) and not isinstance(
      value, bool):
    value = (value,)
  return value


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
  parts = field.split('.')
  node = config
  for part in parts[:-1]:
    node = node[part]
  node[parts[-1]] = value


def parse_grid(text: str, config: ml_collections.ConfigDict) -> list[tuple[str, list]]:
  """`'ep.beta=[0.5,1.0];optim.learning_rates=[0.05]'` -> `[(field, [values...]), ...]`.

  Every field must be a leaf of `config` and every value must be assignable to it (checked on a
  copy). An empty or blank grid is one point (the config as is). Raises GridError.
  """
  grid: list[tuple[str, list]] = []
  if not text or not text.strip():
    return grid
  seen = set()
  for raw in _split_top_level(text):
    part = raw.strip()
    if not part:
      continue
    if '=' not in part:
      raise GridError(f'malformed grid entry {part!r}: expected FIELD=[V1,V2,...], e.g. '
                      "'ep.beta=[0.5,1.0]'")
    field, _, rhs = part.partition('=')
    field, rhs = field.strip(), rhs.strip()
    if not re.fullmatch(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*', field):
      raise GridError(f'malformed grid field {field!r} in {part!r}: expected a config path '
                      'such as ep.beta')
    if field in seen:
      raise GridError(f'grid field {field!r} appears twice')
    if field == 'seed':
      raise GridError('seed cannot be a grid field: use --seeds=N (seeds config.seed + i)')
    check_field(config, field)
    try:
      values = ast.literal_eval(rhs)
    except (ValueError, SyntaxError) as e:
      raise GridError(f'malformed values for {field!r}: {rhs!r} is not a Python literal '
                      f'({type(e).__name__}: {e}); expected a list such as [0.5,1.0]') from None
    if not isinstance(values, list):
      raise GridError(f'values for {field!r} must be a list literal such as [{rhs}], got '
                      f'{rhs!r}')
    if not values:
      raise GridError(f'empty value list for {field!r}')
    current = get_field(config, field)
    normalised = []
    for v in values:
      v = _normalise(current, v)
      probe = copy.deepcopy(config)
      try:
        set_field(probe, field, v)
      except (TypeError, ValueError) as e:
        raise GridError(f'value {v!r} does not fit {field!r} (currently {current!r} of type '
                        f'{type(current).__name__}): {e}') from None
      v = get_field(probe, field)  # as the config stores it (e.g. int -> float)
      if any(v == w and type(v) is type(w) for w in normalised):
        raise GridError(f'value {v!r} appears twice for {field!r}')
      normalised.append(v)
    seen.add(field)
    grid.append((field, normalised))
  return grid


# ----------------------------------------------------------------------------- the plan


def format_value(value: Any) -> str:
  """Compact, readable rendering for folder names: 0.5, (0.1,), 8,M, True."""
  if isinstance(value, str):
    return value
  if isinstance(value, (tuple, list)):
    inner = ','.join(format_value(v) for v in value)
    return f'({inner},)' if len(value) == 1 else f'({inner})'
  return repr(value)


def _sanitise(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9._,=+()\-]', '_', name)


def _hash(obj: Any) -> str:
  return hashlib.sha1(repr(obj).encode()).hexdigest()[:8]


@dataclasses.dataclass(frozen=True)
class Point:
  """One configuration of the grid: `overrides` in grid order, `name` its folder."""
  overrides: tuple[tuple[str, Any], ...]
  name: str

  def as_dict(self) -> dict:
    return dict(self.overrides)


def point_name(overrides: Sequence[tuple[str, Any]], max_len: int = 150) -> str:
  if not overrides:
    return 'base'
  name = ','.join(f'{f}={format_value(v)}' for f, v in sorted(overrides))
  name = _sanitise(name)
  if len(name) > max_len:
    name = name[:max_len - 9] + '-' + _hash(sorted(overrides))
  return name


def expand(grid: Sequence[tuple[str, list]]) -> list[Point]:
  """The product of the grid (first field slowest), each with a stable, unique name."""
  fields = [f for f, _ in grid]
  combos = list(itertools.product(*[values for _, values in grid]))
  overrides = [tuple(zip(fields, combo)) for combo in combos]
  names = [point_name(o) for o in overrides]
  counts = {n: names.count(n) for n in names}
  names = [n if counts[n] == 1 else f'{n}-{_hash(sorted(o))}' for n, o in zip(names, overrides)]
  return [Point(o, n) for o, n in zip(overrides, names)]


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, Any]],
                    seed: Optional[int] = None) -> ml_collections.ConfigDict:
  """A copy of `config` with the overrides (and the seed) set."""
  config = copy.deepcopy(config)
  for field, value in overrides:
    set_field(config, field, value)
  if seed is not None:
    config.seed = int(seed)
  return config


@dataclasses.dataclass(frozen=True)
class Sweep:
  workdir: str
  fields: tuple[str, ...]
  points: tuple[Point, ...]
  seeds: tuple[int, ...]

  def point_dir(self, point: Point) -> str:
    return os.path.join(self.workdir, point.name)

  def run_dir(self, point: Point, seed: int) -> str:
    return os.path.join(self.workdir, point.name, f'seed={int(seed)}')

  def runs(self) -> list[tuple[Point, int]]:
    return [(p, s) for p in self.points for s in self.seeds]

  def to_json(self) -> dict:
    return {'fields': list(self.fields), 'seeds': list(self.seeds),
            'points': [{'name': p.name, 'overrides': {f: v for f, v in p.overrides},
                        'runs': [os.path.relpath(self.run_dir(p, s), self.workdir)
                                 for s in self.seeds]} for p in self.points]}


def make_sweep(config: ml_collections.ConfigDict, grid_text: str, num_seeds: int,
               workdir: str) -> Sweep:
  if int(num_seeds) != num_seeds or num_seeds < 1:
    raise GridError(f'--seeds must be a positive integer, got {num_seeds}')
  grid = parse_grid(grid_text, config)
  seeds = tuple(int(config.seed) + i for i in range(int(num_seeds)))
  return Sweep(os.path.abspath(workdir), tuple(f for f, _ in grid), tuple(expand(grid)), seeds)


def write_plan(sweep: Sweep) -> str:
  os.makedirs(sweep.workdir, exist_ok=True)
  path = os.path.join(sweep.workdir, PLAN_FILE)
  with open(path, 'w') as f:
    json.dump(sweep.to_json(), f, indent=2, default=repr)
    f.write('\n')
  return path


# ----------------------------------------------------------------------------- run state


def is_diverged(run_dir: str) -> bool:
  return os.path.exists(os.path.join(run_dir, DIVERGED_FILE))


def is_finished(run_dir: str, epochs: int) -> bool:
  """The run has its final epoch in metrics.jsonl, or stopped for good with a divergence."""
  if is_diverged(run_dir):
    return True
  records = read_metrics(run_dir)
  return bool(records) and int(records[-1].get('epoch') or 0) >= int(epochs)


def diverged_message(run_dir: str) -> Optional[str]:
  """The message `mark_diverged` wrote into `run_dir`, or None when the run is not marked."""
  if not is_diverged(run_dir):
    return None
  try:
    with open(os.path.join(run_dir, DIVERGED_FILE), 'r', encoding='utf-8') as f:
      return str(json.load(f).get('error', 'diverged'))
  except (OSError, ValueError):
    return f'diverged (unreadable {DIVERGED_FILE})'


def mark_diverged(run_dir: str, message: str) -> None:
  """Writes `diverged.json` with the error message into `run_dir`."""
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, DIVERGED_FILE), 'w') as f:
    json.dump({'error': message}, f)
    f.write('\n')


# ----------------------------------------------------------------------------- local launcher


def run_local(config: ml_collections.ConfigDict, sweep: Sweep, *, vmap_seeds: bool = False,
              aggregate_results: bool = True, print_fn: Callable[[str], Any] = print) -> list:
  """Runs the sweep one configuration after another; finished runs are skipped, interrupted
  ones resumed. Returns the aggregated rows (or [] with aggregate_results=False)."""
  write_plan(sweep)
  epochs = int(config.train.epochs)
  total = len(sweep.points)
  for i, point in enumerate(sweep.points):
    point_config = apply_overrides(config, point.overrides)
    todo = [s for s in sweep.seeds if not is_finished(sweep.run_dir(point, s), epochs)]
    header = f'[{i + 1}/{total}] {point.name}'
    if not todo:
      print_fn(f'{header}: all {len(sweep.seeds)} seed(s) finished, skipped')
      continue
    if vmap_seeds:
      print_fn(f'{header}: seeds {todo} vmapped')
      train_vmapped_seeds(point_config, todo, sweep.point_dir(point), print_fn=print_fn)
      continue
    for seed in sweep.seeds:
      run_dir = sweep.run_dir(point, seed)
      if seed not in todo:
        print_fn(f'{header} seed={seed}: finished, skipped')
        continue
      print_fn(f'{header} seed={seed}: training in {run_dir}')
      try:
        train_lib.train_and_evaluate(apply_overrides(point_config, (), seed=seed), run_dir,
                                     print_fn=print_fn)
      except train_lib.NonFiniteError as e:
        mark_diverged(run_dir, str(e))
        print_fn(f'{header} seed={seed}: diverged ({e}); marked, not retried')
  if not aggregate_results:
    return []
  return aggregate(sweep, epochs, print_fn=print_fn, config=config)


# ----------------------------------------------------------------------------- vmapped seeds


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _stack_batches(batches: Sequence[dict]) -> dict:
  """One batch per seed -> one batch with a leading seed axis."""
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def train_vmapped_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int], workdir: str,
                        print_fn: Callable[[str], Any] = print) -> list[dict]:
  """Trains every seed of `config` in one compiled program on one device.

  `jax.vmap` over (train state, batch) of `make_train_step` and over (params, batch) of the eval
  step; seed s's lane gets exactly what `train_and_evaluate` with `config.seed = s` gets: the
  PRNGKey(s) split into init/state/signal keys, its own data subsets (`load_data` with seed s)
  and `train_batches(..., seed=s)`. Per-seed outputs go to `workdir/seed=<s>/` (config.json,
  metrics.jsonl with train's fields plus `vmapped_seeds`, TensorBoard, curves.png); the stacked
  state is checkpointed per epoch in `workdir/vmap_checkpoints/seeds=<...>/` and a second call
  resumes from it. A seed whose step goes non-finite gets `diverged.json` and no further
  records; the others go on. Returns the last record of each seed (`{}` if it has none).

  Performance: vmapping over parameters turns each convolution into a grouped one
  (`feature_group_count=len(seeds)`), which XLA:CPU runs slowly: on a 2-core CPU the quick start
  with 4 seeds took 2x the time of 4 sequential runs (docs/BENCHMARKS.md, section 5). It is meant for
  accelerators, where grouped convolutions are native and a small CRNN leaves the chip idle.
  """
  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'seeds must be distinct and non-empty, got {seeds}')
  if config.train.multihost:
    raise ValueError('vmapped seeds run on one device of one process; unset train.multihost')
  workdir = os.path.abspath(workdir)
  seed_dirs = [os.path.join(workdir, f'seed={s}') for s in seeds]
  for d in seed_dirs:
    try:
      os.makedirs(d, exist_ok=True)
    except OSError as e:
      raise PermissionError(f'workdir {d!r} is not writable: {e}') from e
  configs = [apply_overrides(config, (), seed=s) for s in seeds]

  splits = [build.load_data(c) for c in configs]
  info = splits[0][2]
  spec = build.build_spec(config, info)
  ep = build.build_ep_config(config)
  dtype = train_lib.state_dtype(config)
  batch_size, eval_batch_size = int(config.train.batch_size), int(config.train.eval_batch_size)
  steps = {data_lib.num_train_batches(tr, batch_size) for tr, _, _ in splits}
  num_evals = {data_lib.num_eval_batches(te, eval_batch_size) for _, te, _ in splits}
  if len(steps) != 1 or len(num_evals) != 1:
    raise ValueError(f'seeds {seeds} give splits of different sizes; vmapped seeds need equal '
                     'ones')
  steps_per_epoch, num_eval = steps.pop(), num_evals.pop()
  num_epochs = int(config.train.epochs)
  total_steps = steps_per_epoch * num_epochs

  runs = [train_lib.build_run(train_lib.calibrated_config(c, tr, info), spec, steps_per_epoch,
                              num_train=len(tr))
          for c, (tr, _, info) in zip(configs, splits)]
  tx, nudging = runs[0].tx, runs[0].nudging  # depend on the config, not on the seed
  rates, lr_kwargs = runs[0].rates, runs[0].lr_kwargs
  states = [r.state for r in runs]
  del runs
  device = jax.devices()[0]
  state = jax.device_put(_stack(states), device)
  del states
  train_step = jax.jit(jax.vmap(make_train_step(spec, ep, tx, nudging=nudging,
                                                steps_per_epoch=steps_per_epoch,
                                                state_dtype=dtype)), donate_argnums=0)
  eval_step = jax.jit(jax.vmap(make_eval_step(spec, ep, state_dtype=dtype)))

  writers = [MetricsWriter(d) for d in seed_dirs]
  for w, c in zip(writers, configs):
    w.write_config(c.to_dict())
  ckpt_dir = os.path.join(workdir, 'vmap_checkpoints', 'seeds=' + ','.join(map(str, seeds)))
  checkpointer = Checkpointer(ckpt_dir, max_to_keep=config.train.checkpoints_to_keep)
  start_epoch = 0
  latest = checkpointer.latest_step()
  if latest is not None:
    state, extra = checkpointer.restore(state, step=latest)
    state = jax.device_put(state, device)
    if [int(s) for s in extra.get('seeds', [])] != seeds:
      raise ValueError(f'{ckpt_dir} holds seeds {extra.get("seeds")}, not {seeds}')
    start_epoch = train_lib.epochs_done(extra)
    print_fn(f'resumed from {ckpt_dir}/{latest} after epoch {start_epoch}/{num_epochs}')
  for w in writers:
    if w.history:
      w.truncate_after(start_epoch)  # records count epochs from 1
  diverged = {s for s, d in zip(seeds, seed_dirs) if is_diverged(d)}

  print_fn(f'ep_jax vmapped seeds {seeds}: {info.name}, layout {spec.layout!r}; '
           f'{estimators.describe(ep)}; one '
           f'device ({device}); workdir {workdir}')
  progress = ProgressReporter(total_steps, every_seconds=config.train.log_every_seconds,
                              print_fn=print_fn, steps_per_epoch=steps_per_epoch)
  last = [w.history[-1] if w.history else {} for w in writers]
  examples_done = 0
  d = config.data
  for epoch in range(start_epoch, num_epochs):
    epoch_start = time.time()
    iters = [data_lib.train_batches(tr, info, batch_size=batch_size, epoch=epoch, seed=s,
                                    prefetch=d.prefetch, **build.augmentation(config))
             for (tr, _, _), s in zip(splits, seeds)]
    run = run_epoch(train_step, EpochRun(state), map(_stack_batches, zip(*iters)),
                    num_steps=steps_per_epoch, examples_per_step=batch_size * len(seeds),
                    progress=progress, first_step=epoch * steps_per_epoch,
                    examples_before=examples_done, epoch=epoch + 1, reduce=jnp.mean)
    state, per_step = run.state, run.per_step
    examples_done += batch_size * len(seeds) * len(per_step)
    train = mean_over_steps(per_step)
    train_time = time.time() - epoch_start
    finite = np.all(np.stack([np.asarray(m['finite']) for m in jax.device_get(per_step)]),
                    axis=0) & np.isfinite(train['loss'])

    evals = [data_lib.eval_batches(te, info, batch_size=eval_batch_size, prefetch=d.prefetch,
                                   num_batches=num_eval) for (_, te, _) in splits]
    sums = evaluate(eval_step, state.params, map(_stack_batches, zip(*evals)))
    step_now = int(np.asarray(state.step)[0])
    rates_now = optim.current_learning_rates(spec, learning_rates=rates, step=step_now,
                                             **lr_kwargs)
    epoch_time = time.time() - epoch_start
    accuracies = []
    for i, (s, w) in enumerate(zip(seeds, writers)):
      if s in diverged:
        continue
      if not finite[i]:
        diverged.add(s)
        message = (f'non-finite training at epoch {epoch + 1} (seed {s}, vmapped); the last '
                   f'good state is epoch {epoch} of {ckpt_dir}')
        mark_diverged(seed_dirs[i], message)
        print_fn(f'seed {s}: {message}')
        continue
      try:
        train_lib.check_convergence(config, spec, {k: v[i] for k, v in train.items()},
                                    epoch=epoch + 1, checkpoints=ckpt_dir,
                                    steps=checkpointer.all_steps())
      except train_lib.NonConvergenceError as e:
        diverged.add(s)
        message = f'seed {s} (vmapped): {e}'
        mark_diverged(seed_dirs[i], message)
        print_fn(message)
        continue
      record = train_lib.epoch_record(
          epoch=epoch + 1, step=step_now, train={k: v[i] for k, v in train.items()},
          sums={k: v[i] for k, v in sums.items()}, lrs=rates_now,
          epoch_time=epoch_time,  # of the whole vmapped epoch (all seeds)
          train_time=train_time, examples=len(per_step) * batch_size)  # this seed's
      record['vmapped_seeds'] = len(seeds)
      w.write(record)
      last[i] = record
      accuracies.append(record['test_accuracy'])
    checkpointer.save(epoch + 1, state, extra={'epochs_done': epoch + 1, 'seeds': seeds},
                      metrics={'test_accuracy': float(np.mean(accuracies)) if accuracies
                               else 0.0})
    print_fn(f'epoch {epoch + 1}/{num_epochs}: test acc per seed '
             f'{" ".join(percent(r.get("test_accuracy")) for r in last)} | '
             f'{len(per_step) * batch_size * len(seeds) / max(train_time, 1e-9):.0f} ex/s '
             f'(all seeds) | {epoch_time:.1f} s')
  for w in writers:
    w.close()
  checkpointer.close()
  print_fn('final test_accuracy per seed=' + json.dumps(
      {str(s): r.get('test_accuracy') for s, r in zip(seeds, last)}))
  return last


# ----------------------------------------------------------------------------- slurm


def format_override(value: Any) -> str:
  """A value as `--config.FIELD=VALUE` text that ml_collections' config_flags parses back."""
  if isinstance(value, str):
    return value
  if isinstance(value, bool):
    return 'True' if value else 'False'
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return repr(value)


def _grid_literal(overrides) -> str:
  return ';'.join(f'{f}=[{v!r}]' for f, v in overrides)


def _dq(text: str) -> str:
  """`text` inside bash double quotes."""
  return '"' + re.sub(r'([\\$`"])', r'\\\1', text) + '"'


def _args(overrides) -> str:
  return ' '.join(shlex.quote(f'--config.{k}={format_override(v)}') for k, v in overrides)


def _experiments_checkout() -> str:
  """The repository root that holds the importable `experiments` scripts."""
  found = importlib.util.find_spec('experiments')
  if found is None or not found.origin:
    raise ValueError('write_slurm needs the ep_jax checkout with the experiments/ scripts: '
                     'pass repo=, or run from the repository root')
  return os.path.dirname(os.path.dirname(os.path.abspath(found.origin)))


def write_slurm(sweep: Sweep, config_file: str, base_overrides: dict, *,
                vmap_seeds: bool = False, sbatch_options: Sequence[str] = (),
                job_name: str = 'ep_sweep', repo: str | None = None,
                python: str | None = None) -> tuple[str, str]:
  """Writes `workdir/sweep.sbatch`, an array job with one task per configuration.

  Task i takes point i's overrides from the bash array POINT_ARGS and runs, for each seed in
  turn, `python -m experiments.train --config=CONFIG [the command line's --config.F=V]
  [point i's --config.F=V] --config.seed=S --workdir=DIR/<point>/seed=S` (each run resumes or
  finishes what is left), or with `vmap_seeds` one `python -m experiments.sweep
  --grid=<point i> --seeds=N --vmap_seeds --launcher=local --noaggregate`. The interpreter is
  `$PYTHON` where the task's environment sets it, else the `python` argument (default
  `sys.executable`, the interpreter writing the script: a virtualenv's interpreter finds its
  packages without activating it); a task whose interpreter does not exist stops with an error.
  The tasks run in `repo`, the checkout whose `experiments` scripts they call (default: the one
  `import experiments` finds). Returns (script path, the `sbatch` command to submit it).
  """
  repo = os.path.abspath(repo) if repo else _experiments_checkout()
  python = python or sys.executable or 'python3'
  write_plan(sweep)
  log_dir = os.path.join(sweep.workdir, 'slurm')
  os.makedirs(log_dir, exist_ok=True)
  path_part, sep, arg = config_file.partition(':')
  config_file = os.path.abspath(path_part) + sep + arg
  skip = set(sweep.fields) | (set() if vmap_seeds else {'seed'})
  base = _args(sorted((k, v) for k, v in base_overrides.items() if k not in skip))
  # BASE_ARGS and POINT_ARGS hold shell-quoted arguments: they are expanded, then `eval` parses
  # their quotes; everything else is escaped to expand inside the eval.
  if vmap_seeds:
    per_point = [shlex.quote(f'--grid={_grid_literal(p.overrides)}') for p in sweep.points]
    run = [r'eval "\"\$PYTHON\" -m experiments.sweep --config=\"\$CONFIG\" $BASE_ARGS '
           r'${POINT_ARGS[$i]} ' + f'--seeds={len(sweep.seeds)} --vmap_seeds --launcher=local '
           r'--noaggregate --workdir=\"\$SWEEP_DIR\""']
  else:
    per_point = [_args(p.overrides) for p in sweep.points]
    run = ['for seed in "${SEEDS[@]}"; do',
           r'  eval "\"\$PYTHON\" -m experiments.train --config=\"\$CONFIG\" $BASE_ARGS '
           r'${POINT_ARGS[$i]} --config.seed=\$seed '
           r'--workdir=\"\$SWEEP_DIR/\$name/seed=\$seed\""',
           'done']
  lines = [
      '#!/bin/bash',
      f'#SBATCH --job-name={job_name}',
      f'#SBATCH --array=0-{len(sweep.points) - 1}',
      f'#SBATCH --output={log_dir}/%A_%a.out',
      *[f'#SBATCH {opt}' for opt in sbatch_options],
      f'# {len(sweep.points)} configuration(s) x seeds {list(sweep.seeds)}'
      f'{" (vmapped)" if vmap_seeds else ""}; one array task per configuration.',
      '# Written by ep_jax.app.sweep.write_slurm. Submit with: sbatch ' + shlex.quote(
          os.path.join(sweep.workdir, SLURM_FILE)),
      'set -euo pipefail',
      f'REPO={shlex.quote(repo)}',
      'cd "$REPO"',
      'export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"',
      '# The interpreter that wrote this script: its virtualenv (if any) needs no activation.',
      '# A PYTHON set in the environment takes its place.',
      f'PYTHON=${{PYTHON:-{shlex.quote(python)}}}',
      'command -v "$PYTHON" >/dev/null || { echo "error: no Python interpreter $PYTHON; set '
      'PYTHON=/path/to/python" >&2; exit 1; }',
      f'CONFIG={shlex.quote(config_file)}',
      f'SWEEP_DIR={shlex.quote(sweep.workdir)}',
      f'BASE_ARGS={_dq(base)}  # the command line\'s --config overrides',
      f'SEEDS=({" ".join(str(s) for s in sweep.seeds)})',
      'NAMES=(',
      *[f'  {shlex.quote(p.name)}' for p in sweep.points],
      ')',
      'POINT_ARGS=(',
      *[f'  {_dq(a)}' for a in per_point],
      ')',
      'i=${SLURM_ARRAY_TASK_ID:?run as an sbatch array task}',
      'name=${NAMES[$i]}',
      'echo "task $i: $name"',
      *run,
  ]
  path = os.path.join(sweep.workdir, SLURM_FILE)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.chmod(path, 0o755)
  return path, f'sbatch {shlex.quote(path)}'


# ----------------------------------------------------------------------------- aggregation


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample std (ddof=1); the std is NaN for one value, both are NaN for none."""
  if not values:
    return math.nan, math.nan
  arr = np.asarray(values, np.float64)
  return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else math.nan)


def split_name(validation: Any) -> str:
  """What a run's `test_*` metrics measure: `validation=N` for `data.validation = N > 0` (N
  held-out training examples replace the test split), else `test`."""
  n = int(validation or 0)
  return f'validation={n}' if n > 0 else 'test'


def _run_split(run_dir: str, fallback: Optional[str]) -> Optional[str]:
  """The evaluated split from the run's config.json (`fallback` when it has none)."""
  try:
    with open(os.path.join(run_dir, 'config.json'), 'r', encoding='utf-8') as f:
      return split_name(json.load(f).get('data', {}).get('validation', 0))
  except (OSError, ValueError, AttributeError):
    return fallback


def _run_summary(run_dir: str, epochs: int, split: Optional[str]) -> dict:
  records = read_metrics(run_dir)
  accs = [r.get('test_accuracy') for r in records if r.get('test_accuracy') is not None]
  times = [r['epoch_time_s'] for r in records if r.get('epoch_time_s') is not None]
  done = bool(records) and int(records[-1].get('epoch') or 0) >= epochs
  return {'finished': done and not is_diverged(run_dir), 'diverged': is_diverged(run_dir),
          'epochs_done': int(records[-1].get('epoch') or 0) if records else 0,
          'final': records[-1].get('test_accuracy') if records else None,
          'max': max(accs) if accs else None,
          'epoch_time': float(np.median(times)) if times else None,
          'split': _run_split(run_dir, split)}


def _split_label(split: Optional[str]) -> str:
  if not split:
    return 'evaluation'
  return 'validation' if split.startswith('validation') else split


def choose_best(rows: Sequence[dict]) -> tuple[Optional[dict], str]:
  """The point to pick, and a line that says which and on what, or why there is none.

  The pick is the highest mean final accuracy on a validation split (`data.validation = N`),
  compared only among points evaluated on the same one. Runs that evaluate on the test split
  (`data.validation = 0`) have no pick: choosing on the test split would make it part of
  training, and training accuracy measures the fit, not the generalisation.
  """
  done = [r for r in rows if r['finished']]
  if not done:
    return None, 'no best point: no configuration has a finished seed'
  splits = sorted({str(r['eval_split']) for r in done})
  if len(splits) > 1:
    return None, (f'no best point: the finished configurations evaluate on different splits '
                  f'({", ".join(splits)}); give every one the same --config.data.validation=N')
  split = done[0]['eval_split']
  if not split or not split.startswith('validation'):
    what = ('the test split (data.validation=0)' if split == 'test'
            else 'an unknown split (the runs have no config.json)')
    return None, (f'no best point: the runs evaluate on {what}, and a choice made on the test '
                  'split overstates the accuracy it reports; rerun with '
                  '--config.data.validation=N to hold out N training examples and choose on them')
  best = max(done, key=lambda r: r['final_acc_mean'])
  return best, (f'best on validation accuracy ({split}): {best["name"]} final validation '
                f'accuracy {_pct(best["final_acc_mean"], best["final_acc_std"], best["finished"])}'
                f'% ({_seeds(best["finished"])})')


def aggregate(sweep: Sweep, epochs: int, print_fn: Callable[[str], Any] = print,
              config: Optional[ml_collections.ConfigDict] = None) -> list[dict]:
  """Writes sweep.csv, sweep.md and sweep_<field>.png; returns the rows (one per point).

  Statistics are over the seeds that finished (not diverged): the final accuracy (last epoch),
  the highest accuracy over the epochs and the per-seed median epoch wall time; mean and sample
  std, the std NaN (no spread shown) for a single seed. The accuracies are those the runs record
  as `test_accuracy`: on the validation split when `data.validation = N > 0`, else on the test
  split; `eval_split` names it (`validation=N` | `test`), from each run's config.json, or from
  `config` with the point's overrides for a run without one. The best point is chosen on
  validation accuracy only (`choose_best`).
  """
  rows = []
  for point in sweep.points:
    fallback = (split_name(apply_overrides(config, point.overrides).data.get('validation', 0))
                if config is not None else None)
    runs = [_run_summary(sweep.run_dir(point, s), epochs, fallback) for s in sweep.seeds]
    ok = [r for r in runs if r['finished']]
    splits = sorted({r['split'] for r in ok if r['split']})
    row = {'name': point.name, **{f: v for f, v in point.overrides},
           'seeds': len(sweep.seeds), 'finished': len(ok),
           'diverged': sum(r['diverged'] for r in runs),
           'eval_split': (splits[0] if len(splits) == 1 else 'mixed' if splits
                          else fallback or '')}
    for key in ('final', 'max', 'epoch_time'):
      mean, std = _mean_std([r[key] for r in ok if r[key] is not None])
      label = {'final': 'final_acc', 'max': 'max_acc', 'epoch_time': 'epoch_time_s'}[key]
      row[f'{label}_mean'], row[f'{label}_std'] = mean, std
    rows.append(row)
  columns = ['name', *sweep.fields, 'seeds', 'finished', 'diverged', 'eval_split',
             'final_acc_mean', 'final_acc_std', 'max_acc_mean', 'max_acc_std',
             'epoch_time_s_mean', 'epoch_time_s_std']
  with open(os.path.join(sweep.workdir, 'sweep.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for row in rows:
      writer.writerow([format_value(row[c]) if c in sweep.fields else row[c] for c in columns])
  best, summary = choose_best(rows)
  _write_markdown(sweep, rows, summary)
  for field in sweep.fields:
    plot_field(sweep, rows, field)
  print_fn(summary)
  print_fn(f'results: {os.path.join(sweep.workdir, "sweep.md")}')
  return rows


def _seeds(n: int) -> str:
  return f'{n} seed' if n == 1 else f'{n} seeds'


def _pct(mean: float, std: float, n: int = 2, scale: float = 100.0) -> str:
  """`mean ± std`, the mean alone for one seed (n = 1) or a NaN std; `–` for none."""
  if math.isnan(mean):
    return '–'
  if n == 1 or math.isnan(std):
    return f'{scale * mean:.2f}'
  return f'{scale * mean:.2f} ± {scale * std:.2f}'


def _write_markdown(sweep: Sweep, rows: list[dict], summary: str) -> None:
  head = [*sweep.fields] if sweep.fields else ['config']
  splits = sorted({str(r['eval_split']) for r in rows if r['eval_split']})
  one = splits[0] if len(splits) == 1 else None
  label = _split_label(one)
  where = (f'on the validation split ({one}: held-out training examples)'
           if one and one.startswith('validation') else
           'on the test split' if one == 'test' else 'on the split in the `evaluated on` column')
  lines = [f'# Sweep results: {os.path.basename(sweep.workdir)}', '',
           f'Seeds {list(sweep.seeds)}; mean ± sample std over the finished seeds (one finished '
           f'seed: its value alone). Accuracy in %, {where}; max = the highest over the epochs; '
           'epoch time = median epoch wall time per seed (for vmapped seeds, the time of the '
           'epoch of all seeds together).', '', summary[0].upper() + summary[1:] + '.', '',
           '| ' + ' | '.join([*head, 'seeds done', 'diverged',
                              *([] if one else ['evaluated on']), f'final {label} acc',
                              f'max {label} acc', 'epoch time (s)']) + ' |',
           '|' + '---|' * (len(head) + 5 + (0 if one else 1))]
  for r in rows:
    cells = [f'`{format_value(r[f])}`' for f in sweep.fields] if sweep.fields else [r['name']]
    n = r['finished']
    cells += [f'{n}/{r["seeds"]}', str(r['diverged']),
              *([] if one else [r['eval_split'] or '–']),
              _pct(r['final_acc_mean'], r['final_acc_std'], n),
              _pct(r['max_acc_mean'], r['max_acc_std'], n),
              _pct(r['epoch_time_s_mean'], r['epoch_time_s_std'], n, scale=1.0)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  with open(os.path.join(sweep.workdir, 'sweep.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def field_figure(sweep: Sweep, rows: list[dict], field: str):
  """The matplotlib Figure of `plot_field`: error bars only where a point has a spread (two or
  more finished seeds)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  values = []
  for r in rows:
    if not any(r[field] == v and type(r[field]) is type(v) for v in values):
      values.append(r[field])
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  xs_of = (lambda v: float(v)) if numeric else (lambda v: float(values.index(v)))
  others = [f for f in sweep.fields if f != field]
  groups: dict = {}
  for r in rows:
    groups.setdefault(tuple(format_value(r[f]) for f in others), []).append(r)
  splits = {str(r['eval_split']) for r in rows if r['eval_split']}
  label = _split_label(splits.pop() if len(splits) == 1 else None)
  fig = Figure(figsize=(10, 4), dpi=100)
  FigureCanvasAgg(fig)
  for j, (key, title) in enumerate((('final_acc', f'final {label} accuracy'),
                                    ('max_acc', f'max {label} accuracy over epochs'))):
    ax = fig.add_subplot(1, 2, j + 1)
    for group, members in groups.items():
      pts = sorted((xs_of(r[field]), 100 * r[f'{key}_mean'], 100 * r[f'{key}_std'])
                   for r in members)
      name = ', '.join(f'{f}={g}' for f, g in zip(others, group)) or None
      (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', label=name)
      spread = [p for p in pts if not math.isnan(p[2])]
      if spread:
        ax.errorbar([p[0] for p in spread], [p[1] for p in spread],
                    yerr=[p[2] for p in spread], fmt='none', ecolor=line.get_color(),
                    capsize=3)
    if not numeric:
      ax.set_xticks(range(len(values)))
      ax.set_xticklabels([format_value(v) for v in values])
    ax.set_xlabel(field)
    ax.set_ylabel(f'{title} (%)')
    ax.set_title(f'{title} vs {field}')
    ax.grid(True, alpha=0.3)
    if others and len(groups) <= 12:
      ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def plot_field(sweep: Sweep, rows: list[dict], field: str) -> str:
  """`sweep_<field>.png`: final and highest accuracy (mean, ± std where two or more seeds
  finished) against `field`, one line per combination of the other swept fields."""
  path = os.path.join(sweep.workdir, f'sweep_{_sanitise(field)}.png')
  field_figure(sweep, rows, field).savefig(path, format='png')
  return path
