"""Library consistency: targets in either form, shape checks at the entry points, `__all__` and
annotated public signatures in every module."""

import importlib
import inspect
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ep_jax
from ep_jax import (energy, estimators, feedforward, gdu, inference, network, reference_grads,
                    relaxation, signals, train_step)

MODULES = (['ep_jax.' + m for m in ep_jax.__all__ if m != 'app']
           + ['ep_jax.app.' + m for m in ep_jax.app.__all__])


def _problem(batch=3):
  spec = network.make_spec('2,M', input_shape=(4, 4, 1), num_classes=3, dense=(3,))
  params = network.init_params(spec, jax.random.PRNGKey(0), scale=2.0)
  x = jax.random.uniform(jax.random.PRNGKey(1), (batch, 4, 4, 1))
  y = jnp.arange(batch, dtype=jnp.int32) % 3
  states = relaxation.relax(spec, params, x, network.init_states(spec, batch),
                            max_steps=5).states
  return spec, params, x, y, states


def _same_for_every_form(fn, y):
  """`fn(targets)` with the labels, a dict holding them and numpy labels: equal results."""
  plain = fn(y)
  chex.assert_trees_all_equal(fn({'label': y}), plain)
  chex.assert_trees_all_close(fn(np.asarray(y)), plain)
  return plain


def test_every_function_taking_targets_accepts_labels_or_a_dict():
  spec, params, x, y, states = _problem()
  z = energy.logits(spec, params, states)
  beta, fixed = 0.5, dict(max_steps=3, beta=0.5)
  feats = signals.features(states[0], 'gap')
  head = signals.init_head(np.random.default_rng(0), feats.shape[1], 3, learned=True)
  calls = {
      'energy.cross_entropy': lambda t: energy.cross_entropy(z, t),
      'energy.squared_error': lambda t: energy.squared_error(z, t, 3),
      'energy.example_losses': lambda t: energy.example_losses(spec, params, states, t),
      'energy.output_cost': lambda t: energy.output_cost(spec)(params, states, t),
      'energy.nudged_primitive': lambda t: energy.nudged_primitive(spec, params, x, states, t,
                                                                   beta, None),
      'relaxation.relax': lambda t: relaxation.relax(spec, params, x, states, targets=t,
                                                     **fixed),
      'relaxation.relax_fixed': lambda t: relaxation.relax_fixed(
          spec, params, x, states, steps=3, targets=t, beta=beta),
      'relaxation.residual_trace': lambda t: relaxation.residual_trace(
          spec, params, x, states, steps=3, targets=t, beta=beta, mode='async'),
      'relaxation.step': lambda t: relaxation.step(spec, params, x, states, t, beta, None),
      'relaxation.force': lambda t: relaxation.force(spec, params, x, states, t, beta, None),
      'relaxation.force_autodiff': lambda t: relaxation.force_autodiff(spec, params, x, states,
                                                                       t, beta, None),
      'estimators.ep_gradient': lambda t: estimators.ep_gradient(
          spec, params, x, t, beta=beta, free_steps=5, nudged_steps=3).grads,
      'reference_grads.bptt_gradient': lambda t: reference_grads.bptt_gradient(
          spec, params, x, t, steps=3),
      'reference_grads.implicit_gradient': lambda t: reference_grads.implicit_gradient(
          spec, params, x, t, states, max_steps=5).grads,
      'gdu.reference_gradients': lambda t: gdu.reference_gradients(
          spec, params, x, t, max_steps=5, tol=1e-6)[:2],
      'feedforward.loss_fn': lambda t: feedforward.loss_fn(spec, params, x, t),
      'signals.les_cost': lambda t: signals.les_cost('predsim', feats, head, t, 3),
  }
  for name, fn in calls.items():
    out = _same_for_every_form(fn, y)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(out)), name
  # The nudge reaches the states: the nudged relaxation differs from the free one.
  free = relaxation.relax(spec, params, x, states, max_steps=3)
  nudged = relaxation.relax(spec, params, x, states, targets=y, **fixed)
  assert float(jnp.max(jnp.abs(free.states[-1] - nudged.states[-1]))) > 0
  with pytest.raises(ValueError, match="'label'"):
    energy.example_losses(spec, params, states, {'labels': y})


def _train_step(spec, params):
  tx = optax.sgd(0.1)
  step = jax.jit(train_step.make_train_step(spec, estimators.EPConfig(free_steps=3,
                                                                      nudged_steps=2), tx))
  state = train_step.create_train_state(params, tx, jax.random.PRNGKey(0))
  return lambda x, y: step(state, {'image': x, 'label': y})


def _entry_points(spec, params, states):
  """`name -> (x, y) -> ...` for every public entry point that takes inputs."""
  kw = dict(free_steps=3, nudged_steps=2, beta=0.5)
  ep = estimators.EPConfig(free_steps=3, nudged_steps=2)
  return {
      'relax': lambda x, y: relaxation.relax(spec, params, x, states, max_steps=2),
      'relax_fixed': lambda x, y: relaxation.relax_fixed(spec, params, x, states, steps=2),
      'free_phase': lambda x, y: inference.free_phase(spec, params, x, free_steps=2),
      'predict': lambda x, y: inference.predict(spec, params, x, free_steps=2),
      'jitted_predict': lambda x, y: inference.jitted_predict(spec, params, x, free_steps=2),
      'ep_gradient': lambda x, y: estimators.ep_gradient(spec, params, x, y, **kw),
      'jitted_ep_gradient': lambda x, y: estimators.jitted_ep_gradient(spec, params, x, y, **kw),
      'bptt': lambda x, y: estimators.ep_gradient(spec, params, x, y, estimator='bptt', **kw),
      'bptt_gradient': lambda x, y: reference_grads.bptt_gradient(spec, params, x, y, steps=2),
      'implicit_gradient': lambda x, y: reference_grads.implicit_gradient(spec, params, x, y,
                                                                          states),
      'train_step': _train_step(spec, params),
      'eval_step': lambda x, y: jax.jit(train_step.make_eval_step(spec, ep))(
          params, {'image': x, 'label': y}),
      'feedforward.forward': lambda x, y: feedforward.forward(spec, params, x),
  }


@pytest.mark.parametrize('shape', [(3, 5, 4, 1), (3, 4, 4, 2), (4, 4, 1), (3, 16)])
def test_inputs_of_the_wrong_shape_are_refused_naming_both_shapes(shape):
  spec, params, x, y, states = _problem()
  bad = jnp.zeros(shape)
  for name, fn in _entry_points(spec, params, states).items():
    with pytest.raises(ValueError, match=r'\(B, H, W, C\) = \(B, 4, 4, 1\).*got '
                       + re.escape(str(shape))):
      fn(bad, y)
  for name, fn in _entry_points(spec, params, states).items():
    assert fn(x, y) is not None, name  # the right shape runs


@pytest.mark.parametrize('labels', [jnp.zeros((2,), jnp.int32), jnp.zeros((3, 1), jnp.int32),
                                    jnp.zeros((3,), jnp.float32)])
def test_labels_of_the_wrong_shape_or_dtype_are_refused(labels):
  spec, params, x, _, states = _problem()
  points = _entry_points(spec, params, states)
  for name in ('ep_gradient', 'jitted_ep_gradient', 'bptt', 'bptt_gradient',
               'implicit_gradient', 'train_step', 'eval_step'):
    with pytest.raises(ValueError, match=r'labels must be integers of shape \(B,\) = \(3,\)'):
      points[name](x, labels)
  with pytest.raises(ValueError, match='labels must be integers'):
    relaxation.relax(spec, params, x, states, targets=labels, beta=0.5, max_steps=2)


def test_states_of_the_wrong_shape_are_refused():
  spec, params, x, _, states = _problem()
  with pytest.raises(ValueError, match=r'states must have shapes \(\(3, 2, 2, 2\), \(3, 3\)\)'):
    relaxation.relax(spec, params, x, network.init_states(spec, 2), max_steps=2)
  with pytest.raises(ValueError, match='states must have shapes'):
    relaxation.relax_fixed(spec, params, x, states[:1], steps=2)



class _OutputNudging:
  """A `train_step.Nudging` whose cost is the output loss alone (no layer-wise signals)."""

  def __init__(self, spec):
    self.spec = spec

  def targets(self, frozen, params, batch, epoch):
    del frozen, params, epoch
    return {'label': batch['label']}

  def cost(self, params, states, targets):
    return jnp.sum(energy.example_losses(self.spec, params, states, targets['label']))

  output_cost = cost

  def metrics(self, params, states, targets):
    return {}


@pytest.mark.parametrize('nudged_phases', estimators.NUDGED_PHASES)
def test_the_nudged_phases_and_the_nudge_split_check_and_take_either_target_form(
    nudged_phases):
  """`estimators.nudged_relaxations` (sequential or vmapped over β_k) and
  `train_step.make_nudge_split` take labels or a dict and refuse wrong shapes; holomorphic EP
  (complex states, vmapped phases) passes the checks."""
  spec, params, x, y, states = _problem()
  betas, _ = estimators.stencil_points('symmetric', 0.5)
  cost = energy.output_cost(spec)

  def phases(x, t, s=states):
    out = estimators.nudged_relaxations(spec, params, x, s, t, betas, cost, nudged_steps=2,
                                        nudged_phases=nudged_phases)
    return [r.states for r in out]

  _same_for_every_form(lambda t: phases(x, t), y)
  with pytest.raises(ValueError, match=r'\(B, H, W, C\) = \(B, 4, 4, 1\)'):
    phases(jnp.zeros((3, 5, 4, 1)), y)
  with pytest.raises(ValueError, match='labels must be integers'):
    phases(x, y[:2])
  with pytest.raises(ValueError, match='states must have shapes'):
    phases(x, y, states[:1])

  ep = estimators.EPConfig(free_steps=3, nudged_steps=2, beta=0.5, nudged_phases=nudged_phases)
  split = train_step.make_nudge_split(spec, ep, _OutputNudging(spec))
  state = train_step.create_train_state(params, optax.sgd(0.1), jax.random.PRNGKey(0))
  out = jax.jit(split)(state, {'image': x, 'label': y})
  assert all(np.all(np.isfinite(v)) for v in out.values())
  with pytest.raises(ValueError, match=r'\(B, H, W, C\) = \(B, 4, 4, 1\)'):
    split(state, {'image': jnp.zeros((3, 16)), 'label': y})
  with pytest.raises(ValueError, match='labels must be integers'):
    split(state, {'image': x, 'label': y.astype(jnp.float32)})

  holo = network.make_spec('2,A', input_shape=(4, 4, 1), num_classes=3, dense=(3,),
                           activation='smooth_sigmoid')
  holo_params = network.init_params(holo, jax.random.PRNGKey(0), scale=2.0)
  grads = _same_for_every_form(lambda t: estimators.ep_gradient(
      holo, holo_params, x, t, beta=0.5, estimator='holomorphic', free_steps=3,
      nudged_steps=2, nudged_phases=nudged_phases).grads, y)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  with pytest.raises(ValueError, match='labels must be integers'):
    estimators.ep_gradient(holo, holo_params, x, y[:2], beta=0.5, estimator='holomorphic',
                           free_steps=3, nudged_steps=2, nudged_phases=nudged_phases)

def test_step_counts_are_static_in_jitted_ep_gradient_and_traced_in_jitted_predict():
  spec, params, x, y, _ = _problem()
  kw = dict(beta=0.5, nudged_steps=2, tol=0.0)
  estimators.jitted_ep_gradient(spec, params, x, y, free_steps=3, **kw)
  before = estimators.jitted_ep_gradient._cache_size()
  estimators.jitted_ep_gradient(spec, params, x, y, free_steps=3,
                                **dict(kw, beta=0.2, tol=1e-3))
  assert estimators.jitted_ep_gradient._cache_size() == before
  estimators.jitted_ep_gradient(spec, params, x, y, free_steps=4, **kw)
  assert estimators.jitted_ep_gradient._cache_size() == before + 1
  inference.jitted_predict(spec, params, x, free_steps=3, tol=0.0)
  before = inference.jitted_predict._cache_size()
  inference.jitted_predict(spec, params, x, free_steps=4, tol=1e-3)
  assert inference.jitted_predict._cache_size() == before


@pytest.mark.parametrize('name', MODULES)
def test_all_lists_the_public_names_and_star_import_works(name):
  module = importlib.import_module(name)
  assert len(module.__all__) == len(set(module.__all__)), name
  missing = [n for n in module.__all__ if not hasattr(module, n)]
  assert not missing, f'{name}.__all__ names what it lacks: {missing}'
  namespace = {}
  exec(f'from {name} import *', namespace)  # pylint: disable=exec-used
  assert set(module.__all__) <= set(namespace)
  # Every public function and class defined here is listed.
  defined = [n for n, obj in vars(module).items()
             if not n.startswith('_') and (inspect.isfunction(obj) or inspect.isclass(obj))
             and getattr(obj, '__module__', None) == name]
  unlisted = sorted(set(defined) - set(module.__all__))
  assert not unlisted, f'{name}: public but not in __all__: {unlisted}'


def _public_callables(module):
  """`(qualified name, function)` of the public functions of `module` and the public methods
  (and `__init__`) of its public classes, unwrapped (`jax.jit`, `functools.lru_cache`)."""
  for n in module.__all__:
    obj = getattr(module, n)
    func = inspect.unwrap(obj) if callable(obj) and not inspect.isclass(obj) else None
    if inspect.isfunction(func) and func.__module__ == module.__name__:
      yield n, func
    elif inspect.isclass(obj) and obj.__module__ == module.__name__:
      for m, attr in vars(obj).items():
        if m.startswith('_') and m != '__init__':
          continue
        attr = attr.fget if isinstance(attr, property) else attr
        attr = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        if (inspect.isfunction(attr) and attr.__module__ == module.__name__
            and attr.__qualname__.startswith(obj.__name__ + '.')):
          yield f'{n}.{m}', attr


@pytest.mark.parametrize('name', MODULES)
def test_every_public_parameter_is_annotated(name):
  """Every parameter of the public functions and methods is annotated; only a method's
  `self` / `cls` is exempt (`*args` and `**kwargs` are annotated too)."""
  module = importlib.import_module(name)
  missing, checked = [], 0
  for qualname, func in _public_callables(module):
    checked += 1
    params = list(inspect.signature(func).parameters.values())
    for i, p in enumerate(params):
      if i == 0 and p.name in ('self', 'cls') and '.' in qualname:
        continue
      if p.annotation is inspect.Parameter.empty:
        missing.append(f'{qualname}({p.name})')
  assert not missing, f'{name}: unannotated parameters {missing}'
  # Some public function or method was inspected (config's only one, get_config, takes none).
  assert checked or not module.__all__, name
