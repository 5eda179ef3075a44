"""Static network specification of a convolutional CRNN, layout parsing and initialisation.

A network is a stack of convolutional layers (3x3 conv, 'SAME' padding, optional 2x2 max or
average pooling after it), then dense layers, then the output. Everything here is static and
hashable, so a `NetworkSpec` can be passed to `jax.jit` as a static argument.

States are a tuple with one array per dynamical layer, NHWC for convolutional layers
(`(B, H_l, W_l, C_l)`, after pooling) and `(B, n_l)` for dense layers. With the default softmax
readout the output `z = W_out flat(s_N) + b_out` lives outside the system; with
`readout='mse'` the last state `(B, num_classes)` is the output layer itself.

Parameters are a dict `{'layers': (p_1, ..., p_N), 'readout': p_out}` with
`p = {'w': ..., 'b': ...}`: conv kernels are HWIO `(k, k, C_in, C_out)`, dense weights
`(n_in, n_out)`. With `readout='mse'` there is no `'readout'` entry.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

POOLS = {'M': 'max', 'A': 'avg'}
# Where max pooling's derivative goes in a tied window: all to the first maximum in row-major
# window order (torch's max_pool2d, the reference's), or split evenly between the tied ones.
POOL_TIES = ('first', 'split')

PRESET_LAYOUTS = {
    # The Laborieux et al. (2021) reference CRNN: 128-256-512-512, a max pool after each.
    'vgg5': '128,M,256,M,512,M,512,M',
    'vgg11': '64,M,128,M,256,256,M,512,512,M,512,512,M',
    'vgg13': '64,64,M,128,128,M,256,256,M,512,512,M,512,512,M',
    'vgg16': '64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512,M',
}


@dataclasses.dataclass(frozen=True)
class ConvLayer:
  """A convolutional layer: `channels` 3x3 filters, then `pool` in {None, 'max', 'avg'}."""
  channels: int
  pool: Optional[str] = None


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
    kernel_size: convolution kernel size (odd).
    padding: 'SAME' or 'VALID'.
    pool_ties: where max pooling's derivative goes in a tied window, one of `POOL_TIES`
      ('first': the first maximum, as torch; 'split': evenly). Values do not depend on it.
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

  @property
  def num_layers(self) -> int:
    """Number of dynamical layers N (including the output layer in MSE mode)."""
    return len(self.conv) + len(self.dense) + (1 if self.readout == 'mse' else 0)

  @property
  def num_conv(self) -> int:
    return len(self.conv)

  @property
  def state_shapes(self) -> tuple[tuple[int, ...], ...]:
    """Per-example state shape of each dynamical layer."""
    shapes = []
    h, w, _ = self.input_shape
    for layer in self.conv:
      if self.padding == 'VALID':
        h, w = h - self.kernel_size + 1, w - self.kernel_size + 1
      if layer.pool is not None:
        h, w = h // 2, w // 2
      shapes.append((h, w, layer.channels))
    for width in self.dense:
      shapes.append((width,))
    if self.readout == 'mse':
      shapes.append((self.num_classes,))
    return tuple(shapes)

  @property
  def layer_names(self) -> tuple[str, ...]:
    names = [f'conv{i + 1}' for i in range(len(self.conv))]
    names += [f'dense{i + 1}' for i in range(len(self.dense))]
    if self.readout == 'mse':
      names.append('output')
    return tuple(names)

  @property
  def layout(self) -> str:
    """The layout string this spec was built from (round-trips through `parse_layout`)."""
    tokens = []
    for layer in self.conv:
      tokens.append(str(layer.channels))
      if layer.pool is not None:
        tokens.append({'max': 'M', 'avg': 'A'}[layer.pool])
    return ','.join(tokens)


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


def make_spec(layout: str | Sequence[ConvLayer], *, input_shape: Sequence[int],
              num_classes: int, dense: Sequence[int] = (), readout: str = 'softmax',
              activation: str = 'hard_sigmoid', kernel_size: int = 3,
              padding: str = 'SAME', pool_ties: str = 'first') -> NetworkSpec:
  """Builds and validates a `NetworkSpec` from a layout string or preset name.

  Raises:
    ValueError: malformed layout, unknown readout/activation/padding/pool_ties, or an input
      too small for the network's pools.
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
  if padding not in ('SAME', 'VALID'):
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size}')
  if pool_ties not in POOL_TIES:
    raise ValueError(f'pool_ties must be one of {POOL_TIES}, got {pool_ties!r}')
  activations.get(activation)  # validates the name
  if any(int(w) <= 0 for w in dense):
    raise ValueError(f'dense widths must be positive, got {tuple(dense)}')
  if not conv and not dense and readout == 'softmax':
    raise ValueError('the network needs at least one hidden layer')
  spec = NetworkSpec(input_shape=input_shape, conv=conv, dense=tuple(int(w) for w in dense),
                     num_classes=int(num_classes), readout=readout, activation=activation,
                     kernel_size=int(kernel_size), padding=padding, pool_ties=pool_ties)
  # Walk the spatial sizes to catch inputs too small for the pools.
  h, w, _ = input_shape
  for index, layer in enumerate(conv):
    if padding == 'VALID':
      h, w = h - kernel_size + 1, w - kernel_size + 1
    if layer.pool is not None:
      h, w = h // 2, w // 2
    if h < 1 or w < 1:
      raise ValueError(
          f'input {input_shape} is too small for layout {spec.layout!r}: the feature map '
          f'vanishes after conv layer {index + 1}; use fewer pools or a larger input')
  return spec


def _uniform(key, shape, bound, dtype):
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def init_params(spec: NetworkSpec, key: jax.Array, *, dtype=jnp.float32,
                scale: float = 1.0) -> dict:
  """Initialises parameters like PyTorch's default (U(±1/sqrt(fan_in))), times `scale`."""
  layers = []
  keys = jax.random.split(key, spec.num_layers + 1)
  in_channels = spec.input_shape[-1]
  k = spec.kernel_size
  for i, layer in enumerate(spec.conv):
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
  if spec.readout == 'softmax':
    wkey, bkey = jax.random.split(keys[-1])
    bound = scale / math.sqrt(fan_in)
    params['readout'] = {'w': _uniform(wkey, (fan_in, spec.num_classes), bound, dtype),
                         'b': _uniform(bkey, (spec.num_classes,), bound, dtype)}
  return params


def init_states(spec: NetworkSpec, batch_size: int, dtype=jnp.float32) -> tuple[jax.Array, ...]:
  """Zero states, one `(B, *shape)` array per dynamical layer."""
  return tuple(jnp.zeros((batch_size,) + shape, dtype) for shape in spec.state_shapes)


def param_labels(spec: NetworkSpec) -> dict:
  """A pytree like the parameters whose leaves name their layer (for per-layer optimisers)."""
  names = spec.layer_names
  labels = {'layers': tuple({'w': name, 'b': name} for name in names)}
  if spec.readout == 'softmax':
    labels['readout'] = {'w': 'readout', 'b': 'readout'}
  return labels


def synapse_names(spec: NetworkSpec) -> tuple[str, ...]:
  """Names of the parameter groups in order: the layers, then the readout if any."""
  return spec.layer_names + (('readout',) if spec.readout == 'softmax' else ())
