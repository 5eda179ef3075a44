r"""Trains the backprop teacher (the CRNN's feed-forward twin) and saves it for distillation.

    python -m experiments.train_teacher --config=ep_jax/configs/default.py \
        --workdir=/tmp/teacher_digits --config.teacher.epochs=5

The teacher has the CRNN's layers (`config.model`), is trained with SGD momentum + cosine
learning rate on cross-entropy (`config.teacher.*`; momentum, weight decay and eta_min from
`config.optim`), and is saved to `workdir` (`ep_jax.teacher.save_teacher`). Point
`config.signals.kd.teacher_workdir` at that workdir. Its test accuracy is the BP baseline;
the last line printed is `final test_accuracy=<float>`.
"""

from __future__ import annotations

import time

from absl import app, flags
from ml_collections import config_flags

from ep_jax import data, network, teacher
from experiments import cli

def build_spec(config, info: data.DatasetInfo) -> network.NetworkSpec:
  """The teacher's spec: the CRNN's `config.model` layers with a softmax readout."""
  return network.make_spec(config.model.layout, input_shape=info.input_shape,
                           num_classes=info.num_classes, dense=tuple(config.model.dense),
                           readout='softmax', activation=config.model.activation,
                           kernel_size=config.model.kernel_size, padding=config.model.padding)


def run(config, workdir: str) -> dict:
  """Loads the data, trains the teacher, saves it; returns the info written to teacher.json."""
  start = time.time()
  d = config.data
  train_split, test_split, info = data.load_dataset(
      d.dataset, data_dir=d.data_dir or None, train_files=tuple(d.train_files),
      test_files=tuple(d.test_files), train_subset=d.train_subset, test_subset=d.test_subset,
      seed=config.seed)
  spec = build_spec(config, info)
  print(f'teacher: dataset={info.name} train={info.num_train} test={info.num_test} '
        f'layout={spec.layout!r} dense={spec.dense} activation={spec.activation} '
        f'state_shapes={spec.state_shapes}', flush=True)
  log = lambda line: print(line, flush=True)
  params, history = teacher.train(
      spec, train_split, test_split, info, epochs=config.teacher.epochs,
      learning_rate=config.teacher.learning_rate, batch_size=config.teacher.batch_size,
      seed=config.seed, momentum=config.optim.momentum, weight_decay=config.optim.weight_decay,
      eta_min=config.optim.eta_min, init_scale=config.model.init_scale,
      augment=d.augment, crop_padding=d.crop_padding, flip=d.flip,
      eval_batch_size=config.train.eval_batch_size, log=log)
  final = history[-1]
  meta = {'test_accuracy': float(final['test_accuracy']), 'test_loss': float(final['test_loss']),
          'train_accuracy': float(final['train_accuracy']), 'epochs': int(config.teacher.epochs),
          'learning_rate': float(config.teacher.learning_rate),
          'batch_size': int(config.teacher.batch_size), 'dataset': info.name,
          'seconds': time.time() - start, 'history': history}
  step = teacher.save_teacher(workdir, spec, params, meta)
  print(f'saved teacher to {workdir} (step {step}) in {time.time() - start:.1f}s', flush=True)
  print(f"final test_accuracy={meta['test_accuracy']:.4f}", flush=True)
  return meta


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  cli.quiet_logging()
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', 'ep_jax/configs/default.py',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where the teacher is saved.')
  app.run(main)
