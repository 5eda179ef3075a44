"""Relaxation to a fixed point: `s <- σ(∂Φ^β/∂s)`.

The force `∂Φ^β/∂s` is computed from the energy by `jax.grad` (holomorphic derivative for
complex states). Because Φ is linear in each `s_l`, the force on layer l depends only on its
neighbours `s_{l-1}`, `s_{l+1}` (and, through max pooling's argmax, on which unit of `s_l`'s
pool window wins), plus `-β ∂ℒ/∂s_l` where the nudging cost touches layer l.

Two schedules:
  * 'sync': all layers update at once from the previous states;
  * 'async': layers with even index (0, 2, 4, ... counted from the bottom, 0-based) update
    first, then the odd ones from the newest even states.
Both have the same fixed points.

`relax` runs a `lax.while_loop` that stops when the largest absolute state change falls to
`tol` or below, at `max_steps`, or when the residual stops being finite (divergence); it
returns the steps used and the final residual. `tol <= 0` means exactly `max_steps` steps.
`relax_fixed` is a `lax.scan` over a static number of steps, differentiable (used by BPTT).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from ep_jax import activations
from ep_jax.energy import CostFn, nudged_primitive
from ep_jax.network import NetworkSpec

MODES = ('sync', 'async')


class RelaxResult(NamedTuple):
  """States at the end of a relaxation, the steps taken and the final residual.

  `residual` is `max_l max |s_l^t - s_l^{t-1}|` of the last step (inf if no step ran, NaN or
  inf if the dynamics diverged).
  """
  states: tuple
  steps: jax.Array
  residual: jax.Array


def force(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple, targets: dict, beta,
          cost_fn: Optional[CostFn], layers: Optional[tuple[int, ...]] = None) -> tuple:
  """`∂Φ^β/∂s_l` for the layers in `layers` (all by default), each shaped like `s_l`."""
  layers = tuple(range(len(states))) if layers is None else layers
  holomorphic = jnp.iscomplexobj(states[0])

  def energy(selected):
    full = list(states)
    for l, s in zip(layers, selected):
      full[l] = s
    return nudged_primitive(spec, params, x, tuple(full), targets, beta, cost_fn)

  return jax.grad(energy, holomorphic=holomorphic)(tuple(states[l] for l in layers))


def step(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple, targets: dict, beta,
         cost_fn: Optional[CostFn], mode: str = 'sync') -> tuple:
  """One update of the dynamics, synchronous or asynchronous (even layers, then odd)."""
  sigma = activations.get(spec.activation)
  if mode == 'sync':
    return tuple(sigma(f) for f in force(spec, params, x, states, targets, beta, cost_fn))
  if mode != 'async':
    raise ValueError(f'unknown relaxation mode {mode!r}; known: {MODES}')
  new = list(states)
  for parity in (0, 1):
    layers = tuple(range(parity, len(states), 2))
    if not layers:
      continue
    forces = force(spec, params, x, tuple(new), targets, beta, cost_fn, layers)
    for l, f in zip(layers, forces):
      new[l] = sigma(f)
  return tuple(new)


def max_change(new: tuple, old: tuple) -> jax.Array:
  """`max_l max |new_l - old_l|` as a real scalar."""
  return jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in zip(new, old)]))


def relax(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple, *, targets=None,
          beta=None, cost_fn: Optional[CostFn] = None, max_steps=100, tol=0.0,
          mode: str = 'sync') -> RelaxResult:
  """Iterates the dynamics from `states` until the residual is `<= tol` or `max_steps`.

  Args:
    spec, params, x: the network, its parameters and the input `(B, H, W, C)`.
    states: initial states (zeros for a free phase, the free fixed point for nudged phases).
    targets, beta, cost_fn: the nudge `-β ℒ(params, s, targets)`; `beta=None` is free.
    max_steps: step limit (may be traced). tol: residual tolerance; `<= 0` disables it.
    mode: 'sync' or 'async'.
  Returns:
    a `RelaxResult`. The loop also stops as soon as the residual is not finite.
  """
  if mode not in MODES:
    raise ValueError(f'unknown relaxation mode {mode!r}; known: {MODES}')
  real_dtype = jnp.real(states[0]).dtype
  tol = jnp.asarray(tol, real_dtype)

  def cond(carry):
    steps, _, residual = carry
    keep_going = (steps < max_steps) & jnp.isfinite(residual)
    return keep_going & ((residual > tol) | (tol <= 0))

  def body(carry):
    steps, s, _ = carry
    new = step(spec, params, x, s, targets, beta, cost_fn, mode)
    return steps + 1, new, max_change(new, s).astype(real_dtype)

  # The first residual is a large finite number so that the loop starts.
  init = (jnp.zeros((), jnp.int32), tuple(states), jnp.asarray(jnp.finfo(real_dtype).max,
                                                                 real_dtype))
  steps, final, residual = lax.while_loop(cond, body, init)
  residual = jnp.where(steps == 0, jnp.inf, residual)
  return RelaxResult(final, steps, residual)


def relax_fixed(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple, *, steps: int,
                targets=None, beta=None, cost_fn: Optional[CostFn] = None,
                mode: str = 'sync') -> RelaxResult:
  """Exactly `steps` (static) updates with `lax.scan`; differentiable w.r.t. params and x."""

  def body(s, _):
    new = step(spec, params, x, s, targets, beta, cost_fn, mode)
    return new, max_change(new, s)

  final, residuals = lax.scan(body, tuple(states), None, length=steps)
  residual = residuals[-1] if steps > 0 else jnp.asarray(jnp.inf)
  return RelaxResult(final, jnp.asarray(steps, jnp.int32), residual)
