"""The API: the jitted estimator (static spec), `inference.predict`, labels as a plain array."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ep_jax
from ep_jax import estimators, inference, network, train_step
from ep_jax.estimators import EPConfig


def _problem(batch=6):
  spec = network.make_spec('6,M,8,M', input_shape=(8, 8, 1), num_classes=3, dense=(5,))
  params = network.init_params(spec, jax.random.PRNGKey(0))
  params = jax.tree_util.tree_map(lambda p: 2.0 * p, params)
  x = jax.random.uniform(jax.random.PRNGKey(1), (batch, 8, 8, 1))
  y = jnp.arange(batch, dtype=jnp.int32) % 3
  return spec, params, x, y


def test_network_spec_is_hashable_and_equal_specs_hash_equal():
  a, *_ = _problem()
  b = network.make_spec('6,M,8,M', input_shape=(8, 8, 1), num_classes=3, dense=(5,))
  assert a == b and hash(a) == hash(b)
  assert a != network.make_spec('6,M,8,M', input_shape=(8, 8, 1), num_classes=4, dense=(5,))


@pytest.mark.parametrize('estimator', ['symmetric', 'bptt'])
def test_jitted_ep_gradient_matches_eager_and_retraces_only_for_static_changes(estimator):
  spec, params, x, y = _problem()
  kw = dict(estimator=estimator, free_steps=20, nudged_steps=8, tol=0.0)
  eager = estimators.ep_gradient(spec, params, x, y, beta=0.5, **kw)
  jitted = estimators.jitted_ep_gradient(spec, params, x, y, beta=0.5, **kw)
  chex.assert_trees_all_close(jitted.grads, eager.grads, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(jitted.logits, eager.logits, rtol=1e-5, atol=1e-7)
  # β and tol are traced: another value reuses the compilation.
  before = estimators.jitted_ep_gradient._cache_size()
  estimators.jitted_ep_gradient(spec, params, x, y, beta=0.25, **dict(kw, tol=1e-3))
  assert estimators.jitted_ep_gradient._cache_size() == before
  # The README's alternative: jit a partial with the spec bound.
  step = jax.jit(lambda p, x, y: estimators.ep_gradient(spec, p, x, y, beta=0.5, **kw).grads)
  chex.assert_trees_all_close(step(params, x, y), eager.grads, rtol=1e-5, atol=1e-7)


def test_plain_jit_of_ep_gradient_fails_on_the_spec():
  spec, params, x, y = _problem()
  with pytest.raises(TypeError):
    jax.jit(estimators.ep_gradient)(spec, params, x, y, beta=0.5)


@pytest.mark.parametrize('estimator', ['one_sided', 'symmetric', 'bptt'])
def test_labels_as_a_plain_array_equal_labels_in_a_dict(estimator):
  spec, params, x, y = _problem()
  kw = dict(beta=0.5, estimator=estimator, free_steps=15, nudged_steps=5)
  plain = estimators.ep_gradient(spec, params, x, y, **kw)
  wrapped = estimators.ep_gradient(spec, params, x, {'label': y}, **kw)
  numpy_labels = estimators.ep_gradient(spec, params, x, np.asarray(y), **kw)
  chex.assert_trees_all_equal(plain.grads, wrapped.grads)
  chex.assert_trees_all_equal(plain.losses, wrapped.losses)
  chex.assert_trees_all_close(numpy_labels.grads, wrapped.grads)
  assert float(jnp.max(jnp.abs(plain.grads['layers'][0]['w']))) > 0


@pytest.mark.parametrize('mode,tol', [('sync', 0.0), ('async', 1e-4)])
def test_predict_gives_the_eval_steps_accuracy_and_loss(mode, tol):
  spec, params, x, y = _problem(batch=12)
  ep = EPConfig(free_steps=40, nudged_steps=5, tol=tol, mode=mode)
  z = inference.jitted_predict(spec, params, x, free_steps=ep.free_steps, tol=ep.tol,
                               mode=ep.mode)
  assert z.shape == (12, 3)
  # The same relaxation written out: zero states, relax, readout.
  free = ep_jax.relaxation.relax(spec, params, x, network.init_states(spec, 12),
                                 max_steps=40, tol=tol, mode=mode)
  np.testing.assert_allclose(z, ep_jax.energy.logits(spec, params, free.states), rtol=1e-6,
                             atol=1e-7)
  sums = jax.jit(train_step.make_eval_step(spec, ep))(params, {'image': x, 'label': y})
  correct = int(jnp.sum(jnp.argmax(z, -1) == y))
  assert int(sums['correct']) == correct
  ce = jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y[:, None], -1)[:, 0]
  np.testing.assert_allclose(float(sums['loss_sum']), float(jnp.sum(ce)), rtol=1e-5)
  # Eager and jitted agree; the prediction depends on the input.
  np.testing.assert_allclose(inference.predict(spec, params, x, free_steps=40, tol=tol,
                                               mode=mode), z, rtol=1e-5, atol=1e-6)
  assert float(jnp.std(z, axis=0).max()) > 0
