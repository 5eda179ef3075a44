"""κ schedules: the magnitude of the layer-wise learning signals over epochs (METHOD.md §3).

Each schedule is an optax-style function `epoch -> κ` (jnp ops only, so the epoch may be a
traced integer inside the jitted train step). `κ_init` may be a scalar or an `(N,)` vector
(one value per layer); the result broadcasts like it. With `E` the epoch and `E_total` the
number of epochs (the paper's Eq. 14):

    constant   κ(E) = κ_init
    linear     κ(E) = -κ_init · E / E_total + κ_init
    exp        κ(E) = κ_init · exp(-γ E)
    cos        κ(E) = κ_min + ½ (κ_init - κ_min)(1 + cos(π E / E_total))

`linear` and `cos` hold their final value past `E_total` (E is clipped to [0, E_total], as
optax's decay schedules do), so κ never turns negative.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    'SCHEDULES', 'Schedule', 'constant', 'cosine', 'exponential', 'layer_init', 'linear',
    'make_layer_schedule', 'make_schedule',
]

SCHEDULES = ('constant', 'linear', 'exp', 'cos')
_ALIASES = {'exponential': 'exp', 'cosine': 'cos', 'const': 'constant'}

# epoch (int or traced scalar) -> κ (scalar, or (N,) for a per-layer κ_init)
Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


def _float(x) -> jax.Array:
  """`x` as the default float dtype (float64 under `jax.enable_x64`)."""
  return jnp.asarray(x, dtype=jnp.result_type(float))


def _check_init(kappa_init) -> None:
  values = np.asarray(kappa_init, dtype=np.float64)
  if not np.all(np.isfinite(values)) or np.any(values < 0):
    raise ValueError(f'kappa init values must be finite and >= 0, got {kappa_init}')


def _check_total(total_epochs) -> None:
  if int(total_epochs) < 1:
    raise ValueError(f'total_epochs must be >= 1, got {total_epochs}')


def constant(kappa_init: jax.typing.ArrayLike) -> Schedule:
  """κ(E) = κ_init."""
  _check_init(kappa_init)

  def schedule(epoch):
    del epoch
    return _float(kappa_init)

  return schedule


def linear(kappa_init: jax.typing.ArrayLike, total_epochs: int) -> Schedule:
  """κ(E) = -κ_init · E / E_total + κ_init, E clipped to [0, E_total] (0 at E_total)."""
  _check_init(kappa_init)
  _check_total(total_epochs)

  def schedule(epoch):
    # κ_init (E_total - E) / E_total: the same value, exactly 0 from E_total on (the form
    # -κ_init E / E_total + κ_init rounds to -7e-9 there in float32 under jit).
    e = jnp.clip(_float(epoch), 0.0, float(total_epochs))
    return _float(kappa_init) * ((float(total_epochs) - e) / float(total_epochs))

  return schedule


def exponential(kappa_init: jax.typing.ArrayLike, gamma: float) -> Schedule:
  """κ(E) = κ_init · exp(-γ E)."""
  _check_init(kappa_init)
  if not math.isfinite(gamma) or gamma < 0:
    raise ValueError(f'kappa gamma must be finite and >= 0, got {gamma}')

  def schedule(epoch):
    return _float(kappa_init) * jnp.exp(-float(gamma) * _float(epoch))

  return schedule


def cosine(kappa_init: jax.typing.ArrayLike, total_epochs: int, kappa_min: float = 0.0) -> Schedule:
  """κ(E) = κ_min + ½ (κ_init - κ_min)(1 + cos(π E / E_total)), E clipped to [0, E_total]."""
  _check_init(kappa_init)
  _check_total(total_epochs)
  _check_init(kappa_min)

  def schedule(epoch):
    e = jnp.clip(_float(epoch), 0.0, float(total_epochs))
    init = _float(kappa_init)
    return kappa_min + 0.5 * (init - kappa_min) * (1.0 + jnp.cos(jnp.pi * e / total_epochs))

  return schedule


def make_schedule(name: str, kappa_init: jax.typing.ArrayLike, *, total_epochs: int,
                  kappa_min: float = 0.0, gamma: float = 0.1) -> Schedule:
  """The schedule called `name` (one of SCHEDULES; 'exponential'/'cosine' accepted)."""
  key = _ALIASES.get(str(name).lower(), str(name).lower())
  if key == 'constant':
    return constant(kappa_init)
  if key == 'linear':
    return linear(kappa_init, total_epochs)
  if key == 'exp':
    return exponential(kappa_init, gamma)
  if key == 'cos':
    return cosine(kappa_init, total_epochs, kappa_min)
  raise ValueError(f'unknown kappa schedule {name!r}; known: {SCHEDULES}')


def layer_init(num_layers: int, layers: Sequence[int], kappa_init: float,
               per_layer: Sequence[float] = ()) -> np.ndarray:
  """The `(N,)` vector of κ_init: the global value (or `per_layer`) on `layers`, 0 elsewhere.

  `per_layer` holds either one value per selected layer (in the sorted order of `layers`) or
  one per layer of the network (`N` values; entries off `layers` are ignored).
  """
  layers = sorted(set(int(l) for l in layers))
  values = np.zeros((num_layers,), np.float64)
  per_layer = tuple(float(v) for v in per_layer)
  if not per_layer:
    values[layers] = float(kappa_init)
  elif len(per_layer) == len(layers):
    values[layers] = per_layer
  elif len(per_layer) == num_layers:
    values[layers] = np.asarray(per_layer)[layers]
  else:
    raise ValueError(f'kappa per_layer has {len(per_layer)} values; expected one per signal '
                     f'layer ({len(layers)}: {layers}) or one per network layer ({num_layers})')
  _check_init(values)
  return values


def make_layer_schedule(name: str, kappa_init: float, *, num_layers: int,
                        layers: Sequence[int], total_epochs: int, kappa_min: float = 0.0,
                        gamma: float = 0.1, per_layer: Sequence[float] = ()) -> Schedule:
  """`epoch -> (N,)` κ per layer, exactly 0 off `layers`: the schedule `name` from the
  κ_init vector `layer_init(num_layers, layers, kappa_init, per_layer)`."""
  init = layer_init(num_layers, layers, kappa_init, per_layer)
  mask = np.zeros((num_layers,), np.float64)
  mask[sorted(set(int(l) for l in layers))] = 1.0
  base = make_schedule(name, init, total_epochs=total_epochs, kappa_min=float(kappa_min),
                       gamma=float(gamma))

  def schedule(epoch):
    return base(epoch) * _float(mask)

  return schedule
