"""Gradient alignment diagnostics: the GDU property of EP, per parameter group.

For one batch, compare every EP estimate (one-sided, symmetric, holomorphic K-point) at a
range of β with two reference gradients of the same nudging cost ℒ (METHOD.md §2):

* implicit (recurrent backprop at the free fixed point): the exact `∂_θ mean ℒ(s^0(θ))`
  that EP estimates, and
* BPTT through the unrolled free phase (by default as many steps as the free phase needed to
  converge, so that it agrees with the implicit gradient).

With learning signals the cost is the augmented one, `ℓ + Σ κ_l ℓ_l` (pass `cost_fn` and
targets from `ep_jax.signals`), and both references differentiate that same cost.

Reported per parameter group (`ep_jax.optim.group_labels`: `conv1`, ..., `dense1`,
`readout`, `signals`) and for all parameters together (`'all'`):

    cos      <g_EP, g_ref> / (‖g_EP‖ ‖g_ref‖)
    rel_err  ‖g_EP - g_ref‖ / ‖g_ref‖

Everything runs in float64 (`jax.enable_x64(True)` inside `gdu_sweep`) with relaxations to a
residual near machine precision (METHOD.md §6: in float32 the estimates carry 1e-2..1e-1
errors at small β, which hide the bias orders). Holomorphic EP needs a holomorphic activation
(`smooth_sigmoid`) and average pooling: on other networks it is recorded as skipped with the
reason; `smooth_twin(spec)` gives the same network with those two changes.

All functions here are pure (no files); `experiments/gdu.py` is the command line and renders
the report (`markdown`, `plot`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ep_jax import estimators, optim, reference_grads
from ep_jax._types import PyTree
from ep_jax.energy import CostFn, Targets
from ep_jax.network import NetworkSpec, init_states, synapse_names
from ep_jax.relaxation import relax

__all__ = [
    'ALL', 'DEFAULT_BETAS', 'DEFAULT_ESTIMATORS', 'alignment', 'cast_floats', 'compare',
    'gdu_sweep', 'group_order', 'group_vectors', 'holomorphic_unsupported',
    'reference_gradients', 'smooth_twin',
]

DEFAULT_ESTIMATORS = ('one_sided', 'symmetric', 'holomorphic')
DEFAULT_BETAS = (0.01, 0.03, 0.1, 0.3, 1.0)
ALL = 'all'


# ------------------------------------------------------------------------- network checks


holomorphic_unsupported = estimators.holomorphic_unsupported


def smooth_twin(spec: NetworkSpec) -> NetworkSpec:
  """`spec` with the `smooth_sigmoid` activation and every max pool turned into an average pool.

  Same layers, widths and state shapes (so the same parameters fit), but holomorphic dynamics.
  """
  conv = tuple(dataclasses.replace(layer, pool='avg' if layer.pool == 'max' else layer.pool)
               for layer in spec.conv)
  return dataclasses.replace(spec, conv=conv, activation='smooth_sigmoid')


# ------------------------------------------------------------------------------ comparison


def cast_floats(tree: PyTree, dtype: jax.typing.DTypeLike) -> PyTree:
  """Casts the floating (real) leaves of `tree` to `dtype`; other leaves are left alone."""

  def cast(leaf):
    leaf = jnp.asarray(leaf)
    return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

  return jax.tree_util.tree_map(cast, tree)


def group_order(spec: NetworkSpec, labels: Sequence[str]) -> list[str]:
  """Group names in network order (layers, readout), then any other group, sorted."""
  present = set(labels)
  ordered = [name for name in synapse_names(spec) if name in present]
  return ordered + sorted(present - set(ordered))


def group_vectors(tree: PyTree, spec: NetworkSpec) -> dict[str, np.ndarray]:
  """`{group: flat float64 vector}` of a params-shaped pytree, plus `'all'`."""
  labels = jax.tree_util.tree_leaves(optim.group_labels(tree, spec))
  leaves = [np.asarray(leaf, np.float64).ravel() for leaf in jax.tree_util.tree_leaves(tree)]
  parts: dict[str, list] = {}
  for label, leaf in zip(labels, leaves):
    parts.setdefault(label, []).append(leaf)
  out = {g: np.concatenate(parts[g]) for g in group_order(spec, list(parts))}
  out[ALL] = np.concatenate(leaves) if leaves else np.zeros((0,))
  return out


def _nan_to_none(value: float) -> Optional[float]:
  value = float(value)
  return value if math.isfinite(value) else None


def alignment(estimate: np.ndarray, reference: np.ndarray) -> dict:
  """`{'cos', 'rel_err', 'norm', 'ref_norm'}` of two flat vectors (cos / rel_err None where
  undefined, e.g. a zero reference). The norms show when a group's gradient has vanished."""
  n_est, n_ref = np.linalg.norm(estimate), np.linalg.norm(reference)
  with np.errstate(divide='ignore', invalid='ignore'):
    cos = float(np.dot(estimate, reference)) / (n_est * n_ref)
    rel = np.linalg.norm(estimate - reference) / n_ref
  return {'cos': _nan_to_none(cos), 'rel_err': _nan_to_none(rel), 'norm': float(n_est),
          'ref_norm': float(n_ref)}


def compare(estimate: PyTree, reference: PyTree, spec: NetworkSpec) -> dict[str, dict]:
  """Per group (and `'all'`): `{'cos', 'rel_err'}` of `estimate` against `reference`."""
  est, ref = group_vectors(estimate, spec), group_vectors(reference, spec)
  return {g: alignment(est[g], ref[g]) for g in ref}


# ------------------------------------------------------------------------------ references


def reference_gradients(spec: NetworkSpec, params: dict, x: jax.Array, targets: Targets, *,
                        cost_fn: Optional[CostFn] = None, max_steps: int = 20_000,
                        tol: float = 1e-12, bptt_steps: Optional[int] = None,
                        mode: str = 'sync') -> tuple[dict, dict, dict]:
  """Implicit and BPTT gradients of `mean ℒ` on one batch.

  Args:
    spec, params, x, targets, cost_fn: as for `estimators.ep_gradient` (call in float64).
    max_steps, tol: the free phase relaxes to residual `tol` (at most `max_steps` steps);
      the adjoint of the implicit gradient uses the same limits.
    bptt_steps: unrolled steps of BPTT (default: the free phase's step count).
    mode: the relaxation's update schedule ('sync' or 'async'; a network trained with async
      updates may oscillate under sync ones, so analyse it with the schedule it was trained
      with).
  Returns:
    `(implicit_grads, bptt_grads, info)`, info with the free phase's and the adjoint's steps
    and residuals, the BPTT step count, and BPTT against implicit per group.
  """
  batch = x.shape[0]
  dtype = jax.tree_util.tree_leaves(params)[0].dtype
  free = jax.jit(functools.partial(relax, spec, max_steps=max_steps, tol=tol, mode=mode))(
      params, x, init_states(spec, batch, dtype))
  implicit = jax.jit(functools.partial(reference_grads.implicit_gradient, spec,
                                       cost_fn=cost_fn, max_steps=max_steps, tol=tol))(
      params, x, targets, free.states)
  steps = int(bptt_steps) if bptt_steps else max(1, int(free.steps))
  bptt = jax.jit(functools.partial(reference_grads.bptt_gradient, spec, steps=steps,
                                   cost_fn=cost_fn, mode=mode))(params, x, targets)
  info = {'free_steps': int(free.steps), 'free_residual': float(free.residual),
          'implicit_steps': int(implicit.steps), 'implicit_residual': float(implicit.residual),
          'bptt_steps': steps, 'tol': float(tol), 'max_steps': int(max_steps),
          'bptt_vs_implicit': compare(bptt, implicit.grads, spec)}
  info['converged'] = bool(info['free_residual'] <= tol and info['implicit_residual'] <= tol)
  return implicit.grads, bptt, info


# ------------------------------------------------------------------------------- the sweep


def gdu_sweep(spec: NetworkSpec, params: dict, x: jax.Array, targets: Targets, *,
              cost_fn: Optional[CostFn] = None,
              betas: Sequence[float] = DEFAULT_BETAS,
              estimator_names: Sequence[str] = DEFAULT_ESTIMATORS,
              holo_points: int = 4, max_steps: int = 20_000, tol: float = 1e-12,
              bptt_steps: Optional[int] = None, x64: bool = True, mode: str = 'sync',
              log: Optional[Callable[[str], None]] = None) -> dict:
  """EP estimates against the implicit and BPTT gradients, per estimator, β and group.

  Args:
    spec: the network. params: its parameters (plus any trainable signal heads `cost_fn`
      reads). x: the batch's inputs `(B, H, W, C)`. targets: at least `'label'` (and whatever
      `cost_fn` reads, e.g. from `LayerSignals.targets`).
    cost_fn: the nudging cost ℒ (default: the output loss).
    betas: the |β| values. estimator_names: from `estimators.STENCILS`.
    holo_points: K of the holomorphic estimator.
    max_steps, tol: step limit and residual tolerance of every relaxation (free, nudged and
      the implicit adjoint); the nudged phases use the same limits, so each estimate is that
      of exact fixed points.
    bptt_steps: see `reference_gradients`.
    x64: run in float64 (params, inputs and floating targets are cast).
    mode: the update schedule of every relaxation (see `reference_gradients`).
    log: optional progress printer.
  Returns:
    A JSON-able dict: `groups`, `betas`, `references` (see `reference_gradients`'s info, plus
      `implicit_norms`: the implicit gradient's norm per group) and
    `estimators[name]` = `{'skipped': reason or None, 'results': [per β: {'beta',
    'nudged_steps', 'nudged_residual', 'seconds', 'implicit': {group: {cos, rel_err}},
    'bptt': {...}}]}`.
  """
  log = log or (lambda _: None)
  for name in estimator_names:
    if name not in estimators.STENCILS:
      raise ValueError(f'unknown EP estimator {name!r} (BPTT is a reference here); known: '
                       f'{tuple(estimators.STENCILS)}')
  betas = [float(b) for b in betas]
  if not betas or any(not (math.isfinite(b) and b > 0) for b in betas):
    raise ValueError(f'betas must be finite numbers > 0, got {betas}')

  context = jax.enable_x64(True) if x64 else contextlib.nullcontext()
  with context:
    dtype = jnp.float64 if x64 else jax.tree_util.tree_leaves(params)[0].dtype
    params, x, targets = cast_floats((params, x, targets), dtype)
    start = time.time()
    implicit, bptt, info = reference_gradients(spec, params, x, targets, cost_fn=cost_fn,
                                               max_steps=max_steps, tol=tol,
                                               bptt_steps=bptt_steps, mode=mode)
    info['seconds'] = time.time() - start
    log(f"  references: free {info['free_steps']} steps (residual "
        f"{info['free_residual']:.1e}), adjoint {info['implicit_steps']} steps (residual "
        f"{info['implicit_residual']:.1e}), BPTT {info['bptt_steps']} steps, BPTT vs implicit "
        f"rel err {_fmt(info['bptt_vs_implicit'][ALL]['rel_err'])}")
    vectors = group_vectors(implicit, spec)
    groups = list(vectors)
    # How large the true gradient is per group: vanishing gradients show here.
    info['implicit_norms'] = {g: float(np.linalg.norm(v)) for g, v in vectors.items()}
    out = {'groups': groups, 'betas': betas, 'holo_points': int(holo_points),
           'references': info, 'estimators': {}}
    for name in estimator_names:
      reason = (holomorphic_unsupported(spec)
                if estimators.stencil_shape(name, holo_points).complex else None)
      entry = {'skipped': None, 'results': []}
      out['estimators'][name] = entry
      if reason is not None:
        entry['skipped'] = f'holomorphic EP needs smooth dynamics: {reason}'
        log(f'  {name}: skipped ({entry["skipped"]})')
        continue
      estimate = jax.jit(functools.partial(
          estimators.ep_gradient, spec, estimator=name, free_steps=max_steps,
          nudged_steps=max_steps, tol=tol, holo_points=holo_points, cost_fn=cost_fn,
          rng=jax.random.PRNGKey(0), mode=mode))
      for beta in betas:
        t0 = time.time()
        result = estimate(params, x, targets, beta=jnp.asarray(beta, dtype))
        grads = jax.device_get(result.grads)
        row = {'beta': beta,
               'nudged_steps': [int(r.steps) for r in result.nudged],
               'nudged_residual': [float(r.residual) for r in result.nudged],
               'implicit': compare(grads, implicit, spec),
               'bptt': compare(grads, bptt, spec)}
        row['seconds'] = time.time() - t0
        entry['results'].append(row)
        log(f"  {name} beta={beta:g}: rel err vs implicit {_fmt(row['implicit'][ALL]['rel_err'])}"
            f", cos {_fmt(row['implicit'][ALL]['cos'], '.6f')} ({row['seconds']:.1f}s)")
  return out


def _fmt(value, spec: str = '.2e') -> str:
  return 'n/a' if value is None else format(value, spec)
