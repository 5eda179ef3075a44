"""The EP theorem, bias orders and reference gradients (float64, METHOD.md §6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cosines, implicit_problem, relative_error
from ep_jax import estimators, network, reference_grads, relaxation

T = 3000
TOL = 1e-13


def _problem(activation, layout, dense=(6,), readout='softmax', seed=0):
  spec = network.make_spec(layout, input_shape=(8, 8, 2), num_classes=4, dense=dense,
                           activation=activation, readout=readout)
  params = network.init_params(spec, jax.random.PRNGKey(seed), dtype=jnp.float64)
  # Larger weights than the default init so the dynamics are far from trivial.
  params = jax.tree_util.tree_map(lambda p: 2.0 * p, params)
  x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (4, 8, 8, 2), jnp.float64)
  targets = {'label': jnp.array([0, 1, 2, 3])}
  _, implicit = implicit_problem(spec, params, x, targets, steps=T, tol=TOL)
  return spec, params, x, targets, implicit


def _ep(spec, params, x, targets, estimator, beta, **kw):
  return estimators.ep_gradient(spec, params, x, targets, beta=beta, estimator=estimator,
                                free_steps=T, nudged_steps=T, tol=TOL, **kw)


@pytest.mark.parametrize('readout', ['softmax', 'mse'])
def test_symmetric_matches_implicit_on_conv_crnn(x64, readout):
  """Hard sigmoid, max pooling (the reference network's ingredients), β = 0.01."""
  spec, params, x, targets, implicit = _problem('hard_sigmoid', '5,M,7,M', readout=readout)
  out = _ep(spec, params, x, targets, 'symmetric', 0.01)
  assert min(cosines(out.grads, implicit)) >= 0.999
  assert all(int(r.steps) < T for r in out.nudged)


def test_bptt_matches_implicit(x64):
  spec, params, x, targets, implicit = _problem('hard_sigmoid', '5,M,7,M')
  bptt = reference_grads.bptt_gradient(spec, params, x, targets, steps=200)
  assert min(cosines(bptt, implicit)) >= 0.999999
  assert relative_error(bptt, implicit) < 1e-6


@pytest.mark.parametrize('mode', ['sync', 'async'])
def test_bptt_estimator_is_the_unrolled_gradient(x64, mode):
  """'bptt' trains with the exact gradient through T1 unrolled steps: the reference's value,
  and after enough steps the implicit gradient at the fixed point."""
  spec, params, x, targets, _ = _problem('hard_sigmoid', '5,M,7,M')
  out = estimators.ep_gradient(spec, params, x, targets, beta=0.5, estimator='bptt',
                               free_steps=200, nudged_steps=1, mode=mode)
  ref = reference_grads.bptt_gradient(spec, params, x, targets, steps=200, mode=mode)
  assert relative_error(out.grads, ref) < 1e-12
  # The implicit gradient at the fixed point this mode reaches (async may pick another one).
  implicit = reference_grads.implicit_gradient(spec, params, x, targets, out.free.states).grads
  assert relative_error(out.grads, implicit) < 1e-6
  assert out.nudged == () and int(out.free.steps) == 200
  # Truncated unrolls differ from the fixed-point gradient: the estimator really uses T1.
  short = estimators.ep_gradient(spec, params, x, targets, beta=0.5, estimator='bptt',
                                 free_steps=3, nudged_steps=1, mode=mode)
  assert relative_error(short.grads, implicit) > 1e-3


def test_bias_orders_with_smooth_dynamics(x64):
  """Halving β halves the one-sided error, quarters the symmetric one; holomorphic is best."""
  spec, params, x, targets, implicit = _problem('smooth_sigmoid', '5,A,7,A')
  errors = {name: [relative_error(_ep(spec, params, x, targets, name, b).grads, implicit)
                   for b in (0.1, 0.05)]
            for name in ('one_sided', 'symmetric', 'holomorphic')}
  one_ratio = errors['one_sided'][0] / errors['one_sided'][1]
  sym_ratio = errors['symmetric'][0] / errors['symmetric'][1]
  assert 1.8 < one_ratio < 2.2, errors
  assert 3.6 < sym_ratio < 4.4, errors
  assert errors['holomorphic'][1] < errors['symmetric'][1] / 10, errors
  assert errors['symmetric'][1] < errors['one_sided'][1], errors


def test_holomorphic_K_point_orders(x64):
  spec, params, x, targets, implicit = _problem('smooth_sigmoid', '4,A', dense=(5,))
  err = [relative_error(_ep(spec, params, x, targets, 'holomorphic', b, holo_points=4).grads,
                        implicit) for b in (0.2, 0.1)]
  assert err[0] / err[1] > 10  # O(|β|^4): 16 in theory


def test_symmetric_hard_sigmoid_small_beta_is_accurate(x64):
  """METHOD.md §6: with piecewise-linear dynamics the O(β²) regime needs a small β."""
  spec, params, x, targets, implicit = _problem('hard_sigmoid', '5,M,7,M')
  out = _ep(spec, params, x, targets, 'symmetric', 1e-3)
  assert relative_error(out.grads, implicit) < 1e-3


def test_random_sign_draws_both_signs_and_averages_to_symmetric(x64):
  """+β equals one-sided; the mean of the +β and -β draws is exactly the symmetric estimate."""
  spec, params, x, targets, _ = _problem('smooth_sigmoid', '4,A', dense=(5,))
  keys = [jax.random.PRNGKey(i) for i in range(8)]
  signs = [float(jax.random.rademacher(k, (), jnp.float32)) for k in keys]
  k_plus, k_minus = keys[signs.index(1.0)], keys[signs.index(-1.0)]
  plus = _ep(spec, params, x, targets, 'random_sign', 0.05, rng=k_plus)
  minus = _ep(spec, params, x, targets, 'random_sign', 0.05, rng=k_minus)
  one_sided = _ep(spec, params, x, targets, 'one_sided', 0.05)
  symmetric = _ep(spec, params, x, targets, 'symmetric', 0.05)
  assert relative_error(plus.grads, one_sided.grads) < 1e-10
  assert relative_error(minus.grads, one_sided.grads) > 1e-4
  mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, plus.grads, minus.grads)
  assert relative_error(mean, symmetric.grads) < 1e-8


def test_jit_and_vmap_over_beta():
  spec = network.make_spec('4,M', input_shape=(8, 8, 1), num_classes=3, dense=(5,))
  params = network.init_params(spec, jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1))
  targets = {'label': jnp.array([0, 2])}

  @jax.jit
  def grads_for(beta):
    return estimators.ep_gradient(spec, params, x, targets, beta=beta, free_steps=30,
                                  nudged_steps=10).grads

  batched = jax.vmap(grads_for)(jnp.array([0.1, 0.5]))
  single = grads_for(0.5)
  for b, s in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(single)):
    assert b.shape[0] == 2 and b.shape[1:] == s.shape
    np.testing.assert_allclose(b[1], s, rtol=1e-4, atol=1e-6)
  # Gradients are shaped like the parameters.
  assert jax.tree_util.tree_structure(single) == jax.tree_util.tree_structure(params)


@pytest.mark.parametrize('beta', [0.0, -0.5, float('nan')])
def test_beta_must_be_positive(beta):
  spec = network.make_spec('4,M', input_shape=(8, 8, 1), num_classes=3)
  params = network.init_params(spec, jax.random.PRNGKey(0))
  x = jnp.zeros((2, 8, 8, 1))
  with pytest.raises(ValueError, match='beta must be'):
    estimators.ep_gradient(spec, params, x, {'label': jnp.array([0, 1])}, beta=beta)
  with pytest.raises(ValueError, match='beta must be'):
    estimators.EPConfig(beta=beta)


def test_bad_estimator_and_holomorphic_requirements():
  spec = network.make_spec('4,M', input_shape=(8, 8, 1), num_classes=3)
  params = network.init_params(spec, jax.random.PRNGKey(0))
  x = jnp.zeros((2, 8, 8, 1))
  t = {'label': jnp.array([0, 1])}
  with pytest.raises(ValueError, match='unknown estimator'):
    estimators.ep_gradient(spec, params, x, t, beta=0.1, estimator='two_sided')
  with pytest.raises(ValueError, match='holomorphic activation'):
    estimators.ep_gradient(spec, params, x, t, beta=0.1, estimator='holomorphic')
  smooth = network.make_spec('4,M', input_shape=(8, 8, 1), num_classes=3,
                             activation='smooth_sigmoid')
  with pytest.raises(ValueError, match='average pooling'):
    estimators.ep_gradient(smooth, params, x, t, beta=0.1, estimator='holomorphic')
  with pytest.raises(ValueError, match='rng'):
    estimators.ep_gradient(spec, params, x, t, beta=0.1, estimator='random_sign')


def _sequential(spec, params, x, targets, estimator, beta, *, free_steps, nudged_steps, tol,
                holo_points=4, rng=None, mode='sync'):
  """The estimators phase by phase, each contrast written out (the formulation of METHOD.md's
  table): `(grads, nudged RelaxResults)`."""
  import math
  from ep_jax.energy import nudged_primitive, output_cost
  cost = output_cost(spec)
  batch = x.shape[0]
  free = relaxation.relax(spec, params, x, network.init_states(spec, batch, x.dtype),
                          max_steps=free_steps, tol=tol, mode=mode)
  s0 = free.states

  def nudge(b, start):
    return relaxation.relax(spec, params, x, start, targets=targets, beta=b, cost_fn=cost,
                            max_steps=nudged_steps, tol=tol, mode=mode)

  def phi(p, states, b):
    return nudged_primitive(spec, p, x, states, targets, b, cost)

  if estimator in ('one_sided', 'random_sign'):
    b = beta
    if estimator == 'random_sign':
      b = beta * jax.random.rademacher(rng, (), jnp.float32).astype(s0[0].dtype)
    plus = nudge(b, s0)
    contrast = lambda p: (phi(p, plus.states, b) - phi(p, s0, None)) / b
    nudged = (plus,)
  elif estimator == 'symmetric':
    plus, minus = nudge(beta, s0), nudge(-beta, s0)
    contrast = lambda p: (phi(p, plus.states, beta) - phi(p, minus.states, -beta)) / (2 * beta)
    nudged = (plus, minus)
  else:
    start = tuple(s.astype(jnp.complex128) for s in s0)
    betas = [beta * complex(math.cos(2 * math.pi * k / holo_points),
                            math.sin(2 * math.pi * k / holo_points))
             for k in range(holo_points)]
    nudged = tuple(nudge(b, start) for b in betas)
    contrast = lambda p: sum(jnp.real(phi(p, r.states, b) / b)
                             for r, b in zip(nudged, betas)) / holo_points
  grads = jax.tree_util.tree_map(lambda g: -g / batch, jax.grad(contrast)(params))
  return grads, nudged


def _tiny(activation, layout='3,A', dtype=jnp.float64):
  spec = network.make_spec(layout, input_shape=(6, 6, 1), num_classes=3, dense=(4,),
                           activation=activation)
  params = network.init_params(spec, jax.random.PRNGKey(0), dtype=dtype)
  params = jax.tree_util.tree_map(lambda p: 2.0 * p, params)
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 6, 6, 1), dtype)
  return spec, params, x, {'label': jnp.array([0, 1, 2])}


@pytest.mark.parametrize('nudged_phases', estimators.NUDGED_PHASES)
@pytest.mark.parametrize('estimator,activation,layout', [
    ('one_sided', 'hard_sigmoid', '3,M'), ('symmetric', 'hard_sigmoid', '3,M'),
    ('random_sign', 'smooth_sigmoid', '3,A'), ('holomorphic', 'smooth_sigmoid', '3,A')])
def test_stencil_phases_equal_the_sequential_estimators(x64, estimator, activation, layout,
                                                         nudged_phases):
  """The stencil's nudged phases, one after the other or vmapped over the points, give the
  estimate written out phase by phase; with a tolerance each phase keeps its own step count
  and states."""
  spec, params, x, targets = _tiny(activation, layout)
  kw = dict(free_steps=200, nudged_steps=60, tol=1e-7)
  rng = jax.random.PRNGKey(3)
  ref, ref_nudged = _sequential(spec, params, x, targets, estimator, 0.3, rng=rng, **kw)
  out = estimators.jitted_ep_gradient(spec, params, x, targets, beta=0.3, estimator=estimator,
                                      rng=rng, nudged_phases=nudged_phases, **kw)
  assert relative_error(out.grads, ref) < 1e-11
  assert len(out.nudged) == len(ref_nudged)
  for r, s in zip(out.nudged, ref_nudged):
    assert int(r.steps) == int(s.steps)
    assert r.layer_residuals.shape == s.layer_residuals.shape
    for a, b in zip(r.states, s.states):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
  # The real phases stop at the tolerance (the complex ones of this net need more steps).
  assert estimator == 'holomorphic' or all(int(r.steps) < 60 for r in out.nudged)


def test_unknown_nudged_phases_is_refused():
  spec, params, x, targets = _tiny('hard_sigmoid', '3,M')
  with pytest.raises(ValueError, match="unknown nudged_phases 'parallel'"):
    estimators.ep_gradient(spec, params, x, targets, beta=0.3, nudged_phases='parallel')
  with pytest.raises(ValueError, match='unknown nudged_phases'):
    estimators.EPConfig(nudged_phases='parallel')


def test_stencil_table_points_and_weights():
  """Each stencil estimates -f'(0): Σ w_k β_k = 1, with the documented bias order."""
  for name, order in (('one_sided', 1), ('symmetric', 2), ('holomorphic', 4)):
    betas, weights = (np.asarray(a) for a in estimators.STENCILS[name](0.3, 4))
    moments = [np.sum(weights * betas ** m) for m in range(order + 2)]
    np.testing.assert_allclose(moments[1], 1.0, atol=1e-12)
    np.testing.assert_allclose(moments[2:order + 1], 0.0, atol=1e-12)
    assert abs(moments[order + 1]) > 1e-3
    shape = estimators.stencil_shape(name, 4)
    assert shape.points == len(betas) and shape.complex == (name == 'holomorphic')
    assert shape.balanced == (name != 'one_sided')
  assert estimators.STENCILS['random_sign'] is estimators.STENCILS['one_sided']
  betas, weights = estimators.stencil_points('holomorphic', jnp.float32(0.5), 3)
  assert betas.dtype == weights.dtype == jnp.complex64 and betas.shape == (3,)


def _central4(beta, holo_points):
  return ((beta, -beta, 2 * beta, -2 * beta),
          (2 / (3 * beta), -2 / (3 * beta), -1 / (12 * beta), 1 / (12 * beta)))


def test_added_stencil_central_difference_has_fourth_order_bias(x64, monkeypatch):
  """An estimator added to the table: the 4-point central difference, bias O(β⁴)."""
  monkeypatch.setitem(estimators.STENCILS, 'central4', _central4)
  spec, params, x, targets, implicit = _problem('smooth_sigmoid', '4,A', dense=(5,))
  errors = {name: [relative_error(_ep(spec, params, x, targets, name, b).grads, implicit)
                   for b in (0.05, 0.025)] for name in ('central4', 'symmetric')}
  assert errors['central4'][0] / errors['central4'][1] > 12, errors  # 16 in theory
  assert errors['central4'][1] < errors['symmetric'][1] / 10, errors
  assert len(_ep(spec, params, x, targets, 'central4', 0.05).nudged) == 4
  with pytest.raises(ValueError, match='beta must be'):
    estimators.EPConfig(estimator='central4', beta=-1.0)


def test_vmap_over_beta_equals_separate_calls(x64):
  """A β sweep as one vmapped program (with a tolerance) gives each β's own estimate, phase
  step counts included."""
  spec, params, x, targets = _tiny('hard_sigmoid', '3,M')
  kw = dict(free_steps=200, nudged_steps=60, tol=1e-7)
  betas = jnp.array([0.05, 0.2, 0.6])
  for estimator in ('one_sided', 'symmetric'):
    sweep = jax.jit(jax.vmap(lambda b, e=estimator: estimators.ep_gradient(
        spec, params, x, targets, beta=b, estimator=e, **kw)))(betas)
    for i, b in enumerate(betas):
      single = estimators.jitted_ep_gradient(spec, params, x, targets, beta=b,
                                             estimator=estimator, **kw)
      for a, s in zip(jax.tree_util.tree_leaves(sweep), jax.tree_util.tree_leaves(single)):
        np.testing.assert_allclose(a[i], s, rtol=1e-10, atol=1e-13)
    norms = [float(jnp.linalg.norm(g)) for g in sweep.grads['readout']['w']]
    assert len(set(norms)) == 3
