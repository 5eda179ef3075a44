"""The BP teacher: feed-forward twin, save/load, targets shaped like the CRNN's states."""

import io
import contextlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ep_jax import activations, energy, feedforward, network, signals
from ep_jax.app import build, teacher
from experiments.configs import default


def _spec(readout='softmax', layout='4,M,6,A', dense=(5,)):
  return network.make_spec(layout, input_shape=(8, 8, 1), num_classes=3, dense=dense,
                           readout=readout)


def _twin(spec):
  return network.make_spec(spec.layout, input_shape=spec.input_shape, dense=spec.dense,
                           num_classes=spec.num_classes, activation=spec.activation)


def _params(spec, seed):
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: network.init_params(spec, jax.random.PRNGKey(0)))
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), jnp.float32), shapes)


def _x(b=4):
  return jnp.asarray(np.random.default_rng(1).uniform(size=(b, 8, 8, 1)), jnp.float32)


def test_forward_is_the_feed_forward_twin():
  """a_l = σ(drive_l(a_{l-1})) with energy's drives; shapes are the CRNN's state shapes."""
  spec = _spec()
  params = _params(spec, 0)
  x = _x()
  acts, z = jax.jit(feedforward.forward, static_argnums=0)(spec, params, x)
  assert tuple(a.shape[1:] for a in acts) == spec.state_shapes
  sigma = activations.get(spec.activation)
  drives = energy.layer_drives(spec, params, x, acts)  # drive_l of a_{l-1}
  for a, d in zip(acts, drives):
    np.testing.assert_allclose(a, sigma(d), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(z, energy.logits(spec, params, acts), rtol=1e-6, atol=1e-7)
  assert z.shape == (4, 3)


def test_save_load_roundtrip_and_targets_shaped_like_crnn_states(tmp_path):
  crnn = _spec(readout='mse')  # the output layer is in the system; the teacher has a readout
  tspec = _twin(crnn)
  params = _params(tspec, 2)
  workdir = str(tmp_path / 't')
  assert teacher.save_teacher(workdir, tspec, params, {'test_accuracy': 0.25}) == 1
  newer = jax.tree_util.tree_map(lambda a: a + 1.0, params)
  assert teacher.save_teacher(workdir, tspec, newer, {'test_accuracy': 0.5}) == 2
  spec, loaded, info = build.load_teacher(workdir)
  assert spec == tspec and info['test_accuracy'] == 0.5 and info['step'] == 2
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(newer)):
    np.testing.assert_array_equal(a, b)
  # The teacher's forward pass after loading is the saved network's, not the first save's.
  np.testing.assert_array_equal(feedforward.forward(spec, loaded, _x())[1],
                                feedforward.forward(tspec, newer, _x())[1])

  cfg = default.get_config().signals
  cfg.kd.enabled, cfg.kd.teacher_workdir = True, workdir
  setup = build.build_signals(cfg, crnn, num_epochs=2, rng=jax.random.PRNGKey(0))
  batch = {'image': _x(), 'label': jnp.array([0, 1, 2, 0])}
  targets = jax.jit(setup.nudging.targets)(setup.frozen, {}, batch, jnp.asarray(0))
  hidden = crnn.state_shapes[:-1]
  assert [targets['kd_targets'][n].shape[1:] for n in crnn.layer_names[:-1]] == list(hidden)
  assert targets['teacher_logits'].shape == (4, 3)
  acts, _ = feedforward.forward(tspec, newer, batch['image'])
  np.testing.assert_allclose(targets['kd_targets']['conv1'], acts[0], rtol=1e-6)

  other = _spec(layout='4,M,7,A')
  with pytest.raises(ValueError, match='does not match the CRNN'):
    build.build_signals(cfg, other, num_epochs=2, rng=jax.random.PRNGKey(0))


def test_load_without_teacher_fails_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match='train_teacher'):
    build.load_teacher(str(tmp_path / 'nothing'))


@pytest.mark.slow
def test_train_teacher_script_on_digits(tmp_path):
  """train_from_config (what experiments.train_teacher runs): BP training of the twin of the
  quick-start CRNN, saved, loadable."""
  config = default.get_config()
  config.model.layout = '16,M'  # one conv layer: a quicker compile than the quick start's two
  config.teacher.epochs = 3
  config.teacher.learning_rate = 0.1
  workdir = str(tmp_path / 'digits')
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    meta = teacher.train_from_config(config, workdir)
  lines = out.getvalue().strip().splitlines()
  assert lines[-1] == f"final test_accuracy={meta['test_accuracy']:.4f}"
  assert sum(line.startswith('epoch ') for line in lines) == 3
  assert meta['test_accuracy'] > 0.5  # chance is 0.1
  spec, params, info = build.load_teacher(workdir)
  assert spec.state_shapes == ((4, 4, 16),) and spec.readout == 'softmax'
  assert info['test_accuracy'] == meta['test_accuracy']
  assert info['init_scale'] == config.model.init_scale  # teacher.init_scale = 0: the CRNN's
  assert info['augmentation']['augment'] is False and info['seed'] == config.seed
  assert json.load(open(f'{workdir}/teacher.json'))['augmentation'] == info['augmentation']


@pytest.mark.slow
def test_train_teacher_uses_its_own_init_scale(tmp_path, monkeypatch):
  """`config.teacher.init_scale` (the ablation's deep twin needs 4) reaches the initialisation:
  the initial parameters are 3x those of `teacher.init_scale = 0` (the CRNN's scale, 1)."""
  config = default.get_config()
  config.model.layout = '16,M'
  config.teacher.epochs = 1
  initial = []  # host copies: the training step donates the parameters' buffers
  init_params = network.init_params

  def recording_init(*args, **kwargs):
    params = init_params(*args, **kwargs)
    initial.append(jax.tree_util.tree_map(np.array, params))
    return params

  monkeypatch.setattr(teacher.network, 'init_params', recording_init)
  metas = {}
  for scale in (0.0, 3.0):
    config.teacher.init_scale = scale
    metas[scale] = teacher.train_from_config(config, str(tmp_path / f"s{scale}"),
                                             print_fn=lambda _: None)
  assert len(initial) == 2
  for a, b in zip(jax.tree_util.tree_leaves(initial[0]), jax.tree_util.tree_leaves(initial[1])):
    np.testing.assert_allclose(b, 3.0 * a, rtol=1e-6)
    assert float(np.max(np.abs(a))) > 0
  # A 3x larger initialisation changes what one epoch of training produces.
  assert metas[3.0]['history'][0]['train_loss'] != metas[0.0]['history'][0]['train_loss']


def test_spec_dict_roundtrip_keeps_the_geometry():
  """What `teacher.json` stores rebuilds the same spec (layout, pools, per-layer kernel sizes
  and paddings, tie rule), also for a preset with its own paddings."""
  spec = network.make_spec('4,M,6,A', input_shape=(9, 9, 2), num_classes=3, dense=(5,),
                           pool_ties='split', kernel_sizes=(5, 3), paddings=('VALID', 'SAME'))
  assert network.NetworkSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
  spec = network.make_spec('vgg5', input_shape=(32, 32, 3), num_classes=10)
  assert network.NetworkSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_spec_dict_keeps_the_teacher_json_format_and_older_dicts_load():
  """`NetworkSpec.to_dict` writes the fields `teacher.json` always held (lists, not tuples);
  a dict saved before the per-layer geometry, tie rule, skips and edges existed loads with
  their defaults, and skips saved as lists load."""
  spec = network.make_spec('4,M,4,8', input_shape=(8, 8, 1), num_classes=3, dense=(5,),
                           skips=((0, 2),))
  assert spec.to_dict() == {
      'layout': '4,M,4,8', 'input_shape': [8, 8, 1], 'dense': [5], 'num_classes': 3,
      'readout': 'softmax', 'activation': 'hard_sigmoid', 'kernel_size': 3, 'padding': 'SAME',
      'pool_ties': 'first', 'kernel_sizes': [3, 3, 3], 'paddings': ['SAME', 'SAME', 'SAME'],
      'skips': [[0, 2]], 'edges': []}
  assert network.NetworkSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
  old = {'layout': '4,M', 'input_shape': [8, 8, 1], 'dense': [], 'num_classes': 3,
         'readout': 'softmax', 'activation': 'hard_sigmoid', 'kernel_size': 3,
         'padding': 'SAME'}
  assert network.NetworkSpec.from_dict(old) == network.make_spec(
      '4,M', input_shape=(8, 8, 1), num_classes=3)


def test_unbounded_names_exactly_the_activations_without_an_upper_bound():
  """`activations.UNBOUNDED` (what `check_teacher` refuses as KD targets for a bounded CRNN)
  holds the activations whose output grows past 1 on large inputs; the others stay in [0, 1]."""
  u = jnp.linspace(-100.0, 100.0, 2001)
  for name in activations.ACTIVATIONS:
    out = np.asarray(activations.get(name)(u))
    assert out.min() >= 0.0, name
    assert (out.max() > 1.0) == (name in activations.UNBOUNDED), (name, out.max())
  assert activations.UNBOUNDED <= set(activations.ACTIVATIONS)


@pytest.mark.slow
def test_train_teacher_with_its_own_activation(tmp_path):
  """`config.teacher.activation = 'relu'` trains a plain ReLU network of the CRNN's layers (the
  reference point beside the twin); it is saved as such and refused as a KD teacher."""
  config = default.get_config()
  config.model.layout = '16,M'
  config.teacher.epochs = 1
  config.teacher.activation = 'relu'
  workdir = str(tmp_path / 'relu')
  meta = teacher.train_from_config(config, workdir, print_fn=lambda _: None)
  spec, params, _ = build.load_teacher(workdir)
  assert spec.activation == 'relu' and meta['test_accuracy'] > 0.3  # chance is 0.1
  crnn = network.make_spec('16,M', input_shape=spec.input_shape, num_classes=spec.num_classes)
  assert crnn.activation == 'hard_sigmoid'
  x = jnp.asarray(np.random.default_rng(0).uniform(0.0, 16.0, (8, *spec.input_shape)),
                  jnp.float32)
  states, _ = feedforward.forward(spec, params, x)
  assert float(jnp.max(states[0])) > 1.0  # unbounded: a hard sigmoid would stop at 1
  assert float(jnp.min(states[0])) == 0.0
  with pytest.raises(ValueError, match="activation 'relu' is unbounded"):
    signals.check_teacher(spec, crnn, output=True)
