import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ep_jax import estimators, inference, network, optim, train_step
from ep_jax.estimators import EPConfig


def _setup(estimator='symmetric', activation='hard_sigmoid', layout='8,M,8,M'):
  spec = network.make_spec(layout, input_shape=(8, 8, 1), num_classes=4, dense=(16,),
                           activation=activation)
  params = network.init_params(spec, jax.random.PRNGKey(0))
  tx = optim.make_optimizer(spec, params, learning_rates=[1.0, 0.8, 0.5, 0.3], momentum=0.9,
                            weight_decay=1e-4, schedule='cosine', total_steps=100)
  ep = EPConfig(estimator=estimator, beta=0.5, free_steps=30, nudged_steps=10)
  state = train_step.create_train_state(params, tx, jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  # A learnable batch: each class lights up its own quadrant of the image.
  labels = np.arange(16) % 4
  images = 0.2 * rng.uniform(size=(16, 8, 8, 1))
  for i, y in enumerate(labels):
    images[i, 4 * (y // 2):4 * (y // 2) + 4, 4 * (y % 2):4 * (y % 2) + 4] += 1.0
  batch = {'image': jnp.asarray(images, jnp.float32), 'label': jnp.asarray(labels, jnp.int32)}
  return spec, ep, tx, state, batch


def test_train_step_traced_once_finite_and_reduces_loss():
  spec, ep, tx, state, batch = _setup()
  step_fn = train_step.make_train_step(spec, ep, tx)
  step_fn = jax.jit(chex.assert_max_traces(step_fn, n=1), donate_argnums=0)
  losses = []
  for _ in range(12):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics['loss']))
    assert bool(metrics['finite'])
    for g in ('free_steps', 'grad_norm', 'accuracy'):
      assert np.isfinite(float(metrics[g]))
  assert int(state.step) == 12
  assert losses[-1] < 0.8 * losses[0], losses
  assert metrics['layer_mean_abs_state'].shape == (spec.num_layers,)


@pytest.mark.parametrize('estimator', ['one_sided', 'random_sign', 'bptt'])
def test_other_estimators_train(estimator):
  spec, ep, tx, state, batch = _setup(estimator)
  step_fn = jax.jit(train_step.make_train_step(spec, ep, tx))
  first = None
  for _ in range(8):
    state, metrics = step_fn(state, batch)
    first = first if first is not None else float(metrics['loss'])
  assert float(metrics['loss']) < first


def test_holomorphic_training_step():
  spec, ep, tx, state, batch = _setup('holomorphic', 'smooth_sigmoid', '8,A,8,A')
  step_fn = jax.jit(train_step.make_train_step(spec, ep, tx))
  state, metrics = step_fn(state, batch)
  assert bool(metrics['finite'])
  assert float(metrics['nudged_steps']) == 10


def test_eval_step_masks_padding():
  spec, ep, tx, state, batch = _setup()
  eval_fn = jax.jit(train_step.make_eval_step(spec, ep))
  full = eval_fn(state.params, batch)
  masked = eval_fn(state.params, dict(batch, mask=jnp.asarray([1.0] * 10 + [0.0] * 6)))
  assert float(full['count']) == 16 and float(masked['count']) == 10
  half = {k: v[:10] for k, v in batch.items()}
  part = eval_fn(state.params, half)
  np.testing.assert_allclose(masked['loss_sum'], part['loss_sum'], rtol=1e-5)
  np.testing.assert_allclose(masked['correct'], part['correct'])


def test_optimizer_per_layer_rates_and_schedules():
  spec = network.make_spec('8,M,8,M', input_shape=(8, 8, 1), num_classes=4)
  params = network.init_params(spec, jax.random.PRNGKey(0))
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  tx = optim.make_optimizer(spec, params, learning_rates=[0.3, 0.2, 0.1], momentum=0.0,
                            schedule='constant')
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(updates['layers'][0]['w'][0, 0, 0, 0]) == pytest.approx(-0.3)
  assert float(updates['layers'][1]['b'][0]) == pytest.approx(-0.2)
  assert float(updates['readout']['w'][0, 0]) == pytest.approx(-0.1)
  with pytest.raises(ValueError, match='parameter groups'):
    optim.make_optimizer(spec, params, learning_rates=[0.1, 0.2])
  cosine = optim.learning_rate_schedule(1.0, schedule='cosine', total_steps=100, eta_min=0.1)
  assert float(cosine(0)) == pytest.approx(1.0)
  assert float(cosine(50)) == pytest.approx(0.55)
  assert float(cosine(100)) == pytest.approx(0.1)
  sgdr = optim.learning_rate_schedule(1.0, schedule='sgdr', total_steps=100, restart_period=20,
                                      restart_mult=2.0)
  assert float(sgdr(19)) < 0.1 and float(sgdr(20)) == pytest.approx(1.0)
  assert float(sgdr(60)) == pytest.approx(1.0)  # periods 20, 40, 80
  with pytest.raises(ValueError, match='schedule'):
    optim.learning_rate_schedule(1.0, schedule='step', total_steps=10)


def test_weight_decay_matches_torch_convention():
  spec = network.make_spec('4', input_shape=(4, 4, 1), num_classes=2)
  params = network.init_params(spec, jax.random.PRNGKey(0))
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  tx = optim.make_optimizer(spec, params, learning_rates=0.5, momentum=0.9, weight_decay=0.1,
                            schedule='constant')
  updates, _ = tx.update(zeros, tx.init(params), params)
  chex.assert_trees_all_close(updates, jax.tree_util.tree_map(lambda p: -0.05 * p, params),
                              rtol=1e-6)


def _torch_cosine_per_epoch(base, epoch, t_max=100, eta_min=1e-5):
  """The reference's rate in epoch `epoch` (0-based): `CosineAnnealingLR(T_max, eta_min)`,
  `scheduler.step()` after each epoch while `epoch < T_max`, so it holds at eta_min after."""
  return eta_min + (base - eta_min) * (1 + math.cos(math.pi * min(epoch, t_max) / t_max)) / 2


def test_cosine_stepped_per_epoch_over_decay_epochs_then_held():
  """The reference's schedule: constant within an epoch, annealed over 100 of 120 epochs, then
  1e-5; with schedule_step='step' the same horizon is annealed step by step."""
  spe = 3
  kwargs = optim.schedule_kwargs(schedule='cosine', steps_per_epoch=spe, epochs=120,
                                 eta_min=1e-5, decay_epochs=100, schedule_step='epoch')
  lr = optim.learning_rate_schedule(0.25, **kwargs)
  for epoch in (0, 1, 2, 37, 50, 99, 100, 101, 110, 119):
    for step in (epoch * spe, epoch * spe + spe - 1):
      assert float(lr(step)) == pytest.approx(_torch_cosine_per_epoch(0.25, epoch), rel=1e-5,
                                              abs=1e-7)  # float32 rates
  assert float(lr(spe * 50)) == pytest.approx(0.5 * (0.25 + 1e-5), rel=1e-5)
  assert float(lr(spe * 100)) == pytest.approx(1e-5, rel=1e-4)
  assert float(lr(spe * 120 - 1)) == pytest.approx(1e-5, rel=1e-4)
  per_step = optim.learning_rate_schedule(0.25, **optim.schedule_kwargs(
      schedule='cosine', steps_per_epoch=spe, epochs=120, eta_min=1e-5, decay_epochs=100))
  assert float(per_step(1)) < float(per_step(0))  # changes inside the first epoch
  assert float(per_step(150)) == pytest.approx(0.5 * (0.25 + 1e-5), rel=1e-5)
  assert float(per_step(310)) == pytest.approx(1e-5, rel=1e-4)
  # decay_epochs=0: over all epochs, as before.
  whole = optim.schedule_kwargs(schedule='cosine', steps_per_epoch=spe, epochs=120)
  assert whole['decay_steps'] == 0 and whole['total_steps'] == 360
  # The optimiser applies it: SGD without momentum on unit gradients moves by -lr.
  spec = network.make_spec('4', input_shape=(4, 4, 1), num_classes=2)
  params = network.init_params(spec, jax.random.PRNGKey(0))
  tx = optim.make_optimizer(spec, params, learning_rates=(0.25, 0.05), momentum=0.0, **kwargs)
  state, ones = tx.init(params), jax.tree_util.tree_map(jnp.ones_like, params)
  for step in range(2 * spe + 1):
    updates, state = tx.update(ones, state, params)
  assert float(updates['layers'][0]['b'][0]) == pytest.approx(
      -_torch_cosine_per_epoch(0.25, 2), rel=1e-5)
  assert float(updates['readout']['b'][0]) == pytest.approx(
      -_torch_cosine_per_epoch(0.05, 2), rel=1e-5)
  assert optim.current_learning_rates(spec, learning_rates=(0.25, 0.05), step=spe * 110,
                                      **kwargs) == pytest.approx([1e-5, 1e-5], rel=1e-4)
  with pytest.raises(ValueError, match='schedule_step must be one of'):
    optim.schedule_kwargs(schedule='cosine', steps_per_epoch=3, epochs=2, schedule_step='batch')
  with pytest.raises(ValueError, match='decay_epochs must be an integer >= 0'):
    optim.schedule_kwargs(schedule='cosine', steps_per_epoch=3, epochs=2, decay_epochs=-1)


def test_weight_decay_per_synapse_group():
  """`weight_decay` takes one value or one per synapse group, like `learning_rates`."""
  spec = network.make_spec('8,M,8,M', input_shape=(8, 8, 1), num_classes=4)
  params = network.init_params(spec, jax.random.PRNGKey(0))
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  tx = optim.make_optimizer(spec, params, learning_rates=0.5, momentum=0.9,
                            weight_decay=(0.1, 0.0, 0.3), schedule='constant')
  updates, _ = tx.update(zeros, tx.init(params), params)
  for p, u, decay in zip(params['layers'] + (params['readout'],),
                         updates['layers'] + (updates['readout'],), (0.1, 0.0, 0.3)):
    chex.assert_trees_all_close(u, jax.tree_util.tree_map(lambda w: -0.5 * decay * w, p),
                                rtol=1e-6)
  one = optim.make_optimizer(spec, params, learning_rates=0.5, weight_decay=(0.2,),
                             schedule='constant')
  updates, _ = one.update(zeros, one.init(params), params)
  chex.assert_trees_all_close(updates, jax.tree_util.tree_map(lambda w: -0.1 * w, params),
                              rtol=1e-6)
  with pytest.raises(ValueError, match=r'weight_decay has 2 entries .* 3 parameter groups'):
    optim.make_optimizer(spec, params, learning_rates=0.5, weight_decay=(0.1, 0.2))
  with pytest.raises(ValueError, match='weight_decay must be >= 0'):
    optim.make_optimizer(spec, params, learning_rates=0.5, weight_decay=(0.1, -0.2, 0.1))


def test_adam_steps_each_group_by_its_own_rate_and_rejects_unknown():
  """Adam's first steps move every parameter by its group's rate against the gradient's sign
  (m̂ / √v̂ = ±1 for a constant gradient), per layer rate; weight decay 0."""
  spec, _, _, state, _ = _setup()
  params = state.params
  grads = jax.tree_util.tree_map(lambda p: 0.3 * jnp.sign(p + 0.1), params)
  rates = (0.01, 0.02, 0.03, 0.04)  # conv1, conv2, dense1, readout
  tx = optim.make_optimizer(spec, params, learning_rates=rates, weight_decay=0.0,
                            schedule='constant', total_steps=10, optimizer='adam')
  opt = tx.init(params)
  grad_groups = [grads['layers'][0], grads['layers'][1], grads['layers'][2], grads['readout']]
  for _ in range(3):
    updates, opt = tx.update(grads, opt, params)
    got = [updates['layers'][0], updates['layers'][1], updates['layers'][2], updates['readout']]
    for rate, g, u in zip(rates, grad_groups, got):
      chex.assert_trees_all_close(u, jax.tree_util.tree_map(lambda x: -rate * jnp.sign(x), g),
                                  rtol=1e-4)  # float32 bias corrections, ε = 1e-8
  with pytest.raises(ValueError, match='unknown optimizer'):
    optim.make_optimizer(spec, params, learning_rates=0.01, optimizer='lamb')


def test_layer_input_share_values():
  """0 for a state that is the same for every input (active but input-blind) and for a
  silent one, the known share for a two-example state, never above 1 for a nearly silent
  sparse layer, and logged per layer by the train step."""
  constant = jnp.broadcast_to(jnp.array([0.2, 0.6]), (5, 2))
  assert float(train_step.input_share_of(constant)) == 0.0
  assert float(train_step.input_share_of(jnp.zeros((3, 4)))) == 0.0
  # Units [0, 1] and [0, 0.5] over two inputs: variances 0.25, 0.0625, mean square 0.3125.
  two = jnp.array([[0.0, 0.0], [1.0, 0.5]])
  np.testing.assert_allclose(float(train_step.input_share_of(two)), 0.5, rtol=1e-5)
  # One unit of 1000 on for one input of 8, at 1e-4: std/mean |s| reads 2.6, the share
  # stays below 1 and the layer's silence sends it near 0.
  faint = np.zeros((8, 1000), np.float32)
  faint[0, 0] = 1e-4
  assert float(train_step.input_share_of(jnp.asarray(faint))) < 0.01
  sparse = np.zeros((8, 1000), np.float32)
  sparse[np.arange(8), np.arange(8)] = 1.0  # on for one input in 8: share 1 - 1/8
  np.testing.assert_allclose(float(train_step.input_share_of(jnp.asarray(sparse))), 7 / 8,
                             rtol=1e-3)
  spec, ep, tx, state, batch = _setup()
  _, metrics = jax.jit(train_step.make_train_step(spec, ep, tx))(state, batch)
  share = np.asarray(metrics['layer_input_share'])
  assert share.shape == (spec.num_layers,)
  assert np.all((share > 0.01) & (share < 1)), share  # the quadrant images drive every layer


def test_layer_diagnostics_values_on_hand_made_states():
  """mean |s_l|, mean |θ_l| over weights and biases, the nudge per unit ‖d_l‖ / √n_l averaged
  over the batch, and the fractions of units at 0 and at 1, on states with known answers;
  a dead layer reads zero_frac 1 and one_frac 0."""
  spec = network.make_spec('1', input_shape=(2, 2, 1), num_classes=2, dense=(3,))
  params = {'layers': ({'w': jnp.full((3, 3, 1, 1), -0.5), 'b': jnp.full((1,), 1.5)},
                       {'w': jnp.array([[1.0, -3.0, 0.0]] * 4), 'b': jnp.zeros((3,))})}
  s1 = jnp.array([[0.0, 1.0, 0.5, 0.5], [0.25, 0.25, 0.75, 1.0]]).reshape(2, 2, 2, 1)
  s2 = jnp.zeros((2, 3))  # a dead layer
  # Example 0's derivative has norm 0.5, example 1's norm 1, over 4 units: RMS 0.25 and 0.5.
  d1 = jnp.array([[0.3, 0.0, 0.0, 0.4], [-0.6, 0.8, 0.0, 0.0]]).reshape(2, 2, 2, 1)
  d = train_step.layer_diagnostics(spec, params, (s1, s2), (d1, jnp.zeros_like(s2)))
  np.testing.assert_allclose(d['layer_mean_abs_state'], [4.25 / 8, 0.0], rtol=1e-6)
  # conv1: 9 weights at 0.5 and a bias at 1.5; dense1: 12 weights summing to 16, 3 biases 0.
  np.testing.assert_allclose(d['layer_mean_abs_theta'], [6.0 / 10, 16.0 / 15], rtol=1e-6)
  np.testing.assert_allclose(d['layer_nudge'], [0.375, 0.0], atol=1e-6)
  np.testing.assert_allclose(d['layer_zero_frac'], [1 / 8, 1.0], rtol=1e-6)
  np.testing.assert_allclose(d['layer_one_frac'], [2 / 8, 0.0], rtol=1e-6)
  near = train_step.layer_activity((jnp.array([[5e-4, 0.9995, 0.5]]),))  # within BOUND_TOL
  np.testing.assert_allclose([near['zero_frac'][0], near['one_frac'][0]], [1 / 3, 1 / 3])
  relu = train_step.layer_activity((jnp.array([[0.0, 3.0, 1.0]]),), 'relu')
  np.testing.assert_allclose([relu['zero_frac'][0], relu['one_frac'][0]], [1 / 3, 0.0])


def _scale_drive(p, s):
  return s * p['g'].astype(s.dtype)


def _scale_init(key, src_shape, dst_shape, dtype):
  del key, src_shape
  return {'g': jnp.ones(dst_shape, dtype)}


def test_mean_abs_theta_attributes_skips_and_edges_to_their_destination():
  """A skip link's and an edge's parameters count with the layer they drive."""
  from ep_jax import connections
  kind = connections.ConnectionKind('scale', _scale_drive, _scale_init)
  spec = network.make_spec('2,2,2', input_shape=(4, 4, 1), num_classes=2, skips=((0, 2),),
                           edges=[connections.Edge(0, 1, kind)])
  params = jax.tree_util.tree_map(jnp.ones_like, network.init_params(spec, jax.random.PRNGKey(0)))
  params['skips'] = ({'w': jnp.full((2, 2), 3.0)},)
  params['edges'] = ({'g': jnp.full((4, 4, 2), 5.0)},)
  theta = np.asarray(train_step.layer_mean_abs_theta(spec, params))
  # conv1: 18 weights, 2 biases; conv2: 36 + 2, plus the edge's 32 at 5; conv3: 36 + 2, plus
  # the skip's 4 at 3.
  np.testing.assert_allclose(theta, [1.0, (38 + 160) / 70, (38 + 12) / 42], rtol=1e-6)


def test_train_step_diagnostics_are_those_of_its_free_fixed_point():
  """The logged per-layer mean |s| and fractions at 0 and 1 are the values at the free phase
  the step relaxes to (recomputed here with `inference.free_phase`); every layer moves when
  nudged and the nudged phases' per-layer residuals are logged (max over the phases)."""
  spec, ep, tx, state, batch = _setup()
  _, metrics = jax.jit(train_step.make_train_step(spec, ep, tx))(state, batch)
  free = inference.free_phase(spec, state.params, batch['image'], free_steps=ep.free_steps,
                              tol=ep.tol, mode=ep.mode).states
  np.testing.assert_allclose(metrics['layer_mean_abs_state'],
                             [float(jnp.mean(jnp.abs(s))) for s in free], rtol=1e-4)
  np.testing.assert_allclose(metrics['layer_zero_frac'],
                             [float(jnp.mean(s <= 1e-3)) for s in free], atol=1e-3)
  np.testing.assert_allclose(metrics['layer_one_frac'],
                             [float(jnp.mean(s >= 1 - 1e-3)) for s in free], atol=1e-3)
  assert np.all(np.asarray(metrics['layer_nudge']) > 0)
  assert np.all(np.asarray(metrics['layer_mean_abs_state']) > 0.01)
  residual = np.asarray(metrics['layer_nudged_residual'])
  assert residual.shape == (spec.num_layers,) and np.all(np.isfinite(residual))


def _nudge_step(spec, tx, estimator, free_steps, nudged_steps=100):
  ep = EPConfig(estimator=estimator, beta=0.5, free_steps=free_steps, nudged_steps=nudged_steps)
  step_fn = jax.jit(train_step.make_train_step(spec, ep, tx))

  def nudge(state, batch, beta):
    _, metrics = step_fn(state, batch, train_step.EPHyper(jnp.float32(beta), jnp.float32(0)))
    return np.asarray(metrics['layer_nudge'])

  return nudge


def test_layer_nudge_is_a_derivative_and_cancels_the_free_phase_drift():
  """The nudge per unit is divided by β: the same at β and 2β (linear response). From a free
  phase stopped after 3 steps, the one-sided nudge carries the free phase's drift (divided
  by β), the symmetric one cancels it and matches the value at a settled free phase."""
  spec, _, tx, state, batch = _setup()
  settled = _nudge_step(spec, tx, 'symmetric', 100)
  small, double = settled(state, batch, 0.01), settled(state, batch, 0.02)
  np.testing.assert_allclose(double / small, 1.0, atol=0.03)
  assert np.all(small > 1e-4)
  unsettled_sym = _nudge_step(spec, tx, 'symmetric', 3)(state, batch, 0.01)
  unsettled_one = _nudge_step(spec, tx, 'one_sided', 3)(state, batch, 0.01)
  np.testing.assert_allclose(unsettled_sym, small, rtol=0.02)
  assert np.all(unsettled_one > 2 * small), (unsettled_one, small)


def _les_nudging(spec, kappa_init):
  from ep_jax import signals
  return signals.make_signals(spec, num_epochs=2, rng=jax.random.PRNGKey(3),
                              les=signals.LESConfig((1,), normalize='unit'),
                              kappa_init=kappa_init)


def test_nudge_split_adds_up_and_is_zero_without_a_signal():
  """The split of the epoch-end diagnostics: its total is the train step's nudge; the output
  part plus the response to the layer-wise signal's cost alone (its own relaxations) gives
  the total derivative, and the logged signal part matches that response; LES on conv2
  moves conv1 and dense1 too (through the couplings). At κ = 0 the signal part is 0; without
  signals (or for BPTT) there is no split."""
  spec, _, tx, state, batch = _setup()
  ep = EPConfig(estimator='symmetric', beta=0.01, free_steps=100, nudged_steps=100)
  assert train_step.make_nudge_split(spec, ep, None) is None
  assert train_step.make_nudge_split(spec, EPConfig(estimator='bptt'), None) is None
  setup = _les_nudging(spec, 1.0)
  state = train_step.create_train_state(state.params, tx, state.rng, setup.frozen)
  split = jax.jit(train_step.make_nudge_split(spec, ep, setup.nudging))(state, batch)
  _, metrics = jax.jit(train_step.make_train_step(spec, ep, tx, nudging=setup.nudging))(
      state, batch)
  np.testing.assert_allclose(split['layer_nudge_end'], metrics['layer_nudge'], rtol=1e-4)
  nudging = setup.nudging
  targets = nudging.targets(state.frozen, state.params, batch, jnp.asarray(0))

  def derivative(cost_fn):
    s0 = inference.free_phase(spec, state.params, batch['image'], free_steps=100).states
    betas, weights = estimators.stencil_points('symmetric', 0.01)
    phases = estimators.nudged_relaxations(spec, state.params, batch['image'], s0, targets,
                                           betas, cost_fn, nudged_steps=100)
    return estimators.state_derivative(s0, [r.states for r in phases], weights, True)

  total, output = derivative(nudging.cost), derivative(nudging.output_cost)
  signal = derivative(nudging.signal_cost)
  for t, o, s in zip(total, output, signal):
    err = float(jnp.linalg.norm(o + s - t)) / float(jnp.linalg.norm(t))
    assert err < 0.03, err
  np.testing.assert_allclose(split['layer_nudge_output'], train_step.layer_nudge_of(output),
                             rtol=1e-3)
  np.testing.assert_allclose(split['layer_nudge_signal'], train_step.layer_nudge_of(signal),
                             rtol=0.05)
  assert np.all(np.asarray(split['layer_nudge_signal']) > 1e-3 * np.asarray(
      split['layer_nudge_end']))
  off = _les_nudging(spec, 0.0)
  split = jax.jit(train_step.make_nudge_split(spec, ep, off.nudging))(state, batch)
  np.testing.assert_array_equal(split['layer_nudge_signal'], 0.0)
  np.testing.assert_array_equal(split['layer_nudge_output'], split['layer_nudge_end'])


def _keep_grads() -> optax.GradientTransformation:
  """An 'optimiser' that leaves the parameters and keeps the last gradient as its state."""
  return optax.GradientTransformation(
      lambda params: jax.tree_util.tree_map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree_util.tree_map(jnp.zeros_like, grads), grads))


@pytest.mark.parametrize('estimator', ['symmetric', 'random_sign'])
def test_one_compiled_train_step_serves_several_betas(estimator):
  """β and tol are traced arguments of the step (`EPHyper`): one trace for every value, and
  each step's gradient is `ep_gradient`'s at that β and tol."""
  spec, ep, _, state, batch = _setup(estimator)
  tx = _keep_grads()
  state = train_step.create_train_state(state.params, tx, state.rng)
  chex.clear_trace_counter()  # the counter is per function code, shared by the tests
  step_fn = jax.jit(chex.assert_max_traces(train_step.make_train_step(spec, ep, tx), n=1))
  grads = {}
  for beta, tol in ((0.01, 0.0), (0.5, 0.0), (1.0, 1e-3)):
    new, metrics = step_fn(state, batch, train_step.EPHyper(jnp.float32(beta), jnp.float32(tol)))
    grads[beta] = new.opt_state
    step_rng = jax.random.split(state.rng)[1]
    ref = estimators.jitted_ep_gradient(spec, state.params, batch['image'], batch['label'],
                                        beta=beta, estimator=estimator, tol=tol, rng=step_rng,
                                        free_steps=ep.free_steps, nudged_steps=ep.nudged_steps)
    chex.assert_trees_all_close(new.opt_state, ref.grads, rtol=1e-5, atol=1e-7)
    assert float(metrics['nudged_steps']) == np.mean([int(r.steps) for r in ref.nudged])
  assert float(metrics['nudged_steps']) < ep.nudged_steps  # tol 1e-3 stops the phases early
  flat = {b: jnp.concatenate([jnp.ravel(g) for g in jax.tree_util.tree_leaves(t)])
          for b, t in grads.items()}
  assert float(jnp.linalg.norm(flat[0.01] - flat[0.5])) > 1e-3 * float(jnp.linalg.norm(flat[0.5]))
  # Without hyper the step uses the EPConfig's β and tol (a second trace, of another signature).
  plain, _ = jax.jit(train_step.make_train_step(spec, ep, tx))(state, batch)
  same, _ = step_fn(state, batch, train_step.ep_hyper(ep))
  chex.assert_trees_all_close(plain.opt_state, same.opt_state, rtol=1e-5, atol=1e-7)


def test_train_step_vmaps_over_beta():
  """A β sweep of one train step in one program: `jax.vmap` over the `EPHyper`."""
  spec, ep, _, state, batch = _setup()
  tx = _keep_grads()
  state = train_step.create_train_state(state.params, tx, state.rng)
  step_fn = train_step.make_train_step(spec, ep, tx)
  betas = jnp.array([0.1, 0.5])
  swept, metrics = jax.jit(jax.vmap(step_fn, in_axes=(None, None, 0)))(
      state, batch, train_step.EPHyper(betas, jnp.zeros(2)))
  assert metrics['loss'].shape == (2,)
  for i, beta in enumerate((0.1, 0.5)):
    one, _ = jax.jit(step_fn)(state, batch, train_step.EPHyper(jnp.float32(beta),
                                                               jnp.float32(0.0)))
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[i], swept.opt_state),
                                one.opt_state, rtol=1e-4, atol=1e-6)
