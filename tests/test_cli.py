"""The scripts' shared error style (ep_jax.app.cli, re-exported as experiments.cli)."""

import os
import subprocess
import sys

import pytest

from ep_jax.app import train
from experiments import cli


def test_errors_are_at_most_five_lines_with_the_traceback_hint():
  text = cli.format_error('\n'.join(f'line {i}' for i in range(40)))
  lines = text.splitlines()
  assert len(lines) == 5 and lines[0] == 'error: line 0' and cli.TRACEBACK_ENV in lines[-1]
  assert cli.format_error('one').splitlines() == ['error: one', lines[-1]]


def test_describe_unquotes_nested_key_errors():
  nested = AttributeError(KeyError('\'epochz\'\nDid you mean "epochs"?'))  # as ml_collections raises it
  assert cli.describe(nested) == 'AttributeError: \'epochz\' Did you mean "epochs"?'

  assert cli.describe(ValueError('bad value')) == 'bad value'
  assert cli.describe(FileNotFoundError('gone')) == 'FileNotFoundError: gone'


def test_traceback_switch(monkeypatch):
  monkeypatch.setenv(cli.TRACEBACK_ENV, '1')
  assert cli.show_traceback([])
  monkeypatch.setenv(cli.TRACEBACK_ENV, '0')
  assert cli.show_traceback(['prog', '--verbosity=1']) and not cli.show_traceback(['prog'])


def test_checkpoints_of_both_numberings_resume_after_the_epochs_they_complete():
  assert train.epochs_done({'epochs_done': 3, 'seed': 0}) == 3
  assert train.epochs_done({'epoch': 0, 'seed': 0}) == 1  # 0-based epoch index of older runs


@pytest.mark.slow
@pytest.mark.parametrize('flag', ['--help', '--helpfull'])
def test_help_exits_zero_and_points_to_the_config_fields(flag):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, '-m', 'experiments.train', flag], cwd=root,
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  assert 'ep_jax/app/config.py' in done.stdout and '--workdir' in done.stdout
  assert 'ep-jax-train [--config=PATH]' in done.stdout  # the usage of ep_jax.app.train_main
