"""The package: a light `import ep_jax`, its version and submodules, what the wheel holds."""

import os
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


APPLICATION = ('orbax', 'ml_collections', 'matplotlib', 'tensorflow', 'tensorflow_datasets',
               'grain', 'sklearn', 'tensorboardX')


def test_the_core_stands_alone():
  """Every core module imports without the application's dependencies (a fresh interpreter)."""
  core = [m for m in ep_jax.__all__ if m != 'app']
  code = ('import sys, importlib; [importlib.import_module("ep_jax." + m) for m in %r]; '
          'print(sorted({m.split(".")[0] for m in sys.modules} & set(%r))); '
          'print(sorted(m for m in sys.modules if m.startswith("ep_jax.app")))'
          % (core, APPLICATION))
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                       check=True, cwd=REPO).stdout.splitlines()
  assert out == ['[]', '[]'], out


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
