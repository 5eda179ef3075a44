"""Layer-wise learning signals (LES, KD): exactness at κ = 0, EP = gradient of the augmented
loss (float64, METHOD.md §6), locality of the added force and of the updates, the builder."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cosines, relative_error
from ep_jax import energy, estimators, kappa, network, optim, reference_grads, relaxation, signals, train_step
from ep_jax.app import build, teacher
from experiments.configs import default
from ep_jax.estimators import EPConfig

T = 3000
TOL = 1e-13
B = 4


def _norm(tree):
  return jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in jax.tree_util.tree_leaves(tree)))


def _params(spec, seed, dtype=jnp.float32, scale=1.0):
  """Parameters like `network.init_params`, drawn with numpy (no per-shape PRNG compiles)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: network.init_params(spec, jax.random.PRNGKey(0)))

  def draw(layer):
    bound = scale / np.sqrt(np.prod(layer['w'].shape[:-1]))
    return {k: jnp.asarray(rng.uniform(-bound, bound, v.shape), dtype) for k, v in layer.items()}

  params = {'layers': tuple(draw(p) for p in shapes['layers'])}
  if 'readout' in shapes:
    params['readout'] = draw(shapes['readout'])
  return params


def _spec(activation='hard_sigmoid', layout='5,M,7,M', readout='softmax'):
  return network.make_spec(layout, input_shape=(8, 8, 2), num_classes=4, dense=(6,),
                           activation=activation, readout=readout)


def _twin(spec):
  return network.make_spec(spec.layout, input_shape=spec.input_shape, dense=spec.dense,
                           num_classes=spec.num_classes, activation=spec.activation)


def _config(les=None, kd=None, **kappa_fields):
  cfg = default.get_config().signals
  if les is not None:
    cfg.les.enabled = True
    cfg.les.update(les)
  if kd is not None:
    cfg.kd.enabled = True
    cfg.kd.update(kd)
  cfg.kappa.update(kappa_fields)
  return cfg


def _setup(cfg, spec, dtype=jnp.float32, seed=0, scale=1.0):
  """Builds the signals with a random teacher; returns (nudging, params, frozen, batch)."""
  tspec = _twin(spec)
  tparams = _params(tspec, seed + 7, dtype=dtype) if cfg.kd.enabled else None
  setup = build.build_signals(cfg, spec, num_epochs=10, rng=jax.random.PRNGKey(3),
                              teacher_params=tparams,
                              teacher_spec=tspec if cfg.kd.enabled else None)
  params = _params(spec, seed, dtype=dtype, scale=scale)
  if setup.trainable:
    params['signals'] = jax.tree_util.tree_map(lambda a: a.astype(dtype), setup.trainable)
  rng = np.random.default_rng(seed + 1)
  batch = {'image': jnp.asarray(rng.uniform(size=(B, 8, 8, 2)), dtype),
           'label': jnp.arange(B) % spec.num_classes}
  return setup.nudging, params, setup.frozen, batch


# ------------------------------------------------------------------------------ κ = 0


def test_kappa_zero_gives_plain_ep_exactly():
  """κ = 0 with LES (learned heads) and layer-wise KD: bit-identical to plain EP."""
  spec = _spec(layout='5,M')
  cfg = _config(les={'head': 'learned', 'loss': 'predsim'}, kd={'output': False}, init=0.0)
  nudging, params, frozen, batch = _setup(cfg, spec)
  plain_params = {k: v for k, v in params.items() if k != 'signals'}

  def run(p, cost_fn, targets):
    return estimators.ep_gradient(spec, p, batch['image'], targets, beta=0.5, free_steps=30,
                                  nudged_steps=10, cost_fn=cost_fn)

  targets = jax.jit(nudging.targets)(frozen, params, batch, jnp.asarray(3))
  assert float(jnp.max(jnp.abs(targets['kappa']))) == 0.0
  with_signals = jax.jit(lambda p: run(p, nudging.cost, targets))(params)
  plain = jax.jit(lambda p: run(p, None, {'label': batch['label']}))(plain_params)
  for a, b in zip(jax.tree_util.tree_leaves(plain.grads),
                  jax.tree_util.tree_leaves({k: with_signals.grads[k] for k in plain_params})):
    np.testing.assert_array_equal(a, b)
  for r0, r1 in zip(plain.nudged, with_signals.nudged):
    for s0, s1 in zip(r0.states, r1.states):
      np.testing.assert_array_equal(s0, s1)
  for g in jax.tree_util.tree_leaves(with_signals.grads['signals']):
    assert not np.any(np.asarray(g))  # κ = 0: the heads get no update


ALL_SIGNALS = dict(les={'head': 'fixed', 'loss': 'ce'}, kd={'output': True})


@pytest.mark.parametrize('weights', ['zero', 'annealed'])
def test_every_weight_zero_gives_plain_ep_exactly(weights):
  """LES, layer-wise KD and output KD all on, κ = α = 0 (set to 0, or linear schedules at
  their last epoch E_total): the EP gradient and nudged states of plain EP, bit for bit."""
  spec = _spec(layout='5,M')
  if weights == 'zero':
    cfg, epoch = _config(**ALL_SIGNALS, init=0.0), 3
    cfg.kd.alpha = 0.0
  else:  # _setup builds with num_epochs=10
    cfg, epoch = _config(**ALL_SIGNALS, schedule='linear', init=0.5), 10
    cfg.kd.update({'alpha': 0.5, 'alpha_schedule': 'linear'})
  nudging, params, frozen, batch = _setup(cfg, spec)
  assert nudging.les is not None and nudging.kd.layers and nudging.kd.output

  def run(cost_fn, targets):
    return estimators.ep_gradient(spec, params, batch['image'], targets, beta=0.5,
                                  free_steps=30, nudged_steps=10, cost_fn=cost_fn)

  targets = jax.jit(nudging.targets)(frozen, params, batch, jnp.asarray(epoch))
  assert float(jnp.max(jnp.abs(targets['kappa']))) == 0.0 and float(targets['kd_alpha']) == 0.0
  with_signals = jax.jit(lambda t: run(nudging.cost, t))(targets)
  plain = jax.jit(lambda y: run(None, {'label': y}))(batch['label'])
  for a, b in zip(jax.tree_util.tree_leaves(plain.grads),
                  jax.tree_util.tree_leaves(with_signals.grads)):
    assert a.dtype == jnp.float32 and jnp.array_equal(a, b)
  for r0, r1 in zip(plain.nudged, with_signals.nudged):
    for s0, s1 in zip(r0.states, r1.states):
      assert jnp.array_equal(s0, s1)


def _alphas(nudging, frozen, params, batch, epochs):
  """α at each epoch, evaluated with a traced epoch (one compile, as in the train step)."""
  fn = jax.jit(lambda e: nudging.targets(frozen, params, batch, e)['kd_alpha'])
  return np.asarray([float(fn(jnp.asarray(e))) for e in epochs])


@pytest.mark.parametrize('schedule', ['linear', 'exp', 'cos'])
def test_output_kd_weight_follows_its_schedule(schedule):
  """α(e) starts at kd.alpha, never grows, ends at alpha_min after the E_total epochs (linear:
  0), stays there; it is κ's schedule of the same kind; κ does not move it."""
  spec, epochs = _spec(layout='5,M'), 10  # _setup builds with num_epochs=10
  cfg = _config(kd={'alpha': 0.6, 'alpha_schedule': schedule, 'alpha_min': 0.1,
                    'alpha_gamma': 0.3}, init=0.0)
  nudging, params, frozen, batch = _setup(cfg, spec)
  assert not np.any(np.asarray(nudging.kappa_fn(0)))
  alpha = _alphas(nudging, frozen, params, batch, range(epochs + 3))
  assert alpha[0] == pytest.approx(0.6) and np.all(np.diff(alpha) < 0 if schedule == 'exp'
                                                   else np.diff(alpha) <= 1e-7)
  assert np.all((alpha >= 0) & (alpha <= 0.6 + 1e-7))
  if schedule != 'exp':
    end = 0.1 if schedule == 'cos' else 0.0
    np.testing.assert_allclose(alpha[epochs:], end, atol=1e-6)  # from E_total on
    # The last trained epoch (0-based E_total - 1): at most 1/E_total of the way from the end.
    assert alpha[epochs - 1] - end <= (0.6 - end) / epochs + 1e-7
  same = kappa.make_schedule(schedule, 0.6, total_epochs=epochs, kappa_min=0.1, gamma=0.3)
  np.testing.assert_allclose(alpha, [float(same(e)) for e in range(epochs + 3)], rtol=1e-6)
  # The default keeps α = kd.alpha at every epoch.
  nudging, params, frozen, batch = _setup(_config(kd={'alpha': 0.3}), spec)
  np.testing.assert_array_equal(_alphas(nudging, frozen, params, batch, range(epochs + 1)),
                                np.float32(0.3))


def test_default_output_kd_is_the_fixed_mixture():
  """The default config's output cost and EP gradient are those of the fixed mixture
  `(1 - α) ℓ + α τ² KL`, α = kd.alpha (the code path before α had a schedule)."""
  spec = _spec(layout='5,M')
  cfg = _config(les={'head': 'fixed'}, kd={}, init=0.3)
  assert cfg.kd.output and cfg.kd.alpha_schedule == 'constant' and cfg.kd.alpha == 0.5
  nudging, params, frozen, batch = _setup(cfg, spec)
  alpha, tau = float(cfg.kd.alpha), float(cfg.kd.temperature)

  def fixed_mixture(p, states, targets):
    label = jnp.sum(energy.example_losses(spec, p, states, targets['label']))
    z = energy.logits(spec, p, states)
    kd = jnp.sum(signals.kd_divergence(z, targets['teacher_logits'], tau))
    return (1.0 - alpha) * label + alpha * kd + nudging.signal_cost(p, states, targets)

  def run(cost_fn, targets):
    return estimators.ep_gradient(spec, params, batch['image'], targets, beta=0.5,
                                  free_steps=30, nudged_steps=10, cost_fn=cost_fn)

  for epoch in (0, 9):
    targets = jax.jit(nudging.targets)(frozen, params, batch, jnp.asarray(epoch))
    new = jax.jit(lambda t: run(nudging.cost, t))(targets)
    old = jax.jit(lambda t: run(fixed_mixture, t))(targets)
    chex.assert_trees_all_close(new.grads, old.grads, rtol=1e-6, atol=0)
    free = new.free.states
    np.testing.assert_allclose(nudging.cost(params, free, targets),
                               fixed_mixture(params, free, targets), rtol=1e-7)


def test_no_signal_enabled_is_plain_ep():
  setup = build.build_signals(default.get_config().signals, _spec(), num_epochs=5,
                              rng=jax.random.PRNGKey(0))
  assert setup.nudging is None and setup.trainable == {} and setup.frozen == {}


# --------------------------------------------------- EP = gradient of the augmented loss

CASES = {
    # smooth dynamics, average pooling: learned CE heads on every layer, layer-wise and
    # output KD, per-layer κ; also checked against BPTT.
    'les_ce_learned+kd': dict(
        activation='smooth_sigmoid', layout='5,A', beta=0.01, bptt=True,
        cfg=dict(les={'head': 'learned', 'loss': 'ce', 'pool': 'gap'},
                 kd={'alpha': 0.3, 'temperature': 2.0}, per_layer=(0.5, 0.8))),
    # the reference ingredients (hard sigmoid, max pool): predsim on flattened states.
    'les_predsim_learned': dict(
        activation='hard_sigmoid', layout='5,M', beta=1e-3, bptt=False,
        cfg=dict(les={'head': 'learned', 'loss': 'predsim', 'pool': 'flatten',
                      'layers': (0, 1), 'predsim_mix': 0.7}, init=0.5)),
    # MSE output layer inside the system, fixed random projections, layer-wise KD.
    # per-unit normalisation of both signals (les.normalize / kd.normalize = 'unit').
    'les_ce_fixed+kd_unit_normalized': dict(
        activation='smooth_sigmoid', layout='5,A', beta=0.01, bptt=False,
        cfg=dict(les={'head': 'fixed', 'loss': 'ce', 'normalize': 'unit'},
                 kd={'output': False, 'normalize': 'unit'}, init=0.05)),
    'les_mse_fixed+kd_mse_readout': dict(
        activation='hard_sigmoid', layout='5,M', beta=1e-3, bptt=False, readout='mse',
        cfg=dict(les={'head': 'fixed', 'loss': 'mse'}, kd={'output': False, 'layers': (1,)},
                 init=0.7, schedule='cos', min=0.1)),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_symmetric_ep_matches_gradient_of_augmented_loss(x64, case):
  c = CASES[case]
  spec = _spec(c['activation'], c['layout'], c.get('readout', 'softmax'))
  nudging, params, frozen, batch = _setup(_config(**c['cfg']), spec, jnp.float64, scale=2.0)
  x = batch['image']

  @jax.jit
  def grads(p, frozen, batch):
    targets = nudging.targets(frozen, p, batch, jnp.asarray(2))
    ep = estimators.ep_gradient(spec, p, x, targets, beta=c['beta'], estimator='symmetric',
                                free_steps=T, nudged_steps=T, tol=TOL, cost_fn=nudging.cost)
    free = ep.free
    implicit = reference_grads.implicit_gradient(spec, p, x, targets, free.states,
                                                 cost_fn=nudging.cost)
    # the signals' share of the nudge at s*: ∂(Σ κ_l ℓ_l)/∂s vs ∂ℓ_out/∂s
    sig = jax.grad(nudging.signal_cost, argnums=1)(p, free.states, targets)
    out = jax.grad(nudging.output_cost, argnums=1)(p, free.states, targets)
    share = _norm(sig) / _norm(out)
    bptt = (reference_grads.bptt_gradient(spec, p, x, targets, steps=300, cost_fn=nudging.cost)
            if c['bptt'] else None)
    return free.residual, implicit, share, ep, bptt

  residual, implicit, share, ep, bptt = grads(params, frozen, batch)
  assert float(residual) <= TOL and float(implicit.residual) <= 1e-11
  assert all(float(r.residual) <= TOL for r in ep.nudged)
  assert min(cosines(ep.grads, implicit.grads)) >= 0.999, cosines(ep.grads, implicit.grads)
  assert relative_error(ep.grads, implicit.grads) < 1e-2
  if bptt is not None:
    assert min(cosines(bptt, implicit.grads)) >= 0.999999
  assert float(share) > 0.1  # the signals are a sizeable part of the nudge
  if 'signals' in params:  # learned heads: local gradient ∂ℒ/∂A_l, nonzero
    assert all(float(jnp.linalg.norm(g)) > 0 for g in
               jax.tree_util.tree_leaves(ep.grads['signals']))


# -------------------------------------------------------------------------------- locality


@pytest.mark.parametrize('loss', ['ce', 'mse', 'predsim'])
def test_signal_force_is_local_to_its_layer(loss):
  """∂/∂s of the added force `-β Σ κ_l ∂ℓ_l/∂s_l`: zero off the diagonal layer blocks."""
  spec = _spec(layout='3,M,4')
  cfg = _config(les={'head': 'learned', 'loss': loss, 'layers': (0, 2)},
                kd={'layers': (1, 2), 'output': False}, schedule='exp', gamma=0.3)
  nudging, params, frozen, batch = _setup(cfg, spec)
  targets = jax.jit(nudging.targets)(frozen, params, batch, jnp.asarray(1))
  rng = np.random.default_rng(5)
  states = tuple(jnp.asarray(rng.uniform(size=(B,) + s), jnp.float32)
                 for s in spec.state_shapes)
  beta = 0.5
  bumped = dict(targets, kd_targets=dict(targets['kd_targets'],
                                         conv2=targets['kd_targets']['conv2'] + 1.0))

  def signal_force(s, t=targets):
    return jax.grad(lambda s: -beta * nudging.signal_cost(params, s, t))(s)

  @jax.jit
  def compute(states):
    full = relaxation.force(spec, params, batch['image'], states, targets, beta, nudging.cost)
    out = relaxation.force(spec, params, batch['image'], states, targets, beta,
                           nudging.output_cost)
    return (full, out, signal_force(states), jax.jacfwd(signal_force)(states),
            signal_force(states, bumped))

  full, out, force, jac, force_bumped = compute(states)
  # It is exactly the difference of the nudged forces with and without the signals.
  for f, g, h in zip(full, out, force):
    np.testing.assert_allclose(f - g, h, atol=1e-6)
  for l in range(len(states)):
    for m in range(len(states)):
      block = np.reshape(jac[l][m], (B, -1, B, states[m][0].size))
      if l != m:
        assert not np.any(block), (l, m)
        continue
      assert np.any(block)  # every layer carries a signal here
      cross_example = block * (1 - np.eye(B))[:, None, :, None]
      if loss == 'predsim' and l in (0, 2):
        assert np.any(cross_example)  # predsim couples the examples of a batch (documented)
      else:
        assert not np.any(cross_example), l
  # The force on layer l reads only layer l's own target (bump layer 1's KD target).
  np.testing.assert_array_equal(force[0], force_bumped[0])
  np.testing.assert_array_equal(force[2], force_bumped[2])
  assert np.any(np.asarray(force[1] != force_bumped[1]))


def test_parameter_updates_need_only_adjacent_states():
  """∂Φ^β/∂θ_l (each phase's EP term) is unchanged when states off the synapse change."""
  spec = _spec(layout='3,M,4,M')
  cfg = _config(les={'head': 'learned', 'loss': 'ce'}, kd={'alpha': 0.5})
  nudging, params, frozen, batch = _setup(cfg, spec)
  targets = jax.jit(nudging.targets)(frozen, params, batch, jnp.asarray(0))
  rng = np.random.default_rng(6)
  states = tuple(jnp.asarray(rng.uniform(size=(B,) + s), jnp.float32)
                 for s in spec.state_shapes)
  n = len(states)
  grad_fn = jax.jit(jax.grad(lambda p, s: energy.nudged_primitive(
      spec, p, batch['image'], s, targets, 0.5, nudging.cost)))

  def perturbed(keep):
    return tuple(s if m in keep else s + jnp.asarray(rng.uniform(size=s.shape), s.dtype)
                 for m, s in enumerate(states))

  base = grad_fn(params, states)
  names = spec.layer_names
  for l in range(n):
    g = grad_fn(params, perturbed({l - 1, l}))
    for k in ('w', 'b'):
      np.testing.assert_array_equal(base['layers'][l][k], g['layers'][l][k])
    g = grad_fn(params, perturbed({l}))
    for k in ('w', 'b'):
      np.testing.assert_array_equal(base['signals']['les'][names[l]][k],
                                    g['signals']['les'][names[l]][k])
  g = grad_fn(params, perturbed({n - 1}))
  for k in ('w', 'b'):
    np.testing.assert_array_equal(base['readout'][k], g['readout'][k])


# --------------------------------------------------------------------- losses and builder


def test_predsim_loss_matches_formula():
  rng = np.random.default_rng(0)
  f = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
  labels = jnp.array([0, 1, 2, 0, 1])
  head = {'w': jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), 'b': jnp.zeros(3)}
  mix = 0.8
  got = jax.jit(signals.les_cost, static_argnums=(0, 4))('predsim', f, head, labels, 3, mix)

  def sim(a):
    a = np.asarray(a, np.float64)
    a = a - a.mean(1, keepdims=True)
    a = a / np.sqrt((a ** 2).sum(1, keepdims=True) + signals.SIMILARITY_EPS)
    return a @ a.T

  onehot = np.eye(3)[np.asarray(labels)]
  z = np.asarray(f, np.float64) @ np.asarray(head['w'], np.float64)
  ce = np.log(np.exp(z).sum(1)) - z[np.arange(5), np.asarray(labels)]
  mean_loss = (1 - mix) * ce.mean() + mix * ((sim(f) - sim(onehot)) ** 2).sum() / 25
  np.testing.assert_allclose(float(got) / 5, mean_loss, rtol=1e-5)
  # Same class: similarity 1; different classes: -1/(K-1) after centring.
  np.testing.assert_allclose(signals.similarity_matrix(jnp.eye(3))[0], [1, -0.5, -0.5],
                             atol=1e-5)


def test_kd_terms_match_formulas():
  rng = np.random.default_rng(1)
  z, zt = (jnp.asarray(rng.normal(size=(3, 4)), jnp.float32) for _ in range(2))
  tau = 3.0
  pt = np.exp(np.asarray(zt) / tau) / np.exp(np.asarray(zt) / tau).sum(1, keepdims=True)
  p = np.exp(np.asarray(z) / tau) / np.exp(np.asarray(z) / tau).sum(1, keepdims=True)
  np.testing.assert_allclose(signals.kd_divergence(z, zt, tau),
                             tau ** 2 * (pt * np.log(pt / p)).sum(1), rtol=1e-4)
  assert float(jnp.max(jnp.abs(signals.kd_divergence(zt, zt, tau)))) < 1e-5
  s, t = (jnp.asarray(rng.uniform(size=(3, 2, 2, 5)), jnp.float32) for _ in range(2))
  np.testing.assert_allclose(signals.kd_layer_cost(s, t),
                             0.5 * ((np.asarray(s) - np.asarray(t)) ** 2).sum() / 20, rtol=1e-5)


def test_builder_layers_heads_and_errors():
  spec = _spec(readout='mse')  # hidden: conv1, conv2, dense1; the output layer is not hidden
  setup = build.build_signals(_config(les={'head': 'learned', 'pool': 'gap'}), spec,
                              num_epochs=4, rng=jax.random.PRNGKey(0))
  assert setup.nudging.layers == (0, 1, 2) and setup.frozen == {}
  heads = setup.trainable['les']
  assert {k: v['w'].shape for k, v in heads.items()} == {
      'conv1': (5, 4), 'conv2': (7, 4), 'dense1': (6, 4)}
  setup = build.build_signals(_config(les={'pool': 'flatten', 'layers': (-1, 0)}), spec,
                              num_epochs=4, rng=jax.random.PRNGKey(0))
  assert setup.trainable == {} and set(setup.frozen['les']) == {'conv1', 'dense1'}
  assert setup.frozen['les']['conv1']['w'].shape == (4 * 4 * 5, 4)
  assert not np.any(np.asarray(setup.frozen['les']['conv1']['b']))
  np.testing.assert_allclose(setup.nudging.kappa_fn(0), [1.0, 0.0, 1.0, 0.0])
  with pytest.raises(ValueError, match='out of range'):
    build.build_signals(_config(les={'layers': (3,)}), spec, num_epochs=4,
                        rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='les.loss must be one of'):
    build.build_signals(_config(les={'loss': 'hinge'}), spec, num_epochs=4,
                        rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='teacher_workdir'):
    build.build_signals(_config(kd={}), spec, num_epochs=4, rng=jax.random.PRNGKey(0))
  tspec = _twin(spec)
  teacher_kw = dict(teacher_params=_params(tspec, 0), teacher_spec=tspec)
  setup = build.build_signals(_config(kd={'layerwise': False}), spec, num_epochs=4,
                              rng=jax.random.PRNGKey(0), **teacher_kw)
  assert setup.nudging.kd.layers == () and setup.nudging.kd.output
  assert setup.nudging.layers == () and not np.any(np.asarray(setup.nudging.kappa_fn(0)))
  for kd, match in (({'layerwise': False, 'output': False}, 'distils nothing'),
                    ({'alpha_min': 1.5}, 'alpha_min must be in')):
    with pytest.raises(ValueError, match=match):
      build.build_signals(_config(kd=kd), spec, num_epochs=4, rng=jax.random.PRNGKey(0),
                          **teacher_kw)
  other = network.make_spec('5,M,8,M', input_shape=(8, 8, 2), num_classes=4, dense=(6,))
  with pytest.raises(ValueError, match='does not match the CRNN'):
    build.build_signals(_config(kd={}), spec, num_epochs=4, rng=jax.random.PRNGKey(0),
                        teacher_params=_params(other, 0), teacher_spec=other)


def test_make_signals_takes_plain_settings_that_the_config_section_maps_onto():
  """The core builder takes the settings as dataclasses and plain arguments; the app's
  `build.build_signals` of a `signals` section gives the same signals, heads and schedules."""
  spec = _spec()
  tspec = _twin(spec)
  teacher_kw = dict(teacher_params=_params(tspec, 0), teacher_spec=tspec)
  cfg = _config(les={'head': 'learned', 'layers': (-1,), 'loss': 'predsim'},
                kd={'layers': (0, 1), 'alpha': 0.7, 'alpha_schedule': 'linear',
                    'alpha_min': 0.1, 'temperature': 2.0},
                schedule='exp', init=0.4, gamma=0.3, per_layer=(0.5, 1.0, 2.0))
  from_config = build.build_signals(cfg, spec, num_epochs=6, rng=jax.random.PRNGKey(5),
                                    **teacher_kw)
  plain = signals.make_signals(
      spec, num_epochs=6, rng=jax.random.PRNGKey(5),
      les=signals.LESConfig((-1,), head='learned', loss='predsim'),
      kd=signals.KDConfig((0, 1), alpha=0.7, temperature=2.0), alpha_schedule='linear',
      alpha_min=0.1, kappa_schedule='exp', kappa_init=0.4, kappa_gamma=0.3,
      kappa_per_layer=(0.5, 1.0, 2.0), **teacher_kw)
  for setup in (from_config, plain):
    assert setup.nudging.les == signals.LESConfig((2,), head='learned', loss='predsim')
    assert setup.nudging.kd == signals.KDConfig((0, 1), alpha=0.7, temperature=2.0)
    assert setup.nudging.teacher_spec == tspec
  chex.assert_trees_all_equal((from_config.trainable, from_config.frozen),
                              (plain.trainable, plain.frozen))
  a, b = from_config.nudging, plain.nudging
  for epoch in range(7):
    np.testing.assert_array_equal(a.kappa_fn(epoch), b.kappa_fn(epoch))
    np.testing.assert_array_equal(a.alpha_fn(epoch), b.alpha_fn(epoch))
  with pytest.raises(ValueError, match='KD needs its teacher'):
    signals.make_signals(spec, num_epochs=6, rng=jax.random.PRNGKey(5),
                         kd=signals.KDConfig(()))
  assert signals.make_signals(spec, num_epochs=6, rng=jax.random.PRNGKey(5)).nudging is None


def test_train_step_with_signals_from_a_saved_teacher(tmp_path):
  """The loop's contract: build from config (teacher loaded from disk), jit once, κ per epoch."""
  spec = _spec(layout='5,M')
  workdir = str(tmp_path / 'teacher')
  teacher.save_teacher(workdir, _twin(spec), _params(_twin(spec), 9), {'test_accuracy': 0.5})
  cfg = _config(les={'head': 'learned', 'loss': 'ce'},
                kd={'teacher_workdir': workdir, 'alpha_schedule': 'cos', 'alpha': 0.8},
                schedule='linear', init=0.6)
  setup = build.build_signals(cfg, spec, num_epochs=3, rng=jax.random.PRNGKey(1))
  params = dict(_params(spec, 0), signals=setup.trainable)
  tx = optim.make_optimizer(spec, params, learning_rates=0.1, schedule='constant',
                            extra_learning_rates={'signals': 0.05})
  state = train_step.create_train_state(params, tx, jax.random.PRNGKey(2), frozen=setup.frozen)
  step = train_step.make_train_step(spec, EPConfig(beta=0.5, free_steps=20, nudged_steps=5), tx,
                                    nudging=setup.nudging, steps_per_epoch=1)
  step = jax.jit(chex.assert_max_traces(step, n=1))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.uniform(size=(8, 8, 8, 2)), jnp.float32),
           'label': jnp.arange(8) % 4}
  schedule, alpha = kappa.linear(0.6, 3), kappa.cosine(0.8, 3)
  for epoch in range(3):  # κ and α change per epoch in the one compiled step
    new, metrics = step(state, batch)
    np.testing.assert_allclose(metrics['kappa'], [float(schedule(epoch))] * 2, rtol=1e-6)
    np.testing.assert_allclose(metrics['kd_alpha'], float(alpha(epoch)), rtol=1e-6)
    assert metrics['les_loss'].shape == metrics['kd_loss'].shape == (spec.num_layers,)
    # The logged ℓ_l are the signals' costs at this step's free fixed point.
    free = relaxation.relax(spec, state.params, batch['image'],
                            network.init_states(spec, 8), max_steps=20)
    targets = setup.nudging.targets(state.frozen, state.params, batch, jnp.asarray(epoch))
    expected = setup.nudging.metrics(state.params, free.states, targets)
    for key in ('les_loss', 'kd_loss', 'kd_output_loss'):
      np.testing.assert_allclose(metrics[key], expected[key], rtol=1e-4, atol=1e-7)
    assert bool(metrics['finite'])
    state = new
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                 params['signals'], state.params['signals'])
  assert all(v > 0 for v in jax.tree_util.tree_leaves(moved))  # learned heads are trained


def test_unit_normalisation_scales_each_signal_by_its_layer_size():
  """'unit' KD drops the 1/n_l; 'unit' LES multiplies ℓ_l on the pooled features by H·W, so a
  unit's force is the pooled feature's (and the state gradients scale by exactly that)."""
  rng = np.random.default_rng(2)
  s, t = (jnp.asarray(rng.uniform(size=(3, 2, 2, 5)), jnp.float32) for _ in range(2))
  np.testing.assert_allclose(signals.kd_layer_cost(s, t, 'unit'),
                             20 * signals.kd_layer_cost(s, t, 'layer'), rtol=1e-5)
  spec = _spec(layout='5,M,7,M')  # conv1 4x4x5, conv2 2x2x7, dense1 (6,)
  assert [signals.les_scale(shape, 'gap', 'unit') for shape in spec.state_shapes] == [
      16.0, 4.0, 1.0]
  assert signals.les_scale((4, 4, 5), 'flatten', 'unit') == 1.0
  assert signals.les_scale((4, 4, 5), 'gap', 'mean') == 1.0
  forces = {}
  for norm in ('mean', 'unit'):
    cfg = _config(les={'head': 'fixed', 'normalize': norm}, kd={'output': False,
                  'normalize': 'unit' if norm == 'unit' else 'layer'}, init=1.0)
    nudging, params, frozen, batch = _setup(cfg, spec)
    targets = nudging.targets(frozen, params, batch, jnp.asarray(0))
    states = tuple(jnp.full((B,) + shape, 0.3) for shape in spec.state_shapes)
    forces[norm] = (jax.grad(lambda st: nudging.les_costs(params, st, targets)[0])(states)[0],
                    jax.grad(lambda st: nudging.kd_costs(params, st, targets)[1])(states)[1])
  np.testing.assert_allclose(forces['unit'][0], 16 * forces['mean'][0], rtol=1e-5)
  np.testing.assert_allclose(forces['unit'][1], 2 * 2 * 7 * forces['mean'][1], rtol=1e-5)
  with pytest.raises(ValueError, match='kd.normalize must be one of'):
    build.build_signals(_config(kd={'normalize': 'units'}), spec, num_epochs=1,
                        rng=jax.random.PRNGKey(0), teacher_params=_params(_twin(spec), 0),
                        teacher_spec=_twin(spec))
  with pytest.raises(ValueError, match='les.normalize must be one of'):
    build.build_signals(_config(les={'normalize': 'sum'}), spec, num_epochs=1,
                        rng=jax.random.PRNGKey(0))


@pytest.mark.parametrize('normalize', ['unit', 'layer'])
def test_kd_curvature_is_the_top_eigenvalue_of_the_gauss_newton_matrix(x64, normalize):
  """Power iteration against the exact spectrum of (1/B) JᵀJ, J = ∂(one step from s*)/∂w_l."""
  spec = _spec()
  params = _params(spec, 5, jnp.float64, scale=3.0)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(B, 8, 8, 2)))
  free = relaxation.relax(spec, params, x, network.init_states(spec, B, jnp.float64),
                          max_steps=T, tol=TOL)
  got = signals.kd_curvature(spec, params, x, free.states, normalize=normalize, iters=300)
  hidden = signals.num_hidden(spec)
  assert len(got) == hidden
  from ep_jax import activations
  act = activations.get(spec.activation)
  for l in range(hidden):
    w0 = params['layers'][l]['w']

    def stacked(w_flat, l=l, w0=w0):
      layers = list(params['layers'])
      layers[l] = dict(layers[l], w=w_flat.reshape(w0.shape))
      drives = jax.grad(lambda s: energy.primitive(spec, dict(params, layers=tuple(layers)), x,
                                                   s))(free.states)
      return jnp.concatenate([
          (act(drives[k]) / (np.sqrt(drives[k][0].size) if normalize == 'layer' else 1.0))
          .ravel() for k in range(hidden)])

    jac = jax.jacobian(stacked)(w0.ravel())
    exact = float(jnp.linalg.eigvalsh(jac.T @ jac / B)[-1])
    assert exact > 0
    np.testing.assert_allclose(got[l], exact, rtol=1e-6)
  # KD on the last hidden layer alone: its cost has a subset of the residuals, so its
  # Gauss-Newton matrix (for the last layer's weights) is smaller; conv1's weights reach
  # neither the last layer's drive nor its feedback.
  first, last = signals.kd_curvature(spec, params, x, free.states, kd_layers=(-1,),
                                     weight_layers=(0, -1), normalize=normalize, iters=300)
  assert 0 < last < got[-1] and first == 0.0


@pytest.mark.parametrize('loss', ['ce', 'mse'])
def test_les_curvature_is_the_top_eigenvalue_of_the_generalised_gauss_newton_matrix(x64, loss):
  """`signal_curvature` of the LES losses (fixed heads, per-unit scale) against the exact
  spectrum of (1/B) Jᵀ H J, J = ∂(one step from s*)/∂w_l, H the Hessian of the cost in s."""
  spec = _spec()
  params = _params(spec, 5, jnp.float64, scale=3.0)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(B, 8, 8, 2)))
  labels = jnp.array([0, 1, 2, 3])
  free = relaxation.relax(spec, params, x, network.init_states(spec, B, jnp.float64),
                          max_steps=T, tol=TOL)
  hidden = signals.num_hidden(spec)
  les = signals.LESConfig(layers=tuple(range(hidden)), loss=loss, normalize='unit')
  heads = signals.init_heads(jax.random.PRNGKey(3), spec, les.layers, les.pool, learned=False)
  heads = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), heads)
  nudging = signals.LayerSignals(spec=spec, kappa_fn=lambda e: jnp.zeros(hidden + 1), les=les)
  targets = {'label': labels, 'les_heads': heads}

  def cost(s):
    return sum(nudging.les_costs(params, s, targets).values())

  got = signals.signal_curvature(spec, params, x, free.states, cost, iters=300)
  from ep_jax import activations
  act = activations.get(spec.activation)
  sizes = [s.size for s in free.states]

  def unflat(flat):
    out, i = [], 0
    for st, n in zip(free.states, sizes):
      out.append(flat[i:i + n].reshape(st.shape))
      i += n
    return tuple(out)

  flat_star = jnp.concatenate([s.ravel() for s in free.states])
  hess = jax.hessian(lambda f: cost(unflat(f)))(flat_star)
  for l in range(hidden):
    w0 = params['layers'][l]['w']

    def step(w_flat, l=l, w0=w0):
      layers = list(params['layers'])
      layers[l] = dict(layers[l], w=w_flat.reshape(w0.shape))
      drives = jax.grad(lambda s: energy.primitive(spec, dict(params, layers=tuple(layers)), x,
                                                   s))(free.states)
      return jnp.concatenate([act(d).ravel() for d in drives])

    jac = jax.jacobian(step)(w0.ravel())
    exact = float(jnp.linalg.eigvalsh(jac.T @ hess @ jac / B)[-1])
    assert exact > 0
    np.testing.assert_allclose(got[l], exact, rtol=1e-6)


def test_recipe_ep_matches_gradient_of_augmented_loss(x64):
  """The deep-CRNN recipe's ingredients together: a long link inside Φ, asynchronous updates,
  per-unit layer-wise KD and output KD (hard sigmoid, max pools): symmetric EP at small β
  equals the implicit gradient of the augmented cost, per tensor."""
  spec = network.make_spec('4,4,M,6,6', input_shape=(8, 8, 2), num_classes=4,
                           skips=((0, 3),))
  cfg = _config(kd={'normalize': 'unit', 'alpha': 0.5, 'temperature': 2.0}, init=0.05)
  nudging, params, frozen, batch = _setup(cfg, spec, jnp.float64, scale=2.0)
  params['skips'] = network.init_params(spec, jax.random.PRNGKey(1),
                                        dtype=jnp.float64)['skips']
  x = batch['image']

  @jax.jit
  def grads(p, frozen, batch):
    targets = nudging.targets(frozen, p, batch, jnp.asarray(2))
    ep = estimators.ep_gradient(spec, p, x, targets, beta=1e-3, estimator='symmetric',
                                free_steps=T, nudged_steps=T, tol=TOL, mode='async',
                                cost_fn=nudging.cost)
    implicit = reference_grads.implicit_gradient(spec, p, x, targets, ep.free.states,
                                                 cost_fn=nudging.cost)
    sig = jax.grad(nudging.signal_cost, argnums=1)(p, ep.free.states, targets)
    out = jax.grad(nudging.output_cost, argnums=1)(p, ep.free.states, targets)
    label_only = jnp.sum(energy.example_losses(spec, p, ep.free.states, targets['label']))
    distilled = nudging.output_cost(p, ep.free.states, targets)
    return ep, implicit, _norm(sig) / _norm(out), jnp.abs(distilled - label_only)

  ep, implicit, share, output_kd = grads(params, frozen, batch)
  assert float(output_kd) > 1e-3  # the output cost is the distillation mixture
  assert float(ep.free.residual) <= TOL and float(implicit.residual) <= 1e-11
  assert all(float(r.residual) <= TOL for r in ep.nudged)
  per_tensor = cosines(ep.grads, implicit.grads)
  assert len(per_tensor) == len(jax.tree_util.tree_leaves(params)) and min(per_tensor) >= 0.999
  assert relative_error(ep.grads, implicit.grads) < 1e-2
  assert float(share) > 0.1  # the layer-wise KD is a sizeable part of the nudge
  skip_grads = jax.tree_util.tree_leaves(ep.grads['skips'])
  assert skip_grads and all(float(jnp.linalg.norm(g)) > 0 for g in skip_grads)
