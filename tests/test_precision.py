"""Mixed-precision relaxation (`compute_dtype`): bfloat16 convolution operands, float32 states."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cosine
from ep_jax import energy, network, relaxation
from ep_jax.app import data
from ep_jax.estimators import EPConfig, ep_gradient


@pytest.fixture(scope='module')
def digits_setup():
  train, _, info = data.load_dataset('digits')
  spec = network.make_spec('16,M,32,M', input_shape=info.input_shape, num_classes=10,
                           dense=(24,))
  params = network.init_params(spec, jax.random.PRNGKey(0))
  x = jnp.asarray(data.normalize(train.images[:32], info))
  y = jnp.asarray(train.labels[:32])
  return spec, params, x, y


def test_mixed_conv_rounds_operands_and_accumulates_in_float32():
  s = jax.random.uniform(jax.random.PRNGKey(0), (2, 6, 6, 5))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 4)) * 0.3
  out = energy.conv2d_loop(s, w, 'SAME', jnp.bfloat16)
  assert out.dtype == jnp.float32
  rounded = energy.conv2d(s.astype(jnp.bfloat16).astype(jnp.float32),
                          w.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(out, rounded, rtol=1e-5, atol=1e-5)
  exact = energy.conv2d(s, w)
  assert float(jnp.max(jnp.abs(out - exact))) > 0  # the option does round
  np.testing.assert_allclose(out, exact, atol=0.05)
  # Reverse mode: cotangents in the primal dtypes, close to float32's.
  g = jax.random.normal(jax.random.PRNGKey(2), out.shape)
  ds, dw = jax.vjp(lambda a, b: energy.conv2d_loop(a, b, 'SAME', jnp.bfloat16), s, w)[1](g)
  ds_ref, dw_ref = jax.vjp(lambda a, b: energy.conv2d(a, b), s, w)[1](g)
  assert ds.dtype == jnp.float32 and dw.dtype == jnp.float32
  assert cosine(ds, ds_ref) > 0.999 and cosine(dw, dw_ref) > 0.999
  m = energy.matmul(s.reshape(2, -1), jnp.ones((180, 3)), jnp.bfloat16)
  assert m.dtype == jnp.float32


def test_mixed_relaxation_keeps_float32_states(digits_setup):
  spec, params, x, _ = digits_setup
  s0 = network.init_states(spec, x.shape[0], jnp.float32)
  full = relaxation.relax(spec, params, x, s0, max_steps=20)
  mixed = relaxation.relax(spec, params, x, s0, max_steps=20, compute_dtype=jnp.bfloat16)
  same = relaxation.relax(spec, params, x, s0, max_steps=20, compute_dtype=jnp.float32)
  for a, b, c in zip(full.states, mixed.states, same.states):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(a, c)  # compute dtype == state dtype: the plain path
    np.testing.assert_allclose(a, b, atol=2e-2)
  assert any(float(jnp.max(jnp.abs(a - b))) > 0 for a, b in zip(full.states, mixed.states))


@pytest.mark.parametrize('mode', ['sync', 'async'])
def test_mixed_precision_gradient_aligned_with_float32(digits_setup, mode):
  """The target of the bfloat16 option: per-layer cosine >= 0.99 with the float32 gradient.

  States in bfloat16 (`state_dtype`) instead lose the first layer's small nudged-minus-free
  contrast below bfloat16's resolution; the assertion documents that the mixed path does not.
  """
  spec, params, x, y = digits_setup

  def grads(**kw):
    return jax.jit(lambda p: ep_gradient(spec, p, x, {'label': y}, beta=0.5, free_steps=30,
                                         nudged_steps=10, mode=mode, **kw).grads)(params)

  ref = grads()
  mixed = grads(compute_dtype=jnp.bfloat16)
  for name, a, b in zip(network.synapse_names(spec), list(mixed['layers']) + [mixed['readout']],
                        list(ref['layers']) + [ref['readout']]):
    assert jax.tree.leaves(a)[0].dtype == jnp.float32
    assert cosine(a, b) >= 0.99, (name, cosine(a, b))


def test_compute_dtype_validation():
  with pytest.raises(ValueError, match='compute_dtype'):
    EPConfig(compute_dtype='int8')
  with pytest.raises(ValueError, match='compute_dtype'):
    EPConfig(compute_dtype='bfloat61')
  assert EPConfig(compute_dtype='bfloat16').compute_dtype == 'bfloat16'
