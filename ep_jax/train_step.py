"""Train and eval steps: energy + relaxation + EP estimator + nudging cost + optax update.

`make_train_step` returns a pure `(state, batch, hyper=None) -> (state, metrics)`; `jit` it
once (the training loop does, with the state donated). `hyper`, an `EPHyper(beta, tol)`, makes
β and the relaxation tolerance traced arguments, so one compiled step serves every value (and
`jax.vmap` over `hyper` runs a β sweep); without it the step uses the `EPConfig`'s values. A batch is `{'image': (B, H, W, C) float,
'label': (B,) int}`. The nudging cost defaults to the output loss; the learning signals of
`ep_jax.signals` plug in through the `Nudging` protocol (targets built per batch inside the
step, cost used by the nudged phases, extra metrics).

Metrics are batch means, plus per-layer diagnostics computed from the states the step already
has (`(N,)` arrays, `layer_diagnostics`): at the free fixed point mean |s_l|, the fractions of
units at 0 and at 1 and the input share; mean |θ_l| (weights, bias, links into l); the nudge
per unit `‖ds_l/dβ‖ / √n_l` by the estimator's stencil (symmetric:
`½ ‖s^{β} - s^{-β}‖ / (β √n_l)`, one-sided: `‖s^{β} - s^0‖ / (β √n_l)`); and each layer's
final nudged residual, the max over the nudged phases. Its split into what the output error
propagates and what the layer-wise signals add needs more relaxations: `make_nudge_split`,
run by the trainer once per epoch on one batch.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ep_jax import activations, energy, inference, relaxation
from ep_jax._types import PyTree
from ep_jax.estimators import (EPConfig, ep_gradient, nudged_relaxations, state_derivative,
                               stencil_points, stencil_shape)
from ep_jax.network import NetworkSpec, init_states

__all__ = [
    'BOUND_TOL', 'EPHyper', 'Nudging', 'SILENT_RMS', 'TrainState', 'create_train_state',
    'ep_hyper', 'free_state_store', 'input_share_of', 'layer_activity', 'layer_diagnostics', 'layer_mean_abs_theta',
    'layer_nudge_of', 'make_eval_step', 'make_nudge_split', 'make_train_step',
]

class EPHyper(NamedTuple):
  """The EP hyperparameters a train step takes as traced values: β (|β| > 0) and the
  relaxation tolerance (<= 0: fixed step counts). Scalars, or `(n,)` arrays under `vmap`."""
  beta: Any
  tol: Any


def ep_hyper(ep: EPConfig, dtype: jax.typing.DTypeLike = jnp.float32) -> EPHyper:
  """`EPHyper` of `ep`'s β and tolerance as `dtype` scalars."""
  return EPHyper(jnp.asarray(ep.beta, dtype), jnp.asarray(ep.tol, dtype))


class TrainState(flax.struct.PyTreeNode):
  """step: optimiser steps taken. params: trainable pytree. opt_state: optax state.
  rng: PRNG key for stochastic estimators. frozen: non-trained constants the nudging cost needs
  (fixed random projections, a teacher's parameters), `{}` for plain EP. free_store: None, or
  the free phase's warm starts, one `(N, *state_shape)` array per layer for the N training
  examples (`free_state_store`): a batch's free phase starts from `free_store[l][index]` and
  writes its fixed point back."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  frozen: Any = flax.struct.field(default_factory=dict)
  free_store: Any = None


def create_train_state(params: PyTree, tx: optax.GradientTransformation, rng: jax.Array,
                       frozen: Any = None, free_store: Optional[tuple] = None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng, frozen={} if frozen is None else frozen, free_store=free_store)


def free_state_store(spec: NetworkSpec, num_examples: int,
                     dtype: jax.typing.DTypeLike = jnp.float32) -> tuple:
  """Zero warm starts for `num_examples` examples: one `(N, *state_shape)` array per layer,
  `N x Σ_l |s_l|` values (e.g. 8,192 CIFAR-10 images on the 8-conv recipe: 1.2 GB in float32).
  Zeros are the cold start, so an example's first free phase is the usual one."""
  return tuple(jnp.zeros((int(num_examples),) + tuple(shape), dtype)
               for shape in spec.state_shapes)


def _warm_start(state: TrainState, batch: dict, dtype) -> Optional[tuple]:
  """The batch's free-phase starts from `state.free_store` (None without a store)."""
  if state.free_store is None:
    return None
  if 'index' not in batch:
    raise ValueError("a train state with a free_store needs batch['index'] (each example's "
                     'position in the training split)')
  return tuple(s[batch['index']].astype(dtype) for s in state.free_store)


def _store_fixed_points(state: TrainState, batch: dict, free_states: tuple) -> Optional[tuple]:
  if state.free_store is None:
    return None
  return tuple(s.at[batch['index']].set(f.astype(s.dtype))
               for s, f in zip(state.free_store, free_states))


class Nudging(Protocol):
  """What a nudging cost with learning signals provides to the train step."""

  def targets(self, frozen: PyTree, params: PyTree, batch: dict, epoch: jax.Array) -> dict:
    """Per-batch targets (at least 'label'), e.g. teacher activations and κ values."""

  def cost(self, params: PyTree, states: tuple, targets: dict) -> jax.Array:
    """ℒ summed over the batch."""

  def output_cost(self, params: PyTree, states: tuple, targets: dict) -> jax.Array:
    """The output term of ℒ alone (the layer-wise signals' κ at 0), summed over the batch."""

  def metrics(self, params: PyTree, states: tuple, targets: dict) -> dict:
    """Extra scalar or per-layer metrics at the free fixed point."""


# A unit within this distance of a bound of σ (state units; the bounded activations' range is
# [0, 1]) counts as at that bound: σ's slope is (nearly) 0 there, and damped relaxations
# approach the bounds geometrically rather than exactly.
BOUND_TOL = 1e-3
# The RMS state below which a layer counts as silent in `input_share_of` (same units).
SILENT_RMS = 1e-3


def layer_mean_abs_theta(spec: NetworkSpec, params: dict) -> jax.Array:
  """`(N,)` mean |θ| over every parameter attributed to dynamical layer l: its weights and
  bias (the drive from below) and the skip links and edges into it (`dst = l`; a lateral
  edge is its layer's). The readout is not a dynamical layer and is not included."""
  groups = [list(jax.tree_util.tree_leaves(p)) for p in params['layers']]
  for (_, j), p in zip(spec.skips, params.get('skips', ())):
    groups[j] += jax.tree_util.tree_leaves(p)
  for edge, p in zip(spec.edges, params.get('edges', ())):
    groups[edge.dst] += jax.tree_util.tree_leaves(p)
  return jnp.stack([sum(jnp.sum(jnp.abs(a)) for a in g) / sum(a.size for a in g)
                    for g in groups])


def layer_nudge_of(derivative: Sequence[jax.Array]) -> jax.Array:
  """`(N,)` nudge per unit: the batch mean of `‖d_l‖ / √n_l` for per-example state
  derivatives `d_l = ds_l/dβ` `(B, ...)` (`estimators.state_derivative`), n_l the layer's
  units; the RMS over units of how far β moves them, per unit of β."""
  return jnp.stack([jnp.mean(jnp.sqrt(jnp.mean(jnp.abs(d.reshape(d.shape[0], -1)) ** 2,
                                               axis=-1)))
                    for d in derivative])


def layer_diagnostics(spec: NetworkSpec, params: dict, free: tuple, derivative: tuple) -> dict:
  """Per-layer diagnostics, each `(N,)`, from the free fixed point `free` and the nudged
  phases' state derivative `derivative` (`estimators.state_derivative`): `layer_activity`'s
  entries as `layer_mean_abs_state`, `layer_zero_frac`, `layer_one_frac`,
  `layer_input_share`; `layer_mean_abs_theta` and `layer_nudge` (`layer_nudge_of`)."""
  activity = layer_activity(free, spec.activation)
  return {'layer_mean_abs_state': activity['mean_abs'],
          'layer_mean_abs_theta': layer_mean_abs_theta(spec, params),
          'layer_nudge': layer_nudge_of(derivative),
          'layer_zero_frac': activity['zero_frac'], 'layer_one_frac': activity['one_frac'],
          'layer_input_share': activity['input_share']}


def layer_activity(states: Sequence[jax.Array], activation: str = 'hard_sigmoid') -> dict:
  """Per-layer activity of states `(B, ...)` (a CRNN's fixed point or a feed-forward pass's
  activations of σ = `activation`), each an `(L,)` array:

  `mean_abs`: mean |s_l|. `zero_frac`, `one_frac`: fractions of units within `BOUND_TOL` of
  σ's lower bound 0 and upper bound 1, where σ saturates (zero slope); an unbounded σ (relu)
  saturates only at 0, its `one_frac` is 0. `input_share`: `input_share_of`.
  """
  bounded = activation not in activations.UNBOUNDED
  return {'mean_abs': jnp.stack([jnp.mean(jnp.abs(s)) for s in states]),
          'zero_frac': jnp.stack([jnp.mean(s <= BOUND_TOL) for s in states]),
          'one_frac': jnp.stack([jnp.mean(s >= 1.0 - BOUND_TOL) if bounded
                                 else jnp.zeros((), jnp.float32) for s in states]),
          'input_share': jnp.stack([input_share_of(s) for s in states])}


def input_share_of(s: jax.Array, silent: float = SILENT_RMS) -> jax.Array:
  """`mean_units var_batch(s) / (mean s² + silent²)` of a state `(B, ...)`, in [0, 1).

  The share of the layer's mean square state that varies across the inputs: 0 when its fixed
  point is the same for every input (active yet input-blind), near 1 for sparse input-driven
  codes (a unit on for a fraction f of the inputs gives 1 - f). A unit's variance never
  exceeds its mean square, so no layer reads above 1; `silent` (in state units) sends a layer
  whose RMS state is far below it to 0 instead of reading the variation of its residue.
  """
  s = jnp.real(s)
  var = jnp.mean(jnp.var(s, axis=0))
  return var / (jnp.mean(s * s) + silent ** 2)


def _nudge_derivative(ep: EPConfig, out) -> tuple:
  """`estimators.state_derivative` of an `EPOutput` (zeros for BPTT: no nudged phase)."""
  if not out.nudged:
    return tuple(jnp.zeros_like(s) for s in out.free.states)
  balanced = stencil_shape(ep.estimator, ep.holo_points).balanced
  return state_derivative(out.free.states, [r.states for r in out.nudged], out.weights,
                          balanced)


def make_nudge_split(spec: NetworkSpec, ep: EPConfig, nudging: Optional[Nudging], *,
                     steps_per_epoch: int = 1,
                     state_dtype: Optional[jax.typing.DTypeLike] = None) -> Optional[Callable]:
  """The nudge split into its sources, for the diagnostics (not the train step): a function
  `(state, batch, hyper=None) -> dict` of `(N,)` arrays, or None without layer-wise signals
  (the nudge is then the output error's alone) or for BPTT (no nudge).

  On `batch`, at `state`'s parameters: one free phase, the estimator's nudged phases under
  the whole cost ℒ and again under the output term alone (the signals' κ at 0;
  'random_sign' at +β). `layer_nudge_end` is `layer_nudge_of` ℒ's phases, `layer_nudge_output`
  that of the output term's (what the output error propagates to layer l), and
  `layer_nudge_signal` that of the difference `ds/dβ|_ℒ - ds/dβ|_output`, per example: what
  the layer-wise signals add, the layer's own local force and, through the couplings, that
  of the others. The derivatives are linear in the cost to first order in β, so the
  difference is the response to the signals' cost alone up to O(β), and the two parts add up
  to the total as vectors (their norms obey the triangle inequality). κ is that of the epoch
  of `state`'s last step.
  """
  if nudging is None or ep.estimator == 'bptt':
    return None
  estimator = 'one_sided' if ep.estimator == 'random_sign' else ep.estimator
  balanced = stencil_shape(estimator, ep.holo_points).balanced

  def split(state: TrainState, batch: dict, hyper: Optional[EPHyper] = None) -> dict:
    beta, tol = (ep.beta, ep.tol) if hyper is None else hyper
    x = batch['image'].astype(state_dtype or batch['image'].dtype)
    epoch = jnp.maximum(state.step - 1, 0) // steps_per_epoch
    targets = nudging.targets(state.frozen, state.params, batch, epoch)
    dtype = state_dtype or jax.tree_util.tree_leaves(state.params)[0].dtype
    start = _warm_start(state, batch, dtype)
    start = init_states(spec, x.shape[0], dtype) if start is None else start
    free = relaxation.relax(spec, state.params, x, start,
                            max_steps=ep.free_steps, tol=tol, mode=ep.mode,
                            compute_dtype=ep.compute_dtype, damping=ep.damping,
                            solver=ep.solver)
    s0 = jax.tree_util.tree_map(jax.lax.stop_gradient, free.states)
    betas, weights = stencil_points(estimator, beta, ep.holo_points, jnp.real(s0[0]).dtype)

    def derivative(cost_fn):
      phases = nudged_relaxations(spec, state.params, x, s0, targets, betas, cost_fn,
                                  nudged_steps=ep.nudged_steps, tol=tol, mode=ep.mode,
                                  compute_dtype=ep.compute_dtype, damping=ep.damping,
                                  nudged_phases=ep.nudged_phases, solver=ep.solver)
      return state_derivative(s0, [r.states for r in phases], weights, balanced)

    total, output = derivative(nudging.cost), derivative(nudging.output_cost)
    return {'layer_nudge_end': layer_nudge_of(total),
            'layer_nudge_output': layer_nudge_of(output),
            'layer_nudge_signal': layer_nudge_of(tuple(a - b for a, b in zip(total, output)))}

  return split


def make_train_step(spec: NetworkSpec, ep: EPConfig, tx: optax.GradientTransformation, *,
                    nudging: Optional[Nudging] = None, steps_per_epoch: int = 1,
                    state_dtype: Optional[jax.typing.DTypeLike] = None) -> Callable:
  """The EP train step `(state, batch, hyper=None) -> (state, metrics)` (not jitted).

  `ep` fixes the structure (estimator, step counts, mode, dtypes, damping, how the nudged
  phases run). hyper: an `EPHyper` of β and tol, traced under `jit` (a new value does not
  recompile); None: `ep.beta` and `ep.tol`, constants of the compiled step.
  """

  def train_step(state: TrainState, batch: dict, hyper: Optional[EPHyper] = None):
    beta, tol = (ep.beta, ep.tol) if hyper is None else hyper
    x, labels = batch['image'], batch['label']
    rng, step_rng = jax.random.split(state.rng)
    epoch = state.step // steps_per_epoch
    if nudging is None:
      targets, cost_fn = {'label': labels}, None
    else:
      targets = nudging.targets(state.frozen, state.params, batch, epoch)
      cost_fn = nudging.cost
    out = ep_gradient(spec, state.params, x.astype(state_dtype or x.dtype), targets,
                      beta=beta, estimator=ep.estimator, free_steps=ep.free_steps,
                      nudged_steps=ep.nudged_steps, tol=tol, mode=ep.mode,
                      holo_points=ep.holo_points, cost_fn=cost_fn, rng=step_rng,
                      state_dtype=state_dtype, compute_dtype=ep.compute_dtype,
                      damping=ep.damping, nudged_phases=ep.nudged_phases, solver=ep.solver,
                      free_start=_warm_start(state, batch, state_dtype or x.dtype))
    updates, opt_state = tx.update(out.grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(out.grads)
    metrics = {
        'loss': jnp.mean(out.losses),
        'accuracy': jnp.mean(jnp.argmax(out.logits, -1) == labels),
        'free_steps': out.free.steps.astype(jnp.float32),
        'free_residual': out.free.residual,
        'layer_free_residual': out.free.layer_residuals,
        'nudged_steps': (jnp.mean(jnp.stack([r.steps for r in out.nudged]).astype(jnp.float32))
                         if out.nudged else jnp.zeros((), jnp.float32)),
        'grad_norm': grad_norm,
        'finite': jnp.isfinite(grad_norm) & jnp.isfinite(out.free.residual),
    }
    # BPTT has no nudged phase: its nudges and nudged residuals are zero.
    metrics.update(layer_diagnostics(spec, state.params, out.free.states,
                                     _nudge_derivative(ep, out)))
    metrics['layer_nudged_residual'] = (
        jnp.max(jnp.stack([r.layer_residuals for r in out.nudged]), axis=0) if out.nudged
        else jnp.zeros_like(out.free.layer_residuals))
    if nudging is not None:
      metrics.update(nudging.metrics(state.params, out.free.states, targets))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                              free_store=_store_fixed_points(state, batch, out.free.states))
    return new_state, metrics

  return train_step


def make_eval_step(spec: NetworkSpec, ep: EPConfig, *,
                   state_dtype: Optional[jax.typing.DTypeLike] = None) -> Callable:
  """`(params, batch) -> sums` of loss, correct predictions, examples and free steps.

  A batch may carry `'mask'` (1 real, 0 padding); sums count real examples only.
  """

  def eval_step(params, batch: dict):
    x, labels = batch['image'], batch['label']
    mask = batch.get('mask', jnp.ones(labels.shape, jnp.float32))
    free = inference.free_phase(spec, params, x, free_steps=ep.free_steps, tol=ep.tol,
                                mode=ep.mode, compute_dtype=ep.compute_dtype,
                                damping=ep.damping, solver=ep.solver,
                                state_dtype=state_dtype)
    losses = energy.example_losses(spec, params, free.states, labels)
    correct = jnp.argmax(energy.logits(spec, params, free.states), -1) == labels
    return {'loss_sum': jnp.sum(losses * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask), 'free_steps_sum': free.steps.astype(jnp.float32),
            'batches': jnp.ones((), jnp.float32),
            'finite': jnp.isfinite(free.residual)}

  return eval_step
