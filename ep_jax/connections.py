"""Extra edges of the layer graph with user-defined connection kinds.

A *kind* is a pure function `drive(θ, s_src) -> (B, *dst_shape)` plus an initialiser; an *edge*
`Edge(src, dst, kind)` joins two dynamical layers (0-based state indices: conv layers, dense
layers, the MSE output layer) and adds to the primitive function

    Φ  +=  < s_dst , drive(θ_e, s_src) >           (src != dst)
    Φ  +=  ½ < s_l , drive(θ_e, s_l) >             (src == dst = l: a lateral link)

with θ_e in `params['edges'][e]` (the order of `spec.edges`), trained by EP's `∂_θΦ` like every
other weight. The forces follow from Φ with no kind-specific code:

    ∂Φ/∂s_dst  +=  drive(θ_e, s_src)
    ∂Φ/∂s_src  +=  J_drive(s_src)^T s_dst          (a `jax.vjp`; `feedback` may supply it)
    ∂Φ/∂s_l    +=  ½ (drive(θ_e, s_l) + J_drive(s_l)^T s_l)      (lateral)

For a linear drive `s ↦ W s` the lateral term is `½ <s, W s>` and its force `½ (W + W^T) s`:
the coupling is symmetrised, as an energy needs. A drive need not be linear in `s_src`, but
then the force on `s_src` depends on `s_src` itself (as a lateral link's does), and the
asynchronous schedule's classes no longer hold layers whose forces are independent of each
other's updates; the fixed points stay those of the synchronous dynamics.

The built-in skip link (`spec.skips`) is the kind `energy.skip_kind(factor)`; `links(spec)`
lists every link of a spec, skips first, as `Link`s that name their parameters' place.

Example, a depthwise 3x3 convolution from conv layer 0 to conv layer 1 (same spatial size)::

    def dw_drive(p, s):                   # s: (B, H, W, C), p['w']: (3, 3, 1, C)
      return jax.lax.conv_general_dilated(s, p['w'].astype(s.dtype), (1, 1), 'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=s.shape[-1])

    def dw_init(key, src_shape, dst_shape, dtype):
      return {'w': jax.random.uniform(key, (3, 3, 1, src_shape[-1]), dtype, -1 / 3, 1 / 3)}

    depthwise = ConnectionKind('depthwise3x3', dw_drive, dw_init)
    spec = network.make_spec('8,8,M', ..., edges=[Edge(0, 1, depthwise)])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from ep_jax._types import PyTree

__all__ = [
    'ConnectionKind', 'DriveFn', 'Edge', 'FeedbackFn', 'InitFn', 'Link', 'check_kind', 'drive',
    'edge_energy', 'feedback', 'lateral_force', 'link_force', 'scale_params',
]

# drive(params, s_src) -> (B, *dst_shape)
DriveFn = Callable[[Any, jax.Array], jax.Array]
# init(key, src_shape, dst_shape, dtype) -> params pytree (shapes per example, no batch axis)
InitFn = Callable[[jax.Array, tuple, tuple, Any], Any]
# feedback(params, s_dst, s_src) -> (B, *src_shape): the adjoint of drive at s_src applied to s_dst
FeedbackFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class ConnectionKind:
  """A kind of connection: `drive(θ, s_src)` and `init(key, src_shape, dst_shape, dtype)`.

  Frozen and hashable (functions compare by identity), so specs holding it stay static under
  `jax.jit`: define a kind once (at module level) and reuse the object.

  Attributes:
    name: a label (shown in errors, saved with a teacher's spec).
    drive: pure jax, `(θ, (B, *src_shape)) -> (B, *dst_shape)`; θ's floating leaves arrive in
      the states' dtype.
    init: `(key, src_shape, dst_shape, dtype) -> θ`, shapes per example (no batch axis).
    feedback: optional `(θ, s_dst, s_src) -> (B, *src_shape)`, the adjoint `J^T s_dst` of
      `drive` at `s_src`, used instead of `jax.vjp` where it is faster; it must equal it.
    mixed_precision: `drive` and `feedback` take a `compute_dtype` keyword (operands rounded
      to it, accumulated in the states' dtype); otherwise they run in the states' dtype.
  """
  name: str
  drive: DriveFn
  init: InitFn
  feedback: Optional[FeedbackFn] = None
  mixed_precision: bool = False


class Edge(NamedTuple):
  """An edge `src -> dst` of `kind` between dynamical layers (0-based state indices)."""
  src: int
  dst: int
  kind: ConnectionKind


class Link(NamedTuple):
  """A link of the energy: an edge and where its parameters are, `params[group][index]`."""
  src: int
  dst: int
  kind: ConnectionKind
  group: str
  index: int


def _cast(params, dtype):
  """Floating leaves of `params` in `dtype` (as the layers cast their weights to the states')."""
  return jax.tree_util.tree_map(
      lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.inexact) else v,
      params)


def scale_params(params: PyTree, factor: jax.typing.ArrayLike) -> PyTree:
  """Floating leaves of `params` times `factor` (an init scale or a layer's gain)."""
  return jax.tree_util.tree_map(
      lambda v: v * jnp.asarray(factor, v.dtype) if jnp.issubdtype(v.dtype, jnp.inexact) else v,
      params)


def _kw(kind: ConnectionKind, compute_dtype) -> dict:
  return {'compute_dtype': compute_dtype} if kind.mixed_precision else {}


def drive(kind: ConnectionKind, params: PyTree, s_src: jax.Array,
          compute_dtype: Optional[jax.typing.DTypeLike] = None) -> jax.Array:
  """`drive(θ, s_src)` with θ cast to the states' dtype, `(B, *dst_shape)`."""
  return kind.drive(_cast(params, s_src.dtype), s_src, **_kw(kind, compute_dtype))


def feedback(kind: ConnectionKind, params: PyTree, s_dst: jax.Array, s_src: jax.Array,
             compute_dtype: Optional[jax.typing.DTypeLike] = None) -> jax.Array:
  """`∂/∂s_src < s_dst, drive(θ, s_src) > = J_drive(s_src)^T s_dst`, `(B, *src_shape)`:
  the kind's `feedback` if it has one, else `jax.vjp` of `drive`."""
  if kind.feedback is not None:
    return kind.feedback(_cast(params, s_src.dtype), s_dst, s_src, **_kw(kind, compute_dtype))
  _, vjp = jax.vjp(lambda s: drive(kind, params, s, compute_dtype), s_src)
  return vjp(s_dst.astype(s_src.dtype))[0]


def lateral_force(kind: ConnectionKind, params: PyTree, s: jax.Array,
                  compute_dtype: Optional[jax.typing.DTypeLike] = None) -> jax.Array:
  """`∂/∂s ½ < s, drive(θ, s) > = ½ (drive(θ, s) + J_drive(s)^T s)`, like `s`."""
  return 0.5 * (drive(kind, params, s, compute_dtype)
                + feedback(kind, params, s, s, compute_dtype))


def link_force(link: Link, params: dict, states: Sequence[jax.Array], l: int,
               compute_dtype: Optional[jax.typing.DTypeLike] = None) -> Optional[jax.Array]:
  """What `link` adds to the force on layer l (None when it does not touch l)."""
  p = params[link.group][link.index]
  if link.src == link.dst == l:
    return lateral_force(link.kind, p, states[l], compute_dtype)
  if link.dst == l:
    return drive(link.kind, p, states[link.src], compute_dtype)
  if link.src == l:
    return feedback(link.kind, p, states[link.dst], states[link.src], compute_dtype)
  return None


def edge_energy(links: Sequence[Link], params: dict, states: Sequence[jax.Array]) -> jax.Array:
  """`Σ_links < s_dst, drive(θ, s_src) >` (½ for a lateral link), summed over the batch."""
  terms = []
  for link in links:
    term = jnp.sum(states[link.dst] * drive(link.kind, params[link.group][link.index],
                                            states[link.src]))
    terms.append(0.5 * term if link.src == link.dst else term)
  return sum(terms) if terms else jnp.zeros((), states[0].dtype)


def check_kind(kind: ConnectionKind, src_shape: tuple, dst_shape: tuple, where: str) -> None:
  """Checks abstractly (`jax.eval_shape`, no compute) that `kind` initialises for the shapes
  and that its drive maps a `(B, *src_shape)` state to `(B, *dst_shape)`.

  Raises:
    ValueError: naming `where`, when `kind` is not a `ConnectionKind`, its init or drive
      fails, or the drive's shape is not the destination layer's.
  """
  if not isinstance(kind, ConnectionKind):
    raise ValueError(f'{where}: kind must be a ConnectionKind, got {kind!r}')
  state = jax.ShapeDtypeStruct((2,) + tuple(src_shape), jnp.float32)
  try:
    params = jax.eval_shape(lambda k: kind.init(k, tuple(src_shape), tuple(dst_shape),
                                                jnp.float32), jax.random.PRNGKey(0))
    out = jax.eval_shape(lambda p, s: drive(kind, p, s), params, state)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{where}: kind {kind.name!r} fails on a source state {state.shape}: '
                     f'{type(e).__name__}: {e}') from e
  if getattr(out, 'shape', None) != (2,) + tuple(dst_shape):
    raise ValueError(f'{where}: kind {kind.name!r} maps a source state {state.shape} to '
                     f'{getattr(out, "shape", out)}, but the destination layer is '
                     f'{(2,) + tuple(dst_shape)}')
