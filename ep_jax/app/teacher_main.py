r"""Trains the backprop teacher (the CRNN's feed-forward twin) and saves it for distillation:
the `ep-jax-train-teacher` command (`python -m experiments.train_teacher` in a checkout).

    ep-jax-train-teacher --workdir=runs/teacher_digits --config.teacher.epochs=5
    python -m experiments.train_teacher --config=experiments/configs/digits_kd.py \
        --workdir=runs/teacher_digits

The config defaults to the quick start's (`ep_jax/app/config.py`).

The teacher has the CRNN's layers (`config.model`), is trained with SGD momentum + cosine
learning rate on cross-entropy (`config.teacher.*`, including its own `init_scale`; momentum,
weight decay and eta_min from `config.optim`), and is saved to `workdir`
(`ep_jax.app.teacher.save_teacher`). Point `config.signals.kd.teacher_workdir` at that
workdir (or set `signals.kd.train_teacher` and `experiments.train` trains it into
WORKDIR/teacher itself).
Its test accuracy is the BP baseline; the last line printed is `final test_accuracy=<float>`.
"""

from __future__ import annotations

import functools

from absl import app, flags

from ep_jax.app import teacher
from ep_jax.app import cli

__all__ = ['define_flags', 'main', 'run']


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  cli.quiet_logging()
  teacher.train_from_config(cli.config_value(_CONFIG), _WORKDIR.value,
                            print_fn=functools.partial(print, flush=True))


def define_flags() -> None:
  """Defines this script's flags (only when run as a script)."""
  global _CONFIG, _WORKDIR
  _CONFIG = cli.define_config_file(cli.DEFAULT_CONFIG, 'path to config file.')
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Where the teacher is saved.')


def run() -> None:
  """The `ep-jax-train-teacher` console script."""
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
