r"""How a trained network's free phase converges, synchronous vs asynchronous updates, and
how many steps and seconds each solver needs to a tolerance.

  python -m experiments.relaxation_check --run_dir=runs/mnist [--step=N] [--batch_size=128] \
      [--split=train|test] [--modes=sync,async] [--tols=1e-3,1e-4,1e-5] [--max_steps=1000] \
      [--at=60,250] [--solvers=plain,anderson] [--memory=5] [--out=PATH]

Loads a training run (its `config.json` and checkpoint `--step`, default the latest), takes the
first `--batch_size` examples of `--split`, and runs the free phase from zero states for
`--max_steps` steps in each mode, recording the residual `max |s^t - s^{t-1}|` of every step
(`ep_jax.relaxation.residual_trace`, the run's state and compute dtypes). Per mode it reports:

* `steps_to_tol`: the step at which `relax(..., tol=τ)` would stop, for each τ in `--tols`
  (None: not reached within `--max_steps`);
* `residual_at`: the residual after each T in `--at` (what a fixed T1 leaves);
* `tail_max`: the largest residual over the last 10% of the steps, and `settles`: whether it is
  at most the smallest τ (a relaxation that reached τ once but keeps moving does not settle);
* `accuracy_at`: the readout's accuracy on these examples after each T in `--at` and after
  `--max_steps` (whether a longer free phase than training's T1 changes the predictions).

With `--solvers`, per mode and solver (`plain`: s <- G(s); `anderson`: `relaxation.Solver`
with `--memory`, its other settings the defaults), `solvers` holds for the free phase from zero
states and for the nudged phases at ±β (the run's `ep.beta`, output cost, the examples'
labels) from a common free fixed point (plain iteration to a tenth of the smallest τ, or
`--max_steps`): for each τ the steps `relax(..., tol=τ)` takes (`--max_steps` limit), its wall
time after compilation (the fastest of three calls), and the residual it ends at.

Prints markdown tables and writes everything to `--out` (default
`<run_dir>/relaxation_check.json`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional, Sequence

from absl import app, flags

from experiments import cli
from experiments.gdu import load_run_batch, load_run_params


def summarize(trace, *, tols: Sequence[float], at: Sequence[int]) -> dict:
  """Summary of a residual trace `(steps, L)` (see the module docstring)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  residual = np.asarray(trace, np.float64).max(axis=1)
  steps = len(residual)
  if steps == 0:
    raise ValueError('the trace has no steps')

  def first_at_most(tol):
    hits = np.flatnonzero(residual <= tol)
    return int(hits[0]) + 1 if hits.size else None

  tail = residual[steps - max(1, steps // 10):]
  tail_max = float(tail.max())
  return {
      'steps_to_tol': {f'{t:g}': first_at_most(t) for t in tols},
      'residual_at': {str(t): float(residual[t - 1]) for t in at if 1 <= t <= steps},
      'final_residual': float(residual[-1]),
      'tail_max': tail_max,
      'settles': bool(np.isfinite(tail_max) and tail_max <= min(tols)),
  }


def accuracy_at(spec, params, x, labels, states, steps: Sequence[int], *, mode: str,
                compute_dtype=None) -> dict:
  """`{str(T): accuracy of the readout after T free steps from states}` for T in `steps`
  (ascending): one relaxation, read at each T."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from ep_jax import energy, relaxation  # pylint: disable=g-import-not-at-top

  @jax.jit
  def advance(p, x, s, n):
    return relaxation.relax(spec, p, x, s, max_steps=n, tol=0.0, mode=mode,
                            compute_dtype=compute_dtype).states

  out, done = {}, 0
  for t in steps:
    states = advance(params, x, states, jnp.asarray(t - done))
    done = t
    predicted = jnp.argmax(energy.logits(spec, params, states), axis=-1)
    out[str(t)] = float(jnp.mean(predicted == labels))
  return out


def solver_of(name: str, memory: int = 3):
  """`'plain'` -> None (plain iteration), `'anderson'` -> `relaxation.Solver('anderson', m)`."""
  from ep_jax import relaxation  # pylint: disable=g-import-not-at-top
  if name == 'plain':
    return None
  if name not in relaxation.SOLVERS:
    raise ValueError(f'unknown solver {name!r}; known: {relaxation.SOLVERS}')
  return relaxation.Solver(name, memory=memory)


def solver_comparison(spec, params, x, labels, *, modes: Sequence[str],
                      solvers: Sequence[str], tols: Sequence[float], max_steps: int,
                      beta: float, memory: int = 3, compute_dtype=None,
                      damping: float = 1.0, repeats: int = 3) -> dict:
  """`{mode: {solver: {phase: {tol: {steps, seconds, residual}}}}}`, phases 'free', 'nudged+'
  and 'nudged-' (see the module docstring). Seconds: the fastest of `repeats` calls after a
  compiling one."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from ep_jax import network, relaxation  # pylint: disable=g-import-not-at-top

  dtype = x.dtype
  zeros = network.init_states(spec, x.shape[0], dtype)
  out = {}
  for mode in modes:
    start = jax.jit(lambda p, x, s, mode=mode: relaxation.relax(
        spec, p, x, s, max_steps=max_steps, tol=min(tols) / 10, mode=mode,
        compute_dtype=compute_dtype, damping=damping).states)(params, x, zeros)
    out[mode] = {}
    for name in solvers:
      solver = solver_of(name, memory)

      @jax.jit
      def phase(p, x, s, tol, b, mode=mode, solver=solver):
        return relaxation.relax(spec, p, x, s, targets={'label': labels}, beta=b,
                                max_steps=max_steps, tol=tol, mode=mode,
                                compute_dtype=compute_dtype, damping=damping, solver=solver)

      @jax.jit
      def free(p, x, s, tol, mode=mode, solver=solver):
        return relaxation.relax(spec, p, x, s, max_steps=max_steps, tol=tol, mode=mode,
                                compute_dtype=compute_dtype, damping=damping, solver=solver)

      runs = {'free': lambda tol: free(params, x, zeros, tol),
              'nudged+': lambda tol: phase(params, x, start, tol, jnp.asarray(beta, dtype)),
              'nudged-': lambda tol: phase(params, x, start, tol, jnp.asarray(-beta, dtype))}
      out[mode][name] = {}
      for phase_name, fn in runs.items():
        rows = {}
        for tol in tols:
          t = jnp.asarray(tol, dtype)
          jax.block_until_ready(fn(t))
          seconds = []
          for _ in range(repeats):
            began = time.perf_counter()
            r = jax.block_until_ready(fn(t))
            seconds.append(time.perf_counter() - began)
          rows[f'{tol:g}'] = {'steps': int(r.steps), 'seconds': min(seconds),
                              'residual': float(r.residual)}
        out[mode][name][phase_name] = rows
  return out


def solver_markdown(comparison: dict, tols: Sequence[float]) -> str:
  """One row per mode, solver and phase: steps / seconds / final residual at each τ."""
  head = ['mode', 'solver', 'phase'] + [f'τ = {t:g}: steps, s, residual' for t in tols]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for mode, by_solver in comparison.items():
    for name, by_phase in by_solver.items():
      for phase_name, rows in by_phase.items():
        cells = [mode, name, phase_name]
        for t in tols:
          r = rows[f'{t:g}']
          cells.append(f'{r["steps"]}, {r["seconds"]:.3f}, {r["residual"]:.1e}')
        lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def markdown(report: dict) -> str:
  """A table: one row per mode."""
  tols, at = report['tols'], [t for t in report['at'] if t <= report['max_steps']]
  acc_at = list(next(iter(report['modes'].values())).get('accuracy_at', {}))
  head = (['mode'] + [f'steps to {t:g}' for t in tols] + [f'residual at {t}' for t in at] +
          [f'max residual, last 10% of {report["max_steps"]}', 'settles'] +
          [f'accuracy at {t}' for t in acc_at])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for mode, r in report['modes'].items():
    cells = [mode] + [str(r['steps_to_tol'][f'{t:g}'] or f'> {report["max_steps"]}')
                      for t in tols]
    cells += [f'{r["residual_at"][str(t)]:.2e}' for t in at]
    cells += [f'{r["tail_max"]:.2e}', 'yes' if r['settles'] else 'no']
    cells += [f'{r["accuracy_at"][t]:.4f}' for t in acc_at]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def run(run_dir: str, *, step: Optional[int] = None, batch_size: int = 128,
        split: str = 'train', modes: Sequence[str] = ('sync', 'async'),
        tols: Sequence[float] = (1e-3, 1e-4, 1e-5), max_steps: int = 1000,
        at: Sequence[int] = (60, 250), solvers: Sequence[str] = (), memory: int = 3,
        out: Optional[str] = None, print_fn=print) -> dict:
  """Computes, prints and writes the report (see the module docstring); returns it."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from ep_jax import network, relaxation  # pylint: disable=g-import-not-at-top
  from ep_jax.app import build, data  # pylint: disable=g-import-not-at-top
  from ep_jax.app import train as train_lib  # pylint: disable=g-import-not-at-top

  for mode in modes:
    if mode not in relaxation.MODES:
      raise ValueError(f'unknown mode {mode!r}; known: {relaxation.MODES}')
  if not tols or any(t <= 0 for t in tols):
    raise ValueError(f'--tols must be positive numbers, got {list(tols)}')
  if max_steps < 1:
    raise ValueError(f'--max_steps must be >= 1, got {max_steps}')
  for name in solvers:
    solver_of(name, memory)  # a bad name or memory fails before anything is loaded
  start = time.time()
  run_batch = load_run_batch(run_dir, step, split=split, batch_size=batch_size)
  config, spec, params, source = (run_batch.config, run_batch.spec, run_batch.params,
                                  run_batch.source)
  dtype = train_lib.state_dtype(config)
  compute_dtype = build.build_ep_config(config).compute_dtype
  x = jnp.asarray(data.normalize(run_batch.images, run_batch.info), dtype)
  labels = jnp.asarray(run_batch.labels)
  states = network.init_states(spec, batch_size, dtype)
  report = {'run_dir': run_dir, 'parameters': source, 'split': split, 'batch_size': batch_size,
            'layout': spec.layout, 'max_steps': max_steps, 'tols': list(tols), 'at': list(at),
            'modes': {}}
  for mode in modes:
    trace_fn = jax.jit(lambda p, x, s, mode=mode: relaxation.residual_trace(
        spec, p, x, s, steps=max_steps, mode=mode, compute_dtype=compute_dtype))
    report['modes'][mode] = summarize(trace_fn(params, x, states), tols=tols, at=at)
    report['modes'][mode]['accuracy_at'] = accuracy_at(
        spec, params, x, labels, states, sorted({t for t in at if t <= max_steps} | {max_steps}),
        mode=mode, compute_dtype=compute_dtype)
  if solvers:
    ep = build.build_ep_config(config)
    report['solvers'] = solver_comparison(
        spec, params, x, labels, modes=modes, solvers=solvers, tols=tols,
        max_steps=max_steps, beta=float(ep.beta), memory=memory, compute_dtype=compute_dtype,
        damping=ep.damping)
    report['memory'] = memory
  report['seconds'] = round(time.time() - start, 1)
  out = out or os.path.join(run_dir, 'relaxation_check.json')
  with open(out, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=1)
  print_fn(f'{source}; first {batch_size} {split} examples, free phase from zero states')
  print_fn(markdown(report))
  if solvers:
    print_fn('')
    print_fn(solver_markdown(report['solvers'], tols))
  print_fn(f'wrote {out} ({report["seconds"]}s)')
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  try:
    tols = [float(t) for t in _TOLS.value]
    at = [int(t) for t in _AT.value]
  except ValueError as e:
    raise app.UsageError(f'--tols and --at must be numbers: {e}') from None
  run(_RUN_DIR.value, step=_STEP.value, batch_size=_BATCH.value, split=_SPLIT.value,
      modes=tuple(_MODES.value), tols=tols, max_steps=_MAX_STEPS.value, at=at,
      solvers=tuple(_SOLVERS.value), memory=_MEMORY.value, out=_OUT.value)


def define_flags() -> None:
  """Defines this script's flags (only when run as a script, so tests can import it)."""
  global _RUN_DIR, _STEP, _BATCH, _SPLIT, _MODES, _TOLS, _MAX_STEPS, _AT, _OUT
  global _SOLVERS, _MEMORY
  _RUN_DIR = flags.DEFINE_string('run_dir', None, 'Workdir of an experiments.train run.',
                                 required=True)
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  _BATCH = flags.DEFINE_integer('batch_size', 128, 'Examples relaxed together.')
  _SPLIT = flags.DEFINE_enum('split', 'train', ['train', 'test'], 'Where the examples come from.')
  _MODES = flags.DEFINE_list('modes', ['sync', 'async'], 'Update schedules to compare.')
  _TOLS = flags.DEFINE_list('tols', ['1e-3', '1e-4', '1e-5'], 'Residual tolerances.')
  _MAX_STEPS = flags.DEFINE_integer('max_steps', 1000, 'Steps of each relaxation.')
  _AT = flags.DEFINE_list('at', ['60', '250'], 'Report the residual after these step counts.')
  _SOLVERS = flags.DEFINE_list('solvers', [], 'Solvers to time to each tolerance '
                               '(plain, anderson); none: only the residual traces.')
  _MEMORY = flags.DEFINE_integer('memory', 3, "Anderson's memory m.")
  _OUT = flags.DEFINE_string('out', None,
                             'JSON output (default: <run_dir>/relaxation_check.json).')


if __name__ == '__main__':
  cli.run(main, define_flags)
