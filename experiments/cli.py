"""The scripts' error style and runner, `ep_jax.app.cli`, and this checkout's configs."""

import os

from ep_jax.app.cli import *  # noqa: F401,F403
from ep_jax.app.cli import (  # noqa: F401  (not in `*`)
    _flag_error, _guarded, _help_and_exit, _unquote)

# The checkout these scripts belong to, and its configs: found from this file, so that a
# script runs from any directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, 'experiments', 'configs')
