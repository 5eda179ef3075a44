r"""Builds the CIFAR-10 npz shards that the npz configs name (cifar10_npz_vgg5, ablation_deep).

  python -m experiments.make_cifar10_npz --out=DIR [--source=tfds|binaries]
      [--binaries=cifar-10-python.tar.gz or its cifar-10-batches-py folder] [--data_dir=TFDS_DIR]

Writes DIR/cifar10_train_0.npz ... cifar10_train_4.npz (the 50,000 training images in a fixed
random permutation, seed 0, 10,000 a shard) and DIR/cifar10_test.npz (the 10,000 test images in
their original order), each `numpy.savez_compressed` with `image` (uint8, N x 32 x 32 x 3, RGB)
and `label` (uint8, N; classes in CIFAR-10's order: airplane, automobile, bird, cat, deer, dog,
frog, horse, ship, truck). Train on them with --config.data.dataset=npz:DIR.

Sources (the default is `binaries` when --binaries is given, else `tfds`):
  binaries  the original python version, cifar-10-python.tar.gz from
            https://www.cs.toronto.edu/~kriz/cifar.html (pickled data_batch_1..5 and
            test_batch), the archive or its extracted folder; needs numpy only. The batches are
            Python pickles: read only the archive from that page.
  tfds      tensorflow_datasets' `cifar10`, downloaded and prepared into --data_dir on first
            use; needs the tfds extra (pip install -e .[tfds]).
Both give the same files: the permutation applies to the training images in the original
order, which tfds keeps in its `id` field (train_00000, ...). These shards have the original
pixels; a copy decoded from a JPEG mirror differs slightly in pixels and in which images each
shard holds.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from typing import Optional

from absl import app
from absl import flags
import numpy as np

from experiments import cli

TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_BATCH = 'test_batch'
NUM_SHARDS = 5
SHUFFLE_SEED = 0
IMAGE_SHAPE = (32, 32, 3)

Arrays = tuple[np.ndarray, np.ndarray]


def _decode_batch(raw: bytes, name: str) -> Arrays:
  """(images N x 32 x 32 x 3 uint8, labels N) of one pickled batch of the python version."""
  try:
    batch = pickle.loads(raw, encoding='bytes')
    data, labels = batch[b'data'], batch[b'labels']
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
    raise ValueError(f'{name} is not a CIFAR-10 python batch (a pickled dict with data and '
                     f'labels): {type(e).__name__}: {e}') from None
  data = np.asarray(data, np.uint8)
  if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
    raise ValueError(f'{name}: expected data N x 3072 and N labels, got data {data.shape} and '
                     f'{len(labels)} labels')
  # Each row is the red plane, then green, then blue, each 32 x 32 in row-major order.
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, np.int64)


def _batch_reader(path: str):
  """A function from a batch name to its bytes, for an archive or a folder."""
  if os.path.isdir(path):
    inner = os.path.join(path, 'cifar-10-batches-py')
    folder = inner if os.path.isdir(inner) else path

    def read_file(name):
      full = os.path.join(folder, name)
      if not os.path.isfile(full):
        raise ValueError(f'{path}: no {name} (expected data_batch_1..5 and test_batch of '
                         'cifar-10-python.tar.gz)')
      with open(full, 'rb') as f:
        return f.read()
    return read_file
  if not os.path.isfile(path):
    raise ValueError(f'--binaries={path}: no such file or folder')
  try:
    archive = tarfile.open(path, 'r:*')
  except (tarfile.TarError, OSError) as e:
    raise ValueError(f'--binaries={path}: not a tar archive ({e})') from None
  members = {os.path.basename(m.name): m for m in archive.getmembers() if m.isfile()}

  def read_member(name):
    if name not in members:
      raise ValueError(f'{path}: the archive has no {name} (expected data_batch_1..5 and '
                       'test_batch of cifar-10-python.tar.gz)')
    return archive.extractfile(members[name]).read()
  return read_member


def read_binaries(path: str) -> tuple[Arrays, Arrays]:
  """(train, test) from cifar-10-python.tar.gz or its extracted folder, in the original order."""
  read = _batch_reader(path)
  parts = [_decode_batch(read(name), name) for name in TRAIN_BATCHES]
  train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  return train, _decode_batch(read(TEST_BATCH), TEST_BATCH)


def read_tfds(data_dir: Optional[str] = None) -> tuple[Arrays, Arrays]:
  """(train, test) from tfds `cifar10`, each sorted by its `id` (the original order)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError('--source=tfds needs tensorflow_datasets (pip install -e .[tfds]); or '
                     'use --binaries=cifar-10-python.tar.gz') from e
  splits = []
  for split in ('train', 'test'):
    ids, images, labels = [], [], []
    ds = tfds.load('cifar10', split=split, data_dir=data_dir, shuffle_files=False)
    for ex in tfds.as_numpy(ds):
      ids.append(ex['id'])
      images.append(ex['image'])
      labels.append(ex['label'])
    order = np.argsort(np.asarray(ids), kind='stable')
    splits.append((np.stack(images)[order], np.asarray(labels, np.int64)[order]))
  return splits[0], splits[1]


def _check(arrays: Arrays, what: str) -> Arrays:
  images, labels = arrays
  if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
    raise ValueError(f'{what}: expected uint8 images N x 32 x 32 x 3, got {images.dtype} '
                     f'{images.shape}')
  if labels.shape != (images.shape[0],) or labels.min() < 0 or labels.max() > 9:
    raise ValueError(f'{what}: expected {images.shape[0]} labels in 0..9')
  return images, labels.astype(np.uint8)


def _save(path: str, images: np.ndarray, labels: np.ndarray) -> None:
  tmp = path + '.tmp.npz'
  np.savez_compressed(tmp, image=images, label=labels)
  os.replace(tmp, path)


def write_shards(out: str, train: Arrays, test: Arrays, num_shards: int = NUM_SHARDS,
                 seed: int = SHUFFLE_SEED) -> list[str]:
  """Writes cifar10_train_<i>.npz (a permutation of `train`, in `num_shards` equal parts) and
  cifar10_test.npz (`test` as it is) into `out`; returns their paths."""
  (images, labels), (test_images, test_labels) = _check(train, 'train'), _check(test, 'test')
  os.makedirs(out, exist_ok=True)
  order = np.random.default_rng(seed).permutation(len(labels))
  paths = []
  for i, part in enumerate(np.array_split(order, num_shards)):
    paths.append(os.path.join(out, f'cifar10_train_{i}.npz'))
    _save(paths[-1], images[part], labels[part])
  paths.append(os.path.join(out, 'cifar10_test.npz'))
  _save(paths[-1], test_images, test_labels)
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  source = _SOURCE.value or ('binaries' if _BINARIES.value else 'tfds')
  if source == 'binaries':
    if not _BINARIES.value:
      raise app.UsageError('--source=binaries needs --binaries=PATH: cifar-10-python.tar.gz '
                           '(https://www.cs.toronto.edu/~kriz/cifar.html) or its folder')
    train, test = read_binaries(os.path.expanduser(_BINARIES.value))
  else:
    if _BINARIES.value:
      raise app.UsageError('--binaries applies to --source=binaries only')
    train, test = read_tfds(_DATA_DIR.value or None)
  paths = write_shards(_OUT.value, train, test)
  for path in paths:
    print(path)
  print(f'{len(train[1])} training images in {len(paths) - 1} shards and {len(test[1])} test '
        f'images; train with --config.data.dataset=npz:{_OUT.value}')


def define_flags() -> None:
  """Defines this script's flags (only when run as a script, so other code can import it)."""
  global _OUT, _SOURCE, _BINARIES, _DATA_DIR
  _OUT = flags.DEFINE_string('out', None, 'Folder for the npz files.', required=True)
  _SOURCE = flags.DEFINE_enum('source', None, ['tfds', 'binaries'],
                              'Where the images come from (default: binaries if --binaries is '
                              'given, else tfds).')
  _BINARIES = flags.DEFINE_string('binaries', None,
                                  'cifar-10-python.tar.gz or its cifar-10-batches-py folder.')
  _DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds: the data folder (tfds default).')


if __name__ == '__main__':
  cli.run(main, define_flags)
