"""Shared bits of the experiment scripts."""

from absl import flags
from absl import logging


def quiet_logging() -> None:
  """WARNING-level absl logging unless -v/--verbosity was given (orbax logs every file at INFO)."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
