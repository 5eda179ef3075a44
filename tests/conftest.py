"""Shared fixtures: small random CRNNs and gradient comparison helpers."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


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
