"""The activation family σ of the fixed-point dynamics `s <- σ(∂Φ/∂s)`.

`hard_sigmoid` (default) is the reference's `my_hard_sig`: `clip(u/2, 0, 1)`. It and
`hard_sigmoid_unit` (`clip(u, 0, 1)`) are piecewise linear and real-only. `smooth_sigmoid`,
`sigmoid(4(u - 1/2))`, is holomorphic (it has a complex extension) and is the choice for
holomorphic EP and for tests of the estimators' bias orders. `relu`, `max(u, 0)`, is
unbounded: it is there for feed-forward reference networks (`config.teacher.activation`); a
CRNN with it has a fixed point only while its feedback contracts.
"""

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = [
    'ACTIVATIONS', 'HOLOMORPHIC', 'UNBOUNDED', 'get', 'hard_sigmoid', 'hard_sigmoid_unit', 'relu',
    'smooth_sigmoid',
]


def hard_sigmoid(u: jax.Array) -> jax.Array:
  """`clip(u / 2, 0, 1)`: the reference CRNN's activation."""
  return jnp.clip(0.5 * u, 0.0, 1.0)


def hard_sigmoid_unit(u: jax.Array) -> jax.Array:
  """`clip(u, 0, 1)`."""
  return jnp.clip(u, 0.0, 1.0)


def smooth_sigmoid(u: jax.Array) -> jax.Array:
  """`1 / (1 + exp(-4 (u - 1/2)))`: holomorphic, slope 1 at u = 1/2."""
  return 1.0 / (1.0 + jnp.exp(-4.0 * (u - 0.5)))


def relu(u: jax.Array) -> jax.Array:
  """`max(u, 0)`: unbounded; for feed-forward reference networks."""
  return jnp.maximum(u, 0.0)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'hard_sigmoid': hard_sigmoid,
    'hard_sigmoid_unit': hard_sigmoid_unit,
    'smooth_sigmoid': smooth_sigmoid,
    'relu': relu,
}

HOLOMORPHIC = frozenset({'smooth_sigmoid'})
UNBOUNDED = frozenset({'relu'})  # no upper bound on a unit's state


def get(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation called `name`; a clear ValueError for unknown names."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f'unknown activation {name!r}; known: {sorted(ACTIVATIONS)}') from None
