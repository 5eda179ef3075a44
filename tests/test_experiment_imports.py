"""Every experiment script can be imported into one process (flags are defined only when a
script runs as `__main__`), so their functions compose in other programs and tests."""

import importlib
import pkgutil

from absl import flags

import experiments


def test_all_experiment_modules_import_together_without_defining_flags():
  names = sorted(m.name for m in pkgutil.iter_modules(experiments.__path__))
  assert {'train', 'sweep', 'gdu', 'ablation', 'relaxation_check'} <= set(names)
  for name in names:
    importlib.import_module(f'experiments.{name}')
  defined_by = flags.FLAGS.flags_by_module_dict()
  assert not [m for m in defined_by if m.startswith('experiments')], sorted(defined_by)
