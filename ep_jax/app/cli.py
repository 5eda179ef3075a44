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
import json
import os
import shlex
import sys
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
# The module behind `config_flags` (1.1.0 exports no parser class from the package).
from ml_collections.config_flags import config_flags as config_flags_module

__all__ = [
    'CONFIGS_HINT', 'CONFIG_FIELDS_HINT', 'ConfigFileNotFoundError', 'ConfigFileParser',
    'DEFAULT_CONFIG', 'EXIT_ERROR', 'EXIT_INTERRUPTED', 'EXIT_USAGE', 'FULL_HELP_FLAGS',
    'HELP_FLAGS', 'MAX_MESSAGE_LINES', 'TRACEBACK_ENV', 'command_line', 'config_from_json',
    'config_value', 'default_config', 'define_config_file', 'describe', 'fail', 'format_error',
    'missing_config', 'parse_flags', 'quiet_logging', 'run', 'show_traceback',
]

TRACEBACK_ENV = 'EP_JAX_TRACEBACK'
MAX_MESSAGE_LINES = 4
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# The config schema with the quick start's values, found from this file (installed or not).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config.py')
CONFIG_FIELDS_HINT = 'the fields and their defaults are in ep_jax/app/config.py'
# Where a missing config file's error points (true installed or not).
CONFIGS_HINT = "the repository's configs are in experiments/configs/"


def default_config() -> ml_collections.ConfigDict:
  """The default config: every field a run can set (the schema a `config.json` is read into)."""
  from ep_jax.app import config  # pylint: disable=g-import-not-at-top
  return config.get_config()


class ConfigFileNotFoundError(FileNotFoundError):
  """The file of a `--config` flag does not exist."""


def missing_config(path: str) -> ConfigFileNotFoundError:
  return ConfigFileNotFoundError(f'config file {path!r} not found ({CONFIGS_HINT})')


def _as_tuples(value: Any) -> Any:
  """JSON lists as tuples, nested ones too (configs hold tuples)."""
  if isinstance(value, (list, tuple)):
    return tuple(_as_tuples(v) for v in value)
  return value


def config_from_json(path: str) -> ml_collections.ConfigDict:
  """The config saved in `path` (a run's `config.json`), merged onto `default_config()`: the
  fields keep the default's types, and fields the file lacks keep their defaults.

  Raises:
    ValueError: the file is not JSON, or names a field the default config lacks.
  """
  try:
    with open(path, 'r', encoding='utf-8') as f:
      saved = json.load(f)
  except ValueError as e:
    raise ValueError(f'config file {path!r} is not valid JSON: {e}') from e
  config = default_config()

  def merge(node: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
      if key not in node:
        raise ValueError(f'config file {path!r}: unknown config field {prefix}{key}; '
                         f'{CONFIG_FIELDS_HINT}')
      if isinstance(value, dict) and isinstance(node[key], ml_collections.ConfigDict):
        merge(node[key], value, f'{prefix}{key}.')
      else:
        node[key] = _as_tuples(value)

  merge(config, saved, '')
  return config


class ConfigFileParser(config_flags_module.ConfigFileFlagParser):
  """`config_flags`' parser of a config file, which also reads a run's saved `config.json`
  (`config_from_json`) and names a missing file (`ConfigFileNotFoundError`)."""

  def parse(self, path: Any) -> Any:
    if not isinstance(path, str):
      return super().parse(path)
    file = path.split(':', 1)[0]
    if not os.path.isfile(file):
      raise missing_config(file)
    if not file.endswith('.json'):
      return super().parse(path)
    config = config_from_json(file)
    if self._lock_config:
      config.lock()
    return config


def define_config_file(default: str, help_string: str = 'Experiment config file.', *,
                       lock_config: bool = True, name: str = 'config'):
  """`config_flags.DEFINE_config_file` whose value may also be a `config.json` of a run."""
  holder = config_flags.DEFINE_config_file(name, default, help_string, lock_config=lock_config)
  flags.FLAGS[name].parser = ConfigFileParser(name=name, lock_config=lock_config)
  return holder


def command_line(program: str, args: Sequence[str], **defaults: str) -> str:
  """The shell command `program ARGS` (`program`: how the script was started, e.g.
  `ep-jax-train` or `python -m experiments.train`), with `--NAME=VALUE` appended for each of
  `defaults` that `args` does not set."""
  args = list(args)
  for flag, value in defaults.items():
    if not any(a == f'--{flag}' or a.startswith(f'--{flag}=') for a in args):
      args.append(f'--{flag}={value}')
  return ' '.join([program] + [shlex.quote(a) for a in args])


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
  if isinstance(e, ConfigFileNotFoundError):
    fail(str(e))
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
    if not os.path.isfile(path.split(':')[0]):
      raise missing_config(path.split(':')[0]) from e
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
    fail(str(e) if isinstance(e, ConfigFileNotFoundError) else describe(e))


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
