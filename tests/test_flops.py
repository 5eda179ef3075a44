"""The FLOP count of `ep_jax.flops` against XLA's own count of the compiled programs."""

import jax
import jax.numpy as jnp
import pytest

from ep_jax import connections, estimators, flops, network, relaxation

# XLA's count also has the elementwise work (activations, pools, biases), which `ep_jax.flops`
# leaves out: a few percent on these networks (measured: 0.0-3.4%).
TOLERANCE = 0.05
SPECS = {
    # SAME and VALID, max and avg pools, a dense layer, the MSE output layer, a skip link.
    'conv_dense': dict(layout='32,M,32,A,32', input_shape=(16, 16, 3), dense=(24,)),
    'valid': dict(layout='32,M,32,M', input_shape=(16, 16, 3), paddings=('SAME', 'VALID')),
    'skip': dict(layout='16,16,M,32,32,M,32,32,M', input_shape=(16, 16, 3), skips=((1, 4),)),
    'mse': dict(layout='32,M,64,M', input_shape=(8, 8, 3), readout='mse', dense=(32,)),
}


def xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0]
  return float(cost['flops'])


def _problem(name: str, batch: int = 8):
  spec = network.make_spec(num_classes=10, **SPECS[name])
  params = network.init_params(spec, jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (batch,) + spec.input_shape)
  states = tuple(jax.random.uniform(jax.random.PRNGKey(2 + i), (batch,) + s)
                 for i, s in enumerate(spec.state_shapes))
  return spec, params, x, states, jnp.arange(batch) % 10


def test_a_convolution_counts_its_in_bound_products():
  # '4,M' on 8x8x2, 3x3 SAME: 22 in-bound (position, tap) pairs per axis (3 * 8 - 2).
  spec = network.make_spec('4,M,5', input_shape=(8, 8, 2), num_classes=3, dense=(6,),
                           paddings=('SAME', 'VALID'))
  layers = flops.layer_flops(spec)
  assert layers[0] == flops.LayerFlops(2 * 22 * 22 * 2 * 4, 0, 2 * 22 * 22 * 2 * 4, True)
  # 4x4x4 -> 5 channels VALID: 3 * 2 pairs per axis; its feedback (the adjoint) the same.
  assert layers[1] == flops.LayerFlops(2 * 6 * 6 * 4 * 5, 2 * 6 * 6 * 4 * 5,
                                       2 * 6 * 6 * 4 * 5, False)
  assert layers[2].drive == layers[2].feedback == 2 * (2 * 2 * 5) * 6
  step = flops.relaxation_step_flops(spec, 3)
  assert step == 3 * (layers[1].drive + layers[2].drive + layers[1].feedback
                      + layers[2].feedback)
  readout = 2 * 6 * 3
  assert flops.relaxation_step_flops(spec, 3, nudged=True) == step + 3 * 2 * readout
  assert flops.relaxation_flops(spec, 3, 2.5) == 3 * layers[0].drive + 2.5 * step


@pytest.mark.parametrize('name', sorted(SPECS))
@pytest.mark.parametrize('mode', relaxation.MODES)
def test_one_relaxation_step_matches_xla(name, mode):
  spec, params, x, states, y = _problem(name)
  for beta in (None, 0.5) if mode == 'sync' else (0.5,):
    # XLA counts a loop's body once: a one-step scan is the input drive, the async carry and
    # one step.
    got = xla_flops(lambda p, x, s: relaxation.relax_fixed(
        spec, p, x, s, steps=1, targets=y, beta=beta, mode=mode).states, params, x, states)
    want = flops.relaxation_flops(spec, x.shape[0], 1, nudged=beta is not None, mode=mode)
    assert got == pytest.approx(want, rel=TOLERANCE), (name, mode, beta, got / want)


@pytest.mark.parametrize('name,estimator,mode', [
    ('conv_dense', 'symmetric', 'sync'), ('valid', 'one_sided', 'sync'),
    ('valid', 'symmetric', 'async'), ('skip', 'symmetric', 'async')])
def test_a_training_step_gradient_matches_xla(name, estimator, mode):
  spec, params, x, _, y = _problem(name)
  got = xla_flops(lambda p, x: estimators.ep_gradient(
      spec, p, x, y, beta=0.5, estimator=estimator, free_steps=1, nudged_steps=1,
      mode=mode).grads, params, x)
  count = flops.train_step_flops(spec, x.shape[0], free_steps=1, nudged_steps=1,
                                 estimator=estimator, mode=mode)
  assert count.total == pytest.approx(count.free + count.nudged + count.contrast
                                      + count.readout)
  assert got == pytest.approx(count.total, rel=TOLERANCE), (name, estimator, got / count.total)
  # More steps add exactly that many relaxation steps.
  more = flops.train_step_flops(spec, 8, free_steps=11, nudged_steps=3, estimator=estimator,
                                mode=mode)
  points = estimators.stencil_shape(estimator).points
  assert more.total - count.total == pytest.approx(
      10 * flops.relaxation_step_flops(spec, 8)
      + points * 2 * flops.relaxation_step_flops(spec, 8, nudged=True))


def test_what_has_no_count_is_refused():
  spec = network.make_spec('4,A', input_shape=(8, 8, 1), num_classes=3,
                           activation='smooth_sigmoid')
  with pytest.raises(ValueError, match='complex stencil'):
    flops.train_step_flops(spec, 2, free_steps=3, nudged_steps=2, estimator='holomorphic')
  with pytest.raises(ValueError, match='real EP stencils'):
    flops.train_step_flops(spec, 2, free_steps=3, nudged_steps=2, estimator='bptt')
  kind = connections.ConnectionKind(
      'scaled', drive=lambda p, s: p['a'] * s, init=lambda key, src, dst, dtype: {
          'a': jnp.ones((), dtype)})
  with_edge = network.make_spec('4,A', input_shape=(8, 8, 1), num_classes=3,
                                edges=((0, 0, kind),))
  with pytest.raises(ValueError, match='user-defined edge'):
    flops.relaxation_step_flops(with_edge, 2)
