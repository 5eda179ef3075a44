import chex
import jax
import jax.numpy as jnp
import pytest

from ep_jax import network


def test_parse_layout_pools_and_presets():
  layers = network.parse_layout('128,M,256,A,512')
  assert layers == (network.ConvLayer(128, 'max'), network.ConvLayer(256, 'avg'),
                    network.ConvLayer(512, None))
  assert len(network.parse_layout('vgg16')) == 13
  assert len(network.parse_layout('vgg13')) == 10
  assert len(network.parse_layout('vgg11')) == 8
  assert network.parse_layout('vgg5') == network.parse_layout('128,M,256,M,512,M,512,M')


@pytest.mark.parametrize('layout, message', [
    ('M,64', 'does not follow a convolution'),
    ('64,M,M', 'two pools in a row'),
    ('64,X', "token 'X'"),
    ('64,,M', 'empty token'),
    ('', 'empty token'),
    ('64,-3', 'must be positive'),
])
def test_malformed_layouts_are_clear_errors(layout, message):
  with pytest.raises(ValueError, match=message):
    network.parse_layout(layout)


def test_input_too_small_for_pools():
  with pytest.raises(ValueError, match='too small'):
    network.make_spec('vgg16', input_shape=(28, 28, 1), num_classes=10)
  with pytest.raises(ValueError, match='too small'):
    network.make_spec('8,M,8,M,8,M,8,M', input_shape=(8, 8, 1), num_classes=10)


def test_bad_spec_arguments():
  with pytest.raises(ValueError, match='readout'):
    network.make_spec('8,M', input_shape=(8, 8, 1), num_classes=10, readout='hinge')
  with pytest.raises(ValueError, match='activation'):
    network.make_spec('8,M', input_shape=(8, 8, 1), num_classes=10, activation='relu6x')
  with pytest.raises(ValueError, match='input_shape'):
    network.make_spec('8,M', input_shape=(8, 8), num_classes=10)


@pytest.mark.parametrize('input_shape', [(28, 28, 1), (32, 32, 3), (8, 8, 1)])
@pytest.mark.parametrize('readout', ['softmax', 'mse'])
def test_shapes_for_any_input(input_shape, readout):
  spec = network.make_spec('6,M,10,A', input_shape=input_shape, num_classes=10, dense=(7,),
                           readout=readout)
  h, w, c = input_shape
  expected = [(h // 2, w // 2, 6), (h // 4, w // 4, 10), (7,)]
  if readout == 'mse':
    expected.append((10,))
  assert spec.state_shapes == tuple(expected)
  params = network.init_params(spec, jax.random.PRNGKey(0))
  assert params['layers'][0]['w'].shape == (3, 3, c, 6)
  assert params['layers'][2]['w'].shape == ((h // 4) * (w // 4) * 10, 7)
  assert ('readout' in params) == (readout == 'softmax')
  states = network.init_states(spec, 5)
  assert [s.shape[1:] for s in states] == expected
  assert all(float(jnp.abs(s).max()) == 0 for s in states)
  hash(spec)  # static for jit
  assert spec.layout == '6,M,10,A'


def test_vgg5_reference_shapes():
  """The reference's geometry: 3x3 kernels, paddings 1, 1, 1, 0, a max pool after each conv:
  32 -> 16 -> 8 -> 4, the VALID conv gives 2x2, its pool 1x1x512; readout 512 -> 10."""
  spec = network.make_spec('vgg5', input_shape=(32, 32, 3), num_classes=10)
  assert spec.kernel_sizes == (3, 3, 3, 3)
  assert spec.paddings == ('SAME', 'SAME', 'SAME', 'VALID')
  assert spec.conv_shapes == ((32, 32, 128), (16, 16, 256), (8, 8, 512), (2, 2, 512))
  assert spec.state_shapes == ((16, 16, 128), (8, 8, 256), (4, 4, 512), (1, 1, 512))
  assert network.synapse_names(spec) == ('conv1', 'conv2', 'conv3', 'conv4', 'readout')
  params = network.init_params(spec, jax.random.PRNGKey(0))
  chex.assert_shape([p['w'] for p in params['layers']],
                    [(3, 3, 3, 128), (3, 3, 128, 256), (3, 3, 256, 512), (3, 3, 512, 512)])
  chex.assert_shape(params['readout']['w'], (512, 10))
  # PyTorch's default bound 1/sqrt(fan_in) with the readout's fan-in of 512.
  bound = float(jnp.abs(params['readout']['w']).max())
  assert 0.9 / 512 ** 0.5 < bound <= 1 / 512 ** 0.5
  # Explicit paddings replace the preset's.
  same = network.make_spec('vgg5', input_shape=(32, 32, 3), num_classes=10,
                           paddings=('SAME',) * 4)
  assert same.state_shapes[-1] == (2, 2, 512)
  assert network.make_spec('128,M,256,M,512,M,512,M', input_shape=(32, 32, 3),
                           num_classes=10).paddings == ('SAME',) * 4


def test_per_layer_kernel_sizes_and_paddings():
  spec = network.make_spec('4,M,6,8,A', input_shape=(13, 13, 2), num_classes=3, dense=(5,),
                           kernel_sizes=(5, 3, 3), paddings=('VALID', 'SAME', 'VALID'))
  # 13 -VALID 5x5-> 9 -pool-> 4 -SAME-> 4 -VALID 3x3-> 2 -pool-> 1.
  assert spec.conv_shapes == ((9, 9, 4), (4, 4, 6), (2, 2, 8))
  assert spec.state_shapes == ((4, 4, 4), (4, 4, 6), (1, 1, 8), (5,))
  assert [(l.kernel_size, l.padding) for l in spec.conv] == [(5, 'VALID'), (3, 'SAME'),
                                                             (3, 'VALID')]
  params = network.init_params(spec, jax.random.PRNGKey(0), scale=1.0)
  chex.assert_shape([p['w'] for p in params['layers']],
                    [(5, 5, 2, 4), (3, 3, 4, 6), (3, 3, 6, 8), (8, 5)])
  for p, fan_in in zip(params['layers'], (5 * 5 * 2, 3 * 3 * 4, 3 * 3 * 6, 8)):
    assert 0.8 / fan_in ** 0.5 < float(jnp.abs(p['w']).max()) <= 1 / fan_in ** 0.5
  # A spec-wide kernel size / padding fills the layers without their own.
  wide = network.make_spec('4,M,6', input_shape=(16, 16, 1), num_classes=3, kernel_size=5,
                           padding='VALID')
  assert wide.kernel_sizes == (5, 5) and wide.paddings == ('VALID', 'VALID')
  assert wide.state_shapes == ((6, 6, 4), (2, 2, 6))


@pytest.mark.parametrize('kwargs, message', [
    ({'paddings': ('SAME',)}, r'paddings has 1 entries .* 2 conv layers'),
    ({'kernel_sizes': (3, 3, 3)}, r'kernel_sizes has 3 entries .* 2 conv layers'),
    ({'paddings': ('SAME', 'valid')}, r"paddings\[1\] must be one of \('SAME', 'VALID'\)"),
    ({'kernel_sizes': (3, 4)}, r'kernel_sizes\[1\] must be a positive odd integer, got 4'),
    ({'kernel_sizes': (0, 3)}, r'kernel_sizes\[0\] must be a positive odd integer'),
    ({'kernel_size': 2}, 'kernel_size must be a positive odd integer'),
    ({'padding': 'FULL'}, 'padding must be one of'),
    ({'paddings': ('VALID', 'VALID'), 'kernel_sizes': (5, 5)}, 'too small'),
])
def test_bad_per_layer_geometry_is_a_clear_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    network.make_spec('4,M,6,M', input_shape=(10, 10, 1), num_classes=3, **kwargs)
