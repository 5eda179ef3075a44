"""The package: a light `import ep_jax`, its version and submodules, what the wheel holds."""

import ast
import os
import re
import subprocess
import sys
import tomllib

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
# Imports inside a core function of an application module (loaded only when it is called).
CORE_LAZY_IMPORTS = {('gdu', 'matplotlib'), ('signals', 'ep_jax.app')}


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
    names = _imports(os.path.join(REPO, 'ep_jax', f'{module}.py'))
    names = {n for n in names if not any(m == module and (n + '.').startswith(lazy + '.')
                                         for m, lazy in CORE_LAZY_IMPORTS)}
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
