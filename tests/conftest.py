"""Shared fixtures: small random CRNNs, their free fixed points and gradient comparison helpers."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import importlib.util  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
  """Tests marked `tfds` are skipped without tensorflow-datasets (the `tfds` extra)."""
  del config
  if importlib.util.find_spec('tensorflow_datasets') is not None:
    return
  skip = pytest.mark.skip(reason='needs the tfds extra (pip install -r requirements-tfds.txt)')
  for item in items:
    if item.get_closest_marker('tfds') is not None:
      item.add_marker(skip)


def flat(tree):
  """All leaves of `tree` as one vector (at least float32: bfloat16 leaves are promoted)."""
  return jnp.concatenate([jnp.ravel(leaf).astype(jnp.promote_types(leaf.dtype, jnp.float32))
                          for leaf in jax.tree_util.tree_leaves(tree)])


def cosine(a, b):
  """Cosine similarity of two pytrees flattened to one vector each."""
  u, v = flat(a), flat(b)
  return float(u @ v / (jnp.linalg.norm(u) * jnp.linalg.norm(v)))


def relative_error(estimate, reference):
  return float(jnp.linalg.norm(flat(estimate) - flat(reference)) /
               jnp.linalg.norm(flat(reference)))


def max_diff(a, b):
  """`max_l max |a_l - b_l|` over two sequences of arrays (states, forces)."""
  return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(a, b))


def random_params(spec, gain=1.0, seed=0):
  """`network.init_params` in float64, times `gain`."""
  from ep_jax import network
  params = network.init_params(spec, jax.random.PRNGKey(seed), dtype=jnp.float64)
  return jax.tree_util.tree_map(lambda p: gain * p, params)


def random_input(seed=1, batch=4, shape=(8, 8, 2)):
  """Uniform float64 inputs `(batch, *shape)`."""
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch,) + tuple(shape), jnp.float64)


def random_states(spec, batch=4, seed=5):
  """Uniform float64 states of every layer of `spec`."""
  return tuple(jax.random.uniform(jax.random.PRNGKey(seed + l), (batch,) + shape, jnp.float64)
               for l, shape in enumerate(spec.state_shapes))


def assert_async_step_is_a_sweep(spec, beta=0.3):
  """One async step (random float64 params, input `(4, 8, 8, 2)`, states, labels 0..3) is a
  Gauss-Seidel sweep over `spec.colour_classes`, each class from the newest states, with
  forces from `jax.grad` of Φ^β; two steps through the relaxation loop (its carried
  convolutions) are two such steps."""
  from ep_jax import activations, energy, relaxation
  params, x, states = random_params(spec), random_input(), random_states(spec)
  targets, cost = {'label': jnp.array([0, 1, 2, 3])}, energy.output_cost(spec)
  sigma = activations.get(spec.activation)
  manual = list(states)
  for layers in spec.colour_classes:
    forces = relaxation.force_autodiff(spec, params, x, tuple(manual), targets, beta, cost,
                                       layers)
    for l, f in zip(layers, forces):
      manual[l] = sigma(f)
  new = relaxation.step(spec, params, x, states, targets, beta, cost, mode='async')
  assert max_diff(new, manual) < 1e-12
  two = relaxation.relax_fixed(spec, params, x, states, steps=2, targets=targets, beta=beta,
                               cost_fn=cost, mode='async').states
  again = relaxation.step(spec, params, x, new, targets, beta, cost, mode='async')
  assert max_diff(two, again) < 1e-12


def assert_sync_and_async_agree(spec, params, x, plain_spec, *, steps, tol=1e-14):
  """Sync and async relaxations from zero reach one fixed point `s = σ(∂Φ/∂s)` (forces by
  `jax.grad` of Φ), another than that of `plain_spec` (the network without its extra links)."""
  from ep_jax import activations, network, relaxation
  zeros = network.init_states(spec, x.shape[0], jnp.float64)
  sync = relaxation.relax(spec, params, x, zeros, max_steps=steps, tol=tol, mode='sync')
  asyn = relaxation.relax(spec, params, x, zeros, max_steps=steps, tol=tol, mode='async')
  assert float(sync.residual) <= tol and float(asyn.residual) <= tol
  assert max_diff(sync.states, asyn.states) < 1e-12
  forces = relaxation.force_autodiff(spec, params, x, sync.states, None, None, None)
  sigma = activations.get(spec.activation)
  assert max_diff(sync.states, [sigma(f) for f in forces]) < 1e-12
  plain = relaxation.relax(plain_spec, params, x, zeros, max_steps=steps, tol=tol)
  assert max_diff(sync.states, plain.states) > 1e-3


def implicit_problem(spec, params, x, targets, *, steps, tol):
  """The free fixed point of `x` (asserted converged to `tol`) and the implicit gradient there
  (asserted solved), `(free RelaxResult, implicit grads)`."""
  from ep_jax import network, reference_grads, relaxation
  free = relaxation.relax(spec, params, x, network.init_states(spec, x.shape[0], jnp.float64),
                          max_steps=steps, tol=tol)
  assert float(free.residual) <= tol
  implicit = reference_grads.implicit_gradient(spec, params, x, targets, free.states)
  assert float(implicit.residual) <= 1e-11
  return free, implicit.grads


def cosines(a, b):
  """Cosine similarity per leaf (list of floats)."""
  return [float(jnp.vdot(u.ravel(), v.ravel()) / (jnp.linalg.norm(u) * jnp.linalg.norm(v)))
          for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.fixture
def rng():
  return np.random.default_rng(0)
