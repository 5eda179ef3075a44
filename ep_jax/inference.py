"""Inference with a trained CRNN: relax the free phase from zero states, then read out.

A CRNN has no forward pass: its prediction is the readout of the free fixed point. `predict`
returns the logits; `free_phase` the relaxation itself (states, steps, residual). Both are pure
and jittable with the `NetworkSpec` static, which it can be (it is a frozen, hashable
dataclass):

    predict_fn = jax.jit(inference.predict, static_argnames=('spec', 'mode'))
    z = predict_fn(spec, params, x, free_steps=250, tol=1e-4, mode='async')

or `jitted_predict` (the same, with every structural argument static). The train loop's eval
step (`train_step.make_eval_step`) computes its accuracy from the same relaxation.
"""

from __future__ import annotations

from typing import Optional

import jax

from ep_jax import energy
from ep_jax.network import NetworkSpec, check_input, init_states
from ep_jax.relaxation import RelaxResult, Solver, relax

__all__ = [
    'free_phase', 'jitted_predict', 'predict',
]


def free_phase(spec: NetworkSpec, params: dict, x: jax.Array, *,
               free_steps: jax.typing.ArrayLike = 250, tol: jax.typing.ArrayLike = 0.0,
               mode: str = 'sync', compute_dtype: Optional[jax.typing.DTypeLike] = None,
               damping: float = 1.0, solver: Optional[Solver] = None,
               state_dtype: Optional[jax.typing.DTypeLike] = None) -> RelaxResult:
  """The free phase from zero states: `relax` without a nudge.

  Args:
    spec, params: the network and its parameters. x: inputs `(B, *spec.input_shape)`, cast
      to the states' dtype (another shape: ValueError).
    free_steps: T1, the step limit (it bounds a `while_loop`: may be traced; `jitted_predict`
      traces it). tol: residual tolerance (<= 0: exactly `free_steps` steps).
      mode: 'sync' or 'async'. compute_dtype, damping, solver: as in `relax`.
    state_dtype: dtype of the states (default: the parameters' dtype).
  """
  batch = check_input(spec, x)
  dtype = state_dtype or jax.tree_util.tree_leaves(params)[0].dtype
  return relax(spec, params, x.astype(dtype), init_states(spec, batch, dtype),
               max_steps=free_steps, tol=tol, mode=mode, compute_dtype=compute_dtype,
               damping=damping, solver=solver)


def predict(spec: NetworkSpec, params: dict, x: jax.Array, *,
            free_steps: jax.typing.ArrayLike = 250, tol: jax.typing.ArrayLike = 0.0,
            mode: str = 'sync', compute_dtype: Optional[jax.typing.DTypeLike] = None,
            damping: float = 1.0, solver: Optional[Solver] = None,
            state_dtype: Optional[jax.typing.DTypeLike] = None) -> jax.Array:
  """Logits `(B, num_classes)` at the free fixed point reached from zero states.

  The arguments are `free_phase`'s; a trained run's are its config's `ep.free_steps`,
  `ep.tol`, `ep.mode`, `ep.damping`, its solver (as the eval step uses them). The predicted classes are
  `argmax(logits, -1)`.
  """
  free = free_phase(spec, params, x, free_steps=free_steps, tol=tol, mode=mode,
                    compute_dtype=compute_dtype, damping=damping, solver=solver,
                    state_dtype=state_dtype)
  return energy.logits(spec, params, free.states)


# `predict` under `jax.jit` with the network and every structural argument static (a new
# compilation per spec, mode, dtype, damping or solver; free_steps and tol are traced).
jitted_predict = jax.jit(predict, static_argnames=('spec', 'mode', 'compute_dtype', 'damping',
                                                   'solver', 'state_dtype'))
