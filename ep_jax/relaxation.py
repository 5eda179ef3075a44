"""Relaxation to a fixed point: `s <- σ(∂Φ^β/∂s)`.

Because Φ is linear in each `s_l`, the force `∂Φ^β/∂s_l` depends only on the neighbours
`s_{l-1}`, `s_{l+1}` and the layers joined to l by skip links or edges (and, through max
pooling's argmax, on which unit of the window of `W_{l+1} ⋆ s_l` wins), plus `-β ∂ℒ/∂s_l`
where the nudging cost touches layer l. `force` writes it explicitly, drive from below plus
feedback from above (transposed convolution of the unpooled upper state), plus each link's
term (`energy.links`: its kind's drive into its destination layer, the adjoint of that drive
into its source layer, `connections.link_force`); for real states this is much cheaper than
`jax.grad` of Φ, which recomputes every drive. `force_autodiff` is the `jax.grad` definition
(used for complex states, i.e. holomorphic EP, and by the tests that check the two agree).
Inside a relaxation the input layer's drive `P(W_1 ⋆ x + b_1)` and the flipped kernels are
computed once, not every step. (A lateral edge, or an edge whose drive is not linear in its
source, makes the force on a layer depend on that layer's own state: `ep_jax.connections`.)

Two schedules:
  * 'sync': all layers update at once from the previous states;
  * 'async': the layers update colour class by colour class of a proper colouring of the
    layer graph (edges: the chain, the skip links and `spec.edges`;
    `network.layer_colouring`, greedy in layer order), each class from the newest states of
    the others. For a chain (no skips or edges) the classes are the even layers (0, 2, 4, ...
    counted from the bottom, 0-based), then the odd ones; with skips there are more classes
    (three for links i -> i+2).
Both have the same fixed points. Damping `γ ∈ (0, 1]` (`damping`) replaces each update by
`s_l <- (1 - γ) s_l + γ σ(∂Φ^β/∂s_l)`: the same fixed points, smaller steps (γ = 1: none).

`relax` runs a `lax.while_loop` that stops when the largest absolute state change falls to
`tol` or below, at `max_steps`, or when the residual stops being finite (divergence); it
returns the steps used and the final residual. `tol <= 0` means exactly `max_steps` steps.

Solvers (`Solver`): the sweep above is a map `G` (sync or async, damped or not) whose fixed
points are the relaxation's; `relax` finds one by plain iteration `s <- G(s)` (the default) or
by type-II Anderson acceleration, which mixes the last m evaluations of G per example:
`s <- Σ_i α_i (s_i + β_mix (G(s_i) - s_i))`, α minimising `‖Σ_i α_i (G(s_i) - s_i)‖² + λ‖α‖²`
subject to `Σ_i α_i = 1`, safeguarded (a mixed point whose residual exceeds that of the point
it was mixed after is replaced by that point's plain step). Both stop on the same residual
`max |G(s) - s|` and return `G(s)`, so at a given tolerance they reach the same fixed point
(where it is unique) and EP's gradient is unchanged; a step is one evaluation of G.
`relax_fixed` is a `lax.scan` over a static number of steps, differentiable (used by BPTT);
`residual_trace` returns the residual of every step of such a scan (convergence diagnostics).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ep_jax import activations, connections, energy
from ep_jax.energy import CostFn, Targets, nudged_primitive
from ep_jax.network import NetworkSpec, check_input

__all__ = [
    'MODES', 'SOLVERS', 'RelaxResult', 'Solver', 'check_solver', 'bottom_drive', 'carried_conv_layers', 'check_call', 'check_damping',
    'anderson_weights', 'force', 'force_autodiff', 'layer_changes', 'max_change', 'relax', 'relax_fixed',
    'residual_trace', 'step',
]

MODES = ('sync', 'async')
SOLVERS = ('plain', 'anderson')


@dataclasses.dataclass(frozen=True)
class Solver:
  """How `relax` iterates the sweep G to its fixed point `s = G(s)` (static, hashable).

  Attributes:
    kind: 'plain' (`s <- G(s)`) or 'anderson' (type-II Anderson acceleration, per example).
    memory: m >= 1, the evaluations `(G(s_i), G(s_i) - s_i)` Anderson keeps (a buffer of
      2 m x the states; XLA's temporaries grow by about 5 x the states per slot, measured;
      m = 1 is the plain iteration). 3: on a trained 8-conv digits network it took
      the free phase to 1e-5 in 46 sweeps (plain: 90; m = 5: 72) and the nudged phases in
      11-15 (plain: 40-66; docs/BENCHMARKS.md §2a).
    regularization: λ >= 0 of the least squares, relative to the largest `‖G(s_i) - s_i‖²`
      in memory (Tikhonov; keeps the m x m system well posed as the residuals vanish).
    mixing: β_mix in (0, 1]: the mixed point `Σ α_i (s_i + β_mix (G(s_i) - s_i))` (1: of the
      G values alone).
    safeguard: a mixed point whose residual `max |G(s) - s|` exceeds that of the point it was
      mixed after is rejected: the next point is that earlier point's plain step.
    start_residual: plain steps until an example's residual first falls to this, Anderson
      from then on (inf: from the first step). The hard sigmoid and max pooling make G
      piecewise linear; mixing across pieces far from the fixed point slowed convergence on
      strongly coupled nets, near it (one piece) Anderson converges much faster.
  """
  kind: str = 'plain'
  memory: int = 3
  regularization: float = 1e-8
  mixing: float = 1.0
  safeguard: bool = True
  start_residual: float = 1e-2

  def __post_init__(self):
    check_solver(self)


def check_solver(solver: Optional['Solver']) -> None:
  """Raises ValueError for an unknown kind, memory < 1, λ < 0 or β_mix outside (0, 1]."""
  if solver is None:
    return
  if solver.kind not in SOLVERS:
    raise ValueError(f'unknown solver {solver.kind!r}; known: {SOLVERS}')
  if int(solver.memory) < 1:
    raise ValueError(f'solver memory must be >= 1, got {solver.memory}')
  if not float(solver.regularization) >= 0.0:
    raise ValueError(f'solver regularization must be >= 0, got {solver.regularization}')
  if not 0.0 < float(solver.mixing) <= 1.0:
    raise ValueError(f'solver mixing must be in (0, 1], got {solver.mixing}')
  if not float(solver.start_residual) > 0.0:
    raise ValueError(f'solver start_residual must be > 0, got {solver.start_residual}')


class RelaxResult(NamedTuple):
  """States at the end of a relaxation, the steps taken and the final residual.

  `residual` is `max_l max |s_l^t - s_l^{t-1}|` of the last step (inf if no step ran, NaN or
  inf if the dynamics diverged); `layer_residuals` `(L,)` is the same per layer.
  """
  states: tuple
  steps: jax.Array
  residual: jax.Array
  layer_residuals: Optional[jax.Array] = None


def check_call(spec: NetworkSpec, x: jax.Array, states: Optional[tuple],
               targets: Optional[Targets] = None) -> Optional[Mapping[str, Any]]:
  """`targets` as a mapping (`energy.as_targets`), after checking `x` and `states` (if given)
  against `spec` (`network.check_input`) and the labels, if `targets` holds any, against the
  batch.

  Static (shapes and dtypes only). Raises ValueError naming the expected and given shapes.
  """
  batch = check_input(spec, x, states)
  targets = energy.as_targets(targets)
  if targets is not None and 'label' in targets:
    energy.check_labels(targets, batch)
  return targets


def force_autodiff(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple,
                   targets: Optional[Targets], beta: Optional[jax.typing.ArrayLike],
                   cost_fn: Optional[CostFn],
                   layers: Optional[tuple[int, ...]] = None) -> tuple:
  """`∂Φ^β/∂s_l` by `jax.grad` of the energy (the definition; `force` computes it explicitly)."""
  targets = check_call(spec, x, states, targets)
  layers = tuple(range(len(states))) if layers is None else layers
  holomorphic = jnp.iscomplexobj(states[0])

  def energy(selected):
    full = list(states)
    for l, s in zip(layers, selected):
      full[l] = s
    return nudged_primitive(spec, params, x, tuple(full), targets, beta, cost_fn)

  return jax.grad(energy, holomorphic=holomorphic)(tuple(states[l] for l in layers))


def bottom_drive(spec: NetworkSpec, params: dict, x: jax.Array,
                 dtype: jax.typing.DTypeLike) -> jax.Array:
  """The drive of layer 1 from the input, `P(W_1 ⋆ x + b_1)`: constant during a relaxation."""
  return energy.layer_drive(spec, 0, params['layers'][0], x.astype(dtype))


def _prepare(spec, params, x, dtype, compute_dtype=None):
  """Loop invariants of a relaxation: the input layer's drive and the transposed kernels."""
  drive0 = bottom_drive(spec, params, x, dtype)
  kernels_t = {l: energy.flip_kernel(params['layers'][l]['w']).astype(compute_dtype or dtype)
               for l in range(1, spec.num_conv)}
  return drive0, kernels_t


class _Forces:
  """Explicit forces `∂Φ^β/∂s_l = drive_l(s_{l-1}) + feedback_{l+1→l} - β ∂ℒ/∂s_l`.

  drive: `P_l(W_l ⋆ s_{l-1} + b_l)` (conv) or `W_l s_{l-1} + b_l` (dense).
  feedback: `W_{l+1}^T ⋆ P_{l+1}^T(s_{l+1})` for a conv layer above (transposed convolution of
  the unpooled upper state; max unpooling routes to the argmax of the window of the pre-pool
  input `W_{l+1} ⋆ s_l + b_{l+1}`, a tie as `spec.pool_ties` says), `W_{l+1}^T s_{l+1}`
  reshaped for a dense layer above.

  The convolution `W_l ⋆ s_{l-1}` of each conv layer is computed once and shared between its
  drive and the feedback it sends down (a trace-time cache, invalidated when the layer below
  changes; `convs` seeds it with convolutions carried over from the previous step). The bias
  is added after pooling (`P(u + b) = P(u) + b` for a per-channel bias; the argmax routing is
  taken on `u`). The input layer's drive and the transposed kernels are passed in
  precomputed. The nudge's state gradient comes from `jax.grad` of the cost alone (it only
  touches the layers the cost reads). With `compute_dtype` (mixed precision) the
  convolutions and matmuls round their operands to it and accumulate in the states' dtype.

  links (`energy.links`: the skips and `spec.edges`) `src -> dst` of a kind with drive D:
  `+ D(θ, s_src)` for layer dst and `+ J_D(s_src)^T s_dst` for layer src (the kind's
  `feedback`, else `jax.vjp`; a skip's is `energy.skip_feedback`), `½ (D(θ, s) + J_D^T s)`
  for a lateral one, computed afresh each call (`connections.link_force`).
  """

  def __init__(self, spec, params, prepared, states, targets, beta, cost_fn,
               compute_dtype=None, convs=None):
    self.spec, self.params, self.compute_dtype = spec, params, compute_dtype
    self.drive0, self.kernels_t = prepared
    self.states = list(states)
    if beta is not None and cost_fn is None:
      cost_fn = energy.output_cost(spec)
    self.targets, self.beta, self.cost_fn = energy.as_targets(targets), beta, cost_fn
    self._conv = dict(convs or {})  # {l: W_l ⋆ s_{l-1}} valid for `states`

  def set(self, l, value):
    self.states[l] = value
    self._conv.pop(l + 1, None)  # layer l+1's convolution depended on s_l

  def conv(self, l):
    """`W_l ⋆ s_{l-1}` (without the bias) for conv layer l >= 1 (0-based), cached."""
    if l not in self._conv:
      self._conv[l] = energy.conv2d_loop(self.states[l - 1], self.params['layers'][l]['w'],
                                         self.spec.paddings[l], self.compute_dtype)
    return self._conv[l]

  def _conv_shape(self, l):
    return (self.states[l - 1].shape[0],) + self.spec.conv_shapes[l]

  def _drive(self, l):
    spec, params, states = self.spec, self.params, self.states
    if l == 0:
      return self.drive0
    if l >= spec.num_conv:
      p, below = params['layers'][l], states[l - 1]
      flat = below.reshape(below.shape[0], -1)
      return energy.matmul(flat, p['w'], self.compute_dtype) + p['b'].astype(flat.dtype)
    b = params['layers'][l]['b'].astype(states[l].dtype)
    return energy.pool2d(self.conv(l), spec.conv[l].pool, spec.pool_ties) + b

  def _feedback(self, l):
    """What layer l receives from layer l+1."""
    spec, params, states = self.spec, self.params, self.states
    up, p_up = states[l + 1], params['layers'][l + 1]
    if l + 1 >= spec.num_conv:
      return energy.matmul(up, p_up['w'].T, self.compute_dtype).reshape(states[l].shape)
    pool = spec.conv[l + 1].pool
    # Max unpooling routes by the argmax of each window of `W ⋆ s_l` (adding the bias does
    # not move it); the other pools need only the shape.
    u = self.conv(l + 1) if pool == 'max' else self._conv_shape(l + 1)
    g = energy.pool2d_transpose(up, u, pool, spec.pool_ties)
    return energy.conv2d_loop(g, self.kernels_t[l + 1],
                              energy.transpose_padding(p_up['w'], spec.paddings[l + 1]),
                              self.compute_dtype)

  def _link_force(self, l, f):
    """`f` plus the terms of the links (skips, edges) that end or start at layer l."""
    for link in energy.links(self.spec):
      term = connections.link_force(link, self.params, self.states, l, self.compute_dtype)
      if term is not None:
        f = f + term
    return f

  def __call__(self, layers):
    states, n = self.states, len(self.states)
    nudge = None
    if self.beta is not None:
      nudge = jax.grad(lambda sel: self.cost_fn(
          self.params,
          tuple(sel[layers.index(l)] if l in layers else states[l] for l in range(n)),
          self.targets))(tuple(states[l] for l in layers))
    forces = []
    for i, l in enumerate(layers):
      f = self._drive(l)
      if l + 1 < n:
        f = f + self._feedback(l)
      if self.spec.skips or self.spec.edges:
        f = self._link_force(l, f)
      if nudge is not None:
        f = f - self.beta * nudge[i]
      forces.append(f)
    return tuple(forces)


def _explicit(states) -> bool:
  return not jnp.iscomplexobj(states[0])


def _compute_dtype(states, compute_dtype):
  """The operand dtype of the relaxation's convolutions (None: the states' own)."""
  if compute_dtype is None:
    return None
  compute_dtype = jnp.dtype(compute_dtype)
  if not jnp.issubdtype(compute_dtype, jnp.floating):
    raise ValueError(f'compute_dtype must be a floating dtype, got {compute_dtype}')
  return None if compute_dtype == states[0].dtype else compute_dtype


def _setup(spec, params, x, states, compute_dtype):
  """`(prepared, compute_dtype)` of a relaxation: the loop invariants (None for complex
  states, which use autodiff forces) and the normalised compute dtype."""
  if not _explicit(states):
    return None, None
  compute_dtype = _compute_dtype(states, compute_dtype)
  return _prepare(spec, params, x, states[0].dtype, compute_dtype), compute_dtype


def force(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple,
          targets: Optional[Targets], beta: Optional[jax.typing.ArrayLike],
          cost_fn: Optional[CostFn], layers: Optional[tuple[int, ...]] = None,
          compute_dtype: Optional[jax.typing.DTypeLike] = None) -> tuple:
  """`∂Φ^β/∂s_l` for the layers in `layers` (all by default), each shaped like `s_l`.

  Real states use the explicit feedforward + feedback form (`_Forces`); complex states
  (holomorphic EP) use `jax.grad` of the energy. Both are the same function.
  compute_dtype: see `relax` (real states only).
  """
  targets = check_call(spec, x, states, targets)
  layers = tuple(range(len(states))) if layers is None else tuple(layers)
  if not _explicit(states):
    return force_autodiff(spec, params, x, states, targets, beta, cost_fn, layers)
  prepared, compute_dtype = _setup(spec, params, x, states, compute_dtype)
  return _Forces(spec, params, prepared, states, targets, beta, cost_fn, compute_dtype)(layers)


def carried_conv_layers(spec: NetworkSpec, num_states: int, mode: str) -> tuple[int, ...]:
  """Conv layers l whose convolution `W_l ⋆ s_{l-1}` an async step hands to the next one.

  In an async step the first colour class (the even layers of a chain) updates first, so the
  convolutions of its states (`W_l ⋆ s_{l-1}`, l-1 in the first class) computed for the later
  classes' drives are still valid at the end of the step. The next step's first class reads
  them only where layer l max-pools (the unpooling of the feedback to layer l-1 routes by
  their argmax), so only those are carried. A sync step changes every layer, so nothing
  carries over. (The carry is an optimisation: a convolution missing from it is recomputed.)
  """
  if mode != 'async':
    return ()
  first = set(spec.colour_classes[0]) if spec.num_layers else set()
  return tuple(l for l in range(1, min(spec.num_conv, num_states))
               if (l - 1) in first and spec.conv[l].pool == 'max')


def _initial_convs(spec, params, prepared, states, mode, compute_dtype):
  """The carried convolutions of the initial states (see `carried_conv_layers`)."""
  layers = carried_conv_layers(spec, len(states), mode) if prepared is not None else ()
  if not layers:
    return {}
  forces = _Forces(spec, params, prepared, states, None, None, None, compute_dtype)
  return {l: forces.conv(l) for l in layers}


def check_damping(damping: jax.typing.ArrayLike) -> None:
  """Raises ValueError unless a concrete damping lies in (0, 1]."""
  if isinstance(damping, (int, float)) and not 0.0 < damping <= 1.0:
    raise ValueError(f'damping must be in (0, 1] (1 = undamped), got {damping}')


def _step(spec, params, x, prepared, states, targets, beta, cost_fn, mode, compute_dtype=None,
          convs=None, damping=1.0):
  """One update; `prepared` is `_prepare(...)` (hoisted out of loops) or None (complex).

  convs: the carried convolutions valid for `states` (`_initial_convs` or the previous step's).
  damping: γ in `s <- (1 - γ) s + γ σ(force)`.
  Returns `(new states, carried convolutions valid for them)`.
  """
  sigma = activations.get(spec.activation)
  undamped = isinstance(damping, (int, float)) and damping == 1.0

  def update(f, old):
    return sigma(f) if undamped else old + damping * (sigma(f) - old)

  if mode not in MODES:
    raise ValueError(f'unknown relaxation mode {mode!r}; known: {MODES}')
  n = len(states)
  if prepared is None:  # complex states: autodiff forces
    if mode == 'sync':
      forces = force_autodiff(spec, params, x, states, targets, beta, cost_fn)
      return tuple(update(f, s) for f, s in zip(forces, states)), {}
    new = list(states)
    for colour_class in spec.colour_classes:
      layers = tuple(l for l in colour_class if l < n)
      if layers:
        forces = force_autodiff(spec, params, x, tuple(new), targets, beta, cost_fn, layers)
        for l, f in zip(layers, forces):
          new[l] = update(f, new[l])
    return tuple(new), {}
  forces = _Forces(spec, params, prepared, states, targets, beta, cost_fn, compute_dtype, convs)
  if mode == 'sync':
    return tuple(update(f, s) for f, s in zip(forces(tuple(range(n))), states)), {}
  # Async: colour class by colour class (even layers, then odd ones for a chain), each from
  # the newest states. The convolutions of the later classes' states (inputs of the layers of
  # the first class above them) are computed once per step and reused; those of the first
  # class's states are computed for the later classes and carried to the next step.
  for colour_class in spec.colour_classes:
    layers = tuple(l for l in colour_class if l < n)
    if not layers:
      continue
    new = forces(layers)
    for l, f in zip(layers, new):
      forces.set(l, update(f, forces.states[l]))
  return tuple(forces.states), {l: forces.conv(l) for l in carried_conv_layers(spec, n, mode)}


def step(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple,
         targets: Optional[Targets], beta: Optional[jax.typing.ArrayLike],
         cost_fn: Optional[CostFn], mode: str = 'sync',
         compute_dtype: Optional[jax.typing.DTypeLike] = None,
         damping: jax.typing.ArrayLike = 1.0) -> tuple:
  """One update of the dynamics, synchronous or asynchronous (colour class by colour class of
  `spec.colour_classes`: even layers, then odd ones, without skip links)."""
  targets = check_call(spec, x, states, targets)
  check_damping(damping)
  prepared, compute_dtype = _setup(spec, params, x, states, compute_dtype)
  return _step(spec, params, x, prepared, states, targets, beta, cost_fn, mode,
               compute_dtype, damping=damping)[0]


def layer_changes(new: tuple, old: tuple) -> jax.Array:
  """`max |new_l - old_l|` per layer, a real `(L,)` vector."""
  return jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in zip(new, old)])


def max_change(new: tuple, old: tuple) -> jax.Array:
  """`max_l max |new_l - old_l|` as a real scalar."""
  return jnp.max(layer_changes(new, old))


def relax(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple, *,
          targets: Optional[Targets] = None, beta: Optional[jax.typing.ArrayLike] = None,
          cost_fn: Optional[CostFn] = None, max_steps: jax.typing.ArrayLike = 100,
          tol: jax.typing.ArrayLike = 0.0, mode: str = 'sync',
          compute_dtype: Optional[jax.typing.DTypeLike] = None,
          damping: jax.typing.ArrayLike = 1.0,
          solver: Optional[Solver] = None) -> RelaxResult:
  """Iterates the dynamics from `states` until the residual is `<= tol` or `max_steps`.

  Args:
    spec, params, x: the network, its parameters and the input `(B, H, W, C)`.
    states: initial states (zeros for a free phase, the free fixed point for nudged phases).
    targets, beta, cost_fn: the nudge `-β ℒ(params, s, targets)`; `beta=None` is free.
      targets: the labels `(B,)` or a mapping with at least what `cost_fn` reads (default
      cost: the output loss, which reads 'label').
    max_steps: step limit (it only bounds the `while_loop`, so it may be traced).
    tol: residual tolerance; `<= 0` disables it.
    mode: 'sync' or 'async'.
    compute_dtype: mixed precision (e.g. `jnp.bfloat16`): convolutions and matmuls round
      their operands to it and accumulate in the states' dtype, which the states keep. None:
      everything in the states' dtype. Ignored for complex states.
    damping: γ in (0, 1] of `s <- (1 - γ) s + γ σ(force)` (1: undamped); may be traced.
    solver: how the sweep is iterated (`Solver`; None: plain iteration). A step is one sweep.
  Returns:
    a `RelaxResult`. The loop also stops as soon as the residual is not finite.
  Raises:
    ValueError: `x`, `states` or the labels not shaped for `spec` (`check_call`), an unknown
      mode or solver, or a damping outside (0, 1].
  """
  targets = check_call(spec, x, states, targets)
  if mode not in MODES:
    raise ValueError(f'unknown relaxation mode {mode!r}; known: {MODES}')
  check_damping(damping)
  check_solver(solver)
  real_dtype = jnp.real(states[0]).dtype
  tol = jnp.asarray(tol, real_dtype)
  if solver is not None and solver.kind == 'anderson' and solver.memory > 1:
    return _relax_anderson(spec, params, x, tuple(states), targets, beta, cost_fn, max_steps,
                           tol, mode, compute_dtype, damping, solver)

  def cond(carry):
    steps, _, residual, _, _ = carry
    keep_going = (steps < max_steps) & jnp.isfinite(residual)
    return keep_going & ((residual > tol) | (tol <= 0))

  # The input layer's drive does not change during the relaxation: computed once.
  prepared, compute_dtype = _setup(spec, params, x, states, compute_dtype)

  def body(carry):
    steps, s, _, _, convs = carry
    new, convs = _step(spec, params, x, prepared, s, targets, beta, cost_fn, mode,
                       compute_dtype, convs, damping)
    per_layer = layer_changes(new, s).astype(real_dtype)
    return steps + 1, new, jnp.max(per_layer), per_layer, convs

  # The first residual is a large finite number so that the loop starts.
  big = jnp.asarray(jnp.finfo(real_dtype).max, real_dtype)
  init = (jnp.zeros((), jnp.int32), tuple(states), big, jnp.full((len(states),), big),
          _initial_convs(spec, params, prepared, tuple(states), mode, compute_dtype))
  steps, final, residual, per_layer, _ = lax.while_loop(cond, body, init)
  residual = jnp.where(steps == 0, jnp.inf, residual)
  per_layer = jnp.where(steps == 0, jnp.inf, per_layer)
  return RelaxResult(final, steps, residual, per_layer)


def _flatten(states: tuple) -> jax.Array:
  """The states as one `(B, N)` array, layer after layer."""
  return jnp.concatenate([s.reshape(s.shape[0], -1) for s in states], axis=1)


def _unflatten(flat: jax.Array, like: tuple) -> tuple:
  out, start = [], 0
  for s in like:
    size = s[0].size
    out.append(flat[:, start:start + size].reshape(s.shape))
    start += size
  return tuple(out)


def _per_layer_max(diff: jax.Array, like: tuple) -> jax.Array:
  """`max |diff|` per example and layer, `(B, L)`, for `diff` `(B, N)` laid out as `like`."""
  bounds = np.cumsum([0] + [s[0].size for s in like])
  return jnp.stack([jnp.max(jnp.abs(diff[:, a:b]), axis=1)
                    for a, b in zip(bounds[:-1], bounds[1:])], axis=1)


def anderson_weights(residuals: jax.Array, valid: jax.Array,
                     regularization: jax.typing.ArrayLike) -> jax.Array:
  """Anderson's mixing weights per example.

  residuals: `(m, B, N)`, `r_i = G(s_i) - s_i` for the m slots of the memory; valid: `(m,)`
  or `(B, m)` bool, the slots filled (at least one per example). Returns α `(B, m)` (0 on
  empty slots): `argmin ‖Σ_i α_i r_i‖² + λ max_i ‖r_i‖² ‖α‖²` subject to `Σ_i α_i = 1`,
  i.e. `α = z / Σ z` with `(R R^H + λ' I) z = 1` on the filled slots.
  """
  gram = jnp.einsum('ibn,jbn->bij', residuals, jnp.conj(residuals))
  batch, m = gram.shape[0], residuals.shape[0]
  valid = jnp.broadcast_to(valid, (batch, m))
  pair = valid[:, :, None] & valid[:, None, :]
  diag = jnp.real(jnp.diagonal(gram, axis1=1, axis2=2))  # (B, m)
  scale = jnp.max(jnp.where(valid, diag, 0.0), axis=1)  # (B,)
  tiny = jnp.finfo(diag.dtype).tiny
  eye = jnp.eye(m, dtype=gram.dtype)
  lam = (regularization * scale + tiny)[:, None, None]
  # Empty slots: an identity block with a zero right-hand side, so their weight is 0.
  system = jnp.where(pair, gram + lam * eye, eye)
  z = jnp.linalg.solve(system, valid.astype(gram.dtype)[..., None])[..., 0]
  return z / jnp.sum(z, axis=1, keepdims=True)


def _relax_anderson(spec, params, x, states, targets, beta, cost_fn, max_steps, tol, mode,
                    compute_dtype, damping, solver):
  """`relax` with type-II Anderson acceleration of the sweep G (see the module docstring).

  Per example, plain steps `p <- G(p)` until the residual `max |G(p) - p|` first falls to
  `solver.start_residual`; from then on each iteration evaluates `g = G(p)`, stores
  `(g, g - p)` in a ring buffer of m slots (shared by the batch: slot `step mod m`, with a
  per-example mask of the slots written since its start) and moves to the buffer's mixed
  point. The accepted point is the
  last one whose residual did not exceed its predecessor's (every plain step is accepted);
  the result is G of the accepted point with its residual, as in plain iteration. Carried
  convolutions are not used (a mixed point is not a sweep's output).
  """
  prepared, compute_dtype = _setup(spec, params, x, states, compute_dtype)
  m = int(solver.memory)
  real_dtype = jnp.real(states[0]).dtype
  flat0 = _flatten(states)
  batch = flat0.shape[0]
  big = jnp.asarray(jnp.finfo(real_dtype).max, real_dtype)
  start_residual = jnp.asarray(solver.start_residual, real_dtype)

  def sweep(flat):
    new, _ = _step(spec, params, x, prepared, _unflatten(flat, states), targets, beta, cost_fn,
                   mode, compute_dtype, None, damping)
    return _flatten(new)

  def cond(carry):
    steps, residual = carry[0], jnp.max(carry[4])
    keep_going = (steps < max_steps) & jnp.isfinite(residual)
    return keep_going & ((residual > tol) | (tol <= 0))

  def body(carry):
    steps, point, proposal, best_g, best_r, best_layers, valid, gs, rs = carry
    g = sweep(point)
    diff = g - point
    r = jnp.max(jnp.abs(diff), axis=1)  # (B,)
    layers = _per_layer_max(diff, states)
    # Accept the point unless it is a mixed one that raised the residual (the safeguard).
    accept = (~proposal | (r <= best_r)) if solver.safeguard else jnp.ones_like(proposal)
    best_g = jnp.where(accept[:, None], g, best_g)
    best_r = jnp.where(accept, r, best_r)
    best_layers = jnp.where(accept[:, None], layers, best_layers)
    # A rejected mixed point clears its example's memory (a restart: the memory then spans
    # another piece of G); examples whose residual has reached `start_residual` keep
    # (G(p), G(p) - p) in the ring buffer's slot of this step.
    valid = valid & accept[:, None]
    started = jnp.any(valid, axis=1) | (r <= start_residual)
    slot = steps % m
    gs = gs.at[slot].set(g)
    rs = rs.at[slot].set(diff)
    valid = valid.at[:, slot].set(started)
    alpha = anderson_weights(rs, valid | ~started[:, None], solver.regularization)
    # Σ α_i (s_i + β_mix r_i) with s_i = G(s_i) - r_i.
    mixed = jnp.einsum('bi,ibn->bn', alpha, gs)
    if solver.mixing != 1.0:
      mixed = mixed - (1.0 - solver.mixing) * jnp.einsum('bi,ibn->bn', alpha, rs)
    # A mixed point needs two evaluations in memory and an accepted, finite mixture; else the
    # plain step of the accepted point.
    use_mixed = (accept & (jnp.sum(valid, axis=1) >= 2) &
                 jnp.all(jnp.isfinite(mixed), axis=1))
    point = jnp.where(use_mixed[:, None], mixed, best_g)
    return (steps + 1, point, use_mixed, best_g, best_r, best_layers, valid, gs, rs)

  memory = jnp.zeros((m,) + flat0.shape, flat0.dtype)
  init = (jnp.zeros((), jnp.int32), flat0, jnp.zeros((batch,), bool), flat0,
          jnp.full((batch,), big), jnp.full((batch, len(states)), big),
          jnp.zeros((batch, m), bool), memory, memory)
  steps, _, _, best_g, best_r, best_layers, _, _, _ = lax.while_loop(cond, body, init)
  residual = jnp.where(steps == 0, jnp.inf, jnp.max(best_r))
  per_layer = jnp.where(steps == 0, jnp.inf, jnp.max(best_layers, axis=0))
  final = tuple(jnp.where(steps == 0, s0, s)
                for s0, s in zip(states, _unflatten(best_g, states)))
  return RelaxResult(final, steps, residual, per_layer)

def _scan(spec, params, x, states, steps, targets, beta, cost_fn, mode, compute_dtype,
          damping=1.0):
  """`(final states, per-step per-layer residuals (steps, L))` of `steps` updates."""
  if mode not in MODES:
    raise ValueError(f'unknown relaxation mode {mode!r}; known: {MODES}')
  check_damping(damping)
  prepared, compute_dtype = _setup(spec, params, x, states, compute_dtype)

  def body(carry, _):
    s, convs = carry
    new, convs = _step(spec, params, x, prepared, s, targets, beta, cost_fn, mode,
                       compute_dtype, convs, damping)
    return (new, convs), layer_changes(new, s)

  init = (tuple(states), _initial_convs(spec, params, prepared, tuple(states), mode,
                                        compute_dtype))
  (final, _), residuals = lax.scan(body, init, None, length=steps)
  return final, residuals


def relax_fixed(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple, *, steps: int,
                targets: Optional[Targets] = None,
                beta: Optional[jax.typing.ArrayLike] = None,
                cost_fn: Optional[CostFn] = None, mode: str = 'sync',
                compute_dtype: Optional[jax.typing.DTypeLike] = None,
                damping: jax.typing.ArrayLike = 1.0) -> RelaxResult:
  """Exactly `steps` (static) updates with `lax.scan`; differentiable w.r.t. params and x.

  targets, beta, cost_fn, compute_dtype, damping: as in `relax`.
  """
  targets = check_call(spec, x, states, targets)
  final, residuals = _scan(spec, params, x, states, steps, targets, beta, cost_fn, mode,
                           compute_dtype, damping)
  per_layer = residuals[-1] if steps > 0 else jnp.full((len(states),), jnp.inf)
  return RelaxResult(final, jnp.asarray(steps, jnp.int32), jnp.max(per_layer), per_layer)


def residual_trace(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple, *, steps: int,
                   targets: Optional[Targets] = None,
                   beta: Optional[jax.typing.ArrayLike] = None,
                   cost_fn: Optional[CostFn] = None, mode: str = 'sync',
                   compute_dtype: Optional[jax.typing.DTypeLike] = None,
                   damping: jax.typing.ArrayLike = 1.0) -> jax.Array:
  """The residual after each of `steps` (static) updates, `(steps, L)`:
  `trace[t - 1, l] = max |s_l^t - s_l^{t-1}|`.

  `relax(..., tol=τ)` stops at the first t with `max_l trace[t - 1, l] <= τ`; the trace also
  shows what a fixed T would leave and whether the dynamics settle or keep moving.
  targets, beta, cost_fn, compute_dtype, damping: as in `relax`.
  """
  targets = check_call(spec, x, states, targets)
  return _scan(spec, params, x, states, steps, targets, beta, cost_fn, mode, compute_dtype,
               damping)[1]
