r"""Trains a CRNN with Equilibrium Propagation: the `ep-jax-train` command.

  ep-jax-train [--config=PATH] [--config.FIELD=VALUE ...] [--workdir=DIR]
  python -m experiments.train [--config=experiments/configs/NAME.py] ...  (the same, in a checkout)

With no flags: the quick-start config (`ep_jax/app/config.py`: embedded 8x8 digits, no
download). With no --workdir the run goes under runs/: the same command resumes the latest
unfinished run of the same config there (runs/<time>-<config> whose config.json matches and
whose epochs are not all trained), else starts a new runs/<time>-<config>; the first line says
which. Running again with the same --workdir resumes from its last checkpoint (with the same
config: a changed field is refused, naming it; `--config=WORKDIR/config.json` is the run's own
config). Ctrl-C stops after the current step and prints the command that resumes the run.
Errors end the command with a short `error: ...` on stderr and a non-zero status (1; 2 for bad
flags; 130 for Ctrl-C); EP_JAX_TRACEBACK=1 or --verbosity=1 shows the traceback.
"""

import datetime
import os
import re
import sys

from absl import app
from absl import flags
import ml_collections

from ep_jax.app import cli

__all__ = ['PROGRAM', 'RUNS_DIR', 'config_name', 'default_workdir', 'define_flags', 'main', 'run']

RUNS_DIR = 'runs'
# How the command was started, for the resume command Ctrl-C prints (`run(program=...)`).
PROGRAM = 'ep-jax-train'
_program = PROGRAM


def config_name(config_path: str) -> str:
  """The name of a config file without folder and extension (`quickstart`; the default config
  `ep_jax/app/config.py` is the quick start's)."""
  if os.path.abspath(config_path.split(':')[0]) == cli.DEFAULT_CONFIG:
    return 'quickstart'
  return os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]


def default_workdir(config: ml_collections.ConfigDict, config_path: str,
                    runs_dir: str = RUNS_DIR) -> tuple[str, bool]:
  """`(workdir, resuming)`: the latest unfinished run of `config` in `runs_dir`
  (`<time>-<config name>` folders), or a new `runs_dir/<time>-<config name>`."""
  from ep_jax.app import train  # pylint: disable=g-import-not-at-top
  name = config_name(config_path)
  pattern = re.compile(r'\d{8}-\d{6}(-\d+)?-' + re.escape(name))
  if os.path.isdir(runs_dir):
    for entry in sorted(os.listdir(runs_dir), reverse=True):
      path = os.path.join(runs_dir, entry)
      if pattern.fullmatch(entry) and train.is_unfinished_run(config, path):
        return path, True
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  path, n = os.path.join(runs_dir, f'{stamp}-{name}'), 1
  while os.path.exists(path):  # two new runs within a second
    n += 1
    path = os.path.join(runs_dir, f'{stamp}-{n}-{name}')
  return path, False


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logging()
  config = cli.config_value(_CONFIG)
  from ep_jax.app import train  # after flag parsing: keeps --help fast
  workdir = _WORKDIR.value
  if not workdir:
    workdir, resuming = default_workdir(config, flags.FLAGS['config'].config_filename)
    if resuming:
      epoch = min(train.epochs_checkpointed(workdir) + 1, int(config.train.epochs))
      print(f'resuming {workdir} (epoch {epoch}/{config.train.epochs}); --workdir=DIR for '
            'another run', flush=True)
    else:
      print(f'new run in {workdir}; --workdir=DIR for another folder', flush=True)
  command = cli.command_line(_program, sys.argv[1:], workdir=workdir)
  train.train_and_evaluate(config, workdir, resume_command=command)


def define_flags() -> None:
  """Defines this script's flags (only when run as a script, so other code can import it)."""
  global _CONFIG, _WORKDIR
  _CONFIG = cli.define_config_file(cli.DEFAULT_CONFIG)
  _WORKDIR = flags.DEFINE_string(
      'workdir', None, 'Output folder (default: the latest unfinished run of the config under '
      'runs/, else a new runs/<time>-<config>).')


def run(program: str = PROGRAM) -> None:
  """The `ep-jax-train` console script; `program` is how it was started (`python -m
  experiments.train` for the checkout's wrapper), the start of the resume command."""
  global _program
  _program = program
  cli.run(main, define_flags)


if __name__ == '__main__':
  run('python -m ep_jax.app.train_main')
