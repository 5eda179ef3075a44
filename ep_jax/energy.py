"""The primitive function Φ of a convolutional CRNN and the output costs.

    Φ(x, s; θ) = Σ_{l ≤ C} < s_l , P_l(W_l ⋆ s_{l-1} + b_l) >  +  Σ_{l > C} < s_l , W_l s_{l-1} + b_l >
                 + Σ_{(i, j) ∈ skips} < s_j , A_k(s_i) V_ij >
                 + Σ_{e ∈ edges} < s_dst , drive_e(θ_e, s_src) >

with `s_0 = x`. The third sum is over the skip links of `spec.skips` (none by default): `A_k` is
the `2^k x 2^k` average pooling with `2^k = H_i / H_j` (the identity for k = 0) and `V_ij` a
`(C_i, C_j)` matrix, a 1x1 convolution without bias (`skip_drive`; as a connection kind,
`skip_kind`). The last is over the user-defined edges of `spec.edges` (`ep_jax.connections`; a
lateral edge, src = dst, counts ½). `links(spec)` lists both. Every term is a small pure
function of the parameters and the two states it couples: a new layer type is one new
interaction function. All energies and costs are *summed over the batch*, so
that `∂Φ/∂s` is the per-example force and parameter gradients are batch sums.

States may be complex (holomorphic EP): parameters and inputs are cast to the states' dtype, and
every operation used with a smooth activation and average pooling is holomorphic.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from ep_jax import connections
from ep_jax.connections import ConnectionKind, Link
from ep_jax.network import POOL_TIES, NetworkSpec

__all__ = [
    'CostFn', 'Targets', 'as_targets', 'avg_pool_factor', 'check_labels', 'compute_dtype', 'conv2d',
    'conv2d_loop', 'conv_drive', 'conv_pre', 'cross_entropy', 'dense_drive', 'drive_sources',
    'example_losses', 'flip_kernel', 'layer_drive', 'layer_drives', 'links', 'log_softmax',
    'logits', 'matmul', 'nudged_primitive', 'output_cost', 'pool2d', 'pool2d_transpose',
    'primitive', 'skip_drive', 'skip_feedback', 'skip_kind', 'squared_error', 'target_labels',
    'transpose_padding',
]

# A nudging cost: (params, states, targets) -> scalar summed over the batch.
CostFn = Callable[[dict, tuple, dict], jax.Array]
# What a cost is nudged towards: the integer labels `(B,)`, or a mapping with at least
# 'label' and whatever else the cost reads (teacher activations, κ, ...).
Targets = Union[Mapping[str, Any], jax.Array]


def as_targets(targets: Optional[Targets]) -> Optional[Mapping[str, Any]]:
  """`targets` as a mapping: labels `y` become `{'label': y}`; a mapping or None is returned
  as it is. Every public function that takes targets or labels accepts both forms through it."""
  if targets is None or isinstance(targets, Mapping):
    return targets
  return {'label': targets}


def target_labels(targets: Targets) -> jax.Array:
  """The labels `(B,)` of `targets`: the array itself, or `targets['label']`."""
  targets = as_targets(targets)
  if 'label' not in targets:
    raise ValueError(f"targets must hold 'label' (the integer labels), got keys "
                     f'{sorted(targets)}')
  return targets['label']


def check_labels(targets: Targets, batch: int) -> None:
  """Raises ValueError unless the labels of `targets` are integers of shape `(batch,)`.

  Static (shapes and dtypes only): free under `jit`.
  """
  labels = target_labels(targets)
  shape, dtype = jnp.shape(labels), jnp.result_type(labels)
  if shape != (batch,) or not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f'labels must be integers of shape (B,) = ({batch},) for inputs of batch '
                     f'size {batch}, got {dtype} of shape {shape}')


_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _conv(s, w, padding, out_dtype=None):
  return lax.conv_general_dilated(s, w, (1, 1), padding, dimension_numbers=_DIMS,
                                  preferred_element_type=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_nhwc(s, w, padding, out_dtype):
  return _conv(s, w, padding, out_dtype)


def _conv_nhwc_fwd(s, w, padding, out_dtype):
  return _conv(s, w, padding, out_dtype), (s, w)


def _conv_nhwc_bwd(padding, out_dtype, residuals, g):
  """Both cotangents as canonical NHWC/HWIO convolutions (explicit transposes).

  XLA's own transposes of a convolution (kernel in 'OI' order, batch/feature-swapped weight
  gradients) fell off the fast convolution path on CPU inside a differentiated scan (BPTT ran
  ~30x slower); written this way they stay on it. Linear transposes, so valid for complex
  (holomorphic) cotangents too. With a wider `out_dtype` (mixed precision) the cotangent is
  cast back to the operands' dtype and accumulated in `out_dtype`.
  """
  s, w = residuals
  g = g.astype(s.dtype)
  acc = out_dtype
  ds = _conv(g, flip_kernel(w), transpose_padding(w, padding), acc)
  # dW[dy, dx, i, o] = Σ_{b,y,x} s[b, y+dy, x+dx, i] g[b, y, x, o]: a convolution of s with
  # "batch" and "feature" swapped by the gradient g used as the kernel.
  k_h, k_w = w.shape[0], w.shape[1]
  pad = (((k_h - 1) // 2,) * 2, ((k_w - 1) // 2,) * 2) if padding == 'SAME' else 'VALID'
  dw = _conv(s.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), pad, acc)  # (C_in, kh, kw, C_out)
  return ds.astype(s.dtype), dw.transpose(1, 2, 0, 3).astype(w.dtype)


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv2d(s_prev: jax.Array, w: jax.Array, padding: str = 'SAME') -> jax.Array:
  """`W ⋆ s`: stride-1 convolution, NHWC input `(B, H, W, C_in)`, HWIO kernel."""
  return _conv(s_prev, w.astype(s_prev.dtype), padding)


def conv2d_loop(s_prev: jax.Array, w: jax.Array, padding: str = 'SAME',
                compute_dtype: Optional[jax.typing.DTypeLike] = None) -> jax.Array:
  """`conv2d` with a hand-written VJP, for convolutions inside loops that get differentiated.

  The relaxation uses it, so BPTT through `relax_fixed` keeps its convolutions on XLA's fast
  CPU path (see `_conv_nhwc_bwd`: with XLA's own transposes a T=5 BPTT step of the benchmark
  network is about 30x slower on CPU). Same values and gradients as `conv2d`; no forward-mode
  (jvp) rule. Outside loops XLA's own transposes are as fast or faster, so `conv2d` keeps them.

  compute_dtype: mixed precision. Both operands are rounded to it (e.g. bfloat16) and the
  products are accumulated and returned in `s_prev`'s dtype (`preferred_element_type`), so
  the states keep their precision; only the convolution's inputs are rounded.
  """
  if compute_dtype is None or jnp.dtype(compute_dtype) == s_prev.dtype:
    return _conv_nhwc(s_prev, w.astype(s_prev.dtype), padding, None)
  return _conv_nhwc(s_prev.astype(compute_dtype), w.astype(compute_dtype), padding,
                    s_prev.dtype)


def matmul(a: jax.Array, b: jax.Array,
           compute_dtype: Optional[jax.typing.DTypeLike] = None) -> jax.Array:
  """`a @ b` in `a`'s dtype, or with operands rounded to `compute_dtype` and accumulated in it."""
  if compute_dtype is None or jnp.dtype(compute_dtype) == a.dtype:
    return a @ b.astype(a.dtype)
  return jnp.matmul(a.astype(compute_dtype), b.astype(compute_dtype),
                    preferred_element_type=a.dtype)


def _window_max(windows: jax.Array, ties: str) -> jax.Array:
  """Max of each 2x2 window of `(B, H/2, 2, W/2, 2, C)`, keeping the window axes (size 1).

  Elementwise maxima and selects of the four window slices rather than a reduction or a
  gather: XLA fuses them (and their derivative) with neighbouring elementwise work. The value
  is the maximum either way; `ties` decides where the derivative of a tied window goes:
  'first': all of it to the first maximal element in row-major window order (torch's
  `max_pool2d`; the same as a stop-gradient argmax and `take_along_axis`, whose scatter
  derivative is ~8x slower on CPU); 'split': as `lax.max`, evenly between tied operands.
  A NaN in a window gives NaN (its derivative then split as `lax.max`).
  """
  a, b = windows[:, :, 0:1, :, 0:1], windows[:, :, 0:1, :, 1:2]
  c, d = windows[:, :, 1:2, :, 0:1], windows[:, :, 1:2, :, 1:2]
  m = jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))
  if ties == 'split':
    return m
  if ties != 'first':
    raise ValueError(f'unknown pool_ties {ties!r}; known: {POOL_TIES}')
  return jnp.where(a == m, a, jnp.where(b == m, b, jnp.where(c == m, c, jnp.where(d == m, d, m))))


def pool2d(u: jax.Array, kind: str | None, ties: str = 'first') -> jax.Array:
  """2x2 stride-2 max or average pooling of `(B, H, W, C)` (odd edges dropped); `None`: identity.

  ties: where max pooling's derivative goes in a tied window ('first' or 'split', see
  `_window_max`); the values do not depend on it.
  """
  if kind is None:
    return u
  b, h, w, c = u.shape
  windows = u[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
  if kind == 'max':
    if jnp.iscomplexobj(u):
      raise ValueError('max pooling has no complex extension: holomorphic EP needs average '
                       "pooling ('A' in the layout)")
    return _window_max(windows, ties)[:, :, 0, :, 0]
  if kind == 'avg':
    return jnp.mean(windows, axis=(2, 4))
  raise ValueError(f'unknown pool {kind!r}')


def flip_kernel(w: jax.Array) -> jax.Array:
  """The kernel of the adjoint convolution: spatially flipped, input/output channels swapped."""
  return jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)


def transpose_padding(w: jax.Array, padding: str) -> str | tuple[tuple[int, int], ...]:
  """Padding of the adjoint of a stride-1 convolution ('VALID' becomes a full padding)."""
  if padding == 'SAME':
    return padding
  k_h, k_w = w.shape[0], w.shape[1]
  return ((k_h - 1, k_h - 1), (k_w - 1, k_w - 1))


def pool2d_transpose(g: jax.Array, u: jax.Array | tuple[int, ...], kind: str | None,
                     ties: str = 'first') -> jax.Array:
  """The adjoint of `pool2d(·, kind, ties)` at `u` applied to `g`: `∂/∂u <g, P(u)>`, like `u`.

  Exactly the vector-Jacobian product of `pool2d` (so the explicit forces equal `jax.grad` of
  Φ): average pooling spreads `g/4` over each window; max pooling routes `g` to the window's
  maximum of `u` (a tie to its first maximum or split evenly, per `ties`); the odd edge
  rows/columns that pooling drops get zero. Only max pooling reads the values of `u`: for the
  others `u` may be just its shape `(B, H, W, C)`.
  """
  if kind is None:
    return g
  if isinstance(u, tuple):
    if kind == 'max':
      raise ValueError('max unpooling needs the values of the pooled input, not its shape')
    u = jnp.zeros(u, g.dtype)
  _, vjp = jax.vjp(lambda v: pool2d(v, kind, ties), u)
  return vjp(g)[0]


def conv_pre(p: dict, s_prev: jax.Array, padding: str) -> jax.Array:
  """`W ⋆ s_prev + b`: a convolutional layer's input before pooling, `(B, H, W, C)`."""
  return conv2d(s_prev, p['w'], padding) + p['b'].astype(s_prev.dtype)


def conv_drive(p: dict, s_prev: jax.Array, pool: str | None, padding: str,
               ties: str = 'first') -> jax.Array:
  """`P(W ⋆ s_prev + b)`: what a convolutional layer receives from below, `(B, H', W', C)`."""
  return pool2d(conv_pre(p, s_prev, padding), pool, ties)


def dense_drive(p: dict, s_prev: jax.Array) -> jax.Array:
  """`W flat(s_prev) + b`, `(B, n)`."""
  flat = s_prev.reshape(s_prev.shape[0], -1)
  return flat @ p['w'].astype(flat.dtype) + p['b'].astype(flat.dtype)


def layer_drive(spec: NetworkSpec, l: int, p: dict, s_prev: jax.Array) -> jax.Array:
  """drive_l(s_{l-1}) of layer l (0-based) with parameters `p`: `conv_drive` with the layer's
  pool and padding and the spec's tie rule for a conv layer, `dense_drive` otherwise."""
  if l < spec.num_conv:
    return conv_drive(p, s_prev, spec.conv[l].pool, spec.paddings[l], spec.pool_ties)
  return dense_drive(p, s_prev)


def avg_pool_factor(s: jax.Array, factor: int) -> jax.Array:
  """`factor x factor` average pooling of `(B, H, W, C)` (H, W multiples of `factor`)."""
  if factor == 1:
    return s
  b, h, w, c = s.shape
  return jnp.mean(s.reshape(b, h // factor, factor, w // factor, factor, c), axis=(2, 4))


def skip_drive(w: jax.Array, s_src: jax.Array, factor: int,
               compute_dtype: Optional[jax.typing.DTypeLike] = None) -> jax.Array:
  """`A_k(s_src) V`: what a skip link `(i, j)` sends up to layer j, `(B, H_j, W_j, C_j)`.

  `s_src` is layer i's state `(B, H_i, W_i, C_i)`, `factor = 2^k = H_i / H_j`, `w` the
  `(C_i, C_j)` matrix V of the 1x1 convolution. Pooling before the 1x1 map (they commute).
  """
  return matmul(avg_pool_factor(s_src, factor), w, compute_dtype)


def skip_feedback(w: jax.Array, s_dst: jax.Array, factor: int,
                  compute_dtype: Optional[jax.typing.DTypeLike] = None) -> jax.Array:
  """`A_k^T(s_dst V^T)`: the adjoint of `skip_drive` in `s_src`, `∂/∂s_i < s_j, A_k(s_i) V >`.

  `s_j V^T` spread evenly over each `factor x factor` window (the adjoint of average pooling:
  every element of the window gets `1/factor²` of it), `(B, H_i, W_i, C_i)`.
  """
  g = matmul(s_dst, w.T, compute_dtype)
  if factor == 1:
    return g
  g = jnp.repeat(jnp.repeat(g, factor, axis=1), factor, axis=2)
  return g / jnp.asarray(factor * factor, g.dtype)


@functools.lru_cache(maxsize=None)
def skip_kind(factor: int) -> ConnectionKind:
  """The skip link as a connection kind: `A_k(s_src) V` with `factor = 2^k`, θ = `{'w': V}`.

  One object per factor (cached), so specs stay equal and hashable. Its `feedback` is the
  hand-written adjoint `skip_feedback`, equal to the generic `jax.vjp` of `skip_drive`.
  `init` draws `V ~ U(±1/√C_src)` (`network.init_params` draws the skips of `spec.skips`
  itself, with their `skip_scale`).
  """

  def drive(p, s_src, compute_dtype=None):
    return skip_drive(p['w'], s_src, factor, compute_dtype)

  def feedback(p, s_dst, s_src, compute_dtype=None):
    del s_src  # linear: the adjoint does not depend on it
    return skip_feedback(p['w'], s_dst, factor, compute_dtype)

  def init(key, src_shape, dst_shape, dtype):
    bound = 1.0 / src_shape[-1] ** 0.5
    return {'w': jax.random.uniform(key, (src_shape[-1], dst_shape[-1]), dtype, -bound, bound)}

  return ConnectionKind(f'skip{factor}', drive, init, feedback, mixed_precision=True)


@functools.lru_cache(maxsize=None)
def links(spec: NetworkSpec) -> tuple[Link, ...]:
  """Every extra link of Φ: the skips of `spec.skips` (`skip_kind`, parameters
  `params['skips']`), then the edges of `spec.edges` (`params['edges']`)."""
  skips = tuple(Link(i, j, skip_kind(f), 'skips', k)
                for k, ((i, j), f) in enumerate(zip(spec.skips, spec.skip_factors)))
  return skips + tuple(Link(e.src, e.dst, e.kind, 'edges', k) for k, e in enumerate(spec.edges))


def layer_drives(spec: NetworkSpec, params: dict, x: jax.Array,
                 states: tuple) -> tuple[jax.Array, ...]:
  """Bottom-up drive of every layer given the states below it (the chain part of Φ; the skip
  links' and edges' terms are `connections.edge_energy` of `links(spec)`)."""
  dtype = states[0].dtype
  below = (x.astype(dtype),) + tuple(states[:-1])
  return tuple(layer_drive(spec, l, p, below[l]) for l, p in enumerate(params['layers']))


def compute_dtype(dtype: jax.typing.DTypeLike) -> jnp.dtype:
  """The dtype energies and costs are evaluated in: float32 at least (bfloat16 states are
  upcast, so sums over the batch and the EP contrast do not lose the nudge in rounding)."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
    return jnp.dtype(jnp.float32)
  return dtype


def primitive(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple) -> jax.Array:
  """Φ(x, s; θ) summed over the batch (scalar, the states' dtype, at least float32)."""
  dtype = compute_dtype(states[0].dtype)
  states = tuple(s.astype(dtype) for s in states)
  drives = layer_drives(spec, params, x, states)
  phi = sum(jnp.sum(s * d) for s, d in zip(states, drives))
  if spec.skips or spec.edges:
    phi = phi + connections.edge_energy(links(spec), params, states)
  return phi


def drive_sources(spec: NetworkSpec, params: dict, x: jax.Array,
                  states: tuple) -> dict[str, tuple[jax.Array, ...]]:
  """Where each dynamical layer's drive `u_l = ∂Φ/∂s_l` comes from, at `states`.

  `'below'`: layer l's own drive of the state (or input) under it, bias included
  (`layer_drives`); `'above'`: the chain's feedback from layer l+1,
  `∂/∂s_l < s_{l+1}, drive_{l+1}(s_l) >` (0 for the top dynamical layer; a softmax readout is
  not part of Φ); `'links'`: the skip links' and edges' terms `∂ edge_energy / ∂s_l`;
  `'total'`: `∂Φ/∂s_l` by autodiff of `primitive`, equal to the sum of the three. Each a tuple
  of arrays of the states' shapes `(B, ...)`, in the dtype `primitive` evaluates in. With
  `s = σ(u)`, a layer is silenced by whichever part makes u negative.
  """
  dtype = compute_dtype(states[0].dtype)
  states = tuple(s.astype(dtype) for s in states)
  total = jax.grad(lambda s: primitive(spec, params, x, s))(states)
  below = layer_drives(spec, params, x, states)
  above = []
  for l in range(len(states)):
    if l + 1 < len(states):
      _, vjp = jax.vjp(lambda s_l, l=l: layer_drive(spec, l + 1, params['layers'][l + 1], s_l),
                       states[l])
      above.append(vjp(states[l + 1])[0])
    else:
      above.append(jnp.zeros_like(states[l]))
  if spec.skips or spec.edges:
    links_part = jax.grad(lambda s: connections.edge_energy(links(spec), params, s))(states)
  else:
    links_part = tuple(jnp.zeros_like(s) for s in states)
  return {'total': tuple(total), 'below': tuple(below), 'above': tuple(above),
          'links': tuple(links_part)}


def logits(spec: NetworkSpec, params: dict, states: tuple) -> jax.Array:
  """Readout `z = W_out flat(s_N) + b_out` (softmax mode) or the output layer `s_N` (MSE)."""
  if spec.readout == 'mse':
    return states[-1]
  return dense_drive(params['readout'], states[-1])


def log_softmax(z: jax.Array) -> jax.Array:
  """Log-softmax over the last axis, holomorphic in `z` (shifted by the real max, a constant)."""
  shift = lax.stop_gradient(jnp.max(jnp.real(z), axis=-1, keepdims=True))
  return z - shift - jnp.log(jnp.sum(jnp.exp(z - shift), axis=-1, keepdims=True))


def cross_entropy(z: jax.Array, labels: Targets) -> jax.Array:
  """Per-example `logsumexp(z) - z_y`, `(B,)`; holomorphic in `z`. labels: `(B,)` or targets."""
  labels = target_labels(labels)
  return -jnp.take_along_axis(log_softmax(z), labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def squared_error(z: jax.Array, labels: Targets, num_classes: int) -> jax.Array:
  """Per-example `½ ‖z - onehot(y)‖²`, `(B,)`. labels: `(B,)` or targets."""
  onehot = jax.nn.one_hot(target_labels(labels), num_classes, dtype=z.dtype)
  return 0.5 * jnp.sum((z - onehot) ** 2, axis=-1)


def example_losses(spec: NetworkSpec, params: dict, states: tuple,
                   labels: Targets) -> jax.Array:
  """The output loss ℓ per example, `(B,)`: cross-entropy (softmax) or squared error (MSE).

  labels: the integer labels `(B,)`, or targets holding them under 'label'.
  """
  check_labels(labels, states[-1].shape[0])
  labels = target_labels(labels)
  z = logits(spec, params, states)
  if spec.readout == 'mse':
    return squared_error(z, labels, spec.num_classes)
  return cross_entropy(z, labels)


def output_cost(spec: NetworkSpec) -> CostFn:
  """The plain EP nudging cost ℒ = Σ_batch ℓ(z(s_N), y): `(params, states, targets) -> scalar`,
  targets the labels y or a mapping with y under 'label'."""

  def cost(params, states, targets):
    return jnp.sum(example_losses(spec, params, states, targets))

  return cost


def nudged_primitive(spec: NetworkSpec, params: dict, x: jax.Array, states: tuple,
                     targets: Optional[Targets], beta: Optional[jax.typing.ArrayLike],
                     cost_fn: Optional[CostFn]) -> jax.Array:
  """Φ^β = Φ - β ℒ; with `beta=None` (free phase) the cost is not computed at all.

  targets: labels or a mapping (`as_targets`); cost_fn: ℒ (None: `output_cost(spec)`).
  """
  phi = primitive(spec, params, x, states)
  if beta is None:
    return phi
  cost_fn = output_cost(spec) if cost_fn is None else cost_fn
  return phi - beta * cost_fn(params, states, as_targets(targets))
