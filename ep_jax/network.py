"""Static network specification of a convolutional CRNN, layout parsing and initialisation.

A network is a stack of convolutional layers (a stride-1 convolution, 3x3 'SAME' unless a
layer or the spec says otherwise, optional 2x2 max or average pooling after it), then dense
layers, then the output. Everything here is static and hashable, so a `NetworkSpec` can be
passed to `jax.jit` as a static argument.

States are a tuple with one array per dynamical layer, NHWC for convolutional layers
(`(B, H_l, W_l, C_l)`, after pooling) and `(B, n_l)` for dense layers. With the default softmax
readout the output `z = W_out flat(s_N) + b_out` lives outside the system; with
`readout='mse'` the last state `(B, num_classes)` is the output layer itself.

Parameters are a dict `{'layers': (p_1, ..., p_N), 'readout': p_out}` with
`p = {'w': ..., 'b': ...}`: conv kernels are HWIO `(k, k, C_in, C_out)`, dense weights
`(n_in, n_out)`. With `readout='mse'` there is no `'readout'` entry.

Skip links (`spec.skips`, Hopfield-ResNet style): pairs `(i, j)` of conv layers (0-based,
`i < j - 1`) joined by a learned 1x1 link inside the energy, `< s_j, A_k(s_i) V_ij >` with `A_k`
the `2^k x 2^k` average pooling that brings layer i's spatial size to layer j's. Their weights
are `params['skips']`, a tuple of `{'w': (C_i, C_j)}` in the order of `spec.skips`; the entry
is absent without skips, so networks without them have exactly the pytree above.

Edges (`spec.edges`, `ep_jax.connections`): `Edge(src, dst, kind)` between any two dynamical
layers (or a layer and itself) with a user-defined `ConnectionKind`, adding
`< s_dst, drive(θ_e, s_src) >` to Φ. Their parameters are `params['edges']`, a tuple in the
order of `spec.edges` (absent without edges).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from ep_jax.connections import ConnectionKind, Edge, check_kind, scale_params

__all__ = [
    'ConvLayer', 'EDGE_KEY', 'NetworkSpec', 'PADDINGS', 'POOLS', 'POOL_TIES', 'PRESET_LAYOUTS',
    'PRESET_PADDINGS', 'check_edges', 'check_input', 'check_skips', 'init_params', 'init_states',
    'layer_colour_classes', 'layer_colouring', 'layer_names', 'make_spec', 'parse_layout',
    'synapse_names',
]

POOLS = {'M': 'max', 'A': 'avg'}
# Where max pooling's derivative goes in a tied window: all to the first maximum in row-major
# window order (torch's max_pool2d, the reference's), or split evenly between the tied ones.
POOL_TIES = ('first', 'split')

PADDINGS = ('SAME', 'VALID')

PRESET_LAYOUTS = {
    # The Laborieux et al. (2021) reference CRNN: 128-256-512-512, a max pool after each.
    'vgg5': '128,M,256,M,512,M,512,M',
    'vgg11': '64,M,128,M,256,256,M,512,512,M,512,512,M',
    'vgg13': '64,64,M,128,128,M,256,256,M,512,512,M,512,512,M',
    'vgg16': '64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512,M',
}
# Per-layer paddings that are part of a preset (`make_spec` uses them unless `paddings` is
# given). vgg5 is the reference's `--paddings 1 1 1 0` with 3x3 kernels: on 32x32 inputs
# 32 -> 16 -> 8 -> 4, the VALID 3x3 gives 2x2, its pool 1x1x512.
PRESET_PADDINGS = {'vgg5': ('SAME', 'SAME', 'SAME', 'VALID')}


@dataclasses.dataclass(frozen=True)
class ConvLayer:
  """A convolutional layer: `channels` filters of `kernel_size` (odd) with `padding` ('SAME' or
  'VALID'), then `pool` in {None, 'max', 'avg'}. `None` geometry: the spec-wide value."""
  channels: int
  pool: Optional[str] = None
  kernel_size: Optional[int] = None
  padding: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
  """Hashable structure of a CRNN. Build it with `make_spec`.

  Attributes:
    input_shape: `(H, W, C)` of one input example.
    conv: the convolutional layers, in order.
    dense: widths of the hidden dense layers after the convolutions.
    num_classes: number of classes.
    readout: 'softmax' (linear readout outside the system, cross-entropy) or 'mse' (an
      output layer of `num_classes` neurons inside the system, squared error).
    activation: name of the activation in `ep_jax.activations`.
    kernel_size: convolution kernel size (odd) of the layers that do not set their own.
    padding: 'SAME' or 'VALID', for the layers that do not set their own.
    pool_ties: where max pooling's derivative goes in a tied window, one of `POOL_TIES`
      ('first': the first maximum, as torch; 'split': evenly). Values do not depend on it.
    skips: skip links `(i, j)` between conv layers (0-based dynamical-layer indices,
      `i < j - 1`, layer j's spatial size layer i's divided by `2^k`); see `make_spec`.
    edges: extra edges `Edge(src, dst, kind)` with user-defined kinds; see `make_spec`.
  """
  input_shape: tuple[int, int, int]
  conv: tuple[ConvLayer, ...]
  dense: tuple[int, ...]
  num_classes: int
  readout: str = 'softmax'
  activation: str = 'hard_sigmoid'
  kernel_size: int = 3
  padding: str = 'SAME'
  pool_ties: str = 'first'
  skips: tuple[tuple[int, int], ...] = ()
  edges: tuple[Edge, ...] = ()

  @property
  def num_layers(self) -> int:
    """Number of dynamical layers N (including the output layer in MSE mode)."""
    return len(self.conv) + len(self.dense) + (1 if self.readout == 'mse' else 0)

  @property
  def num_conv(self) -> int:
    return len(self.conv)

  @property
  def kernel_sizes(self) -> tuple[int, ...]:
    """Kernel size of each conv layer (its own, else the spec's)."""
    return tuple(layer.kernel_size or self.kernel_size for layer in self.conv)

  @property
  def paddings(self) -> tuple[str, ...]:
    """Padding of each conv layer (its own, else the spec's)."""
    return tuple(layer.padding or self.padding for layer in self.conv)

  @property
  def conv_shapes(self) -> tuple[tuple[int, int, int], ...]:
    """Per-example shape `(H, W, C)` of each conv layer's `W_l ⋆ s_{l-1}`, before pooling."""
    shapes = []
    h, w, _ = self.input_shape
    for layer, k, padding in zip(self.conv, self.kernel_sizes, self.paddings):
      if padding == 'VALID':
        h, w = h - k + 1, w - k + 1
      shapes.append((h, w, layer.channels))
      if layer.pool is not None:
        h, w = h // 2, w // 2
    return tuple(shapes)

  @property
  def state_shapes(self) -> tuple[tuple[int, ...], ...]:
    """Per-example state shape of each dynamical layer."""
    shapes = []
    for layer, (h, w, c) in zip(self.conv, self.conv_shapes):
      shapes.append((h // 2, w // 2, c) if layer.pool is not None else (h, w, c))
    for width in self.dense:
      shapes.append((width,))
    if self.readout == 'mse':
      shapes.append((self.num_classes,))
    return tuple(shapes)

  @property
  def layer_names(self) -> tuple[str, ...]:
    return layer_names(len(self.conv), len(self.dense), self.readout)

  @property
  def skip_factors(self) -> tuple[int, ...]:
    """The pooling factor `2^k = H_i / H_j` of each skip link, in the order of `skips`."""
    shapes = self.state_shapes
    return tuple(shapes[i][0] // shapes[j][0] for i, j in self.skips)

  @property
  def colour_classes(self) -> tuple[tuple[int, ...], ...]:
    """The layers grouped by colour of `layer_colouring(self)`, colour 0 first."""
    return layer_colour_classes(self)

  def to_dict(self) -> dict:
    """The JSON-able fields `from_dict` rebuilds the spec from (an edge's kind by its name,
    so `from_dict` needs the kind objects)."""
    return {'layout': self.layout, 'input_shape': list(self.input_shape),
            'dense': list(self.dense), 'num_classes': self.num_classes, 'readout': self.readout,
            'activation': self.activation, 'kernel_size': self.kernel_size,
            'padding': self.padding, 'pool_ties': self.pool_ties,
            'kernel_sizes': list(self.kernel_sizes), 'paddings': list(self.paddings),
            'skips': [list(pair) for pair in self.skips],
            'edges': [[e.src, e.dst, e.kind.name] for e in self.edges]}

  @classmethod
  def from_dict(cls, fields: dict, kinds: Sequence[ConnectionKind] = ()) -> 'NetworkSpec':
    """The spec of `to_dict`'s fields (lists or tuples; fields newer than a saved dict take
    their defaults); `kinds`: the connection kinds of its edges, found by name.

    Raises:
      ValueError: an edge whose kind is not among `kinds`.
    """
    layout = fields['layout'] or ()  # a spec without conv layers has the empty layout
    by_name = {kind.name: kind for kind in kinds}
    edges = []
    for src, dst, name in fields.get('edges', ()):
      if name not in by_name:
        raise ValueError(f'the spec has an edge ({src}, {dst}) of kind {name!r}: pass that '
                         f'ConnectionKind in kinds (got {sorted(by_name)})')
      edges.append((src, dst, by_name[name]))
    return make_spec(layout, input_shape=fields['input_shape'],
                     num_classes=fields['num_classes'], dense=tuple(fields['dense']),
                     readout=fields['readout'], activation=fields['activation'],
                     kernel_size=fields['kernel_size'], padding=fields['padding'],
                     pool_ties=fields.get('pool_ties', 'first'),
                     kernel_sizes=tuple(fields.get('kernel_sizes', ())),
                     paddings=tuple(fields.get('paddings', ())),
                     skips=tuple(tuple(pair) for pair in fields.get('skips', ())),
                     edges=edges)

  @property
  def layout(self) -> str:
    """The layout string of the conv widths and pools (round-trips through `parse_layout`;
    the per-layer geometry is in `kernel_sizes` / `paddings`)."""
    tokens = []
    for layer in self.conv:
      tokens.append(str(layer.channels))
      if layer.pool is not None:
        tokens.append({'max': 'M', 'avg': 'A'}[layer.pool])
    return ','.join(tokens)


@functools.lru_cache(maxsize=None)
def layer_names(num_conv: int, num_dense: int, readout: str = 'softmax') -> tuple[str, ...]:
  """The dynamical layers' names: conv1 … convC, dense1 … denseD, and `output` for an MSE
  readout (whose output layer is dynamical)."""
  names = [f'conv{i + 1}' for i in range(num_conv)]
  names += [f'dense{i + 1}' for i in range(num_dense)]
  return tuple(names + (['output'] if readout == 'mse' else []))


def layer_colouring(spec: NetworkSpec) -> tuple[int, ...]:
  """A proper colouring of the layer graph (edges: the chain `(l, l+1)`, the skips and
  `spec.edges` in either direction; a lateral edge `(l, l)` joins no two layers).

  Greedy in layer order: layer l takes the smallest colour none of its lower neighbours has.
  Layers of one colour share no edge, so their forces do not depend on each other and they
  can update together (the asynchronous schedule). For a chain it is `l % 2` (even/odd).
  """
  n = spec.num_layers
  lower = [{l - 1} if l > 0 else set() for l in range(n)]
  for i, j in spec.skips + tuple((e.src, e.dst) for e in spec.edges):
    if i != j:
      lower[max(i, j)].add(min(i, j))
  colours: list[int] = []
  for l in range(n):
    used = {colours[m] for m in lower[l]}
    colours.append(min(c for c in range(len(used) + 1) if c not in used))
  return tuple(colours)


@functools.lru_cache(maxsize=None)
def layer_colour_classes(spec: NetworkSpec) -> tuple[tuple[int, ...], ...]:
  """The layers of each colour of `layer_colouring(spec)`, colour 0 first, in layer order."""
  colours = layer_colouring(spec)
  return tuple(tuple(l for l, c in enumerate(colours) if c == colour)
               for colour in range(max(colours) + 1 if colours else 0))


def parse_layout(layout: str) -> tuple[ConvLayer, ...]:
  """Parses `"128,M,256,A,512"`: integers are conv widths, `M`/`A` a 2x2 max/avg pool.

  A preset name (`vgg5`, `vgg11`, `vgg13`, `vgg16`) is accepted too. A pool must follow a
  convolution, at most one pool per convolution.

  Raises:
    ValueError: naming the offending token for a malformed layout.
  """
  if not isinstance(layout, str):
    raise ValueError(f'layout must be a string, got {layout!r}')
  layout = PRESET_LAYOUTS.get(layout.strip().lower(), layout)
  tokens = [t.strip() for t in layout.split(',')]
  if not layout.strip() or any(t == '' for t in tokens):
    raise ValueError(f'malformed layout {layout!r}: empty token; expected e.g. "64,M,128,M"')
  layers: list[ConvLayer] = []
  for position, token in enumerate(tokens):
    upper = token.upper()
    if upper in POOLS:
      if not layers:
        raise ValueError(f'malformed layout {layout!r}: pool {token!r} at position {position} '
                         'does not follow a convolution')
      if layers[-1].pool is not None:
        raise ValueError(f'malformed layout {layout!r}: two pools in a row at position '
                         f'{position}')
      layers[-1] = dataclasses.replace(layers[-1], pool=POOLS[upper])
      continue
    try:
      channels = int(token)
    except ValueError:
      raise ValueError(
          f'malformed layout {layout!r}: token {token!r} at position {position} is neither a '
          'positive channel count nor a pool (M or A); known presets: '
          f'{sorted(PRESET_LAYOUTS)}') from None
    if channels <= 0:
      raise ValueError(f'malformed layout {layout!r}: channel count {channels} must be positive')
    layers.append(ConvLayer(channels))
  return tuple(layers)


def _check_kernel_size(k, what: str) -> int:
  if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1 or k % 2 == 0:
    raise ValueError(f'{what} must be a positive odd integer, got {k!r}')
  return int(k)


def _check_padding(padding, what: str) -> str:
  if padding not in PADDINGS:
    raise ValueError(f'{what} must be one of {PADDINGS}, got {padding!r}')
  return padding


def _per_layer(values: Sequence, num_conv: int, what: str) -> tuple:
  values = tuple(values)
  if values and len(values) != num_conv:
    raise ValueError(f'{what} has {len(values)} entries {values} but the layout has '
                     f'{num_conv} conv layers: give one per conv layer, or none')
  return values


def make_spec(layout: str | Sequence[ConvLayer], *, input_shape: Sequence[int],
              num_classes: int, dense: Sequence[int] = (), readout: str = 'softmax',
              activation: str = 'hard_sigmoid', kernel_size: int = 3,
              padding: str = 'SAME', pool_ties: str = 'first',
              kernel_sizes: Sequence[int] = (),
              paddings: Sequence[str] = (),
              skips: Sequence[Sequence[int]] = (),
              edges: Sequence[Edge | Sequence] = ()) -> NetworkSpec:
  """Builds and validates a `NetworkSpec` from a layout string or preset name.

  Each conv layer's kernel size and padding is, by precedence: `kernel_sizes[l]` /
  `paddings[l]` (one entry per conv layer, or empty), the preset's (`PRESET_PADDINGS`: vgg5's
  last convolution is VALID) or the `ConvLayer`'s own, then `kernel_size` / `padding`. The
  spec's conv layers carry the resolved values.

  skips: skip links `(i, j)`, 0-based dynamical-layer indices of two conv layers with
  `i < j - 1`, whose spatial sizes satisfy `H_i = 2^k H_j` and `W_i = 2^k W_j` (k >= 0), each
  pair at most once (see `check_skips`).

  edges: extra edges `Edge(src, dst, kind)` (or `(src, dst, kind)` triples), 0-based indices of
  any two dynamical layers, conv or dense (the MSE output layer too), in either direction, or
  `src == dst` for a lateral link; `kind` a `connections.ConnectionKind` whose drive maps
  layer src's state to layer dst's shape (checked abstractly, see `check_edges`).

  Raises:
    ValueError: malformed layout, unknown readout/activation/padding/pool_ties, a kernel size
      that is not a positive odd integer, per-layer tuples of the wrong length, or an input
      too small for the network's convolutions and pools, an invalid skip pair or edge.
  """
  from ep_jax import activations  # local: avoids an import cycle at package import

  conv = parse_layout(layout) if isinstance(layout, str) else tuple(layout)
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) != 3 or min(input_shape) <= 0:
    raise ValueError(f'input_shape must be (H, W, C) with positive sizes, got {input_shape}')
  if num_classes < 2:
    raise ValueError(f'num_classes must be >= 2, got {num_classes}')
  if readout not in ('softmax', 'mse'):
    raise ValueError(f"readout must be 'softmax' or 'mse', got {readout!r}")
  padding = _check_padding(padding, 'padding')
  kernel_size = _check_kernel_size(kernel_size, 'kernel_size')
  if pool_ties not in POOL_TIES:
    raise ValueError(f'pool_ties must be one of {POOL_TIES}, got {pool_ties!r}')
  activations.get(activation)  # validates the name
  if any(int(w) <= 0 for w in dense):
    raise ValueError(f'dense widths must be positive, got {tuple(dense)}')
  if not conv and not dense and readout == 'softmax':
    raise ValueError('the network needs at least one hidden layer')
  kernel_sizes = _per_layer(kernel_sizes, len(conv), 'kernel_sizes')
  paddings = _per_layer(paddings, len(conv), 'paddings')
  if not paddings and isinstance(layout, str):
    paddings = PRESET_PADDINGS.get(layout.strip().lower(), ())
  conv = tuple(dataclasses.replace(
      layer,
      kernel_size=_check_kernel_size(
          kernel_sizes[i] if kernel_sizes else layer.kernel_size or kernel_size,
          f'kernel_sizes[{i}]' if kernel_sizes else f'kernel size of conv layer {i + 1}'),
      padding=_check_padding(
          paddings[i] if paddings else layer.padding or padding,
          f'paddings[{i}]' if paddings else f'padding of conv layer {i + 1}'))
      for i, layer in enumerate(conv))
  spec = NetworkSpec(input_shape=input_shape, conv=conv, dense=tuple(int(w) for w in dense),
                     num_classes=int(num_classes), readout=readout, activation=activation,
                     kernel_size=kernel_size, padding=padding, pool_ties=pool_ties)
  # Walk the spatial sizes to catch inputs too small for the convolutions and pools.
  for index, (conv_shape, shape) in enumerate(zip(spec.conv_shapes, spec.state_shapes)):
    if min(conv_shape[:2] + shape[:2]) < 1:
      raise ValueError(
          f'input {input_shape} is too small for layout {spec.layout!r} with kernel sizes '
          f'{spec.kernel_sizes} and paddings {spec.paddings}: the feature map vanishes at '
          f'conv layer {index + 1}; use fewer pools or VALID convolutions, or a larger input')
  skips = check_skips(spec, skips)
  edges = check_edges(spec, edges)
  return dataclasses.replace(spec, skips=skips, edges=edges) if skips or edges else spec


def check_edges(spec: NetworkSpec, edges: Sequence[Edge | Sequence]) -> tuple[Edge, ...]:
  """Validates edges against `spec`'s layers; returns them as a tuple of `Edge`s.

  Raises:
    ValueError: naming the bad edge: not a triple `(src, dst, kind)`, an index out of range,
      a kind that is not a `ConnectionKind`, or whose init or drive fails or gives another
      shape than layer dst's for a state of layer src.
  """
  out: list[Edge] = []
  shapes = spec.state_shapes
  for index, edge in enumerate(tuple(edges)):
    try:
      *pair, kind = edge
      src, dst = _indices(pair)
    except (TypeError, ValueError):
      raise ValueError(f'edge {index} {edge!r} is not a triple (src, dst, kind) of two layer '
                       'indices and a ConnectionKind') from None
    if not (0 <= src < spec.num_layers and 0 <= dst < spec.num_layers):
      raise ValueError(f'edge {index} ({src}, {dst}) (0-based layer indices): index out of '
                       f'range, the network has {spec.num_layers} layers {spec.layer_names}')
    where = (f'edge {index} ({src}, {dst}) ({spec.layer_names[src]} -> '
             f'{spec.layer_names[dst]})')
    check_kind(kind, shapes[src], shapes[dst], where)
    out.append(Edge(src, dst, kind))
  return tuple(out)


def _indices(pair) -> tuple[int, int]:
  """Two layer indices as ints; TypeError / ValueError unless `pair` is two integers."""
  i, j = pair
  if any(isinstance(v, bool) or int(v) != v for v in (i, j)):
    raise TypeError
  return int(i), int(j)


def check_skips(spec: NetworkSpec, skips: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
  """Validates skip pairs against `spec`'s layers; returns them as a tuple of int pairs.

  Raises:
    ValueError: naming the bad pair: not a pair of integers, an index out of range, `i >= j - 1`,
      a layer that is not convolutional, spatial sizes not related by a power of two, or a
      duplicate.
  """
  out: list[tuple[int, int]] = []
  shapes = spec.state_shapes
  for pair in tuple(skips):
    try:
      i, j = _indices(pair)
    except (TypeError, ValueError):
      raise ValueError(f'skip {pair!r} is not a pair (i, j) of layer indices') from None
    where = f'skip ({i}, {j}) (0-based layer indices)'
    if not (0 <= i < spec.num_layers and 0 <= j < spec.num_layers):
      raise ValueError(f'{where}: index out of range, the network has {spec.num_layers} '
                       f'layers {spec.layer_names}')
    where = f'skip ({i}, {j}) (0-based layer indices: {spec.layer_names[i]} -> ' \
            f'{spec.layer_names[j]})'
    if not i < j - 1:
      raise ValueError(f'{where}: needs i < j - 1 (a link that skips at least one layer; '
                       'neighbours are already coupled)')
    if j >= spec.num_conv:
      raise ValueError(f'{where}: both layers must be convolutional, but '
                       f'{spec.layer_names[j]} is not (the network has {spec.num_conv} conv '
                       'layers)')
    (h_i, w_i, _), (h_j, w_j, _) = shapes[i], shapes[j]
    factor = h_i // h_j
    if (h_i != factor * h_j or w_i != factor * w_j or factor & (factor - 1)):
      raise ValueError(f'{where}: the spatial size of {spec.layer_names[j]} ({h_j}x{w_j}) '
                       f'must be that of {spec.layer_names[i]} ({h_i}x{w_i}) divided by a '
                       'power of two (the same one for both axes)')
    if (i, j) in out:
      raise ValueError(f'{where}: duplicate skip')
    out.append((i, j))
  return tuple(out)


# The key stream of the edges' parameters: `fold_in(key, EDGE_KEY)` (apart from the layers' and
# the skips' keys, so that adding an edge changes no other initial parameter).
EDGE_KEY = 0x65646765


def _uniform(key, shape, bound, dtype):
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def init_params(spec: NetworkSpec, key: jax.Array, *, dtype: jax.typing.DTypeLike = jnp.float32,
                scale: float = 1.0, skip_scale: float = 1.0) -> dict:
  """Initialises parameters like PyTorch's default (U(±1/sqrt(fan_in))), times `scale`.

  A skip link `(i, j)` (a 1x1 convolution of fan-in `C_i`) gets `U(±scale·skip_scale/√C_i)`,
  drawn from keys folded out of `key`, so the other parameters do not depend on the skips.
  Edge e gets its kind's `init` times `scale`, from `fold_in(fold_in(key, EDGE_KEY), e)`.
  """
  layers = []
  keys = jax.random.split(key, spec.num_layers + 1)
  in_channels = spec.input_shape[-1]
  for i, (layer, k) in enumerate(zip(spec.conv, spec.kernel_sizes)):
    wkey, bkey = jax.random.split(keys[i])
    bound = scale / math.sqrt(in_channels * k * k)
    layers.append({'w': _uniform(wkey, (k, k, in_channels, layer.channels), bound, dtype),
                   'b': _uniform(bkey, (layer.channels,), bound, dtype)})
    in_channels = layer.channels
  shapes = spec.state_shapes
  fan_in = math.prod(shapes[len(spec.conv) - 1]) if spec.conv else math.prod(spec.input_shape)
  widths = list(spec.dense) + ([spec.num_classes] if spec.readout == 'mse' else [])
  for j, width in enumerate(widths):
    wkey, bkey = jax.random.split(keys[len(spec.conv) + j])
    bound = scale / math.sqrt(fan_in)
    layers.append({'w': _uniform(wkey, (fan_in, width), bound, dtype),
                   'b': _uniform(bkey, (width,), bound, dtype)})
    fan_in = width
  params = {'layers': tuple(layers)}
  if spec.edges:
    edge_key = jax.random.fold_in(key, EDGE_KEY)
    params['edges'] = tuple(
        scale_params(e.kind.init(jax.random.fold_in(edge_key, index), shapes[e.src],
                                 shapes[e.dst], dtype), scale)
        for index, e in enumerate(spec.edges))
  if spec.skips:
    skips = []
    for index, (i, j) in enumerate(spec.skips):
      c_i, c_j = shapes[i][-1], shapes[j][-1]
      skey = jax.random.fold_in(key, spec.num_layers + 1 + index)
      skips.append({'w': _uniform(skey, (c_i, c_j), scale * skip_scale / math.sqrt(c_i), dtype)})
    params['skips'] = tuple(skips)
  if spec.readout == 'softmax':
    wkey, bkey = jax.random.split(keys[-1])
    bound = scale / math.sqrt(fan_in)
    params['readout'] = {'w': _uniform(wkey, (fan_in, spec.num_classes), bound, dtype),
                         'b': _uniform(bkey, (spec.num_classes,), bound, dtype)}
  return params


def check_input(spec: NetworkSpec, x: jax.typing.ArrayLike,
                states: Optional[Sequence[jax.typing.ArrayLike]] = None) -> int:
  """The batch size B of inputs `x` `(B, *spec.input_shape)` (and of `states`, one
  `(B, *spec.state_shapes[l])` per layer, if given).

  Static (shapes only): free under `jit`.

  Raises:
    ValueError: naming the expected and the given shape.
  """
  shape = tuple(jnp.shape(x))
  if len(shape) != 4 or shape[1:] != spec.input_shape:
    h, w, c = spec.input_shape
    raise ValueError(f'inputs x must have shape (B, H, W, C) = (B, {h}, {w}, {c}) for this '
                     f'network, got {shape}')
  batch = shape[0]
  if states is not None:
    want = tuple((batch,) + s for s in spec.state_shapes)
    got = tuple(tuple(jnp.shape(s)) for s in states)
    if got != want:
      raise ValueError(f'states must have shapes {want} (one per layer, batch {batch}), got '
                       f'{got}')
  return batch


def init_states(spec: NetworkSpec, batch_size: int,
                dtype: jax.typing.DTypeLike = jnp.float32) -> tuple[jax.Array, ...]:
  """Zero states, one `(B, *shape)` array per dynamical layer."""
  return tuple(jnp.zeros((batch_size,) + shape, dtype) for shape in spec.state_shapes)


def synapse_names(spec: NetworkSpec) -> tuple[str, ...]:
  """Names of the parameter groups in order: the layers, then the readout if any."""
  return spec.layer_names + (('readout',) if spec.readout == 'softmax' else ())
