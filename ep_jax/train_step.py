"""Train and eval steps: energy + relaxation + EP estimator + nudging cost + optax update.

`make_train_step` returns a pure `(state, batch, hyper=None) -> (state, metrics)`; `jit` it
once (the training loop does, with the state donated). `hyper`, an `EPHyper(beta, tol)`, makes
β and the relaxation tolerance traced arguments, so one compiled step serves every value (and
`jax.vmap` over `hyper` runs a β sweep); without it the step uses the `EPConfig`'s values. A batch is `{'image': (B, H, W, C) float,
'label': (B,) int}`. The nudging cost defaults to the output loss; the learning signals of
`ep_jax.signals` plug in through the `Nudging` protocol (targets built per batch inside the
step, cost used by the nudged phases, extra metrics).

Metrics are batch means, plus per-layer diagnostics computed from the states the step already
has (`(N,)` arrays): mean |s_l| at the free fixed point, mean |θ_l|, ‖s^β - s^0‖ per example of
the first nudged phase, and the fraction of saturated units (at 0 or 1).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ep_jax import energy, inference
from ep_jax._types import PyTree
from ep_jax.estimators import EPConfig, ep_gradient
from ep_jax.network import NetworkSpec

__all__ = [
    'EPHyper', 'Nudging', 'TrainState', 'create_train_state', 'ep_hyper', 'input_dependence_of',
    'layer_activity', 'layer_diagnostics', 'make_eval_step', 'make_train_step',
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
  (fixed random projections, a teacher's parameters), `{}` for plain EP."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  frozen: Any = flax.struct.field(default_factory=dict)


def create_train_state(params: PyTree, tx: optax.GradientTransformation, rng: jax.Array,
                       frozen: Any = None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng, frozen={} if frozen is None else frozen)


class Nudging(Protocol):
  """What a nudging cost with learning signals provides to the train step."""

  def targets(self, frozen: PyTree, params: PyTree, batch: dict, epoch: jax.Array) -> dict:
    """Per-batch targets (at least 'label'), e.g. teacher activations and κ values."""

  def cost(self, params: PyTree, states: tuple, targets: dict) -> jax.Array:
    """ℒ summed over the batch."""

  def metrics(self, params: PyTree, states: tuple, targets: dict) -> dict:
    """Extra scalar or per-layer metrics at the free fixed point."""


def layer_diagnostics(spec: NetworkSpec, params: dict, free: tuple, nudged: tuple) -> dict:
  """Per-layer activity diagnostics from the free and first nudged phase states.

  `layer_input_dependence`: mean over units of the standard deviation of `s_l` across the
  batch, divided by mean |s_l|: 0 when the layer's fixed point is the same for every input
  (a layer can be active yet carry nothing about the input), about 1 for sparse
  input-driven codes.
  """
  params_by_layer = params['layers']
  mean_abs_param = jnp.stack([jnp.mean(jnp.abs(p['w'])) for p in params_by_layer])
  nudge_norm = jnp.stack([
      jnp.mean(jnp.sqrt(jnp.sum(jnp.abs(b - a).reshape(a.shape[0], -1) ** 2, axis=-1)))
      for a, b in zip(free, nudged)])
  activity = layer_activity(free)
  return {'layer_mean_abs_state': activity['mean_abs'], 'layer_mean_abs_param': mean_abs_param,
          'layer_nudge_norm': nudge_norm, 'layer_saturated_frac': activity['saturated_frac'],
          'layer_input_dependence': activity['input_dependence']}


def layer_activity(states: Sequence[jax.Array]) -> dict:
  """Per-layer activity of states `(B, ...)` (a CRNN's fixed point or a feed-forward pass's
  activations), each an `(L,)` array: `mean_abs` (mean |s_l|), `saturated_frac` (units at 0
  or 1) and `input_dependence` (`input_dependence_of`)."""
  return {'mean_abs': jnp.stack([jnp.mean(jnp.abs(s)) for s in states]),
          'saturated_frac': jnp.stack([jnp.mean((s <= 0.0) | (s >= 1.0)) for s in states]),
          'input_dependence': jnp.stack([input_dependence_of(s) for s in states])}


def input_dependence_of(s: jax.Array) -> jax.Array:
  """`mean_units std_batch(s) / mean |s|` of a state `(B, ...)` (0 for an all-zero state)."""
  scale = jnp.mean(jnp.abs(s))
  return jnp.where(scale > 0, jnp.mean(jnp.std(s, axis=0)) / jnp.where(scale > 0, scale, 1.0),
                   0.0)


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
                      damping=ep.damping, nudged_phases=ep.nudged_phases)
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
    # BPTT has no nudged phase: its nudge norms are zero.
    nudged = out.nudged[0].states if out.nudged else out.free.states
    metrics.update(layer_diagnostics(spec, state.params, out.free.states,
                                     tuple(jnp.real(s) for s in nudged)))
    if nudging is not None:
      metrics.update(nudging.metrics(state.params, out.free.states, targets))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
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
                                damping=ep.damping, state_dtype=state_dtype)
    losses = energy.example_losses(spec, params, free.states, labels)
    correct = jnp.argmax(energy.logits(spec, params, free.states), -1) == labels
    return {'loss_sum': jnp.sum(losses * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask), 'free_steps_sum': free.steps.astype(jnp.float32),
            'batches': jnp.ones((), jnp.float32),
            'finite': jnp.isfinite(free.residual)}

  return eval_step
