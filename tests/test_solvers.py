"""Relaxation solvers (`relaxation.Solver`): plain iteration and safeguarded Anderson
acceleration reach the same fixed point, give the same EP gradient, and stay bounded where
the plain map does not contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cosines, max_diff
from ep_jax import estimators, network, reference_grads, relaxation
from ep_jax.estimators import EPConfig

ANDERSON = relaxation.Solver('anderson', memory=5)


def _net(layout='5,M,7,M', dense=(6,), input_shape=(8, 8, 2), gain=1.0, seed=0,
         dtype=jnp.float32, batch=3, activation='hard_sigmoid'):
  spec = network.make_spec(layout, input_shape=input_shape, num_classes=4, dense=dense,
                           activation=activation)
  params = network.init_params(spec, jax.random.PRNGKey(seed), dtype=dtype)
  params = jax.tree_util.tree_map(lambda p: gain * p, params)
  x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch,) + input_shape, dtype)
  return spec, params, x


@pytest.mark.parametrize('field,value,match', [('kind', 'newton', 'unknown solver'),
                                               ('memory', 0, 'memory'),
                                               ('regularization', -1.0, 'regularization'),
                                               ('mixing', 0.0, 'mixing'),
                                               ('start_residual', 0.0, 'start_residual')])
def test_a_bad_solver_setting_is_refused_by_name(field, value, match):
  with pytest.raises(ValueError, match=match):
    relaxation.Solver(**{'kind': 'anderson', field: value})


def test_anderson_weights_solve_the_constrained_least_squares(x64):
  """α minimises ‖Σ α_i r_i‖² subject to Σ α_i = 1 on the filled slots (λ = 0), 0 elsewhere:
  checked against the KKT system solved by numpy."""
  rng = np.random.default_rng(0)
  m, batch, n = 4, 3, 7
  residuals = rng.normal(size=(m, batch, n))
  valid = np.array([[True, True, True, True], [True, True, False, False],
                    [True, False, True, True]])
  alpha = np.asarray(relaxation.anderson_weights(jnp.asarray(residuals), jnp.asarray(valid), 0.0))
  for b in range(batch):
    idx = np.flatnonzero(valid[b])
    r = residuals[idx, b]  # (k, n)
    k = len(idx)
    kkt = np.block([[2 * r @ r.T, np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
    want = np.linalg.solve(kkt, np.r_[np.zeros(k), 1.0])[:k]
    np.testing.assert_allclose(alpha[b, idx], want, atol=1e-10)
    np.testing.assert_array_equal(alpha[b, ~valid[b]], 0.0)
    assert abs(alpha[b].sum() - 1.0) < 1e-12


@pytest.mark.parametrize('net', ['3-layer', '8-conv'])
@pytest.mark.parametrize('mode', ['sync', 'async'])
@pytest.mark.parametrize('solver', [ANDERSON, relaxation.Solver('anderson', memory=3,
                                                               start_residual=float('inf'))])
def test_anderson_reaches_the_plain_iterations_fixed_point(x64, net, mode, solver):
  if net == '3-layer':
    spec, params, x = _net(dtype=jnp.float64)
  else:
    spec, params, x = _net('4,4,M,4,4,M,4,4,M,4,4', dense=(), input_shape=(16, 16, 2),
                           dtype=jnp.float64)
  s0 = network.init_states(spec, x.shape[0], jnp.float64)
  plain = relaxation.relax(spec, params, x, s0, max_steps=3000, tol=1e-12, mode=mode)
  fast = relaxation.relax(spec, params, x, s0, max_steps=3000, tol=1e-12, mode=mode,
                          solver=solver)
  assert float(plain.residual) <= 1e-12 and float(fast.residual) <= 1e-12
  assert max_diff(plain.states, fast.states) <= 1e-8
  # The result is a fixed point of the plain sweep.
  again = relaxation.step(spec, params, x, fast.states, None, None, None, mode)
  assert max_diff(again, fast.states) <= 1e-10


@pytest.mark.parametrize('mode', ['sync', 'async'])
def test_anderson_takes_fewer_steps_on_a_converging_net(x64, mode):
  spec, params, x = _net(dtype=jnp.float64, activation='smooth_sigmoid')
  s0 = network.init_states(spec, x.shape[0], jnp.float64)
  plain = relaxation.relax(spec, params, x, s0, max_steps=3000, tol=1e-10, mode=mode)
  fast = relaxation.relax(spec, params, x, s0, max_steps=3000, tol=1e-10, mode=mode,
                          solver=ANDERSON)
  assert int(fast.steps) < int(plain.steps)


def test_memory_one_is_the_plain_iteration():
  spec, params, x = _net()
  s0 = network.init_states(spec, x.shape[0])
  plain = relaxation.relax(spec, params, x, s0, max_steps=30, tol=0.0, mode='async')
  one = relaxation.relax(spec, params, x, s0, max_steps=30, tol=0.0, mode='async',
                         solver=relaxation.Solver('anderson', memory=1))
  assert max_diff(plain.states, one.states) == 0.0


def test_the_safeguard_keeps_the_residual_from_growing():
  """A strongly coupled net whose synchronous sweep does not contract (plain iteration flips
  between two states, residual 1). Unsafeguarded Anderson mixes points outside [0, 1] whose
  residual exceeds anything the plain map produces; with the safeguard the residual never
  exceeds the plain iteration's largest, and it ends far below it."""
  spec, params, x = _net('8,8,8', dense=(), gain=6.0)
  s0 = network.init_states(spec, x.shape[0])
  residual = jax.jit(lambda steps, solver: relaxation.relax(
      spec, params, x, s0, max_steps=steps, tol=0.0, mode='sync', solver=solver).residual,
                     static_argnums=1)
  steps = range(1, 81)
  plain = np.array([float(residual(t, None)) for t in steps])
  kw = dict(memory=5, regularization=0.0, start_residual=float('inf'))
  guarded = np.array([float(residual(t, relaxation.Solver('anderson', **kw))) for t in steps])
  unguarded = np.array([float(residual(t, relaxation.Solver('anderson', safeguard=False, **kw)))
                        for t in steps])
  assert plain[-1] > 0.5  # the plain iteration does not settle
  assert unguarded.max() > plain.max() + 0.05
  assert guarded.max() <= plain.max()
  assert guarded[-1] < 0.2 * plain[-1]


def test_ep_gradient_with_anderson_equals_the_implicit_gradient(x64):
  """At each mode's own free fixed point (on this net sync and async settle 0.017 apart: the
  layered energy has more than one fixed point), Anderson's EP estimate is the implicit one."""
  spec, params, x = _net(gain=2.0, dtype=jnp.float64, batch=4)
  targets = {'label': jnp.array([0, 1, 2, 3])}
  zeros = network.init_states(spec, 4, jnp.float64)
  for mode in ('sync', 'async'):
    free = relaxation.relax(spec, params, x, zeros, max_steps=3000, tol=1e-13, mode=mode)
    implicit = reference_grads.implicit_gradient(spec, params, x, targets, free.states)
    assert float(implicit.residual) <= 1e-11
    out = estimators.ep_gradient(spec, params, x, targets, beta=0.01, estimator='symmetric',
                                 free_steps=3000, nudged_steps=3000, tol=1e-13, mode=mode,
                                 solver=ANDERSON)
    assert max_diff(out.free.states, free.states) <= 1e-8
    assert min(cosines(out.grads, implicit.grads)) >= 0.999
    assert all(float(r.residual) <= 1e-13 for r in (out.free,) + out.nudged)


def test_holomorphic_ep_with_anderson_matches_plain_iteration(x64):
  spec, params, x = _net('5,A,7,A', dtype=jnp.float64, batch=4, activation='smooth_sigmoid')
  targets = {'label': jnp.array([0, 1, 2, 3])}
  kw = dict(beta=0.1, estimator='holomorphic', free_steps=2000, nudged_steps=2000, tol=1e-12,
            mode='async')
  plain = estimators.ep_gradient(spec, params, x, targets, **kw)
  fast = estimators.ep_gradient(spec, params, x, targets, solver=ANDERSON, **kw)
  assert min(cosines(plain.grads, fast.grads)) >= 0.999999
  assert all(float(r.residual) <= 1e-12 for r in (fast.free,) + fast.nudged)


def test_vmapped_nudged_phases_equal_sequential_ones_with_anderson(x64):
  spec, params, x = _net(dtype=jnp.float64, batch=4)
  targets = jnp.array([0, 1, 2, 3])
  kw = dict(beta=0.2, estimator='symmetric', free_steps=500, nudged_steps=500, tol=1e-10,
            mode='async', solver=ANDERSON)
  seq = estimators.ep_gradient(spec, params, x, targets, nudged_phases='sequential', **kw)
  vm = estimators.ep_gradient(spec, params, x, targets, nudged_phases='vmapped', **kw)
  assert min(cosines(seq.grads, vm.grads)) >= 1 - 1e-9
  assert [int(r.steps) for r in seq.nudged] == [int(r.steps) for r in vm.nudged]


def test_anderson_state_memory_grows_with_m_and_not_with_the_step_limit():
  """XLA's temporaries of a jitted relaxation: the same for 10 and 10,000 steps (a while
  loop), and linear in the memory m, by at most 6 x the states' bytes per slot (the buffer
  holds G(s_i) and its residual, each carried in and out of the loop body: measured 5.0)."""
  spec, params, x = _net('8,M,8,M', dense=(), input_shape=(16, 16, 2), batch=8)
  s0 = network.init_states(spec, x.shape[0])
  state_bytes = sum(s.size * s.dtype.itemsize for s in s0)

  def temp(steps, memory):
    f = jax.jit(lambda p, x, s: relaxation.relax(
        spec, p, x, s, max_steps=steps, tol=1e-6, mode='async',
        solver=relaxation.Solver('anderson', memory=memory)))
    return f.lower(params, x, s0).compile().memory_analysis().temp_size_in_bytes

  assert temp(10, 4) == temp(10_000, 4)
  t4, t8, t12 = temp(100, 4), temp(100, 8), temp(100, 12)
  per_slot = (t12 - t4) / 8
  assert abs((t12 - t8) - (t8 - t4)) <= 0.05 * (t12 - t4)  # linear in m
  assert 2 * state_bytes <= per_slot <= 6 * state_bytes


def test_train_step_and_eval_step_run_with_anderson():
  from ep_jax import train_step as ts
  import optax
  spec, params, x = _net(batch=4)
  ep = EPConfig(estimator='symmetric', beta=0.5, free_steps=60, nudged_steps=20, tol=1e-5,
                mode='async', solver=ANDERSON)
  state = ts.create_train_state(params, optax.sgd(0.05), jax.random.PRNGKey(0))
  batch = {'image': x, 'label': jnp.array([0, 1, 2, 3])}
  new_state, metrics = jax.jit(ts.make_train_step(spec, ep, optax.sgd(0.05)))(state, batch)
  assert bool(metrics['finite'])
  assert 0 < float(metrics['free_steps']) <= 60 and float(metrics['free_residual']) <= 1e-5
  sums = jax.jit(ts.make_eval_step(spec, ep))(new_state.params, batch)
  assert float(sums['count']) == 4 and bool(sums['finite'])
  assert 'anderson(m=5)' in estimators.describe(ep)


def test_warm_starts_begin_at_each_examples_last_fixed_point():
  """With a `free_store`, a batch's free phase starts from its examples' stored states and
  writes its fixed points back; the same batch again settles in fewer steps."""
  from ep_jax import train_step as ts
  import optax
  spec, params, x = _net(batch=4)
  ep = EPConfig(estimator='symmetric', beta=0.5, free_steps=200, nudged_steps=50, tol=1e-6,
                mode='async')
  tx = optax.sgd(1e-3)
  store = ts.free_state_store(spec, 10)
  assert [s.shape for s in store] == [(10,) + sh for sh in spec.state_shapes]
  state = ts.create_train_state(params, tx, jax.random.PRNGKey(0), free_store=store)
  index = jnp.array([7, 2, 9, 0])
  batch = {'image': x, 'label': jnp.array([0, 1, 2, 3]), 'index': index}
  step = jax.jit(ts.make_train_step(spec, ep, tx))
  first, m1 = step(state, batch)
  cold = relaxation.relax(spec, params, x, network.init_states(spec, 4), max_steps=200,
                          tol=1e-6, mode='async')
  assert float(m1['free_steps']) == int(cold.steps)  # zeros: the cold start
  for s, c in zip(first.free_store, cold.states):
    np.testing.assert_allclose(s[index], c, atol=1e-6)
    assert float(jnp.max(jnp.abs(s[jnp.array([1, 3, 4, 5, 6, 8])]))) == 0.0  # untouched
  _, m2 = step(first, batch)
  assert float(m2['free_steps']) < 0.5 * float(m1['free_steps'])
  with pytest.raises(ValueError, match="batch\\['index'\\]"):
    step(state, {'image': x, 'label': batch['label']})
