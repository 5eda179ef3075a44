"""Equilibrium Propagation gradient estimators as β stencils.

With `f(β) = ∂_θ Φ^β(s^β)` (a parameter pytree; `s^β` the fixed point under Φ^β reached from
the free fixed point `s^0`), the EP theorem says `-f'(0) = ∂_θ ℒ(s^0)`. An EP estimator is a
finite-difference stencil for that derivative: nudging points β_k (real or complex) and weights
w_k, and the estimate

    g = -Re Σ_k w_k (f(β_k) - f(0)),

which is `-f'(0) + O(|β|^p)` when `Σ_k w_k β_k = 1` and `Σ_k w_k β_k^m = 0` for m = 2..p.
`STENCILS` maps each estimator's name to `(beta, holo_points) -> (betas, weights)`:

  one_sided    β_k: (β,)              w_k: (1/β,)                          bias O(β)
  random_sign  one_sided at sβ, with the sign s = ±1 drawn per batch         bias O(β), unbiased
               in sign
  symmetric    (β, -β)                (1/(2β), -1/(2β))                     bias O(β²)
  holomorphic  β e^{2πik/K}, k < K    1/(K β_k)                             bias O(|β|^K)

The free term `f(0)` enters with weight `-Σ_k w_k`; it is computed only for stencils whose
weights do not sum to zero (one_sided: `-(f(β) - f(0))/β`; symmetric and holomorphic do not
need it). A stencil with complex points relaxes complex states (holomorphic EP: it needs a
holomorphic activation and average pooling). All nudged phases of a stencil start from `s^0`
and run one after the other, each to its own stop (or as one relaxation vmapped over the points,
`nudged_phases='vmapped'`: the same phases). To add an estimator, add an entry,
e.g. the 4-point central difference (bias O(β⁴)):

    STENCILS['central4'] = lambda beta, holo_points: (
        (beta, -beta, 2 * beta, -2 * beta),
        (2 / (3 * beta), -2 / (3 * beta), -1 / (12 * beta), 1 / (12 * beta)))

A stencil function must work for a Python float and for a traced scalar β (build the points
with arithmetic on β, not with `float(beta)`); its structure (the number of points, whether
they are complex, whether the weights sum to zero) must not depend on β's value.

'bptt' is not a stencil and not EP: the exact gradient of `mean ℒ(s_T)` by backpropagation
through the T1 unrolled free-phase updates (no nudged phase; β unused), the baseline EP is
measured against. Training the same CRNN with it separates what EP's estimate costs from what
the recurrent network itself can learn.

`∂_θΦ` is local: the update of layer l's weights is a contrast of `s_l` and `s_{l-1}` between
phases (for a conv layer, `s_{l-1} ⋆ P^T(s_l)` with P's argmax routing; for a dense layer
`s_{l-1} s_l^T`). We obtain it with `jax.grad` of Φ w.r.t. the parameters at fixed states, which
computes exactly those outer products. Gradients are divided by the batch size: they estimate
the gradient of the *mean* loss over the batch.

β and the tolerance are values, not structure: `ep_gradient` takes them as Python floats or
traced scalars, so one compiled function serves every β (`jitted_ep_gradient`,
`train_step.make_train_step(...)(state, batch, EPHyper(beta, tol))`) and `jax.vmap` over β
gives a β sweep in one program.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ep_jax import activations
from ep_jax import energy
from ep_jax.energy import CostFn, Targets, example_losses, logits, nudged_primitive, output_cost
from ep_jax.network import NetworkSpec, check_input, init_states
from ep_jax import relaxation
from ep_jax.relaxation import MODES, RelaxResult, relax

__all__ = [
    'EPConfig', 'EPOutput', 'ESTIMATORS', 'NUDGED_PHASES', 'STENCILS', 'StencilShape',
    'check_nudged_phases', 'describe', 'ep_gradient', 'holomorphic', 'holomorphic_unsupported',
    'jitted_ep_gradient', 'nudged_relaxations', 'one_sided', 'state_derivative', 'stencil_points',
    'stencil_shape', 'symmetric', 'validate',
]


def one_sided(beta: jax.typing.ArrayLike, holo_points: int = 4) -> tuple:
  """β_k = (β,), w_k = (1/β,): `-(f(β) - f(0)) / β`."""
  del holo_points
  return (beta,), (1 / beta,)


def symmetric(beta: jax.typing.ArrayLike, holo_points: int = 4) -> tuple:
  """β_k = (β, -β), w_k = (1/(2β), -1/(2β)): `-(f(β) - f(-β)) / (2β)`."""
  del holo_points
  return (beta, -beta), (1 / (2 * beta), -1 / (2 * beta))


def holomorphic(beta: jax.typing.ArrayLike, holo_points: int = 4) -> tuple:
  """β_k = β e^{2πik/K}, w_k = 1/(K β_k), k < K: `-(1/K) Σ_k Re[f(β_k) / β_k]`."""
  k = holo_points
  betas = tuple(beta * complex(math.cos(2 * math.pi * i / k), math.sin(2 * math.pi * i / k))
                for i in range(k))
  return betas, tuple(1 / (k * b) for b in betas)


# name -> (beta, holo_points) -> (betas, weights): the estimate is -Re Σ_k w_k (f(β_k) - f(0)).
# 'random_sign' is 'one_sided' at a β whose sign `ep_gradient` draws per call.
STENCILS = {'one_sided': one_sided, 'random_sign': one_sided, 'symmetric': symmetric,
            'holomorphic': holomorphic}
ESTIMATORS = tuple(STENCILS) + ('bptt',)  # the built-in ones; `validate` reads STENCILS


class StencilShape(NamedTuple):
  """What a stencil's structure fixes: its number of points, whether they are complex, and
  whether its weights sum to zero (then `f(0)` is not needed)."""
  points: int
  complex: bool
  balanced: bool


def stencil_shape(estimator: str, holo_points: int = 4) -> StencilShape:
  """The structure of `STENCILS[estimator]`, read off its points at β = 1."""
  with jax.ensure_compile_time_eval():
    betas, weights = STENCILS[estimator](1.0, holo_points)
    betas, weights = np.asarray(betas), np.asarray(weights)
  if betas.ndim != 1 or betas.shape != weights.shape or not betas.size:
    raise ValueError(f'stencil {estimator!r} must give equally many (>= 1) betas and weights, '
                     f'got shapes {betas.shape} and {weights.shape}')
  total = abs(np.sum(weights))
  return StencilShape(betas.size, bool(np.any(np.imag(betas) != 0)),
                      bool(total <= 1e-9 * np.sum(np.abs(weights))))


def stencil_points(estimator: str, beta: jax.typing.ArrayLike, holo_points: int = 4,
                   dtype: jax.typing.DTypeLike = jnp.float32) -> tuple:
  """`(betas (P,), weights (P,))` of `STENCILS[estimator]` at |β| = beta, as arrays of `dtype`
  (real stencils) or of its complex counterpart (complex ones)."""
  shape = stencil_shape(estimator, holo_points)
  dtype = _complex_dtype(dtype) if shape.complex else jnp.dtype(dtype)
  betas, weights = STENCILS[estimator](beta, holo_points)
  return (jnp.stack([jnp.asarray(b).astype(dtype) for b in betas]),
          jnp.stack([jnp.asarray(w).astype(dtype) for w in weights]))


@dataclasses.dataclass(frozen=True)
class EPConfig:
  """Static EP hyperparameters (hashable; jit treats it as static).

  Attributes:
    estimator: a name in STENCILS, or 'bptt'.
    beta: nudging strength |β| > 0.
    free_steps: T1, the free phase's step limit.
    nudged_steps: T2, each nudged phase's step limit.
    tol: residual tolerance of the relaxation (<= 0: fixed step counts).
    mode: 'sync' or 'async'.
    holo_points: K, the number of points of the holomorphic estimator.
    compute_dtype: None, or a dtype name such as 'bfloat16': mixed-precision relaxations (the
      convolutions round their operands to it, states and gradients stay in full precision).
    damping: γ in (0, 1] of the relaxations' `s <- (1 - γ) s + γ σ(force)` (1: undamped).
    nudged_phases: 'sequential' (the stencil's nudged phases one after the other) or
      'vmapped' (one relaxation vmapped over the stencil's points); the same estimate.
    solver: how every phase iterates the sweep to its fixed point (`relaxation.Solver`;
      None: plain iteration).
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
  nudged_phases: str = 'sequential'
  solver: Optional[relaxation.Solver] = None

  def __post_init__(self):
    validate(self.estimator, self.beta, self.mode, self.holo_points)
    relaxation.check_damping(self.damping)
    check_nudged_phases(self.nudged_phases)
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
  free: the free phase's `RelaxResult`. nudged: one `RelaxResult` per nudged phase, in the
  order of the stencil's points β_k (each with its own step count and residual).
  betas, weights: the stencil's points and weights `(P,)` (with the drawn sign for
  'random_sign'); None for BPTT.
  """
  grads: dict
  logits: jax.Array
  losses: jax.Array
  free: RelaxResult
  nudged: tuple
  betas: Optional[jax.Array] = None
  weights: Optional[jax.Array] = None


def describe(ep: EPConfig) -> str:
  """One line for logs: 'symmetric EP beta=0.5 T1=60 T2=20' or 'BPTT through T1=60 steps'."""
  if ep.estimator == 'bptt':
    return f'BPTT through T1={ep.free_steps} steps'
  text = f'{ep.estimator} EP beta={ep.beta} T1={ep.free_steps} T2={ep.nudged_steps}'
  if ep.solver is not None and ep.solver.kind != 'plain':
    text += f' {ep.solver.kind}(m={ep.solver.memory})'
  return text


# How a stencil's nudged phases run: one relaxation after the other, or one relaxation vmapped
# over the stencil's points (the same results; which is faster depends on the device).
NUDGED_PHASES = ('sequential', 'vmapped')


def check_nudged_phases(nudged_phases: str) -> None:
  if nudged_phases not in NUDGED_PHASES:
    raise ValueError(f'unknown nudged_phases {nudged_phases!r}; known: {NUDGED_PHASES}')


def validate(estimator: str, beta: jax.typing.ArrayLike, mode: str = 'sync',
             holo_points: int = 4) -> None:
  """Raises ValueError for an unknown estimator or mode, or a concrete β <= 0."""
  if estimator not in STENCILS and estimator != 'bptt':
    raise ValueError(f'unknown estimator {estimator!r}; known: {tuple(STENCILS) + ("bptt",)}')
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


def ep_gradient(spec: NetworkSpec, params: dict, x: jax.Array, targets: Targets, *,
                beta: jax.typing.ArrayLike, estimator: str = 'symmetric',
                free_steps: int = 250, nudged_steps: int = 25,
                tol: jax.typing.ArrayLike = 0.0, mode: str = 'sync', holo_points: int = 4,
                cost_fn: Optional[CostFn] = None, rng: Optional[jax.Array] = None,
                state_dtype: Optional[jax.typing.DTypeLike] = None,
                compute_dtype: Optional[jax.typing.DTypeLike] = None,
                damping: float = 1.0, nudged_phases: str = 'sequential',
                solver: Optional[relaxation.Solver] = None,
                free_start: Optional[tuple] = None) -> EPOutput:
  """Runs the free phase and the estimator's nudged phases; returns the EP gradient estimate.

  Under `jit` the spec (and estimator, mode, holo_points, cost_fn, the dtypes and the step
  counts) must be static: use `jitted_ep_gradient`, or
  `jax.jit(ep_gradient, static_argnames=('spec', 'estimator', 'free_steps', ...))`.

  Args:
    spec: the network. params: its parameters (plus any trainable signal heads that `cost_fn`
      uses). x: inputs `(B, H, W, C)`, `(H, W, C) = spec.input_shape`. targets: the integer
      labels `(B,)`, or a dict the cost reads with at least `'label'` (a plain array `y` is
      taken as `{'label': y}`).
    beta: |β| > 0, a Python float or a (traced) scalar, so `vmap` over β works.
    estimator: a name in `STENCILS` ('one_sided', 'random_sign', 'symmetric', 'holomorphic'
      or an added one), or 'bptt' (exact gradient through exactly `free_steps` unrolled free
      steps, static; tol, β, T2 unused; `nudged` is then empty).
    free_steps, nudged_steps: T1, T2, the step limits: Python ints, static under
      `jitted_ep_gradient` (a new count compiles anew; 'bptt' unrolls exactly `free_steps`).
      tol: residual tolerance (<= 0: exactly the step limits), a float or a traced scalar.
    mode: 'sync' or 'async'. holo_points: K for the holomorphic estimator.
    cost_fn: the nudging cost ℒ (default: the output loss). rng: needed by 'random_sign'.
    state_dtype: dtype of the states (default: the parameters' dtype).
    compute_dtype: operand dtype of the relaxations' convolutions and matmuls (mixed
      precision, e.g. `jnp.bfloat16`); the states, the contrast `∂_θΦ` and the gradient stay
      in `state_dtype`. None: everything in `state_dtype`.
    damping: γ in (0, 1] of `s <- (1 - γ) s + γ σ(force)` in every phase (1: undamped).
    nudged_phases: 'sequential' runs the stencil's nudged phases one after the other;
      'vmapped' runs them as one relaxation vmapped over the points β_k (each still stops at
      its own residual: a finished phase is held while the others go on). Both give the same
      phases and estimate; on a 2-core CPU 'sequential' was 10-25% faster (docs/BENCHMARKS.md).
    solver: how every phase iterates the sweep (`relaxation.Solver`; None: plain iteration).
    free_start: the free phase's initial states, one `(B, *state_shape)` per layer (a warm
      start, e.g. each example's last free fixed point); None: zeros. The estimate is taken
      at whichever fixed point the free phase reaches from there.
  Raises:
    ValueError: an unknown estimator, mode or nudged_phases, a concrete β <= 0, inputs not
      `(B, *spec.input_shape)` or labels not integers `(B,)` (static checks, free under `jit`).
  """
  validate(estimator, beta, mode, holo_points)
  check_nudged_phases(nudged_phases)
  batch = check_input(spec, x)
  targets = energy.as_targets(targets)
  energy.check_labels(targets, batch)
  cost_fn = output_cost(spec) if cost_fn is None else cost_fn
  dtype = state_dtype or jax.tree_util.tree_leaves(params)[0].dtype
  if estimator == 'bptt':
    return _bptt(spec, params, x, targets, cost_fn, free_steps, mode, dtype, compute_dtype,
                 damping)
  shape = stencil_shape(estimator, holo_points)
  if shape.complex:
    _check_holomorphic(spec)
  if estimator == 'random_sign' and rng is None:
    raise ValueError("the 'random_sign' estimator needs an rng key")
  start = (init_states(spec, batch, dtype) if free_start is None
           else tuple(jnp.asarray(s, dtype) for s in free_start))
  free = relax(spec, params, x, start, max_steps=free_steps, tol=tol,
               mode=mode, compute_dtype=compute_dtype, damping=damping, solver=solver)
  s0 = jax.tree_util.tree_map(jax.lax.stop_gradient, free.states)
  real_dtype = jnp.real(s0[0]).dtype
  if estimator == 'random_sign':
    beta = beta * jax.random.rademacher(rng, (), jnp.float32).astype(real_dtype)
  betas, weights = stencil_points(estimator, beta, holo_points, real_dtype)
  phases = nudged_relaxations(spec, params, x, s0, targets, betas, cost_fn,
                              nudged_steps=nudged_steps, tol=tol, mode=mode,
                              compute_dtype=compute_dtype, damping=damping,
                              nudged_phases=nudged_phases, solver=solver)

  def phi(p, states, b):
    return nudged_primitive(spec, p, x, states, targets, b, cost_fn)

  def contrast(p):
    """Re Σ_k w_k (Φ^{β_k}(s^{β_k}) - Φ(s^0)): its θ-gradient is -(the estimate)."""
    terms = jnp.stack([phi(p, phase.states, betas[k]) for k, phase in enumerate(phases)])
    total = jnp.sum(jnp.real(weights * terms))
    if not shape.balanced:
      total = total - jnp.real(jnp.sum(weights)) * phi(p, s0, None)
    return total

  grads = jax.grad(contrast)(params)
  grads = jax.tree_util.tree_map(lambda g: -g / batch, grads)
  nudged = tuple(phases)
  z = logits(spec, params, s0)
  losses = example_losses(spec, params, s0, targets['label'])
  return EPOutput(grads, z, losses, free, nudged, betas, weights)


def nudged_relaxations(spec: NetworkSpec, params: dict, x: jax.Array, s0: tuple,
                       targets: Targets, betas: jax.Array, cost_fn: CostFn, *,
                       nudged_steps: int = 25, tol: jax.typing.ArrayLike = 0.0,
                       mode: str = 'sync',
                       compute_dtype: Optional[jax.typing.DTypeLike] = None,
                       damping: float = 1.0, nudged_phases: str = 'sequential',
                       solver: Optional[relaxation.Solver] = None) -> list:
  """One `RelaxResult` per point of `betas` `(P,)`: the relaxation under `Φ^{β_k}` (cost
  `cost_fn`) from the free fixed point `s0`, its states cast to `betas`' dtype and held
  constant (stop_gradient). `nudged_phases`, `solver` as in `ep_gradient`."""
  start = tuple(s.astype(betas.dtype) for s in s0)

  def nudge(b):
    result = relax(spec, params, x, start, targets=targets, beta=b, cost_fn=cost_fn,
                   max_steps=nudged_steps, tol=tol, mode=mode, compute_dtype=compute_dtype,
                   damping=damping, solver=solver)
    return result._replace(states=jax.tree_util.tree_map(jax.lax.stop_gradient, result.states))

  points = betas.shape[0]
  if nudged_phases == 'vmapped':
    stacked = jax.vmap(nudge)(betas)
    return [jax.tree_util.tree_map(lambda a, k=k: a[k], stacked) for k in range(points)]
  # One relaxation per point, one after the other: compiled with the train state donated
  # (as the trainer and the benchmark compile the step), the vmapped relaxation ran 10-25%
  # slower on a 2-core CPU (docs/BENCHMARKS.md).
  return [nudge(betas[k]) for k in range(points)]


def state_derivative(free: tuple, phases: Sequence[tuple], weights: jax.Array,
                     balanced: bool) -> tuple:
  """The stencil applied to the states: `Re Σ_k w_k (s_l^{β_k} - s_l^0)` per layer, each
  `(B, ...)`, the estimate of `ds_l^β/dβ` at β = 0 with the estimator's bias order.

  `phases`: the states of each nudged phase (in the order of `weights` `(P,)`). A balanced
  stencil (`Σ_k w_k = 0`: symmetric, holomorphic) does not read `free`, so a drift of an
  unsettled free phase, common to every nudged phase, cancels; a one-sided one contains it.
  """
  out = []
  for l, s0 in enumerate(free):
    total = sum(weights[k] * phase[l].astype(weights.dtype) for k, phase in enumerate(phases))
    if not balanced:
      total = total - jnp.sum(weights) * s0.astype(weights.dtype)
    out.append(jnp.real(total).astype(jnp.real(s0).dtype))
  return tuple(out)


# `ep_gradient` under `jax.jit`, with the network and every argument that sets the structure of
# the computation static: spec, estimator, mode, holo_points, cost_fn, the dtypes, damping,
# nudged_phases and the step counts (BPTT unrolls exactly `free_steps` steps). beta, tol,
# params, x, targets and rng are traced, so a new β does not recompile. Call it with keywords
# after the first four positional arguments, as `ep_gradient`.
jitted_ep_gradient = jax.jit(
    ep_gradient, static_argnames=('spec', 'estimator', 'free_steps', 'nudged_steps', 'mode',
                                  'holo_points', 'cost_fn', 'state_dtype', 'compute_dtype',
                                  'damping', 'nudged_phases', 'solver'))


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
