"""Reference gradients for tests and diagnostics (not used for training).

* BPTT: `∂_θ mean ℒ(s_T(θ))` by backpropagation through `T` unrolled free steps (`lax.scan`)
  from zero states.
* Implicit (recurrent backprop, Almeida-Pineda): at a free fixed point `s* = F(s*, θ)` with
  `F(s, θ) = σ(∂Φ/∂s)`, the exact gradient of `L(θ) = ℒ(s*(θ), θ)` is
  `∂_θ ℒ + (∂_θ F)^T λ` where the adjoint solves `λ = ∂_s ℒ + (∂_s F)^T λ`. We solve it by the
  same fixed-point iteration (convergent wherever the forward relaxation is), with `vjp`s.

Both differentiate the given nudging cost, so with learning signals they are gradients of the
augmented loss `ℓ + Σ κ_l ℓ_l`. Gradients are of the batch mean.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from ep_jax.energy import CostFn, Targets, output_cost
from ep_jax.network import NetworkSpec, init_states
from ep_jax.relaxation import check_call, relax_fixed, step

__all__ = [
    'ImplicitResult', 'bptt_gradient', 'implicit_gradient',
]


class ImplicitResult(NamedTuple):
  """The gradient pytree (like `params`), the adjoint iterations used and the adjoint's final
  residual `max |λ_{k+1} - λ_k|`."""
  grads: dict
  steps: jax.Array
  residual: jax.Array


def bptt_gradient(spec: NetworkSpec, params: dict, x: jax.Array, targets: Targets, *,
                  steps: int, mode: str = 'sync',
                  cost_fn: Optional[CostFn] = None) -> dict:
  """Gradient of `mean ℒ(s_T)` through `steps` (static) unrolled free-phase updates.

  x: inputs `(B, *spec.input_shape)`. targets: the labels `(B,)` or a mapping with 'label'
  (and what `cost_fn` reads). cost_fn: ℒ (default: the output loss).
  """
  cost_fn = output_cost(spec) if cost_fn is None else cost_fn
  batch = x.shape[0]
  dtype = jax.tree_util.tree_leaves(params)[0].dtype
  targets = check_call(spec, x, None, targets)

  def loss(p):
    final = relax_fixed(spec, p, x, init_states(spec, batch, dtype), steps=steps, mode=mode)
    return cost_fn(p, final.states, targets) / batch

  return jax.grad(loss)(params)


def implicit_gradient(spec: NetworkSpec, params: dict, x: jax.Array, targets: Targets,
                      fixed_point: tuple, *, cost_fn: Optional[CostFn] = None,
                      max_steps: int = 10_000, tol: float = 1e-12) -> ImplicitResult:
  """Exact gradient at the free fixed point `fixed_point` by recurrent backprop.

  x, targets, cost_fn: as in `bptt_gradient`; `fixed_point` one `(B, *state_shape)` per layer.
  Returns the gradient pytree, the adjoint iterations used and the adjoint's final residual
  `max |λ_{k+1} - λ_k|`.
  """
  targets = check_call(spec, x, fixed_point, targets)
  cost_fn = output_cost(spec) if cost_fn is None else cost_fn
  batch = x.shape[0]
  s_star = tuple(lax.stop_gradient(s) for s in fixed_point)

  def update_map(p, s):
    return step(spec, p, x, s, None, None, None, 'sync')

  _, vjp_s = jax.vjp(lambda s: update_map(params, s), s_star)
  cost_grad_p, cost_grad_s = jax.grad(lambda p, s: cost_fn(p, s, targets) / batch,
                                      argnums=(0, 1))(params, s_star)

  def cond(carry):
    k, _, residual = carry
    return (k < max_steps) & (residual > tol)

  def body(carry):
    k, lam, _ = carry
    (back,) = vjp_s(lam)
    new = jax.tree_util.tree_map(jnp.add, cost_grad_s, back)
    residual = jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in zip(new, lam)]))
    return k + 1, new, residual

  init = (jnp.zeros((), jnp.int32), cost_grad_s, jnp.asarray(jnp.inf, s_star[0].dtype))
  k, lam, residual = lax.while_loop(cond, body, init)
  _, vjp_p = jax.vjp(lambda p: update_map(p, s_star), params)
  (through_dynamics,) = vjp_p(lam)
  grads = jax.tree_util.tree_map(jnp.add, cost_grad_p, through_dynamics)
  return ImplicitResult(grads, k, residual)
