"""FLOPs of a relaxation step and of an EP training step, counted from the `NetworkSpec`.

Counted: the convolutions and matrix products, 2 FLOPs per multiply-add, over the products
whose input element lies inside the map (a 'SAME' convolution's zero padding is not counted,
as XLA's cost analysis does not count it). Not counted: elementwise work (activations, pooling
and unpooling, biases, residuals), a few FLOPs per state element against `2 k² C_in` per
element of a convolution.

With `B` the batch, conv layer l (0-based) of kernel `k_l` reading the state below it
`(H_{l-1}, W_{l-1}, C_{l-1})` (the input for l = 0), `τ_l(H)` the (output position, kernel tap)
pairs along an axis of size H whose input lies inside the map (`k H - (k² - 1)/4` for 'SAME',
`k (H - k + 1)` for 'VALID'), dense layer l of width `n_l` reading `n_{l-1}` values, a skip
link `(i, j)` with `(H_j, W_j)` at its destination and the softmax readout `F -> K`:

  drive_l     2 B τ_l(H) τ_l(W) C_{l-1} C_l   `W_l ⋆ s_{l-1}` (dense: 2 B n_{l-1} n_l)
  feedback_l  the same                       `W_l^T ⋆ P_l^T(s_l)` into layer l-1 (l >= 1)
  skip (i,j)  2 · 2 B H_j W_j C_i C_j        its drive into j and its adjoint into i
  readout     2 B F K                        `W_out flat(s_N)`, or its transpose

One relaxation step (`relaxation_step_flops`, sync or async: each convolution is computed once
per step either way, `relaxation._Forces`) is `Σ_{l>=1} (drive_l + feedback_l)` plus the skips,
plus the readout and its transpose (the nudge `∂ℒ/∂s_N`) in a nudged phase; layer 0's drive is
computed once per relaxation (`relaxation_flops`). The contrast (`contrast_flops`) is `∂_θΦ^β`
at each fixed point of the stencil: per conv layer the weight gradient (`drive_l`'s FLOPs), plus
the forward convolution where the layer max-pools (the unpooling routes by its argmax); the
dense, skip and readout weight gradients, plus the readout's forward in a nudged point.
`train_step_flops` adds them up for the free phase, the nudged phases and the contrast, with
layer 0's drive (of the input, the same in every phase) once.

The spec's `edges` (user-defined connection kinds) have no FLOP count: a spec with edges is
refused (ValueError).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ep_jax import estimators, relaxation
from ep_jax.network import NetworkSpec

__all__ = ['LayerFlops', 'StepFlops', 'contrast_flops', 'layer_flops', 'relaxation_flops',
           'relaxation_step_flops', 'train_step_flops']


class LayerFlops(NamedTuple):
  """FLOPs per example of one dynamical layer (see the module docstring).

  drive: `W_l ⋆ s_{l-1}` (or `W_l s_{l-1}`). feedback: its transpose into layer l-1's shape
  (0 for layer 0, whose input is not dynamical). weight_grad: `∂_θ` of the layer's term of Φ
  at one fixed point (the same products as the drive). max_pool: whether the contrast needs
  the forward convolution too.
  """
  drive: int
  feedback: int
  weight_grad: int
  max_pool: bool


class StepFlops(NamedTuple):
  """FLOPs of one EP training step (the whole batch): the free phase, the nudged phases, the
  contrast `∂_θΦ` at the stencil's points and the readout of the free state (the logits the
  step reports). `total` is their sum."""
  free: float
  nudged: float
  contrast: float
  readout: float
  total: float


def _check(spec: NetworkSpec) -> None:
  if spec.edges:
    raise ValueError(f'no FLOP count for the {len(spec.edges)} user-defined edge(s) of the '
                     'spec (spec.edges): count the convolutions and matmuls of a spec without '
                     'them')


def _taps(size: int, k: int, padding: str) -> int:
  """(output position, tap) pairs of a stride-1 convolution along one axis of `size` whose
  input lies inside the axis."""
  if padding == 'VALID':
    return k * (size - k + 1)
  pad = (k - 1) // 2
  return sum(min(size, o + k - pad) - max(0, o - pad) for o in range(size))


def layer_flops(spec: NetworkSpec) -> tuple[LayerFlops, ...]:
  """The per-example FLOPs of each dynamical layer, in layer order (`LayerFlops`)."""
  _check(spec)
  shapes = spec.state_shapes
  below = (spec.input_shape,) + shapes[:-1]
  out = []
  for l, shape in enumerate(shapes):
    if l < spec.num_conv:
      k, padding = spec.kernel_sizes[l], spec.paddings[l]
      h, w, c_in = below[l]
      drive = 2 * _taps(h, k, padding) * _taps(w, k, padding) * c_in * spec.conv[l].channels
      out.append(LayerFlops(drive, drive if l else 0, drive, spec.conv[l].pool == 'max'))
    else:
      drive = 2 * math.prod(below[l]) * shape[0]
      out.append(LayerFlops(drive, drive if l else 0, drive, False))
  return tuple(out)


def _skip_flops(spec: NetworkSpec) -> int:
  """Per example FLOPs of one product `A_k(s_i) V` of every skip link, summed."""
  shapes = spec.state_shapes
  return sum(2 * shapes[j][0] * shapes[j][1] * shapes[i][-1] * shapes[j][-1]
             for i, j in spec.skips)


def _readout_flops(spec: NetworkSpec) -> int:
  """Per example FLOPs of the softmax readout `W_out flat(s_N)` (0 for an MSE output layer)."""
  if spec.readout != 'softmax':
    return 0
  return 2 * math.prod(spec.state_shapes[-1]) * spec.num_classes


def relaxation_step_flops(spec: NetworkSpec, batch: int, *, nudged: bool = False) -> int:
  """FLOPs of one relaxation step of a batch of `batch` (layer 0's drive excluded: a
  relaxation computes it once, `relaxation_flops`): every other layer's drive, every layer's
  feedback, both directions of every skip link, and in a nudged step (`nudged`) the readout
  and its transpose (the nudge `-β ∂ℒ/∂s_N`)."""
  layers = layer_flops(spec)
  per_example = sum(f.drive for f in layers[1:]) + sum(f.feedback for f in layers)
  per_example += 2 * _skip_flops(spec)
  if nudged:
    per_example += 2 * _readout_flops(spec)
  return batch * per_example


def relaxation_flops(spec: NetworkSpec, batch: int, steps: float, *, nudged: bool = False,
                     mode: str = 'sync') -> float:
  """FLOPs of a relaxation of `steps` steps (a mean step count may be fractional): layer 0's
  drive once, then `steps` times `relaxation_step_flops`, and for `mode='async'` the
  convolutions an async step carries to the next, computed once from the initial states
  (`relaxation.carried_conv_layers`)."""
  return (batch * layer_flops(spec)[0].drive + _carried_flops(spec, batch, mode)
          + steps * relaxation_step_flops(spec, batch, nudged=nudged))


def _carried_flops(spec: NetworkSpec, batch: int, mode: str) -> int:
  layers = layer_flops(spec)
  return batch * sum(layers[l].drive
                     for l in relaxation.carried_conv_layers(spec, spec.num_layers, mode))


def contrast_flops(spec: NetworkSpec, batch: int, points: int, *,
                   free_point: bool = False) -> int:
  """FLOPs of `∂_θ Σ_k w_k Φ^{β_k}(s^{β_k})` over `points` nudged fixed points (plus the free
  point `Φ(s^0)` without the cost, for a stencil whose weights do not sum to zero): per point
  every weight gradient, the forward convolution of each max-pooled layer above the first,
  and the readout's forward and weight gradient where the cost reads it; layer 0's forward
  convolution (of the input, the same at every point) once if it max-pools."""
  layers = layer_flops(spec)
  per_point = sum(f.weight_grad for f in layers) + _skip_flops(spec)
  per_point += sum(f.drive for f in layers[1:] if f.max_pool)
  nudged = per_point + 2 * _readout_flops(spec)
  shared = layers[0].drive if layers[0].max_pool else 0
  return batch * (points * nudged + (per_point if free_point else 0) + shared)


def train_step_flops(spec: NetworkSpec, batch: int, *, free_steps: float,
                     nudged_steps: float, estimator: str = 'symmetric', mode: str = 'sync',
                     holo_points: int = 4) -> StepFlops:
  """FLOPs of one EP training step (`train_step.make_train_step`) of a real stencil
  (`estimators.STENCILS`): the free phase of `free_steps` steps (`relaxation_flops`), one
  nudged phase of `nudged_steps` steps (the mean over the phases, with a tolerance) per point
  of the stencil, the contrast at those points and the readout of the free state. Layer 0's
  drive (of the input) is counted once, and so is an async relaxation's carry of the free
  fixed point, where every nudged phase starts: they are the same in every phase and XLA
  computes them once. With vmapped nudged phases and a tolerance every phase runs as long as the longest,
  so the count is then a lower bound. The optimiser's update (elementwise) is not counted.

  Raises:
    ValueError: BPTT or a complex stencil (holomorphic EP's complex arithmetic is not
      counted), or a spec with edges.
  """
  if estimator == 'bptt' or estimator not in estimators.STENCILS:
    raise ValueError(f'FLOPs are counted for the real EP stencils {sorted(estimators.STENCILS)}'
                     f' (not holomorphic), got {estimator!r}')
  shape = estimators.stencil_shape(estimator, holo_points)
  if shape.complex:
    raise ValueError(f'no FLOP count for the complex stencil {estimator!r}')
  free = relaxation_flops(spec, batch, free_steps, mode=mode)
  # Every nudged phase starts from s^0: the async carry of s^0 is computed once for all.
  nudged = _carried_flops(spec, batch, mode) + shape.points * nudged_steps * (
      relaxation_step_flops(spec, batch, nudged=True))
  contrast = contrast_flops(spec, batch, shape.points, free_point=not shape.balanced)
  readout = batch * _readout_flops(spec)
  return StepFlops(float(free), float(nudged), float(contrast), float(readout),
                   float(free + nudged + contrast + readout))
