"""κ schedules (METHOD.md §3, the paper's Eq. 14): their shapes, per-layer vectors, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax import kappa

E_TOTAL = 20


def test_schedules_by_their_shape():
  """Each schedule by what defines it, on every epoch with a traced epoch: constant stays; linear
  falls by equal steps to 0 at E_total; exp falls by a constant ratio e^{-γ}; cos falls from κ_0
  to κ_min, flat at both ends and point-symmetric about its midpoint (κ(e) + κ(E - e) =
  κ_0 + κ_min)."""
  k0, kmin, gamma = 0.8, 0.05, 0.15
  epochs = jnp.arange(E_TOTAL + 1)
  values = lambda s: np.asarray(jax.jit(jax.vmap(s))(epochs), np.float64)
  const = values(kappa.constant(k0))
  np.testing.assert_allclose(const, k0, rtol=1e-6)
  lin = values(kappa.linear(k0, E_TOTAL))
  np.testing.assert_allclose(np.diff(lin), -k0 / E_TOTAL, rtol=1e-5)
  assert lin[0] == pytest.approx(k0) and lin[-1] == 0.0
  exp = values(kappa.exponential(k0, gamma))
  np.testing.assert_allclose(exp[1:] / exp[:-1], math.exp(-gamma), rtol=1e-5)
  cos = values(kappa.cosine(k0, E_TOTAL, kmin))
  assert cos[0] == pytest.approx(k0) and cos[-1] == pytest.approx(kmin)
  assert np.all(np.diff(cos) < 0)
  np.testing.assert_allclose(cos + cos[::-1], k0 + kmin, rtol=1e-5)
  steps = -np.diff(cos)
  assert steps[0] < steps[E_TOTAL // 2 - 1] and steps[-1] < steps[E_TOTAL // 2]  # flat ends


def test_endpoints_and_clipping():
  lin, cos = kappa.linear(1.0, 10), kappa.cosine(1.0, 10, 0.1)
  assert float(lin(0)) == 1.0 and float(lin(10)) == 0.0 and float(lin(15)) == 0.0
  # Exactly 0 from E_total on, also compiled with a traced epoch (never slightly negative).
  ends = jax.jit(jax.vmap(kappa.linear(0.3, 7)))(jnp.arange(7, 10))
  assert not np.any(np.asarray(ends))
  np.testing.assert_allclose([float(cos(0)), float(cos(5)), float(cos(10)), float(cos(30))],
                             [1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_make_schedule_names_and_errors():
  for name, alias in (('exp', 'exponential'), ('cos', 'cosine')):
    a = kappa.make_schedule(name, 0.5, total_epochs=8, kappa_min=0.1, gamma=0.2)
    b = kappa.make_schedule(alias, 0.5, total_epochs=8, kappa_min=0.1, gamma=0.2)
    assert float(a(3)) == float(b(3))
  with pytest.raises(ValueError, match='unknown kappa schedule'):
    kappa.make_schedule('step', 0.5, total_epochs=8)
  with pytest.raises(ValueError, match='>= 0'):
    kappa.constant(-1.0)
  with pytest.raises(ValueError, match='total_epochs'):
    kappa.linear(1.0, 0)


def _layer_schedule(layers=(0, 2), num_layers=4, **fields):
  kw = dict(name='cos', kappa_init=1.0, kappa_min=0.1, gamma=0.1, per_layer=())
  kw.update(fields)
  return kappa.make_layer_schedule(kw.pop('name'), kw.pop('kappa_init'), num_layers=num_layers,
                                   layers=layers, total_epochs=10, **kw)


def test_per_layer_vector_is_zero_off_the_signal_layers():
  sched = _layer_schedule()
  np.testing.assert_allclose(sched(0), [1.0, 0.0, 1.0, 0.0])
  np.testing.assert_allclose(sched(10), [0.1, 0.0, 0.1, 0.0], rtol=1e-6)
  # One κ_init per signal layer, or one per network layer.
  per_signal = _layer_schedule(name='exp', per_layer=(0.5, 2.0))
  per_net = _layer_schedule(name='exp', per_layer=(0.5, 9.0, 2.0, 9.0))
  want = np.array([0.5, 0.0, 2.0, 0.0]) * math.exp(-0.1 * 3)
  np.testing.assert_allclose(per_signal(3), want, rtol=1e-6)
  np.testing.assert_allclose(per_net(3), want, rtol=1e-6)
  with pytest.raises(ValueError, match='per_layer has 3 values'):
    _layer_schedule(per_layer=(1.0, 1.0, 1.0))
  zero = _layer_schedule(name='linear', kappa_init=0.0, num_layers=3, layers=(0, 1, 2))
  assert not np.any(np.asarray(zero(2)))


def test_float64_under_x64(x64):
  assert kappa.exponential(0.3, 0.1)(jnp.asarray(4, jnp.int32)).dtype == jnp.float64
  np.testing.assert_allclose(float(kappa.exponential(0.3, 0.1)(4)), 0.3 * math.exp(-0.4),
                             rtol=1e-15)
