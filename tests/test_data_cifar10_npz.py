"""experiments.make_cifar10_npz offline: a small fabricated cifar-10-python archive, and tfds's
mock data; the shards read back through the `npz:DIR` loader."""

import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from ep_jax.app import data
from experiments import make_cifar10_npz as make
from test_train import REPO

PER_BATCH = 6  # images per fabricated batch: 30 training images, 6 test images


def _batches(seed=0):
  """{name: (data N x 3072 uint8, labels)} for data_batch_1..5 and test_batch."""
  rng = np.random.default_rng(seed)
  return {name: (rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
                 [int(v) for v in rng.integers(0, 10, PER_BATCH)])
          for name in (*make.TRAIN_BATCHES, make.TEST_BATCH)}


@pytest.fixture
def binaries(tmp_path):
  """cifar-10-batches-py/ (the python version's pickles, bytes keys) and its tar.gz."""
  batches = _batches()
  folder = tmp_path / 'cifar-10-batches-py'
  folder.mkdir()
  for name, (array, labels) in batches.items():
    with open(folder / name, 'wb') as f:
      pickle.dump({b'batch_label': name.encode(), b'labels': labels, b'data': array,
                   b'filenames': [b'x.png'] * len(labels)}, f, protocol=2)
  with open(folder / 'batches.meta', 'wb') as f:
    pickle.dump({b'label_names': [b'airplane'] * 10}, f, protocol=2)
  archive = tmp_path / 'cifar-10-python.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(folder, arcname='cifar-10-batches-py')
  return folder, archive, batches


def _env():
  return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))


def _shard_names():
  return [f'cifar10_train_{i}.npz' for i in range(make.NUM_SHARDS)] + ['cifar10_test.npz']


def test_binaries_give_the_npz_shards(binaries, tmp_path):
  folder, archive, batches = binaries
  train, test = make.read_binaries(str(archive))
  assert train[0].shape == (5 * PER_BATCH, 32, 32, 3) and train[0].dtype == np.uint8
  # Pixel (y, x) of channel c is byte c * 1024 + y * 32 + x of the row.
  first = batches['data_batch_1'][0][0]
  assert train[0][0, 3, 5, 2] == first[2 * 1024 + 3 * 32 + 5]
  np.testing.assert_array_equal(train[0][0], first.reshape(3, 32, 32).transpose(1, 2, 0))
  assert list(train[1]) == sum((batches[n][1] for n in make.TRAIN_BATCHES), [])
  from_folder = make.read_binaries(str(folder))
  np.testing.assert_array_equal(from_folder[0][0], train[0])
  np.testing.assert_array_equal(make.read_binaries(str(tmp_path))[1][0], test[0])

  out = tmp_path / 'npz'
  paths = make.write_shards(str(out), train, test)
  assert [os.path.basename(p) for p in paths] == _shard_names()
  seen = []
  for path in paths[:-1]:
    with np.load(path) as z:
      assert sorted(z.files) == ['image', 'label']
      assert z['image'].shape == (PER_BATCH, 32, 32, 3) and z['image'].dtype == np.uint8
      assert z['label'].dtype == np.uint8
      seen.append(z['image'])
  seen = np.concatenate(seen)
  order = np.random.default_rng(make.SHUFFLE_SEED).permutation(len(train[1]))
  np.testing.assert_array_equal(seen, train[0][order])  # a fixed permutation of the split
  with np.load(paths[-1]) as z:
    np.testing.assert_array_equal(z['image'], test[0])  # the test split in its own order
    assert list(z['label']) == batches['test_batch'][1]

  tr, te, info = data.load_dataset(f'npz:{out}', train_files=['cifar10_train_[0-3].npz'],
                                   test_files=['cifar10_train_4.npz'])
  assert (len(tr), len(te), tuple(info.input_shape)) == (4 * PER_BATCH, PER_BATCH, (32, 32, 3))
  np.testing.assert_array_equal(tr.labels, train[1][order][:4 * PER_BATCH])


def test_binaries_cli_and_errors(binaries, tmp_path):
  _, archive, _ = binaries
  out = tmp_path / 'out'
  cmd = [sys.executable, '-m', 'experiments.make_cifar10_npz', f'--out={out}']
  done = subprocess.run([*cmd, f'--binaries={archive}'], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert sorted(os.listdir(out)) == sorted(_shard_names())
  assert '30 training images in 5 shards and 6 test images' in done.stdout
  for args, status, message in (
      (['--source=binaries'], 2, '--source=binaries needs --binaries=PATH'),
      ([f'--binaries={tmp_path / "none.tar.gz"}'], 1, 'no such file or folder'),
      ([f'--binaries={tmp_path / "out"}'], 1, 'no data_batch_1'),
  ):
    bad = subprocess.run([*cmd, *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == status and message in bad.stderr, bad.stderr


@pytest.mark.tfds
def test_tfds_source_with_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=2 * make.NUM_SHARDS):
    train, test = make.read_tfds(str(tmp_path / 'tfds'))
  assert train[0].shape == (2 * make.NUM_SHARDS, 32, 32, 3) and train[0].dtype == np.uint8
  assert test[0].shape == (2 * make.NUM_SHARDS, 32, 32, 3)
  paths = make.write_shards(str(tmp_path / 'npz'), train, test)
  assert [os.path.basename(p) for p in paths] == _shard_names()
  with np.load(paths[0]) as z:
    assert z['image'].shape == (2, 32, 32, 3) and z['label'].dtype == np.uint8


def test_tfds_examples_are_put_back_in_the_original_order(binaries, monkeypatch):
  """tfds stores the examples shuffled, with the original index in `id`: sorted by it, the
  tfds source gives the arrays (hence the shards) of the binaries."""
  import types  # pylint: disable=g-import-not-at-top
  _, archive, _ = binaries
  want = make.read_binaries(str(archive))
  rng = np.random.default_rng(1)

  def load(name, split, data_dir, shuffle_files):
    assert (name, data_dir, shuffle_files) == ('cifar10', '/d', False)
    images, labels = want[0] if split == 'train' else want[1]
    return [{'id': f'{split}_{i:05d}'.encode(), 'image': images[i], 'label': labels[i]}
            for i in rng.permutation(len(labels))]

  fake = types.SimpleNamespace(load=load, as_numpy=lambda ds: iter(ds))
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', fake)
  got = make.read_tfds('/d')
  for (a, b), (c, d) in zip(got, want):
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, d)
