"""Damped relaxation `s <- (1 - γ) s + γ σ(∂Φ/∂s)`: same fixed points, smaller steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax import estimators, network, relaxation


def _net(dtype=jnp.float32):
  spec = network.make_spec('5,M,7,A,6', input_shape=(8, 8, 2), num_classes=4, dense=(6,))
  params = network.init_params(spec, jax.random.PRNGKey(0), dtype=dtype, scale=2.0)
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 2), dtype)
  return spec, params, x


@pytest.mark.parametrize('mode', ['sync', 'async'])
def test_one_damped_step_is_the_convex_combination(mode):
  spec, params, x = _net()
  s = tuple(jax.random.uniform(jax.random.PRNGKey(2 + l), (3,) + shape)
            for l, shape in enumerate(spec.state_shapes))
  full = relaxation.step(spec, params, x, s, None, None, None, mode=mode)
  damped = relaxation.step(spec, params, x, s, None, None, None, mode=mode, damping=0.3)
  if mode == 'sync':
    for a, b, c in zip(damped, s, full):
      np.testing.assert_allclose(a, 0.7 * b + 0.3 * c, atol=1e-6)
  else:  # the bottom layer updates first from the old states: its value is the combination
    np.testing.assert_allclose(damped[0], 0.7 * s[0] + 0.3 * full[0], atol=1e-6)


@pytest.mark.parametrize('mode', ['sync', 'async'])
def test_damping_keeps_the_fixed_points(mode, x64):
  spec, params, x = _net(jnp.float64)
  s0 = network.init_states(spec, 3, jnp.float64)
  plain = relaxation.relax(spec, params, x, s0, max_steps=5000, tol=1e-12, mode='async')
  damped = relaxation.relax(spec, params, x, s0, max_steps=5000, tol=1e-13, mode=mode,
                            damping=0.5)
  assert float(plain.residual) <= 1e-12 and float(damped.residual) <= 1e-13
  assert int(damped.steps) > int(plain.steps)
  for a, b in zip(plain.states, damped.states):
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_damping_settles_sync_dynamics_that_oscillate_undamped():
  spec, params, x = _net()
  params = jax.tree_util.tree_map(lambda w: 6.0 * w, params)
  s0 = network.init_states(spec, 3)
  undamped = relaxation.relax(spec, params, x, s0, max_steps=400, tol=1e-5, mode='sync')
  damped = relaxation.relax(spec, params, x, s0, max_steps=400, tol=1e-5, mode='sync',
                            damping=0.5)
  assert float(undamped.residual) > 1e-2
  assert float(damped.residual) <= 1e-5


def test_damping_reaches_the_estimators_and_is_validated():
  spec, params, x = _net()
  targets = {'label': jnp.arange(3) % 4}
  out = estimators.ep_gradient(spec, params, x, targets, beta=0.1, free_steps=3,
                               nudged_steps=2, damping=0.5)
  s0 = network.init_states(spec, 3)
  three = relaxation.relax_fixed(spec, params, x, s0, steps=3, damping=0.5)
  for a, b in zip(out.free.states, three.states):
    np.testing.assert_allclose(a, b, atol=1e-6)
  for bad in (0.0, 1.5, -0.1):
    with pytest.raises(ValueError, match='damping'):
      estimators.EPConfig(damping=bad)
    with pytest.raises(ValueError, match='damping'):
      relaxation.relax(spec, params, x, s0, damping=bad)
