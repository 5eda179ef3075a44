import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax import energy, network, relaxation


def _net(activation='hard_sigmoid', layout='5,M,7,M', dense=(6,), readout='softmax',
         dtype=jnp.float32, seed=0, batch=3):
  spec = network.make_spec(layout, input_shape=(8, 8, 2), num_classes=4, dense=dense,
                           activation=activation, readout=readout)
  params = network.init_params(spec, jax.random.PRNGKey(seed), dtype=dtype)
  x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch, 8, 8, 2), dtype)
  return spec, params, x


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('activation', ['hard_sigmoid', 'smooth_sigmoid'])
def test_while_loop_reaches_tolerance_and_reports_steps(seed, activation):
  spec, params, x = _net(activation, seed=seed)
  out = jax.jit(lambda p, x: relaxation.relax(
      spec, p, x, network.init_states(spec, 3), max_steps=500, tol=1e-5))(params, x)
  assert 0 < int(out.steps) < 500
  assert float(out.residual) <= 1e-5
  # It really is a fixed point of the update map.
  again = relaxation.step(spec, params, x, out.states, None, None, None)
  assert relaxation.max_change(again, out.states) <= 1e-4


def test_fixed_steps_when_tol_is_zero_and_agreement_with_scan():
  spec, params, x = _net()
  s0 = network.init_states(spec, 3)
  loop = relaxation.relax(spec, params, x, s0, max_steps=40, tol=0.0)
  scan = relaxation.relax_fixed(spec, params, x, s0, steps=40)
  assert int(loop.steps) == 40
  for a, b in zip(loop.states, scan.states):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_fixed_T_and_while_loop_agree_at_convergence(x64):
  spec, params, x = _net('smooth_sigmoid', dtype=jnp.float64)
  s0 = network.init_states(spec, 3, jnp.float64)
  loop = relaxation.relax(spec, params, x, s0, max_steps=1000, tol=1e-12)
  scan = relaxation.relax_fixed(spec, params, x, s0, steps=300)
  for a, b in zip(loop.states, scan.states):
    np.testing.assert_allclose(a, b, atol=1e-10)


@pytest.mark.parametrize('activation', ['hard_sigmoid', 'smooth_sigmoid'])
def test_sync_and_async_reach_the_same_fixed_point(activation, x64):
  spec, params, x = _net(activation, dtype=jnp.float64, layout='5,M,7,A,6')
  s0 = network.init_states(spec, 3, jnp.float64)
  sync = relaxation.relax(spec, params, x, s0, max_steps=2000, tol=1e-12, mode='sync')
  asyn = relaxation.relax(spec, params, x, s0, max_steps=2000, tol=1e-12, mode='async')
  assert float(sync.residual) <= 1e-12 and float(asyn.residual) <= 1e-12
  assert int(asyn.steps) <= int(sync.steps)
  for a, b in zip(sync.states, asyn.states):
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_force_from_grad_equals_explicit_feedback(x64):
  """∂Φ/∂s_l = drive from below + feedback from above (transposed conv through the pool)."""
  spec, params, x = _net(layout='5,7,A', dense=(6,), dtype=jnp.float64)
  states = tuple(jax.random.uniform(jax.random.PRNGKey(i), (3,) + shape, jnp.float64)
                 for i, shape in enumerate(spec.state_shapes))
  forces = relaxation.force(spec, params, x, states, None, None, None)
  drives = energy.layer_drives(spec, params, x, states)
  # Top layer (dense, nothing above it in softmax mode): force is its drive.
  np.testing.assert_allclose(forces[-1], drives[-1], atol=1e-12)
  # Layer 2 (conv + avg pool) gets dense feedback W_3^T s_3 reshaped.
  feedback = (states[2] @ params['layers'][2]['w'].T).reshape(states[1].shape)
  np.testing.assert_allclose(forces[1], drives[1] + feedback, atol=1e-12)
  # Layer 1 gets the transposed convolution of the avg-unpooled s_2.
  up = jnp.repeat(jnp.repeat(states[1], 2, 1), 2, 2) * 0.25
  w = params['layers'][1]['w']
  transposed = jax.lax.conv_general_dilated(
      up, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), (1, 1), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(forces[0], drives[0] + transposed, atol=1e-12)


def test_divergence_stops_the_loop_and_reports_nonfinite_residual():
  spec, params, x = _net()
  bad = jax.tree_util.tree_map(lambda p: p * jnp.nan, params)
  out = relaxation.relax(spec, bad, x, network.init_states(spec, 3), max_steps=100, tol=0.0)
  assert int(out.steps) == 1
  assert not np.isfinite(float(out.residual))


def test_unknown_mode():
  spec, params, x = _net()
  with pytest.raises(ValueError, match='mode'):
    relaxation.relax(spec, params, x, network.init_states(spec, 3), mode='chaotic')


@pytest.mark.parametrize('mode', ['sync', 'async'])
def test_layer_residuals_are_the_last_steps_per_layer_change(mode):
  spec, params, x = _net()
  s0 = network.init_states(spec, 3)
  before = relaxation.relax(spec, params, x, s0, max_steps=5, mode=mode)
  loop = relaxation.relax(spec, params, x, s0, max_steps=6, mode=mode)
  scan = relaxation.relax_fixed(spec, params, x, s0, steps=6, mode=mode)
  expected = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(loop.states, before.states)]
  for out in (loop, scan):
    assert out.layer_residuals.shape == (len(spec.layer_names),)
    np.testing.assert_allclose(out.layer_residuals, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.residual, max(expected), rtol=1e-5, atol=1e-7)
  assert bool(jnp.all(jnp.isinf(relaxation.relax(spec, params, x, s0, max_steps=0)
                                .layer_residuals)))


def test_strong_feedback_oscillates_in_sync_mode():
  """Synchronous updates of strongly coupled layers flip between two states (a period-2 cycle
  whose residual stays O(1)); this is what `ep.max_residual` catches in training."""
  spec, params, x = _net(layout='8,8,8', dense=())
  params = jax.tree.map(lambda p: 6.0 * p, params)
  s0 = network.init_states(spec, 3)
  sync = relaxation.relax(spec, params, x, s0, max_steps=200, tol=1e-6, mode='sync')
  assert int(sync.steps) == 200 and float(sync.residual) > 0.25


def test_async_updates_settle_where_sync_updates_oscillate():
  """On the strongly coupled net above, updating even then odd layers (each half from the
  newest states of the other) removes the period-2 flip: the relaxation settles."""
  spec, params, x = _net(layout='8,8,8', dense=())
  params = jax.tree.map(lambda p: 6.0 * p, params)
  s0 = network.init_states(spec, 3)
  out = relaxation.relax(spec, params, x, s0, max_steps=200, tol=1e-4, mode='async')
  assert int(out.steps) < 200 and float(out.residual) <= 1e-4


@pytest.mark.parametrize('layout,dense,carried', [('5,M,6,A,7,M', (6,), ()),
                                                 ('4,4,M,5,5,M', (6,), (1, 3)),
                                                 ('4,M,4,4,A,5', (), ()),
                                                 ('5,M', (), ())])
def test_async_loops_carrying_convolutions_equal_fresh_steps(layout, dense, carried):
  """`relax` / `relax_fixed` hand the even layers' max-pooled convolutions from one async
  step to the next; that must give exactly the states of `step` applied repeatedly (which
  recomputes them)."""
  spec, params, x = _net(layout=layout, dense=dense)
  s0 = network.init_states(spec, 3)
  assert relaxation.carried_conv_layers(spec, len(s0), 'async') == carried
  assert relaxation.carried_conv_layers(spec, len(s0), 'sync') == ()
  expected = s0
  for _ in range(7):
    expected = relaxation.step(spec, params, x, expected, None, None, None, mode='async')
  loop = relaxation.relax(spec, params, x, s0, max_steps=7, mode='async')
  scan = relaxation.relax_fixed(spec, params, x, s0, steps=7, mode='async')
  for out in (loop, scan):
    for a, b in zip(out.states, expected):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _pool_grad(u, ties):
  """`∂/∂u Σ pool2d(u, 'max', ties)` and the pooled values."""
  value, vjp = jax.vjp(lambda v: energy.pool2d(v, 'max', ties), u)
  return value, vjp(jnp.ones_like(value))[0]


def test_max_pool_tie_goes_to_the_first_maximum():
  """torch's max_pool2d rule: a tied window's derivative goes to its first maximum in row-major
  order; 'split' shares it evenly. The pooled values are the maxima either way."""
  # Two 2x2 windows: all four tied; then (0, 1) and (1, 1) tied above the others.
  u = jnp.array([[1., 1., 0., 2.],
                 [1., 1., 1., 2.]])[None, :, :, None]
  first_value, first = _pool_grad(u, 'first')
  split_value, split = _pool_grad(u, 'split')
  expected_value = jnp.array([[1., 2.]])[None, :, :, None]
  chex.assert_trees_all_equal(first_value, split_value, expected_value)
  chex.assert_trees_all_equal(first[0, :, :, 0], jnp.array([[1., 0., 0., 1.],
                                                            [0., 0., 0., 0.]]))
  chex.assert_trees_all_equal(split[0, :, :, 0], jnp.array([[.25, .25, 0., .5],
                                                            [.25, .25, 0., .5]]))
  # The adjoint used by the relaxation's feedback routes the same way.
  g = jnp.array([[3., 5.]])[None, :, :, None]
  chex.assert_trees_all_equal(energy.pool2d_transpose(g, u, 'max', 'first')[0, :, :, 0],
                              jnp.array([[3., 0., 0., 5.], [0., 0., 0., 0.]]))
  # A window's only maximum takes the whole derivative under both rules; NaN propagates.
  v = jnp.array([[0., 1.], [2., 3.]])[None, :, :, None]
  for ties in network.POOL_TIES:
    chex.assert_trees_all_equal(_pool_grad(v, ties)[1][0, :, :, 0],
                                jnp.array([[0., 0.], [0., 1.]]))
    assert bool(jnp.isnan(energy.pool2d(v.at[0, 0, 1, 0].set(jnp.nan), 'max', ties)).all())
  with pytest.raises(ValueError, match='pool_ties'):
    energy.pool2d(u, 'max', 'last')
  with pytest.raises(ValueError, match='pool_ties'):
    network.make_spec('4,M', input_shape=(8, 8, 1), num_classes=3, pool_ties='even')


def test_tie_rule_reaches_the_parameter_gradient(x64):
  """EP's ∂Φ/∂W_2 where W_2 ⋆ s_1 is spatially constant (W_2 = 0: every window tied) is
  `Σ s_1-patches ⊗ P^T(s_2)` with the unpooling of the spec's tie rule: s_2 on each window's
  top-left position ('first'), or a quarter on each ('split')."""
  s1 = jax.random.uniform(jax.random.PRNGKey(2), (2, 4, 4, 3), jnp.float64)
  s2 = jax.random.uniform(jax.random.PRNGKey(3), (2, 2, 2, 2), jnp.float64)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 4, 1), jnp.float64)
  unpooled = {'first': jnp.zeros((2, 4, 4, 2), jnp.float64).at[:, ::2, ::2].set(s2),
              'split': jnp.repeat(jnp.repeat(s2, 2, 1), 2, 2) / 4}
  grads = {}
  for ties in network.POOL_TIES:
    spec = network.make_spec('3,2,M', input_shape=(4, 4, 1), num_classes=2, pool_ties=ties)
    params = network.init_params(spec, jax.random.PRNGKey(0), dtype=jnp.float64)
    w2 = jnp.zeros_like(params['layers'][1]['w'])

    def phi(w):
      layers = (params['layers'][0], {'w': w, 'b': params['layers'][1]['b']})
      return energy.primitive(spec, {**params, 'layers': layers}, x, (s1, s2))

    grads[ties] = jax.grad(phi)(w2)
    expected = jax.grad(lambda w: jnp.sum(unpooled[ties] * energy.conv2d(s1, w)))(w2)
    chex.assert_trees_all_close(grads[ties], expected, atol=1e-12)
  assert float(jnp.abs(grads['first'] - grads['split']).max()) > 1e-3


def _energy_per_example(spec, params, x, states):
  """`||s||² - Φ(x, s)` per example (the hard sigmoid's energy: -E of METHOD.md §4b)."""
  def one(xi, si):
    si = tuple(s[None] for s in si)
    return sum(jnp.sum(s ** 2) for s in si) - energy.primitive(spec, params, xi[None], si)
  return jax.vmap(one)(x, states)


@pytest.mark.parametrize('layout,dense,skips', [
    ('5,M,7,M', (6,), ()),        # max pools: convex in the lower layer (a minorise-maximise step)
    ('4,4,M,6', (), ((0, 2),)),   # a skip link: its layers in different colour classes
])
def test_async_sweep_never_raises_the_energy(x64, layout, dense, skips):
  """Along relaxations from zero and from random states in [0, 1], an asynchronous step never
  raises ||s||² - Φ, for strongly coupled random weights (gain 6) where a synchronous step
  does raise it."""
  spec = network.make_spec(layout, input_shape=(8, 8, 2), num_classes=4, dense=dense,
                           skips=skips)
  params = jax.tree_util.tree_map(
      lambda p: 6.0 * p, network.init_params(spec, jax.random.PRNGKey(4), dtype=jnp.float64))
  batch = 32
  x = jax.random.uniform(jax.random.PRNGKey(5), (batch, 8, 8, 2), jnp.float64)
  starts = [network.init_states(spec, batch, jnp.float64)] + [
      tuple(jax.random.uniform(jax.random.PRNGKey(10 * seed + l), (batch,) + shape, jnp.float64)
            for l, shape in enumerate(spec.state_shapes)) for seed in range(2)]
  step = jax.jit(lambda s, mode: relaxation.step(spec, params, x, s, None, None, None,
                                                 mode=mode), static_argnums=1)
  energy_of = jax.jit(lambda s: _energy_per_example(spec, params, x, s))
  rises = {}
  for mode in ('async', 'sync'):
    worst = -np.inf
    for states in starts:
      for _ in range(8):
        new = step(states, mode)
        worst = max(worst, float(jnp.max(energy_of(new) - energy_of(states))))
        states = new
    rises[mode] = worst
  assert rises['async'] <= 1e-9, rises
  assert rises['sync'] > 1e-2, rises  # the property is not automatic
