"""User-defined connection kinds (`ep_jax.connections`): edges `< s_dst, drive(θ, s_src) >` in Φ.

The kinds are defined here, outside ep_jax: a depthwise 3x3 convolution between two conv
layers of one shape (parallel to the chain), a dense link from a conv layer to a dense layer
and a lateral dense link inside a dense layer. Forces against `jax.grad` of Φ (the skip link
through the generic `jax.vjp` path too), the colour-class async schedule, EP against the
implicit gradient (float64, METHOD.md §6), the feed-forward twin, spec validation and a short
training run on digits.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (assert_async_step_is_a_sweep, assert_sync_and_async_agree, cosines,
                      implicit_problem, max_diff, random_input, random_params, random_states)
from ep_jax import (activations, connections, energy, estimators, feedforward, initialization,
                    network, optim, relaxation, train_step)
from ep_jax.app import build, data, teacher, train
from experiments.configs import quickstart
from ep_jax.connections import ConnectionKind, Edge

T = 3000
TOL = 1e-13


def _dw_drive(p, s):
  """Depthwise 3x3 'SAME' convolution: each channel of `s` (B, H, W, C) with its own kernel."""
  return jax.lax.conv_general_dilated(s, p['w'], (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=s.shape[-1])


def _dw_init(key, src_shape, dst_shape, dtype):
  del dst_shape
  return {'w': jax.random.uniform(key, (3, 3, 1, src_shape[-1]), dtype, -1 / 3, 1 / 3)}


def _dense_drive(p, s):
  """`flat(s) W` into a dense layer."""
  return s.reshape(s.shape[0], -1) @ p['w']


def _dense_init(key, src_shape, dst_shape, dtype):
  fan_in = math.prod(src_shape)
  bound = 1 / math.sqrt(fan_in)
  return {'w': jax.random.uniform(key, (fan_in, math.prod(dst_shape)), dtype, -bound, bound)}


DEPTHWISE = ConnectionKind('depthwise3x3', _dw_drive, _dw_init)
DENSE = ConnectionKind('dense', _dense_drive, _dense_init)

# '4,4,M,6,6' on 8x8x2 inputs, dense (5,): conv1 8x8x4, conv2 4x4x4, conv3 4x4x6, conv4 4x4x6,
# dense1 (5,). conv3 -> conv4 depthwise (parallel to the chain), conv2 -> dense1 (skips conv3
# and conv4), dense1 -> dense1 lateral.
EDGES = (Edge(2, 3, DEPTHWISE), Edge(1, 4, DENSE), Edge(4, 4, DENSE))


def _spec(pool='M', edges=EDGES, skips=(), activation='hard_sigmoid'):
  return network.make_spec(f'4,4,{pool},6,6', input_shape=(8, 8, 2), num_classes=4, dense=(5,),
                           activation=activation, edges=edges, skips=skips)


def _assert_forces_match(spec, params):
  x, states = random_input(), random_states(spec)
  targets, cost = {'label': jnp.array([0, 1, 2, 3])}, energy.output_cost(spec)
  for beta in (None, 0.3):
    args = (targets, beta, cost) if beta is not None else (None, None, None)
    explicit = relaxation.force(spec, params, x, states, *args)
    auto = relaxation.force_autodiff(spec, params, x, states, *args)
    assert max_diff(explicit, auto) < 1e-12
  sub = relaxation.force(spec, params, x, states, targets, 0.3, cost, layers=(1, 4))
  assert max_diff(sub, (auto[1], auto[4])) < 1e-12


def test_spec_params_and_energy_term(x64):
  spec = _spec()
  assert spec.edges == EDGES and hash(spec) == hash(_spec()) and spec == _spec()
  params = random_params(spec)
  assert [p['w'].shape for p in params['edges']] == [(3, 3, 1, 6), (64, 5), (5, 5)]
  plain = network.init_params(_spec(edges=()), jax.random.PRNGKey(0), dtype=jnp.float64)
  assert 'edges' not in plain
  assert max_diff(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(
      {k: v for k, v in params.items() if k != 'edges'})) == 0.0
  # Φ gains exactly the edges' terms, the lateral one halved.
  x, states = random_input(), random_states(spec)
  phi = energy.primitive(spec, params, x, states)
  phi0 = energy.primitive(_spec(edges=()), params, x, states)
  w1, w2 = params['edges'][1]['w'], params['edges'][2]['w']
  by_hand = (jnp.sum(states[3] * _dw_drive(params['edges'][0], states[2]))
             + jnp.sum(states[4] * (states[1].reshape(4, -1) @ w1))
             + 0.5 * jnp.sum(states[4] * (states[4] @ w2)))
  np.testing.assert_allclose(phi - phi0, by_hand, rtol=1e-12)


@pytest.mark.parametrize('pool', ['M', 'A'])
def test_forces_match_autodiff_for_user_kinds(x64, pool):
  spec = _spec(pool, skips=((0, 2),))
  _assert_forces_match(spec, random_params(spec))


def test_lateral_force_is_symmetrised(x64):
  """`½ <s, W s>` pulls with `½ (W + W^T) s`."""
  w = jax.random.normal(jax.random.PRNGKey(0), (5, 5), jnp.float64)
  s = jax.random.normal(jax.random.PRNGKey(1), (3, 5), jnp.float64)
  np.testing.assert_allclose(connections.lateral_force(DENSE, {'w': w}, s), s @ (w + w.T) / 2,
                             rtol=1e-12)


def test_skip_kind_fast_feedback_equals_the_generic_vjp(x64):
  """The skip link's hand-written adjoint against `jax.vjp`, and a skip passed in as an edge
  of its kind without that adjoint (the generic path) gives the skip's forces and Φ."""
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 5), jnp.float64)
  s_src = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3), jnp.float64)
  for factor in (1, 2, 4):
    kind = energy.skip_kind(factor)
    assert kind is energy.skip_kind(factor) and kind.feedback is not None
    generic = dataclasses.replace(kind, feedback=None)
    s_dst = jax.random.normal(jax.random.PRNGKey(2), (2, 8 // factor, 8 // factor, 5),
                              jnp.float64)
    np.testing.assert_allclose(connections.feedback(kind, {'w': w}, s_dst, s_src),
                               connections.feedback(generic, {'w': w}, s_dst, s_src),
                               rtol=1e-12, atol=1e-14)
  skipped = _spec(edges=(), skips=((0, 2),))
  generic = dataclasses.replace(energy.skip_kind(2), feedback=None)
  as_edge = _spec(edges=(Edge(0, 2, generic),))
  params = random_params(skipped)
  edge_params = {'layers': params['layers'], 'readout': params['readout'],
                 'edges': params['skips']}
  _assert_forces_match(as_edge, edge_params)
  x, states = random_input(), random_states(skipped)
  assert max_diff(relaxation.force(skipped, params, x, states, None, None, None),
                   relaxation.force(as_edge, edge_params, x, states, None, None, None)) < 1e-12
  np.testing.assert_allclose(energy.primitive(skipped, params, x, states),
                             energy.primitive(as_edge, edge_params, x, states), rtol=1e-13)


def _is_proper(spec):
  colours = network.layer_colouring(spec)
  pairs = [(l, l + 1) for l in range(spec.num_layers - 1)] + list(spec.skips)
  pairs += [(e.src, e.dst) for e in spec.edges if e.src != e.dst]
  return all(colours[a] != colours[b] for a, b in pairs)


def test_colouring_accounts_for_the_edges():
  spec = _spec(skips=((0, 2),))
  assert _is_proper(spec) and _is_proper(_spec())
  # conv2 -> dense1 joins layers of different parities, the lateral edge no two layers.
  assert _spec().colour_classes == ((0, 2, 4), (1, 3))
  # A downward edge dense1 -> conv3 joins two even layers: a third colour.
  down = _spec(edges=(Edge(4, 2, ConnectionKind('down', _down_drive, _down_init)),))
  assert _is_proper(down) and down.colour_classes == ((0, 2), (1, 3), (4,))


def _down_drive(p, s):
  return (s @ p['w']).reshape(s.shape[0], 4, 4, 6)


def _down_init(key, src_shape, dst_shape, dtype):
  return {'w': 0.1 * jax.random.normal(key, (src_shape[0], math.prod(dst_shape)), dtype)}


@pytest.mark.parametrize('pool', ['M', 'A'])
def test_async_step_sweeps_the_colour_classes(x64, pool):
  assert_async_step_is_a_sweep(_spec(pool))


@pytest.mark.parametrize('pool,gain', [('M', 1.0), ('A', 1.5)])
def test_sync_and_async_reach_the_same_fixed_point(x64, pool, gain):
  spec = _spec(pool)
  # Also: the edges matter (the chain alone settles elsewhere).
  assert_sync_and_async_agree(spec, random_params(spec, gain=gain), random_input(),
                              _spec(pool, edges=()), steps=T)


def test_symmetric_ep_matches_the_implicit_gradient(x64):
  # Gain 1 with max pooling: no unit crosses a kink of the hard sigmoid or the pooling between
  # the ±0.01 phases (at gain 1.5 some do, with or without edges, and the cosines drop to
  # ~0.9; at β = 0.001 they are 1.0); METHOD.md §6.
  spec = _spec()
  params, x = random_params(spec), random_input()
  targets = {'label': jnp.array([0, 1, 2, 3])}
  _, implicit = implicit_problem(spec, params, x, targets, steps=T, tol=TOL)
  assert min(float(jnp.linalg.norm(g['w'])) for g in implicit['edges']) > 0
  out = estimators.ep_gradient(spec, params, x, targets, beta=0.01, estimator='symmetric',
                               free_steps=T, nudged_steps=T, tol=TOL)
  cos = cosines(out.grads, implicit)
  assert min(cos) >= 0.999, cos
  assert set(jax.tree_util.tree_leaves(optim.group_labels(out.grads, spec))) >= {'edges'}


def test_teacher_forward_uses_the_upward_edges(x64, tmp_path):
  spec = _spec()
  params, x = random_params(spec), random_input()
  acts, _ = feedforward.forward(spec, params, x)
  plain, _ = feedforward.forward(_spec(edges=()), params, x)
  assert max_diff(acts[:3], plain[:3]) == 0.0 and max_diff(acts[3:], plain[3:]) > 1e-3
  # dense1 by hand: its chain drive plus conv2's dense edge (the lateral edge is left out).
  sigma = activations.get(spec.activation)
  u = energy.layer_drive(spec, 4, params['layers'][4], acts[3])
  np.testing.assert_allclose(acts[4], sigma(u + _dense_drive(params['edges'][1], acts[1])),
                             rtol=1e-12)
  # The spec round-trips through a teacher's JSON given its kinds.
  fields = spec.to_dict()
  assert fields['edges'] == [[2, 3, 'depthwise3x3'], [1, 4, 'dense'], [4, 4, 'dense']]
  assert network.NetworkSpec.from_dict(fields, kinds=(DEPTHWISE, DENSE)) == spec
  with pytest.raises(ValueError, match="kind 'depthwise3x3'.*kinds"):
    network.NetworkSpec.from_dict(fields, kinds=(DENSE,))
  # A saved teacher with edges loads back, its edges' parameters included.
  teacher.save_teacher(str(tmp_path), spec, params, {'test_accuracy': 0.5})
  loaded_spec, loaded, _ = build.load_teacher(str(tmp_path), kinds=(DEPTHWISE, DENSE))
  assert loaded_spec == spec
  assert max_diff(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params)) == 0.0


def test_gains_scale_the_edges_by_their_destination_layer(x64):
  spec = _spec()
  params = random_params(spec)
  gains = (1.0, 2.0, 3.0, 4.0, 5.0)
  scaled = initialization.apply_gains(params, gains, spec)
  for p, q, e in zip(params['edges'], scaled['edges'], spec.edges):
    np.testing.assert_allclose(q['w'], gains[e.dst] * p['w'], rtol=1e-12)
  doubled = network.init_params(spec, jax.random.PRNGKey(0), dtype=jnp.float64, scale=2.0)
  np.testing.assert_allclose(doubled['edges'][0]['w'], 2 * params['edges'][0]['w'], rtol=1e-12)


# A depthwise drive with a kernel per destination channel: 6 kernels for 4 source channels.
BROKEN = ConnectionKind('broken', _dw_drive, lambda key, src_shape, dst_shape, dtype: _dw_init(
    key, dst_shape, src_shape, dtype))

BAD = [
    ((Edge(2, 3, 'conv'),), r'edge 0 \(2, 3\).*must be a ConnectionKind'),
    (((2, 3),), r'edge 0 .*not a triple'),
    ((Edge(2, 7, DENSE),), r'edge 0 \(2, 7\).*out of range'),
    ((Edge(4, 4, DENSE), Edge(0, 3, DEPTHWISE)),
     r'edge 1 \(0, 3\) \(conv1 -> conv4\).*depthwise3x3.*\(2, 8, 8, 4\).*\(2, 4, 4, 6\)'),
    ((Edge(1, 2, BROKEN),), r'edge 0 \(1, 2\).*broken.*fails on a source state \(2, 4, 4, 4\)'),
]


@pytest.mark.parametrize('edges,message', BAD)
def test_make_spec_rejects_bad_edges(edges, message):
  with pytest.raises(ValueError, match=message):
    _spec(edges=edges)


def test_training_on_digits_with_a_user_kind():
  """A depthwise edge conv1 -> conv2 parallel to the chain, trained by EP on digits."""
  config = quickstart.get_config()
  config.model.layout = '8,M,8'
  config.optim.learning_rates = (0.1,)
  config.ep.free_steps = 15
  config.ep.nudged_steps = 5
  config.train.batch_size = 64
  train_split, test_split, info = build.load_data(config)
  spec = network.make_spec(config.model.layout, input_shape=info.input_shape,
                           num_classes=info.num_classes, edges=(Edge(0, 1, DEPTHWISE),))
  epochs = 3
  steps = data.num_train_batches(train_split, config.train.batch_size)
  config.train.epochs = epochs
  run = train.build_run(config, spec, steps)
  step = jax.jit(train_step.make_train_step(spec, build.build_ep_config(config), run.tx,
                                            steps_per_epoch=steps))
  eval_step = jax.jit(train_step.make_eval_step(spec, build.build_ep_config(config)))
  state, before = run.state, run.state.params['edges'][0]['w']
  for epoch in range(epochs):
    for batch in data.train_batches(train_split, info, batch_size=config.train.batch_size,
                                    epoch=epoch, seed=0):
      state, _ = step(state, batch)
  correct = count = 0.0
  for batch in data.eval_batches(test_split, info, batch_size=256):
    out = eval_step(state.params, batch)
    correct, count = correct + float(out['correct']), count + float(out['count'])
  print(f'test accuracy {correct / count:.3f}')
  assert correct / count >= 0.6, correct / count
  change = jnp.linalg.norm(state.params['edges'][0]['w'] - before) / jnp.linalg.norm(before)
  assert float(change) > 0.05
