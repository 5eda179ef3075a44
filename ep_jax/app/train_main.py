r"""Trains a CRNN with Equilibrium Propagation: the `ep-jax-train` command.

  ep-jax-train [--config=PATH] [--config.FIELD=VALUE ...] [--workdir=DIR]
  python -m experiments.train [--config=experiments/configs/NAME.py] ...  (the same, in a checkout)

With no flags: the quick-start config (`ep_jax/app/config.py`: embedded 8x8 digits, no
download), written to a fresh folder under runs/. Running again with the same --workdir
resumes from its last checkpoint (with the same config: a changed field is refused, naming
it). Errors end the command with a short `error: ...` on stderr and a non-zero status (1; 2 for
bad flags; 130 for Ctrl-C); EP_JAX_TRACEBACK=1 or --verbosity=1 shows the traceback.
"""

import datetime
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from ep_jax.app import cli

__all__ = ['default_workdir', 'define_flags', 'main', 'run']


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]
  if os.path.abspath(config_path.split(':')[0]) == cli.DEFAULT_CONFIG:
    name = 'quickstart'
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  return os.path.join('runs', f'{stamp}-{name}')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  config = cli.config_value(_CONFIG)
  from ep_jax.app import train  # after flag parsing: keeps --help fast
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS['config'].config_filename)
  train.train_and_evaluate(config, workdir)


def define_flags() -> None:
  """Defines this script's flags (only when run as a script, so other code can import it)."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file(
      'config', cli.DEFAULT_CONFIG, 'Experiment config file.',
      lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None,
                                 'Output folder (default: a new runs/<time>-<config>).')


def run() -> None:
  """The `ep-jax-train` console script."""
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
