"""The package: a light `import ep_jax`, its version and submodules, what the wheel holds."""

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
import setuptools

import ep_jax
from ep_jax import estimators, inference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ('tensorflow', 'tensorflow_datasets', 'orbax', 'matplotlib', 'ml_collections', 'jax',
         'flax', 'optax', 'sklearn', 'tensorboardX')


def test_import_ep_jax_loads_no_dependency():
  """`import ep_jax` runs no submodule; a submodule loads on first attribute access."""
  code = ('import sys, ep_jax; heavy = %r; print([m for m in heavy if m in sys.modules]); '
          'print(sorted(m for m in sys.modules if m.startswith("ep_jax."))); '
          'ep_jax.inference; print("ep_jax.inference" in sys.modules, "jax" in sys.modules)'
          % (HEAVY,))
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                       check=True, cwd=REPO).stdout.splitlines()
  assert out == ['[]', '[]', 'True True']


# Distribution name -> top-level module: the core's dependencies and the `app` extra's.
CORE_DEPENDENCIES = {'jax': 'jax', 'flax': 'flax', 'optax': 'optax', 'numpy': 'numpy'}
APP_DEPENDENCIES = {'absl-py': 'absl', 'ml-collections': 'ml_collections',
                    'orbax-checkpoint': 'orbax', 'grain': 'grain', 'scikit-learn': 'sklearn',
                    'matplotlib': 'matplotlib', 'tensorboardX': 'tensorboardX',
                    'tensorboard': 'tensorboard'}
# What the core must not import (absl-py is also a dependency of optax, which imports it).
APPLICATION = tuple(m for m in APP_DEPENDENCIES.values() if m != 'absl') + (
    'tensorflow', 'tensorflow_datasets', 'mlxtend')


def test_the_core_stands_alone():
  """Every core module imports in a fresh interpreter where the application's dependencies
  and `ep_jax.app` cannot be imported, and loads none of them."""
  core = [m for m in ep_jax.__all__ if m != 'app']
  code = ('import sys, importlib\n'
          'blocked = %r\n'
          'for name in blocked: sys.modules[name] = None  # an import of it fails\n'
          'for m in %r: importlib.import_module("ep_jax." + m)\n'
          'print(sorted(m for m, v in sys.modules.items() if v is not None and '
          '(m.split(".")[0] in blocked or m.startswith("ep_jax.app"))))'
          % ((*APPLICATION, 'ep_jax.app'), core))
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                       check=False, cwd=REPO)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == ['[]'], out.stdout


def _imports(path):
  """The modules a file imports, anywhere in it (function bodies too), absolute names."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module)
  return names


def _third_party(names):
  return {n.split('.')[0] for n in names} - set(sys.stdlib_module_names) - {'ep_jax'}


def test_dependencies_cover_the_imports_and_the_core_needs_only_its_own():
  """pyproject's dependencies are the core's imports; the `app` extra, the application's."""
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)['project']
  name = lambda req: re.split(r'[<>=!~\[; ]', req, maxsplit=1)[0]
  assert sorted(map(name, project['dependencies'])) == sorted(CORE_DEPENDENCIES)
  assert sorted(map(name, project['optional-dependencies']['app'])) == sorted(APP_DEPENDENCIES)
  core, app = set(CORE_DEPENDENCIES.values()), set(APP_DEPENDENCIES.values())
  for module in ep_jax.__all__:
    if module == 'app':
      continue
    names = _imports(os.path.join(REPO, 'ep_jax', f'{module}.py'))  # function bodies too
    assert not {n for n in names if n.startswith('ep_jax.app')}, module
    assert _third_party(names) <= core, (module, _third_party(names) - core)
  for module in ep_jax.app.__all__:
    found = _third_party(_imports(os.path.join(REPO, 'ep_jax', 'app', f'{module}.py')))
    assert found <= core | app | {'tensorflow_datasets'}, (module, found - core - app)
    assert 'experiments' not in found, module


def test_version_all_and_lazy_submodules():
  assert ep_jax.__version__ == '0.1.0'
  assert ep_jax.estimators is estimators and ep_jax.inference is inference
  assert sorted(ep_jax.__all__) == sorted(
      name[:-3] if name.endswith('.py') else name
      for name in os.listdir(os.path.join(REPO, 'ep_jax'))
      if not name.startswith('_') and (name.endswith('.py') or name == 'app'))
  assert sorted(ep_jax.app.__all__) == sorted(
      name[:-3] for name in os.listdir(os.path.join(REPO, 'ep_jax', 'app'))
      if not name.startswith('_') and name.endswith('.py'))
  with pytest.raises(AttributeError, match='no attribute'):
    ep_jax.not_a_module  # noqa: B018


def test_packaging_installs_ep_jax_only_with_its_configs_and_py_typed():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)
  assert not os.path.exists(os.path.join(REPO, 'setup.cfg'))
  assert project['tool']['setuptools']['dynamic']['version'] == {'attr': 'ep_jax.__version__'}
  find = project['tool']['setuptools']['packages']['find']
  packages = setuptools.find_packages(REPO, include=find['include'])
  assert sorted(packages) == ['ep_jax', 'ep_jax.app']
  assert project['tool']['setuptools']['package-data'] == {'ep_jax': ['py.typed']}
  assert os.path.exists(os.path.join(REPO, 'ep_jax', 'py.typed'))
  assert 'slow' in ' '.join(project['tool']['pytest']['ini_options']['markers'])


TINY = ['--config.data.train_subset=256', '--config.data.test_subset=100',
        '--config.model.layout=8,M', '--config.ep.free_steps=10', '--config.ep.nudged_steps=4',
        '--config.train.batch_size=32', '--config.optim.learning_rates=(0.1,)',
        '--config.train.eval_batch_size=64', '--config.train.epochs=1']


@pytest.mark.slow
def test_the_wheel_installs_and_its_commands_train_outside_the_repository(tmp_path):
  """The wheel (built offline from the package's files) holds `ep_jax` only, with the config
  schema and the console scripts; installed alone, its commands train the quick start from a
  folder outside the repository, with no `experiments` to import."""
  if int(setuptools.__version__.split('.')[0]) < 77:
    pytest.skip('building the wheel offline needs setuptools>=77 (pinned in requirements.txt)')
  src = tmp_path / 'src'
  src.mkdir()
  for name in ('pyproject.toml', 'README.md', 'LICENSE'):
    shutil.copy(os.path.join(REPO, name), src / name)
  shutil.copytree(os.path.join(REPO, 'ep_jax'), src / 'ep_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']
  subprocess.run(pip + ['wheel', '--no-deps', '--no-build-isolation', '--no-index', '-w',
                        str(tmp_path / 'whl'), str(src)], check=True, cwd=tmp_path)
  (wheel,) = (tmp_path / 'whl').glob('ep_jax-*.whl')
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    entry_points = next(z.read(n).decode() for n in names if n.endswith('entry_points.txt'))
  assert {n.split('/')[0] for n in names} == {'ep_jax', f'ep_jax-{ep_jax.__version__}.dist-info'}
  assert {'ep_jax/app/config.py', 'ep_jax/app/cli.py', 'ep_jax/py.typed'} <= set(names)
  assert any(n.endswith('dist-info/licenses/LICENSE') for n in names)
  assert 'ep-jax-train = ep_jax.app.train_main:run' in entry_points
  assert 'ep-jax-train-teacher = ep_jax.app.teacher_main:run' in entry_points

  site = tmp_path / 'site'
  subprocess.run(pip + ['install', '--no-deps', '--no-index', '--target', str(site), str(wheel)],
                 check=True, cwd=tmp_path)
  env = dict(os.environ, PYTHONPATH=str(site))  # this checkout is not on the path
  run_dir = tmp_path / 'elsewhere'
  run_dir.mkdir()
  run = functools.partial(subprocess.run, cwd=run_dir, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  where = run([sys.executable, '-c', 'import importlib.util as u, ep_jax; '
               'print(ep_jax.__file__); print(u.find_spec("experiments"))'])
  assert where.stdout.splitlines() == [str(site / 'ep_jax' / '__init__.py'), 'None'], where
  done = run([str(site / 'bin' / 'ep-jax-train'), '--workdir=quick', *TINY])
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip().splitlines()[-1].startswith('final test_accuracy=')
  assert (run_dir / 'quick' / 'metrics.jsonl').is_file()
  saved = json.loads((run_dir / 'quick' / 'config.json').read_text())
  assert saved['data']['dataset'] == 'digits' and saved['model']['layout'] == '8,M'
  teacher = run([str(site / 'bin' / 'ep-jax-train-teacher'), '--workdir=teacher', *TINY,
                 '--config.teacher.epochs=1'])
  assert teacher.returncode == 0, teacher.stderr
  assert teacher.stdout.strip().splitlines()[-1].startswith('final test_accuracy=')
  usage = run([sys.executable, '-m', 'ep_jax.app.train_main', '--help'])
  assert usage.returncode == 0 and 'ep-jax-train [--config=PATH]' in usage.stdout, usage
