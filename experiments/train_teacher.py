r"""Trains the backprop teacher (the CRNN's feed-forward twin) and saves it for distillation.

    python -m experiments.train_teacher --config=experiments/configs/default.py \
        --workdir=/tmp/teacher_digits --config.teacher.epochs=5

The teacher has the CRNN's layers (`config.model`), is trained with SGD momentum + cosine
learning rate on cross-entropy (`config.teacher.*`, including its own `init_scale`; momentum,
weight decay and eta_min from `config.optim`), and is saved to `workdir`
(`ep_jax.app.teacher.save_teacher`). Point `config.signals.kd.teacher_workdir` at that workdir.
Its test accuracy is the BP baseline; the last line printed is `final test_accuracy=<float>`.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from ep_jax.app import teacher
from ep_jax.app import train as train_lib
from experiments import cli


def init_scale(config) -> float:
  """The teacher's weight init scale: `config.teacher.init_scale`, or the CRNN's when 0."""
  return float(config.teacher.get('init_scale', 0.0)) or float(config.model.init_scale)


def run(config, workdir: str, print_fn: Callable[[str], None] = print) -> dict:
  """Loads the data, trains the teacher, saves it; returns the info written to teacher.json.

  `print_fn` receives every progress line (the ablation prefixes them with the run name).
  """
  start = time.time()
  t = config.teacher
  if int(t.epochs) < 1:
    raise ValueError(f'teacher.epochs must be >= 1, got {t.epochs}')
  train_split, test_split, info = train_lib.load_data(config)
  spec = train_lib.build_spec(config, info, readout='softmax')  # the CRNN's layers
  print_fn(f'teacher: dataset={info.name} train={info.num_train} test={info.num_test} '
           f'layout={spec.layout!r} dense={spec.dense} activation={spec.activation} '
           f'init_scale={init_scale(config)} state_shapes={spec.state_shapes}')
  params, history = teacher.train(
      spec, train_split, test_split, info, epochs=t.epochs, learning_rate=t.learning_rate,
      batch_size=t.batch_size, seed=config.seed, momentum=config.optim.momentum,
      weight_decay=config.optim.weight_decay, eta_min=config.optim.eta_min,
      init_scale=init_scale(config), eval_batch_size=config.train.eval_batch_size,
      log=print_fn, **train_lib.augmentation(config))
  final = history[-1]
  meta = {'test_accuracy': float(final['test_accuracy']), 'test_loss': float(final['test_loss']),
          'train_accuracy': float(final['train_accuracy']), 'epochs': int(t.epochs),
          'init_scale': init_scale(config), 'learning_rate': float(t.learning_rate),
          'batch_size': int(t.batch_size), 'dataset': info.name,
          'seconds': time.time() - start, 'history': history}
  step = teacher.save_teacher(workdir, spec, params, meta)
  print_fn(f'saved teacher to {workdir} (step {step}) in {time.time() - start:.1f}s')
  print_fn(f"final test_accuracy={meta['test_accuracy']:.4f}")
  return meta


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  cli.quiet_logging()
  run(cli.config_value(_CONFIG), _WORKDIR.value, print_fn=functools.partial(print, flush=True))


def define_flags() -> None:
  """Defines this script's flags (only when run as a script)."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file(
      'config', os.path.join(cli.CONFIG_DIR, 'default.py'), lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where the teacher is saved.')


if __name__ == '__main__':
  cli.run(main, define_flags)
