"""Shared bits of the command-line scripts (the console scripts `ep-jax-train`,
`ep-jax-train-teacher` and the repository's `experiments`): quiet logging and one error style.

`run(main)` replaces `absl.app.run(main)`. A bad flag, a bad config or any error raised by
`main` ends the command with a few lines on stderr (`error: <what went wrong>`) and exit status
2 (bad flags) or 1 (anything else); Ctrl-C ends it with its message (or `interrupted`) and
status 130. `--verbosity=1` (`-v 1`) or the environment variable `EP_JAX_TRACEBACK=1` shows the
full traceback instead.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging

__all__ = [
    'CONFIG_FIELDS_HINT', 'DEFAULT_CONFIG', 'EXIT_ERROR', 'EXIT_INTERRUPTED', 'EXIT_USAGE',
    'FULL_HELP_FLAGS', 'HELP_FLAGS', 'MAX_MESSAGE_LINES', 'TRACEBACK_ENV', 'config_value',
    'describe', 'fail', 'format_error', 'parse_flags', 'quiet_logging', 'run', 'show_traceback',
]

TRACEBACK_ENV = 'EP_JAX_TRACEBACK'
MAX_MESSAGE_LINES = 4
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# The config schema with the quick start's values, found from this file (installed or not).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config.py')
CONFIG_FIELDS_HINT = 'the fields and their defaults are in ep_jax/app/config.py'


def quiet_logging() -> None:
  """WARNING-level absl logging unless -v/--verbosity was given (orbax logs every file at INFO)."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def show_traceback(argv: list[str] | None = None) -> bool:
  """True if `EP_JAX_TRACEBACK` is set (not 0) or the verbosity is 1 or more."""
  if os.environ.get(TRACEBACK_ENV, '0') not in ('', '0'):
    return True
  if flags.FLAGS.is_parsed():
    return flags.FLAGS['verbosity'].present and flags.FLAGS.verbosity >= 1
  args = list(argv or ())
  for i, arg in enumerate(args):  # flags not parsed yet: read -v/--verbosity by hand
    value = None
    if arg.startswith(('--verbosity=', '-v=')):
      value = arg.split('=', 1)[1]
    elif arg in ('--verbosity', '-v') and i + 1 < len(args):
      value = args[i + 1]
    if value is not None:
      try:
        return int(value) >= 1
      except ValueError:
        return False
  return False


def _unquote(text: str) -> str:
  """`str(KeyError(msg))` is `repr(msg)`: gives back `msg` (ml_collections nests them)."""
  for _ in range(3):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"':
      try:
        text = ast.literal_eval(text)
        continue
      except (SyntaxError, ValueError):
        pass
    break
  return str(text)


def describe(exc: BaseException) -> str:
  """A short description of `exc`: its type (unless a plain ValueError) and message."""
  message = _unquote(str(exc)).strip()
  if isinstance(exc, (KeyError, AttributeError)):
    message = message.replace('\n', ' ')
  kind = type(exc).__name__
  if not message:
    return kind
  return message if kind in ('ValueError', 'UsageError') else f'{kind}: {message}'


def format_error(message: str, hint: str = '') -> str:
  """`error: message` in at most `MAX_MESSAGE_LINES` lines, then the traceback hint."""
  lines = message.strip().splitlines() or ['']
  if len(lines) > MAX_MESSAGE_LINES:
    lines = lines[:MAX_MESSAGE_LINES - 1] + ['...']
  lines[0] = 'error: ' + lines[0]
  hint = hint or f'({TRACEBACK_ENV}=1 or --verbosity=1 shows the traceback)'
  return '\n'.join(lines + [hint])


def fail(message: str, status: int = EXIT_ERROR, hint: str = '') -> None:
  """Prints `format_error(message)` to stderr and exits with `status`."""
  sys.stdout.flush()
  print(format_error(message, hint), file=sys.stderr, flush=True)
  sys.exit(status)


def _flag_error(e: Exception, argv: list[str]) -> None:
  """Ends the command for an error in the flags (or re-raises it to show the traceback)."""
  if show_traceback(argv):
    raise e
  if isinstance(e, (KeyError, AttributeError)):  # ml_collections: an unknown config field
    text = _unquote(str(e))
    name, _, suggestion = text.partition('\n')
    name = _unquote(name)
    given = [a for a in argv if a.startswith('--') and '.' in a and
             a.split('=', 1)[0].rsplit('.', 1)[-1] == name]
    suggestion = suggestion.replace('Did you mean', 'did you mean').strip()
    fail(f'unknown config field {given[0].split("=", 1)[0] if given else repr(name)}'
         f'{" (" + suggestion + ")" if suggestion else ""}; {CONFIG_FIELDS_HINT}',
         EXIT_USAGE)
  message = describe(e)
  if isinstance(e, flags.Error):
    message = message.split(': ', 1)[-1] if message.startswith(type(e).__name__) else message
  fail(message, EXIT_USAGE, hint=f'(--helpfull lists the flags; {CONFIG_FIELDS_HINT})')


def parse_flags(argv: list[str]) -> list[str]:
  """`absl.app.run`'s flags parser with short errors: unknown config fields, bad values."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    _flag_error(e, argv)
  return []  # not reached


def config_value(config_flag: flags.FlagHolder) -> Any:
  """The config of a `config_flags.DEFINE_config_file` flag; a file that does not load
  (missing, or raising) is an error naming the file."""
  try:
    config = config_flag.value
    config.to_dict()  # a file that failed to load raises on first use
    return config
  except Exception as e:  # pylint: disable=broad-except
    path = flags.FLAGS[config_flag.name].config_filename
    if os.path.split(path.split(':')[0])[1] and not os.path.isfile(path.split(':')[0]):
      raise FileNotFoundError(f'config file {path.split(":")[0]!r} not found '
                              f'(the repository\'s configs are in experiments/configs/)') from e
    cause = e.__cause__ or e
    raise ValueError(f'config file {path!r} did not load: {describe(cause)}') from e


def _guarded(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
  try:
    return main(argv)
  except KeyboardInterrupt as e:
    if show_traceback():
      raise
    sys.stdout.flush()
    print(str(e) if str(e) else 'interrupted', file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)
  except app.UsageError as e:
    if show_traceback():
      raise
    fail(str(e), EXIT_USAGE, hint='(--helpfull lists the flags)')
  except Exception as e:  # pylint: disable=broad-except
    if show_traceback():
      raise
    fail(describe(e))


def run(main: Callable[[list[str]], Any],
        define_flags: Callable[[], Any] | None = None) -> None:
  """`absl.app.run(main)` with this module's error style (see the module docstring).

  `define_flags` (called first) defines the script's flags: a config flag reads its
  `--config.FIELD=VALUE` overrides as it is defined, so an unknown field fails there.
  """
  _use_doc_of(main)
  if define_flags is not None:
    try:
      define_flags()
    except Exception as e:  # pylint: disable=broad-except
      _flag_error(e, sys.argv)
  _help_and_exit(sys.argv[1:])
  app.run(functools.partial(_guarded, main), flags_parser=parse_flags)


def _use_doc_of(main: Callable[[list[str]], Any]) -> None:
  """`--help` prints the `__main__` module's docstring: for a console script or a thin
  wrapper, that of the module defining `main`."""
  module = sys.modules.get(getattr(main, '__module__', ''))
  top = sys.modules.get('__main__')
  if module is not None and top is not None and module is not top and module.__doc__:
    top.__doc__ = module.__doc__


HELP_FLAGS = ('--help', '-help', '-h', '--h', '-?', '--helpshort', '-helpshort')
FULL_HELP_FLAGS = ('--helpfull', '-helpfull')


def _help_and_exit(args: list[str]) -> None:
  """`--help` / `--helpfull`: the script's usage (and, for a config script, where its fields
  are) on stdout, status 0. absl's own help flags exit with status 1."""
  full = any(a in FULL_HELP_FLAGS for a in args)
  if not full and not any(a in HELP_FLAGS for a in args):
    return
  detail = None
  if 'config' in flags.FLAGS:
    detail = (f'Config fields: --config.FIELD=VALUE overrides any field; {CONFIG_FIELDS_HINT} '
              '(configs for named recipes are in experiments/configs/).')
  app.usage(shorthelp=not full, writeto_stdout=True, detailed_error=detail, exitcode=0)
