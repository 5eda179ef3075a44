"""Type aliases of the public signatures (`jax.typing` has the array and dtype ones)."""

from typing import Any

# A pytree of arrays: parameters, states, gradients, optimiser state (nested dicts, tuples and
# lists with `jax.Array` leaves).
PyTree = Any
