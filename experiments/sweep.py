r"""Hyper-parameter sweeps over a grid of config fields, times seeds.

  python -m experiments.sweep [--config=experiments/configs/NAME.py] [--config.FIELD=VALUE ...]
      --grid='optim.learning_rates=[0.05,0.1];ep.beta=[0.5,1.0]' [--seeds=3] [--vmap_seeds]
      [--launcher=local|slurm] --workdir=DIR

--grid: `FIELD=[V1,V2,...]` entries separated by `;`; FIELD is a config path, the values a
Python list literal (a scalar for a tuple field such as optim.learning_rates is a 1-tuple).
--seeds=N runs seeds config.seed + i, i < N. Each run has its own folder
DIR/<point>/seed=<s>/ (see ep_jax/app/sweep.py).

--launcher=local (default) runs the configurations one after another; running the same command
again skips finished runs and resumes interrupted ones. --vmap_seeds trains the seeds of one
configuration in a single compiled program (jax.vmap, one device; on CPU it is slower than
sequential runs, because XLA:CPU's grouped convolutions are slow). Results: DIR/sweep.csv,
DIR/sweep.md, DIR/sweep_<field>.png: mean ± std over the finished seeds (one seed: its value
alone). The best point is the highest final validation accuracy, so hold out a validation split
with --config.data.validation=N (the runs then evaluate on it); with data.validation=0 they
evaluate on the test split and no best point is named.

--launcher=slurm writes DIR/sweep.sbatch (an array job, one task per configuration, run by this
interpreter, sys.executable, unless the job's environment sets PYTHON) and prints the sbatch
command; it runs nothing. When the array is done, the same command with
--launcher=local gathers the results (finished runs are skipped).
"""

import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli



def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  from ep_jax.app import sweep  # pylint: disable=g-import-not-at-top  (after flag parsing)
  config = cli.config_value(_CONFIG)
  try:
    plan = sweep.make_sweep(config, _GRID.value, _SEEDS.value, _WORKDIR.value)
  except sweep.GridError as e:
    raise app.UsageError(str(e)) from None
  print(f'sweep: {len(plan.points)} configuration(s) x {len(plan.seeds)} seed(s) '
        f'{list(plan.seeds)} in {plan.workdir}')
  if _LAUNCHER.value == 'slurm':
    path, command = sweep.write_slurm(
        plan, config_flags.get_config_filename(flags.FLAGS['config']),
        dict(config_flags.get_override_values(flags.FLAGS['config'])),
        vmap_seeds=_VMAP_SEEDS.value, sbatch_options=_SBATCH.value,
        repo=cli.REPO_ROOT)
    gather, skip = [], False
    for a in sys.argv[1:]:
      if skip:
        skip = False
      elif a in ('--launcher', '--sbatch'):
        skip = True
      elif not a.startswith(('--launcher=', '--sbatch=')):
        gather.append(a)
    print(f'wrote {path}\nsubmit with:\n  {command}\nthen gather the results with:\n  '
          f'python -m experiments.sweep {" ".join(shlex.quote(a) for a in gather)} '
          '--launcher=local')
    return
  sweep.run_local(config, plan, vmap_seeds=_VMAP_SEEDS.value,
                  aggregate_results=_AGGREGATE.value)


def define_flags() -> None:
  """Defines this script's flags (only when run as a script, so other code can import it)."""
  global _CONFIG, _GRID, _SEEDS, _VMAP_SEEDS, _LAUNCHER, _WORKDIR, _AGGREGATE, _SBATCH
  _CONFIG = cli.define_config_file(os.path.join(cli.CONFIG_DIR, 'quickstart.py'))
  _GRID = flags.DEFINE_string(
      'grid', '', "Grid, e.g. 'optim.learning_rates=[0.05,0.1];ep.beta=[0.5,1.0]' ('' = the "
      'config as is).')
  _SEEDS = flags.DEFINE_integer('seeds', 1, 'Seeds per configuration: config.seed + i.')
  _VMAP_SEEDS = flags.DEFINE_bool('vmap_seeds', False,
                                  'Train the seeds of a configuration together with jax.vmap.')
  _LAUNCHER = flags.DEFINE_enum('launcher', 'local', ['local', 'slurm'],
                                'local: run here; slurm: write an sbatch array script.')
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep folder.', required=True)
  _AGGREGATE = flags.DEFINE_bool('aggregate', True,
                                 'local: write sweep.csv/md/png at the end (the slurm tasks of '
                                 'a vmapped sweep turn it off).')
  _SBATCH = flags.DEFINE_multi_string('sbatch', [],
                                      "slurm: extra '#SBATCH' lines, e.g. --sbatch=--gres=gpu:1 "
                                      '--sbatch=--time=04:00:00')


if __name__ == '__main__':
  cli.run(main, define_flags)
