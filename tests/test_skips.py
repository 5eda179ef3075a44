"""Skip links inside the energy (Hopfield-ResNet style): `< s_j, A_k(s_i) V_ij >` in Φ.

Forces against `jax.grad` of Φ, the colour-class async schedule, EP against the implicit
gradient (float64, METHOD.md §6), the feed-forward twin, spec validation and a short training
run that saves and resumes.
"""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (assert_async_step_is_a_sweep, assert_sync_and_async_agree, cosines,
                      implicit_problem, max_diff, random_input, random_params, random_states,
                      relative_error)
from ep_jax import (activations, energy, estimators, feedforward, gdu, network, optim,
                    reference_grads, relaxation)
from ep_jax.app import build, train
from experiments.configs import quickstart

SKIPS = ((0, 2), (1, 3))  # conv1 (8x8) -> conv3 (4x4): k = 1; conv2 -> conv4 (4x4): k = 0
T = 3000
TOL = 1e-13


def _spec(pool='M', activation='hard_sigmoid', skips=SKIPS, dense=(5,)):
  return network.make_spec(f'4,4,{pool},6,6', input_shape=(8, 8, 2), num_classes=4,
                           dense=dense, activation=activation, skips=skips)


def test_spec_params_and_energy_term(x64):
  spec = _spec()
  assert spec.skips == SKIPS and spec.skip_factors == (2, 1)
  params = random_params(spec)
  assert [p['w'].shape for p in params['skips']] == [(4, 6), (4, 6)]
  # U(±1/√C_i) times scale * skip_scale, the rest of the pytree unchanged by the skips.
  bound = float(jnp.max(jnp.abs(params['skips'][0]['w'])))
  assert 0.2 < bound <= 0.5
  plain = network.init_params(_spec(skips=()), jax.random.PRNGKey(0), dtype=jnp.float64)
  assert 'skips' not in plain
  assert relative_error(plain['layers'], params['layers']) == 0.0
  scaled = network.init_params(spec, jax.random.PRNGKey(0), dtype=jnp.float64, scale=2.0,
                               skip_scale=0.5)
  np.testing.assert_allclose(scaled['skips'][0]['w'], params['skips'][0]['w'])
  # Φ gains exactly the skip term, computed here by hand: 2x2 mean pool then the 1x1 map.
  x, states = random_input(), random_states(spec)
  phi = energy.primitive(spec, params, x, states)
  phi0 = energy.primitive(dataclasses.replace(spec, skips=()), params, x, states)
  s0 = states[0].reshape(4, 4, 2, 4, 2, 4).mean(axis=(2, 4))
  by_hand = (jnp.sum(states[2] * (s0 @ params['skips'][0]['w']))
             + jnp.sum(states[3] * (states[1] @ params['skips'][1]['w'])))
  np.testing.assert_allclose(phi - phi0, by_hand, rtol=1e-12)


@pytest.mark.parametrize('pool', ['M', 'A'])
def test_explicit_forces_match_autodiff(x64, pool):
  spec = _spec(pool)
  params, x, states = random_params(spec), random_input(), random_states(spec)
  explicit = relaxation.force(spec, params, x, states, None, None, None)
  auto = relaxation.force_autodiff(spec, params, x, states, None, None, None)
  assert max_diff(explicit, auto) < 1e-12
  targets, cost = {'label': jnp.array([0, 1, 2, 3])}, energy.output_cost(spec)
  explicit = relaxation.force(spec, params, x, states, targets, 0.3, cost)
  auto = relaxation.force_autodiff(spec, params, x, states, targets, 0.3, cost)
  assert max_diff(explicit, auto) < 1e-12
  # A subset of layers (as the async classes ask for) gives the same forces.
  sub = relaxation.force(spec, params, x, states, targets, 0.3, cost, layers=(0, 3))
  assert max_diff(sub, (auto[0], auto[3])) < 1e-12


def test_skip_feedback_is_the_adjoint_of_skip_drive(x64):
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 5), jnp.float64)
  s_src = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3), jnp.float64)
  for factor in (1, 2, 4):
    s_dst = jax.random.normal(jax.random.PRNGKey(2), (2, 8 // factor, 8 // factor, 5),
                              jnp.float64)
    _, vjp = jax.vjp(lambda s: energy.skip_drive(w, s, factor), s_src)
    np.testing.assert_allclose(energy.skip_feedback(w, s_dst, factor), vjp(s_dst)[0],
                               rtol=1e-12, atol=1e-14)


def _is_proper(spec):
  colours = network.layer_colouring(spec)
  edges = [(l, l + 1) for l in range(spec.num_layers - 1)] + list(spec.skips)
  return all(colours[a] != colours[b] for a, b in edges)


def test_colouring_is_proper_and_even_odd_for_a_chain():
  chain = network.make_spec('4,4,M,6,6,M,3', input_shape=(8, 8, 2), num_classes=4, dense=(5,))
  assert network.layer_colouring(chain) == tuple(l % 2 for l in range(chain.num_layers))
  assert chain.colour_classes == ((0, 2, 4), (1, 3, 5))
  # The convolutions an async step carries: today's rule (l - 1 even, layer l max-pools).
  assert relaxation.carried_conv_layers(chain, chain.num_layers, 'async') == (1, 3)
  spec = network.make_spec('4,4,M,6,6,M,3', input_shape=(8, 8, 2), num_classes=4, dense=(5,),
                           skips=((0, 2), (1, 3), (2, 4), (0, 4)))
  assert _is_proper(spec) and _is_proper(_spec())
  assert sorted(l for c in spec.colour_classes for l in c) == list(range(spec.num_layers))
  assert _spec().colour_classes == ((0, 3), (1, 4), (2,))


@pytest.mark.parametrize('pool', ['M', 'A'])
def test_async_step_sweeps_the_colour_classes(x64, pool):
  """One async step is a Gauss-Seidel sweep over the colour classes, each from the newest
  states, with forces from `jax.grad` of Φ^β."""
  assert_async_step_is_a_sweep(_spec(pool))


def test_complex_states_use_the_colour_classes(x64):
  """Holomorphic EP's autodiff path: real-valued complex states step like real ones."""
  spec = _spec('A', 'smooth_sigmoid')
  params, x, states = random_params(spec), random_input(), random_states(spec)
  for mode in ('sync', 'async'):
    real = relaxation.step(spec, params, x, states, None, None, None, mode=mode)
    cplx = relaxation.step(spec, params, x, tuple(s.astype(jnp.complex128) for s in states),
                           None, None, None, mode=mode)
    assert max_diff(real, [jnp.real(c) for c in cplx]) < 1e-12
    assert max(float(jnp.max(jnp.abs(jnp.imag(c)))) for c in cplx) == 0.0


# With max pooling at gain 1.5 sync needs ~1500 steps and async settles on another fixed point
# (both are fixed points): the comparison needs a unique one.
@pytest.mark.parametrize('pool,gain', [('M', 1.0), ('A', 1.5)])
def test_sync_and_async_reach_the_same_fixed_point(x64, pool, gain):
  spec = _spec(pool)
  # A fixed point of the skip network, s = σ(∂Φ/∂s) with the skip terms; the skips matter:
  # the fixed point without them is another one.
  assert_sync_and_async_agree(spec, random_params(spec, gain=gain), random_input(),
                              dataclasses.replace(spec, skips=()), steps=T)


def _problem(gain, pool='M'):
  spec = _spec(pool)
  params, x = random_params(spec, gain), random_input()
  targets = {'label': jnp.array([0, 1, 2, 3])}
  _, implicit = implicit_problem(spec, params, x, targets, steps=T, tol=TOL)
  return spec, params, x, targets, implicit


def test_symmetric_ep_matches_the_implicit_gradient(x64):
  # Gain 1.5: at gain 1 (with or without skips) some units cross a kink of the hard sigmoid or
  # max pooling between the ±0.01 phases, and the cosines drop to ~0.8 (at β = 0.001 they are
  # 1.0); METHOD.md §6.
  spec, params, x, targets, implicit = _problem(1.5)
  assert float(jnp.linalg.norm(implicit['skips'][0]['w'])) > 0
  out = estimators.ep_gradient(spec, params, x, targets, beta=0.01, estimator='symmetric',
                               free_steps=T, nudged_steps=T, tol=TOL)
  cos = cosines(out.grads, implicit)
  assert min(cos) >= 0.999, cos
  assert min(cosines(out.grads['skips'], implicit['skips'])) >= 0.999
  # The skip weights are a parameter group of their own for the optimiser and the GDU report.
  assert set(jax.tree_util.tree_leaves(optim.group_labels(out.grads, spec))) >= {'skips'}
  groups = gdu.group_vectors(out.grads, spec)
  assert groups['skips'].shape == (2 * 4 * 6,)
  assert list(groups)[-2:] == ['skips', gdu.ALL]


def test_bptt_matches_the_implicit_gradient(x64):
  # Gain 1: the free phase settles in ~80 sync steps (at 1.5 it needs ~1500, too many to unroll).
  spec, params, x, targets, implicit = _problem(1.0)
  bptt = reference_grads.bptt_gradient(spec, params, x, targets, steps=300)
  assert min(cosines(bptt, implicit)) >= 0.999999
  assert min(cosines(bptt['skips'], implicit['skips'])) >= 0.999999
  assert relative_error(bptt, implicit) < 1e-6


def test_teacher_forward_has_the_crnn_shapes_and_uses_the_skips(x64):
  spec = _spec()
  params, x = random_params(spec), random_input()
  acts, z = feedforward.forward(spec, params, x)
  assert [a.shape[1:] for a in acts] == list(spec.state_shapes) and z.shape == (4, 4)
  plain_acts, _ = feedforward.forward(dataclasses.replace(spec, skips=()), params, x)
  assert max_diff(acts[:2], plain_acts[:2]) == 0.0  # below the first skip's target
  assert max_diff(acts[2:], plain_acts[2:]) > 1e-3
  # conv3's activation by hand: σ(drive_3(a_2) + meanpool2(a_1) V_13).
  sigma = activations.get(spec.activation)
  u = energy.layer_drive(spec, 2, params['layers'][2], acts[1])
  u = u + energy.skip_drive(params['skips'][0]['w'], acts[0], 2)
  np.testing.assert_allclose(acts[2], sigma(u), rtol=1e-12)
  # The spec (with its skips) round-trips through a teacher's JSON.
  assert network.NetworkSpec.from_dict(spec.to_dict()) == spec


BAD = [
    (((0, 1),), r'skip \(0, 1\).*i < j - 1'),
    (((2, 0),), r'skip \(2, 0\).*i < j - 1'),
    (((0, 5),), r'skip \(0, 5\).*out of range'),
    (((-1, 2),), r'skip \(-1, 2\).*out of range'),
    (((0, 4),), r'skip \(0, 4\).*dense1.*convolutional'),
    (((0, 2), (0, 2)), r'skip \(0, 2\).*duplicate'),
    (((0, 2, 3),), r'not a pair'),
    ((('a', 2),), r'not a pair'),
]


@pytest.mark.parametrize('skips,message', BAD)
def test_make_spec_rejects_bad_pairs(skips, message):
  with pytest.raises(ValueError, match=message):
    _spec(skips=skips)


def test_make_spec_rejects_sizes_not_related_by_a_power_of_two():
  # VALID 3x3 convolutions: 10x10 -> 8x8 -> 6x6 -> 4x4 -> 2x2; 6 / 2 = 3 is no power of two.
  kw = dict(input_shape=(10, 10, 1), num_classes=3, padding='VALID')
  with pytest.raises(ValueError, match=r'skip \(1, 3\).*conv4 \(2x2\).*conv2 \(6x6\).*power of two'):
    network.make_spec('4,4,4,4', skips=((1, 3),), **kw)
  assert network.make_spec('4,4,4,4', skips=((0, 2),), **kw).skip_factors == (2,)


def test_config_skips_are_one_based():
  assert build.skips_from_config(((1, 3), (3, 5))) == ((0, 2), (2, 4))
  with pytest.raises(ValueError, match='1-based'):
    build.skips_from_config(((0, 2),))


def _skip_config(epochs):
  config = quickstart.get_config()
  config.data.train_subset = 128
  config.data.test_subset = 64
  config.model.layout = '8,8,M,16,16'
  config.model.skips = ((1, 3), (2, 4))
  config.optim.learning_rates = (0.1,)
  config.ep.free_steps = 10
  config.ep.nudged_steps = 4
  config.train.epochs = epochs
  config.train.batch_size = 32
  config.train.eval_batch_size = 64
  return config


def test_training_with_skips_saves_and_resumes(tmp_path):
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  lines = []
  record = train.train_and_evaluate(_skip_config(2), str(straight), print_fn=lines.append)
  assert 0.0 <= record['test_accuracy'] <= 1.0
  saved = json.load(open(straight / 'config.json'))['model']
  assert [list(p) for p in saved['skips']] == [[1, 3], [2, 4]]
  # Resume from the first epoch's checkpoint: the second epoch is recomputed identically.
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '2')
  again_lines = []
  again = train.train_and_evaluate(_skip_config(2), str(resumed), print_fn=again_lines.append)
  assert any('resumed from' in l for l in again_lines)
  assert again['test_accuracy'] == record['test_accuracy']
  a = [json.loads(l) for l in open(straight / 'metrics.jsonl')]
  b = [json.loads(l) for l in open(resumed / 'metrics.jsonl')]
  assert [r['epoch'] for r in b] == [1, 2]
  assert a[-1]['train_loss'] == b[-1]['train_loss']
