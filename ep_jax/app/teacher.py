"""Training the feed-forward twin (`ep_jax.feedforward`) as the backprop teacher, and its I/O.

`train` fits the twin with optax (SGD momentum, cosine learning rate, cross-entropy);
on disk (`save_teacher`; `ep_jax.app.build.load_teacher` reads it back), a teacher workdir
holds `checkpoints/<step>/` (the parameters, through `ep_jax.app.checkpointing.Checkpointer`)
and `teacher.json` (`NetworkSpec.to_dict`, the step to load, the test accuracy and other info).
`train_from_config` trains and saves the twin of a run's config (`config.teacher`), as
`python -m experiments.train_teacher` and the ablation do.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import jax

from ep_jax import network, optim
from ep_jax.app import build, data, loop
from ep_jax.app.build import TEACHER_CHECKPOINTS, TEACHER_JSON
from ep_jax.app.checkpointing import Checkpointer
from ep_jax.app.metrics_io import percent
from ep_jax.feedforward import make_eval_step, make_train_step
from ep_jax.network import NetworkSpec

if TYPE_CHECKING:
  import ml_collections

__all__ = ['evaluate', 'init_scale', 'is_trained', 'save_teacher', 'train', 'train_from_config']


def evaluate(spec: NetworkSpec, params: dict, split: data.Split, info: data.DatasetInfo, *,
             batch_size: int = 256, eval_step: Optional[Callable] = None) -> dict:
  """`{'loss', 'accuracy'}` over every example of `split`."""
  eval_step = eval_step or jax.jit(make_eval_step(spec))
  sums = loop.evaluate(eval_step, params, data.eval_batches(split, info, batch_size=batch_size))
  return {'loss': float(sums['loss_sum']) / float(sums['count']),
          'accuracy': float(sums['correct']) / float(sums['count'])}


def train(spec: NetworkSpec, train_split: data.Split, test_split: data.Split,
          info: data.DatasetInfo, *, epochs: int, learning_rate: float, batch_size: int,
          seed: int = 0, momentum: float = 0.9, weight_decay: float | Sequence[float] = 0.0,
          eta_min: float = 0.0, init_scale: float = 1.0, augment: bool = False,
          crop_padding: int = 4, flip: bool = True, crop_mode: str = 'constant',
          eval_batch_size: int = 256,
          log: Optional[Callable[[str], None]] = print) -> tuple[dict, list[dict]]:
  """Trains the feed-forward twin by backprop; returns `(params, history)`.

  Optimiser: `optim.make_optimizer` with the one `learning_rate` cosine-annealed per step to
  `eta_min` over all epochs, `weight_decay` one value or one per synapse group.
  history: one dict per epoch with `epoch`, `train_loss`, `train_accuracy`, `test_loss`,
  `test_accuracy` and `seconds` (wall time since the start, compilation included).
  """
  if epochs < 1:
    raise ValueError(f'teacher epochs must be >= 1, got {epochs}')
  steps_per_epoch = data.num_train_batches(train_split, batch_size)
  params = network.init_params(spec, jax.random.PRNGKey(seed), scale=init_scale)
  tx = optim.make_optimizer(spec, params, learning_rates=learning_rate, momentum=momentum,
                            weight_decay=weight_decay, schedule='cosine',
                            total_steps=epochs * steps_per_epoch, eta_min=eta_min)
  opt_state = tx.init(params)
  step = jax.jit(make_train_step(spec, tx), donate_argnums=(0, 1))
  eval_step = jax.jit(make_eval_step(spec))
  history, start = [], time.time()
  batches = data.train_iterator(
      data.train_dataset(train_split, info, batch_size=batch_size, num_epochs=epochs, seed=seed,
                         augment=augment, crop_padding=crop_padding, flip=flip,
                         crop_mode=crop_mode), prefetch=2)

  def pair_step(state, batch):  # the twin's (params, opt_state) as one train state
    params, opt_state, metrics = step(*state, batch)
    return (params, opt_state), metrics

  for epoch in range(epochs):
    run = loop.run_epoch(pair_step, loop.EpochRun((params, opt_state)), batches,
                    num_steps=steps_per_epoch, examples_per_step=batch_size)
    (params, opt_state), means = run.state, loop.mean_over_steps(run.per_step)
    test = evaluate(spec, params, test_split, info, batch_size=eval_batch_size,
                    eval_step=eval_step)
    record = {'epoch': epoch + 1, 'train_loss': float(means['loss']),
              'train_accuracy': float(means['accuracy']), 'test_loss': test['loss'],
              'test_accuracy': test['accuracy'], 'seconds': time.time() - start}
    history.append(record)
    if log is not None:
      log(f"epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f} "
          f"acc {percent(record['train_accuracy'])} | test loss {record['test_loss']:.4f} "
          f"acc {percent(record['test_accuracy'])} | elapsed {record['seconds']:.1f} s")
  return params, history


def init_scale(config: ml_collections.ConfigDict) -> float:
  """The teacher's weight init scale: `config.teacher.init_scale`, or the CRNN's when 0."""
  return float(config.teacher.get('init_scale', 0.0)) or float(config.model.init_scale)


def is_trained(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """`workdir` holds a teacher trained for `config.teacher.epochs` epochs."""
  path = os.path.join(workdir, TEACHER_JSON)
  try:
    with open(path, 'r', encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return False
  return int(meta.get('epochs', -1)) == int(config.teacher.epochs)


def train_from_config(config: ml_collections.ConfigDict, workdir: str,
                      print_fn: Callable[[str], None] = print) -> dict:
  """Trains the feed-forward twin of `config`'s CRNN on its data with `config.teacher`'s
  epochs, rate, batch size, init scale and activation (`teacher.activation`, '' = the CRNN's),
  and `config.optim`'s momentum, weight decay and final rate; saves it to `workdir`; returns
  the info written to `teacher.json` (with the seed and the data augmentation it trained with).

  `print_fn` receives every progress line.
  """
  start = time.time()
  t = config.teacher
  if int(t.epochs) < 1:
    raise ValueError(f'teacher.epochs must be >= 1, got {t.epochs}')
  train_split, test_split, info = build.load_data(config)
  spec = build.build_spec(config, info, readout='softmax',  # the CRNN's layers
                          activation=t.get('activation', ''))
  print_fn(f'teacher: dataset={info.name} train={info.num_train} test={info.num_test} '
           f'layout={spec.layout!r} dense={spec.dense} activation={spec.activation} '
           f'init_scale={init_scale(config)} state_shapes={spec.state_shapes}')
  augmentation = build.augmentation(config)
  params, history = train(
      spec, train_split, test_split, info, epochs=t.epochs, learning_rate=t.learning_rate,
      batch_size=t.batch_size, seed=config.seed, momentum=config.optim.momentum,
      weight_decay=config.optim.weight_decay, eta_min=config.optim.eta_min,
      init_scale=init_scale(config), eval_batch_size=config.train.eval_batch_size,
      log=print_fn, **augmentation)
  final = history[-1]
  meta = {'test_accuracy': float(final['test_accuracy']), 'test_loss': float(final['test_loss']),
          'train_accuracy': float(final['train_accuracy']), 'epochs': int(t.epochs),
          'init_scale': init_scale(config), 'learning_rate': float(t.learning_rate),
          'batch_size': int(t.batch_size), 'dataset': info.name, 'seed': int(config.seed),
          'augmentation': augmentation,
          'seconds': time.time() - start, 'history': history}
  step = save_teacher(workdir, spec, params, meta)
  print_fn(f'saved teacher to {workdir} (step {step}) in {time.time() - start:.1f}s')
  print_fn(f"final test_accuracy={meta['test_accuracy']:.4f}")
  return meta


def save_teacher(workdir: str, spec: NetworkSpec, params: dict, info: dict) -> int:
  """Saves the parameters (a new checkpoint step) and `teacher.json`; returns the step.

  info: JSON-able facts to keep, e.g. `{'test_accuracy': 0.97, 'epochs': 20}`. Saving again
  into the same workdir writes the next step and points `teacher.json` at it.
  """
  os.makedirs(workdir, exist_ok=True)
  leaves = jax.tree_util.tree_leaves(params)
  with Checkpointer(os.path.join(workdir, TEACHER_CHECKPOINTS), max_to_keep=1,
                    best_metric='test_accuracy') as ckpt:
    step = (ckpt.latest_step() or 0) + 1
    ckpt.save(step, params, extra={'spec': spec.to_dict(), 'info': dict(info)},
              metrics={'test_accuracy': info.get('test_accuracy', float('nan'))})
  meta = dict(info)
  meta.update({'spec': spec.to_dict(), 'step': step, 'dtype': str(leaves[0].dtype)})
  path = os.path.join(workdir, TEACHER_JSON)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(meta, f, indent=2, sort_keys=True, default=float)
  os.replace(tmp, path)
  return step
