"""Equilibrium Propagation gradient estimators.

With `f(β) = ∂_θ Φ^β(s^β)` (a parameter pytree; `s^β` the fixed point under Φ^β reached from
the free fixed point `s^0`), the EP theorem says `-f'(0) = ∂_θ ℒ(s^0)`. The estimators:

  one-sided    -(f(β) - f(0)) / β                     bias O(β)
  random-sign  one-sided with β's sign drawn per batch bias O(β), unbiased in sign
  symmetric    -(f(β) - f(-β)) / (2β)                 bias O(β²)
  holomorphic  -(1/K) Σ_k Re[f(β_k) / β_k],  β_k = |β| e^{2πik/K}   bias O(|β|^K)

and, as the baseline EP is measured against, 'bptt': not EP but the exact gradient of
`mean ℒ(s_T)` by backpropagation through the T1 unrolled free-phase updates (no nudged phase;
β unused). Training the same CRNN with it separates what EP's estimate costs from what the
recurrent network itself can learn.

`∂_θΦ` is local: the update of layer l's weights is a contrast of `s_l` and `s_{l-1}` between
phases (for a conv layer, `s_{l-1} ⋆ P^T(s_l)` with P's argmax routing; for a dense layer
`s_{l-1} s_l^T`). We obtain it with `jax.grad` of Φ w.r.t. the parameters at fixed states, which
computes exactly those outer products. Gradients are divided by the batch size: they estimate
the gradient of the *mean* loss over the batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from ep_jax import activations
from ep_jax.energy import CostFn, example_losses, logits, nudged_primitive, output_cost
from ep_jax.network import NetworkSpec, init_states
from ep_jax import relaxation
from ep_jax.relaxation import MODES, RelaxResult, relax

ESTIMATORS = ('one_sided', 'random_sign', 'symmetric', 'holomorphic', 'bptt')


@dataclasses.dataclass(frozen=True)
class EPConfig:
  """Static EP hyperparameters (hashable; jit treats it as static).

  Attributes:
    estimator: one of ESTIMATORS.
    beta: nudging strength |β| > 0.
    free_steps: T1, the free phase's step limit.
    nudged_steps: T2, each nudged phase's step limit.
    tol: residual tolerance of the relaxation (<= 0: fixed step counts).
    mode: 'sync' or 'async'.
    holo_points: K, the number of points of the holomorphic estimator.
    compute_dtype: None, or a dtype name such as 'bfloat16': mixed-precision relaxations (the
      convolutions round their operands to it, states and gradients stay in full precision).
    damping: γ in (0, 1] of the relaxations' `s <- (1 - γ) s + γ σ(force)` (1: undamped).
  """
  estimator: str = 'symmetric'
  beta: float = 0.5
  free_steps: int = 250
  nudged_steps: int = 25
  tol: float = 0.0
  mode: str = 'sync'
  holo_points: int = 4
  compute_dtype: Optional[str] = None
  damping: float = 1.0

  def __post_init__(self):
    validate(self.estimator, self.beta, self.mode, self.holo_points)
    relaxation.check_damping(self.damping)
    if self.compute_dtype is not None:
      try:
        dtype = jnp.dtype(self.compute_dtype)
      except TypeError as e:
        raise ValueError(f'unknown compute_dtype {self.compute_dtype!r}') from e
      if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f'compute_dtype must be a floating dtype, got {self.compute_dtype!r}')
    if self.free_steps < 1 or self.nudged_steps < 1:
      raise ValueError(f'free_steps and nudged_steps must be >= 1, got {self.free_steps}, '
                       f'{self.nudged_steps}')


class EPOutput(NamedTuple):
  """What one EP estimate returns.

  grads: pytree like `params`, the estimate of `∂_θ mean_batch ℒ`.
  logits: `(B, num_classes)` free-phase readout. losses: `(B,)` output loss ℓ at `s^0`.
  free: the free phase's `RelaxResult`. nudged: one `RelaxResult` per nudged phase.
  """
  grads: dict
  logits: jax.Array
  losses: jax.Array
  free: RelaxResult
  nudged: tuple


def describe(ep: EPConfig) -> str:
  """One line for logs: 'symmetric EP beta=0.5 T1=60 T2=20' or 'BPTT through T1=60 steps'."""
  if ep.estimator == 'bptt':
    return f'BPTT through T1={ep.free_steps} steps'
  return f'{ep.estimator} EP beta={ep.beta} T1={ep.free_steps} T2={ep.nudged_steps}'


def validate(estimator: str, beta, mode: str = 'sync', holo_points: int = 4) -> None:
  """Raises ValueError for an unknown estimator or mode, or a concrete β <= 0."""
  if estimator not in ESTIMATORS:
    raise ValueError(f'unknown estimator {estimator!r}; known: {ESTIMATORS}')
  if mode not in MODES:
    raise ValueError(f'unknown relaxation mode {mode!r}; known: {MODES}')
  if estimator == 'holomorphic' and holo_points < 2:
    raise ValueError(f'the holomorphic estimator needs holo_points >= 2, got {holo_points}')
  try:
    value = float(beta)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return  # traced β: checked by the caller's own values
  if not math.isfinite(value) or value <= 0.0:
    raise ValueError(f'beta must be a finite number > 0 for the {estimator} estimator (the '
                     f'sign is chosen by the estimator), got {value}')


def holomorphic_unsupported(spec: NetworkSpec) -> Optional[str]:
  """Why holomorphic EP cannot run on `spec` (its activation or max pooling), or None."""
  reasons = []
  if spec.activation not in activations.HOLOMORPHIC:
    reasons.append(f'a holomorphic activation ({sorted(activations.HOLOMORPHIC)}), not '
                   f'{spec.activation!r}')
  if any(layer.pool == 'max' for layer in spec.conv):
    reasons.append(f"average pooling ('A'), not max pooling ('M') as in layout {spec.layout!r}")
  return 'holomorphic EP needs ' + ' and '.join(reasons) if reasons else None


def _check_holomorphic(spec: NetworkSpec) -> None:
  reason = holomorphic_unsupported(spec)
  if reason:
    raise ValueError(reason)


def _complex_dtype(dtype) -> jnp.dtype:
  return jnp.complex128 if jnp.dtype(dtype) == jnp.float64 else jnp.complex64


def ep_gradient(spec: NetworkSpec, params: dict, x: jax.Array,
                targets: Union[Mapping, jax.Array], *, beta,
                estimator: str = 'symmetric', free_steps=250, nudged_steps=25, tol=0.0,
                mode: str = 'sync', holo_points: int = 4, cost_fn: Optional[CostFn] = None,
                rng: Optional[jax.Array] = None, state_dtype=None,
                compute_dtype=None, damping=1.0) -> EPOutput:
  """Runs the free phase and the estimator's nudged phases; returns the EP gradient estimate.

  Under `jit` the spec (and estimator, mode, holo_points, cost_fn and the dtypes) must be
  static: use `jitted_ep_gradient`, or `jax.jit(ep_gradient, static_argnames=('spec', ...))`.

  Args:
    spec: the network. params: its parameters (plus any trainable signal heads that `cost_fn`
      uses). x: inputs `(B, H, W, C)`. targets: the integer labels `(B,)`, or a dict the cost
      reads with at least `'label'` (a plain array `y` is taken as `{'label': y}`).
    beta: |β| > 0, a Python float or a (traced) scalar, so `vmap` over β works.
    estimator: 'one_sided', 'random_sign', 'symmetric', 'holomorphic', or 'bptt' (exact
      gradient through exactly `free_steps` unrolled free steps, static; tol, β, T2 unused;
      `nudged` is then empty).
    free_steps, nudged_steps: T1, T2 (step limits; may be traced). tol: residual tolerance.
    mode: 'sync' or 'async'. holo_points: K for the holomorphic estimator.
    cost_fn: the nudging cost ℒ (default: the output loss). rng: needed by 'random_sign'.
    state_dtype: dtype of the states (default: the parameters' dtype).
    compute_dtype: operand dtype of the relaxations' convolutions and matmuls (mixed
      precision, e.g. `jnp.bfloat16`); the states, the contrast `∂_θΦ` and the gradient stay
      in `state_dtype`. None: everything in `state_dtype`.
    damping: γ in (0, 1] of `s <- (1 - γ) s + γ σ(force)` in every phase (1: undamped).
  """
  validate(estimator, beta, mode, holo_points)
  if not isinstance(targets, Mapping):
    targets = {'label': targets}
  cost_fn = output_cost(spec) if cost_fn is None else cost_fn
  batch = x.shape[0]
  dtype = state_dtype or jax.tree_util.tree_leaves(params)[0].dtype
  if estimator == 'bptt':
    return _bptt(spec, params, x, targets, cost_fn, free_steps, mode, dtype, compute_dtype,
                 damping)
  free = relax(spec, params, x, init_states(spec, batch, dtype), max_steps=free_steps, tol=tol,
               mode=mode, compute_dtype=compute_dtype, damping=damping)
  s0 = jax.tree_util.tree_map(jax.lax.stop_gradient, free.states)

  def nudge(b, start):
    result = relax(spec, params, x, start, targets=targets, beta=b, cost_fn=cost_fn,
                   max_steps=nudged_steps, tol=tol, mode=mode, compute_dtype=compute_dtype,
                   damping=damping)
    return result._replace(states=jax.tree_util.tree_map(jax.lax.stop_gradient, result.states))

  def phi(p, states, b):
    return nudged_primitive(spec, p, x, states, targets, b, cost_fn)

  if estimator in ('one_sided', 'random_sign'):
    b = beta
    if estimator == 'random_sign':
      if rng is None:
        raise ValueError("the 'random_sign' estimator needs an rng key")
      b = beta * jax.random.rademacher(rng, (), jnp.float32).astype(jnp.real(s0[0]).dtype)
    plus = nudge(b, s0)
    contrast = lambda p: (phi(p, plus.states, b) - phi(p, s0, None)) / b
    nudged = (plus,)
  elif estimator == 'symmetric':
    plus, minus = nudge(beta, s0), nudge(-beta, s0)
    contrast = lambda p: (phi(p, plus.states, beta) - phi(p, minus.states, -beta)) / (2 * beta)
    nudged = (plus, minus)
  else:
    _check_holomorphic(spec)
    cdtype = _complex_dtype(jnp.real(s0[0]).dtype)
    start = tuple(s.astype(cdtype) for s in s0)
    betas = [beta * complex(math.cos(2 * math.pi * k / holo_points),
                            math.sin(2 * math.pi * k / holo_points))
             for k in range(holo_points)]
    nudged = tuple(nudge(b, start) for b in betas)
    contrast = lambda p: sum(jnp.real(phi(p, r.states, b) / b)
                             for r, b in zip(nudged, betas)) / holo_points

  grads = jax.grad(contrast)(params)
  grads = jax.tree_util.tree_map(lambda g: -g / batch, grads)
  z = logits(spec, params, s0)
  losses = example_losses(spec, params, s0, targets['label'])
  return EPOutput(grads, z, losses, free, nudged)


# `ep_gradient` under `jax.jit`, with the network and every argument that sets the structure of
# the computation static: spec, estimator, mode, holo_points, cost_fn, the dtypes, damping and
# the step counts (BPTT unrolls exactly `free_steps` steps). beta, tol, params, x, targets and
# rng are traced, so a new β does not recompile. Call it with keywords after the first four
# positional arguments, as `ep_gradient`.
jitted_ep_gradient = jax.jit(
    ep_gradient, static_argnames=('spec', 'estimator', 'free_steps', 'nudged_steps', 'mode',
                                  'holo_points', 'cost_fn', 'state_dtype', 'compute_dtype',
                                  'damping'))


def _bptt(spec, params, x, targets, cost_fn, steps, mode, dtype, compute_dtype, damping):
  """`∂_θ mean ℒ(s_T)` through `steps` unrolled free-phase updates from zero states."""
  batch = x.shape[0]

  def loss(p):
    free = relaxation.relax_fixed(spec, p, x, init_states(spec, batch, dtype), steps=steps,
                                  mode=mode, compute_dtype=compute_dtype, damping=damping)
    return cost_fn(p, free.states, targets) / batch, free

  grads, free = jax.grad(loss, has_aux=True)(params)
  free = free._replace(states=jax.tree_util.tree_map(jax.lax.stop_gradient, free.states))
  z = logits(spec, params, free.states)
  losses = example_losses(spec, params, free.states, targets['label'])
  return EPOutput(grads, z, losses, free, ())
