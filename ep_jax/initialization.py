"""Weight initialisation of a CRNN: PyTorch's default, He-style, per-layer gains, data-dependent.

Every mode draws PyTorch's default `w, b ~ U(±1/√fan_in)` (`network.init_params`) and multiplies
the weights and bias of dynamical layer l by a gain `g_l` (the readout keeps gain 1):

  pytorch  g_l = scale                       (variance 1/(3 fan_in) at scale 1)
  he       g_l = scale · √6 / a              (variance 2/(a² fan_in): keeps the pre-activation
                                              variance of a half-rectified unit of slope a)
  gains    g_l = gains[l]                    (a list, one per dynamical layer)
  data     g_l chosen on one training batch  (`calibrate_gains`)

`a` is the activation's slope in its linear range (`SLOPES`). A skip link `(i, j)` (`V_ij`, drawn
U(±skip_scale/√C_i) by `network.init_params`) is part of layer j's input: it takes layer j's
gain, so every mode scales all of a layer's incoming weights together; so does an edge of
`spec.edges` (its kind's init, times its destination layer's gain).
 He-style gains suit a
feed-forward pass; a CRNN's layer is driven from below *and* from above, so the same gains
saturate its fixed point (METHOD.md §4b). The data-dependent mode judges an init where the
CRNN lives, at its free fixed point: it moves every layer's gain until the layer's mean
activity `mean |s_l|` at the free fixed point of a training batch lies inside a target range,
keeping only gains whose relaxation converges (`calibrate_gains`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ep_jax import connections, network, relaxation
from ep_jax.network import NetworkSpec

__all__ = [
    'Calibration', 'MODES', 'SLOPES', 'apply_gains', 'calibrate_gains', 'he_gain', 'init_params',
    'layer_gains',
]

MODES = ('pytorch', 'he', 'gains', 'data')

# Slope of each activation in its linear range.
SLOPES = {'hard_sigmoid': 0.5, 'hard_sigmoid_unit': 1.0, 'smooth_sigmoid': 1.0}


def he_gain(activation: str) -> float:
  """`√6 / a`: the gain on U(±1/√fan_in) that gives variance `2 / (a² fan_in)`."""
  try:
    slope = SLOPES[activation]
  except KeyError:
    raise ValueError(f'no slope known for activation {activation!r}; known: '
                     f'{sorted(SLOPES)}') from None
  return math.sqrt(6.0) / slope


def layer_gains(spec: NetworkSpec, mode: str, *, scale: float = 1.0,
                gains: Sequence[float] = ()) -> tuple[float, ...]:
  """The gain of every dynamical layer for `mode` ('data' starts from the 'pytorch' gains).

  Raises:
    ValueError: unknown mode, a non-positive scale or gain, or a gain list of the wrong length.
  """
  if mode not in MODES:
    raise ValueError(f'unknown init mode {mode!r}; known: {MODES}')
  if not scale > 0:
    raise ValueError(f'init scale must be positive, got {scale}')
  n = spec.num_layers
  if mode == 'gains':
    gains = tuple(float(g) for g in gains)
    if len(gains) != n:
      raise ValueError(f'init mode gains needs one gain per dynamical layer ({n}: '
                       f'{spec.layer_names}), got {len(gains)}: {gains}')
    if min(gains) <= 0:
      raise ValueError(f'init gains must be positive, got {gains}')
    return gains
  if mode == 'he':
    return (scale * he_gain(spec.activation),) * n
  return (float(scale),) * n


def _scaled(p: dict, gain) -> dict:
  return {k: v * jnp.asarray(gain, v.dtype) for k, v in p.items()}


def apply_gains(params: dict, gains: Sequence[float], spec: NetworkSpec | None = None) -> dict:
  """Multiplies the weights and bias of dynamical layer l by `gains[l]` (readout untouched),
  each skip link `(i, j)` of `spec.skips` by `gains[j]` (its upper layer's gain) and each
  edge of `spec.edges` by its destination layer's gain."""
  out = dict(params, layers=tuple(_scaled(p, g) for p, g in zip(params['layers'], gains)))
  if ('skips' in params or 'edges' in params) and spec is None:
    raise ValueError('apply_gains needs the spec to scale the skip links and edges')
  if 'skips' in params:
    out['skips'] = tuple(_scaled(p, gains[j]) for p, (_, j) in zip(params['skips'], spec.skips))
  if 'edges' in params:
    out['edges'] = tuple(connections.scale_params(p, gains[e.dst])
                         for p, e in zip(params['edges'], spec.edges))
  return out


def init_params(spec: NetworkSpec, key: jax.Array, *, mode: str = 'pytorch', scale: float = 1.0,
                gains: Sequence[float] = (), readout_scale: float = 1.0,
                skip_scale: float = 1.0, bias_scale: float = 1.0,
                dtype: jax.typing.DTypeLike = jnp.float32) -> dict:
  """PyTorch-default parameters times the gains of `mode` ('data': the 'pytorch' start).

  readout_scale: multiplies the softmax readout's weights and bias (0: a zero readout, whose
  logits start uniform, so the first updates do not silence the last layer to undo random
  logits; the nudge reaches the network once the readout has learned).
  skip_scale: multiplies the skip links' U(±1/√C_i) before the gains (`model.skip_init_scale`).
  bias_scale: multiplies the dynamical layers' initial biases before the gains
    (`model.bias_init_scale`; 0: zero biases, so that at init a layer's activity comes from
    its input and its neighbours, not from a constant drive).
  """
  if readout_scale < 0:
    raise ValueError(f'readout init scale must be >= 0, got {readout_scale}')
  if bias_scale < 0:
    raise ValueError(f'bias init scale must be >= 0, got {bias_scale}')
  params = network.init_params(spec, key, dtype=dtype, skip_scale=skip_scale)
  if bias_scale != 1.0:
    params['layers'] = tuple(dict(p, b=p['b'] * bias_scale) for p in params['layers'])
  params = apply_gains(params, layer_gains(spec, mode, scale=scale, gains=gains), spec)
  if 'readout' in params and readout_scale != 1.0:
    params['readout'] = _scaled(params['readout'], readout_scale)
  return params


@dataclasses.dataclass(frozen=True)
class Calibration:
  """What `calibrate_gains` chose and measured.

  gains: the multiplier applied to each dynamical layer's initial weights and bias.
  activity: mean |s_l| at the free fixed point of the calibration batch with those gains.
  residual: the final free-phase residual (max |Δs| of the last step); steps: steps used.
  evaluations: relaxations run by the search.
  """
  gains: tuple[float, ...]
  activity: tuple[float, ...]
  residual: float
  steps: int
  evaluations: int


def calibrate_gains(spec: NetworkSpec, params: dict, x: jax.Array, *,
                    target: tuple[float, float] = (0.1, 0.3), mode: str = 'async',
                    max_steps: int = 400, tol: float = 1e-4, max_gain: float = 20.0,
                    rounds: int = 30, rate: float = 0.5,
                    damping: float = 1.0,
                    solver: Optional[relaxation.Solver] = None) -> tuple[dict, Calibration]:
  """Data-dependent init: per-layer gains that put each layer's free-phase activity in `target`.

  Each round relaxes the calibration batch `x` from zero states (`mode`, at most `max_steps`
  steps to residual `tol`) and moves the gain of every layer whose mean |s_l| lies outside
  `[target[0], target[1]]` towards the range's geometric middle m:
  `g_l <- g_l (m / mean|s_l|)^rate` (a dead layer counts as 1e-3). A round whose relaxation
  does not converge (residual > tol) is undone and `rate` halved. It stops when every layer
  is in range with a converged relaxation, or after `rounds` rounds, keeping the gains of the
  best converged round (fewest layers out of range, then the smallest log-distance). Gains
  are multipliers on `params`' layers (1 = unchanged), clipped to `[1/max_gain, max_gain]`.
  `damping` and `solver` are the relaxations' (`relaxation.relax`).

  Args:
    spec, params: the network and its starting parameters (e.g. PyTorch's default).
    x: one batch of training inputs `(B, H, W, C)`.
  Returns:
    `(params with the gains applied, Calibration)`.
  Raises:
    ValueError: a malformed target range or rate.
  """
  lo, hi = (float(t) for t in target)
  if not 0.0 < lo < hi <= 1.0:
    raise ValueError(f'init target must be 0 < low < high <= 1, got {target}')
  if not 0.0 < rate <= 1.0:
    raise ValueError(f'calibration rate must be in (0, 1], got {rate}')
  n = spec.num_layers
  states0 = network.init_states(spec, x.shape[0])

  @jax.jit
  def measure(gains):
    p = apply_gains(params, [gains[l] for l in range(n)], spec)
    r = relaxation.relax(spec, p, x, states0, max_steps=max_steps, tol=tol, mode=mode,
                         damping=damping, solver=solver)
    activity = jnp.stack([jnp.mean(jnp.abs(s)) for s in r.states])
    return activity, r.residual, r.steps

  mid = math.sqrt(lo * hi)
  gains = np.ones(n)
  best = None  # (score, gains, activity, residual, steps)
  evaluations = 0
  for _ in range(rounds):
    activity, residual, steps = (np.asarray(v) for v in measure(jnp.asarray(gains, jnp.float32)))
    evaluations += 1
    activity, residual, steps = activity.astype(float), float(residual), int(steps)
    converged = residual <= tol
    outside = (activity < lo) | (activity > hi)
    if converged:
      distance = np.where(outside, np.abs(np.log(np.maximum(activity, 1e-3) / mid)), 0.0)
      score = (int(outside.sum()), float(distance.sum()))
      if best is None or score < best[0]:
        best = (score, gains.copy(), activity, residual, steps)
      if not outside.any():
        break
      step = np.where(outside, (mid / np.maximum(activity, 1e-3)) ** rate, 1.0)
      gains = np.clip(gains * step, 1.0 / max_gain, max_gain)
    else:  # undo towards the best converged gains with a smaller step
      rate *= 0.5
      gains = best[1].copy() if best is not None else gains * 0.5
  if best is None:
    raise ValueError(f'init=data: no converging relaxation found (residual {residual:.2e} > '
                     f'tol {tol} after {max_steps} steps at every gain tried); lower the '
                     'starting scale or use ep.mode=async')
  _, gains, activity, residual, steps = best
  calibration = Calibration(gains=tuple(float(g) for g in gains),
                            activity=tuple(float(a) for a in activity), residual=residual,
                            steps=steps, evaluations=evaluations)
  return apply_gains(params, gains, spec), calibration
