r"""Where each layer's drive comes from at a trained run's free fixed point.

  python -m experiments.drive_sources --run_dir=W [--step=N] [--split=train|test] \
      [--batch_size=256] [--max_steps=1000] [--out=FILE.json]

Restores the run's parameters (checkpoint `--step`, default the latest; `config.json` gives
the network and data; `--split=test` is the run's evaluation split, its validation examples
when it trained with `data.validation`), relaxes the free phase of the first `--batch_size`
examples from zero states (`ep.mode`, tolerance 1e-5, at most `--max_steps` steps) and splits
every layer's drive `u_l = ∂Φ/∂s_l` (the activation's argument, `s_l = σ(u_l)`) into its
sources (`energy.drive_sources`): from below (the layer's own weights and bias on the state
under it), from above (the feedback of layer l+1's weights) and from the links. It prints
the mean of each part per layer with the mean |s_l| and the fraction of units at 0, and writes
them to `--out` (default `<run_dir>/drive_sources.json`). A layer that sits at 0 is silenced by
whichever part makes its drive negative: its own weights, or the layer above through the
symmetric feedback.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

from absl import app, flags

from experiments import cli
from experiments.gdu import load_run_batch

PARTS = ('total', 'below', 'above', 'links')


def run(run_dir: str, *, step: Optional[int] = None, split: str = 'test',
        batch_size: int = 256, max_steps: int = 1000, out: Optional[str] = None,
        print_fn=print) -> dict:
  """Computes, prints and writes the report (see the module docstring); returns it."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from ep_jax import energy, network, relaxation  # pylint: disable=g-import-not-at-top
  from ep_jax.app import data  # pylint: disable=g-import-not-at-top

  if max_steps < 1:
    raise ValueError(f'--max_steps must be >= 1, got {max_steps}')
  start = time.time()
  run_batch = load_run_batch(run_dir, step, split=split, batch_size=batch_size)
  spec, params, source = run_batch.spec, run_batch.params, run_batch.source
  x = jnp.asarray(data.normalize(run_batch.images, run_batch.info))
  free = relaxation.relax(spec, params, x, network.init_states(spec, batch_size),
                          max_steps=max_steps, tol=1e-5, mode=run_batch.config.ep.mode)
  parts = energy.drive_sources(spec, params, x, free.states)
  layers = []
  for l, name in enumerate(spec.layer_names):
    row = {'layer': name, 'mean_abs_state': float(jnp.mean(jnp.abs(free.states[l]))),
           'frac_at_zero': float(jnp.mean(free.states[l] <= 0))}
    row.update({f'mean_{p}': float(jnp.mean(parts[p][l])) for p in PARTS})
    layers.append(row)
  report = {'run_dir': run_dir, 'parameters': source, 'split': split, 'batch_size': batch_size,
            'free_steps': int(free.steps), 'free_residual': float(free.residual),
            'layers': layers, 'seconds': round(time.time() - start, 1)}
  out = out or os.path.join(run_dir, 'drive_sources.json')
  with open(out, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=1)
  print_fn(f'{source}; first {batch_size} {split} examples, free phase {report["free_steps"]} '
           f'steps, residual {report["free_residual"]:.1e}')
  print_fn(markdown(report))
  print_fn(f'wrote {out} ({report["seconds"]}s)')
  return report


def markdown(report: dict) -> str:
  lines = ['| layer | mean u_l | from below | from above | links | mean \\|s_l\\| | at 0 |',
           '|---|---|---|---|---|---|---|']
  for r in report['layers']:
    lines.append(f"| {r['layer']} | {r['mean_total']:+.3f} | {r['mean_below']:+.3f} | "
                 f"{r['mean_above']:+.3f} | {r['mean_links']:+.3f} | "
                 f"{r['mean_abs_state']:.3f} | {r['frac_at_zero']:.2f} |")
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  run(_RUN_DIR.value, step=_STEP.value, split=_SPLIT.value, batch_size=_BATCH.value,
      max_steps=_MAX_STEPS.value, out=_OUT.value)


def define_flags() -> None:
  """Defines this script's flags (only when run as a script, so tests can import it)."""
  global _RUN_DIR, _STEP, _SPLIT, _BATCH, _MAX_STEPS, _OUT
  _RUN_DIR = flags.DEFINE_string('run_dir', None, 'Workdir of an experiments.train run.',
                                 required=True)
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  _SPLIT = flags.DEFINE_enum('split', 'test', ['train', 'test'], 'Where the examples come from.')
  _BATCH = flags.DEFINE_integer('batch_size', 256, 'Examples relaxed together.')
  _MAX_STEPS = flags.DEFINE_integer('max_steps', 1000, 'Limit of the free phase.')
  _OUT = flags.DEFINE_string('out', None,
                             'JSON output (default: <run_dir>/drive_sources.json).')


if __name__ == '__main__':
  cli.run(main, define_flags)
