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
  spec = network.make_spec('vgg5', input_shape=(32, 32, 3), num_classes=10)
  assert spec.state_shapes == ((16, 16, 128), (8, 8, 256), (4, 4, 512), (2, 2, 512))
  assert network.synapse_names(spec) == ('conv1', 'conv2', 'conv3', 'conv4', 'readout')
