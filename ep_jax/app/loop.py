"""The loop every trainer runs: the steps of an epoch, their means, and an evaluation pass.

The EP trainer (`train.train_and_evaluate`), the vmapped-seeds trainer
(`sweep.train_vmapped_seeds`) and the backprop teacher (`teacher.train`) differ in their steps,
their state and what they record; the loop over an epoch's steps, the progress lines, the
epoch means and the evaluation sums are this module's, for all three.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
  from ep_jax.app.metrics_io import ProgressReporter

__all__ = [
    'EpochRun', 'evaluate', 'mean_over_steps', 'run_epoch',
]


@dataclasses.dataclass
class EpochRun:
  """What the steps of an epoch have produced so far (readable after an interrupt).

  state: the latest train state. per_step: each finished step's metrics (device values).
  """
  state: Any
  per_step: list = dataclasses.field(default_factory=list)


def run_epoch(step: Callable[[Any, dict], tuple[Any, dict]], run: EpochRun,
              batches: Iterator[dict], *, num_steps: int, examples_per_step: int,
              progress: Optional[ProgressReporter] = None, first_step: int = 0,
              examples_before: int = 0, epoch: int = 1,
              reduce: Optional[Callable] = None,
              on_step: Optional[Callable[[EpochRun], None]] = None) -> EpochRun:
  """Runs `num_steps` steps `run.state, metrics = step(run.state, next(batches))`.

  `on_step(run)` follows each step (e.g. a mid-epoch checkpoint). `progress` (a
  `metrics_io.ProgressReporter`) gets each step's loss and accuracy (`reduce`d, e.g. a mean
  over vmapped seeds) once its values are there, one step behind the one running, so the
  device always has a step queued; `first_step` is the global index of the first step run here
  and `examples_before` the examples trained before it.
  """
  reduce = reduce or (lambda v: v)

  def report(i: int) -> None:
    metrics = run.per_step[i]
    jax.block_until_ready(metrics)
    progress.update(first_step + i + 1, examples_before + (i + 1) * examples_per_step,
                    reduce(metrics['loss']), reduce(metrics['accuracy']), epoch)

  for _ in range(num_steps):
    run.state, metrics = step(run.state, next(batches))
    run.per_step.append(metrics)
    if on_step is not None:
      on_step(run)
    if progress is not None and len(run.per_step) > 1:
      report(len(run.per_step) - 2)
  if progress is not None and run.per_step:
    report(len(run.per_step) - 1)
  return run


def mean_over_steps(per_step: list[dict], prior: dict | None = None) -> dict:
  """Float64 means over the steps of an epoch, per metric key (keeps any leading axes).

  `prior` (`{'count': n, 'means': {key: value}}`, saved by a mid-epoch checkpoint) holds the
  means of the epoch's first n steps; the result then covers those steps too.
  """
  host = jax.device_get(per_step)
  count = int(prior['count']) if prior else 0
  if not host:
    return {k: np.asarray(v, np.float64) for k, v in prior['means'].items()} if prior else {}
  means = {k: np.stack([np.asarray(m[k], np.float64) for m in host]).mean(axis=0)
           for k in host[0]}
  if not count:
    return means
  total = count + len(host)
  return {k: (np.asarray(prior['means'][k], np.float64) * count + v * len(host)) / total
          if k in prior['means'] else v for k, v in means.items()}


def evaluate(eval_step: Callable[[Any, dict], dict], params: Any,
             batches: Iterable[dict]) -> dict:
  """The sums `eval_step(params, batch)` returns, added over `batches`, on the host."""
  sums = None
  for batch in batches:
    out = eval_step(params, batch)
    sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
  return jax.device_get(sums)
