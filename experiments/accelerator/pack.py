r"""The CIFAR-10 images the accelerator run carries: packed here, unpacked there.

  python -m experiments.accelerator.pack pack --src=../shared/data/cifar10 --out=.device_data
  python -m experiments.accelerator.pack unpack --src=.device_data --out=/tmp/cifar10

`pack` reads the offline shards (`cifar10_train_{0..4}.npz`, uint8 `image` N x 32 x 32 x 3
and `label` N) and writes, for training, shards `--train_shards` (default 0 and 1: 20,000
images) and, held out, `--heldout` images of shard `--heldout_shard` (default 2,000 of shard
4, drawn by `numpy.random.default_rng(0)`, never trained on), each as NAME.npy.xz: the labels,
then the images with each pixel replaced by its difference from its left neighbour (mod 256),
one `numpy.save` stream each, compressed with xz. The differences make the images compress to
about 0.64 of their bytes (a plain `savez_compressed` gives 0.93), so the 22,000 images travel
in about 43 MB, inside the 64 MiB that the working tree may take to the device. `unpack`
writes them back as NAME.npz (`image`, `label`), the files
`--config.data.dataset=npz:DIR` reads:

  cifar10_train_0.npz, cifar10_train_1.npz   the training images
  cifar10_heldout4_2000.npz                  the held-out ones

Needs numpy only.
"""

from __future__ import annotations

import argparse
import glob
import lzma
import os
from typing import Sequence

import numpy as np

SUFFIX = '.npy.xz'


def encode(images: np.ndarray) -> np.ndarray:
  """(N, H, W, C) uint8 -> each pixel minus its left neighbour (mod 256), the first column
  as it is."""
  return np.diff(images, axis=2, prepend=np.zeros_like(images[:, :, :1]))


def decode(deltas: np.ndarray) -> np.ndarray:
  """The inverse of `encode`: a running sum along the width, mod 256."""
  return np.cumsum(deltas, axis=2, dtype=np.uint8)


def write(path: str, images: np.ndarray, labels: np.ndarray) -> None:
  with lzma.open(path, 'wb', preset=6) as f:
    np.save(f, np.asarray(labels, np.uint8))
    np.save(f, encode(np.asarray(images, np.uint8)))


def read(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, H, W, C) uint8, labels (N,) uint8) of a packed file."""
  with lzma.open(path, 'rb') as f:
    labels = np.load(f)
    images = decode(np.load(f))
  return images, labels


def pack(src: str, out: str, train_shards: Sequence[int] = (0, 1), heldout_shard: int = 4,
         heldout: int = 2000, seed: int = 0) -> list[str]:
  """Writes the packed training shards and held-out subset of `src` into `out`; their paths."""
  os.makedirs(out, exist_ok=True)
  paths = []

  def load(shard):
    with np.load(os.path.join(src, f'cifar10_train_{shard}.npz')) as d:
      return d['image'], d['label']

  for shard in train_shards:
    paths.append(os.path.join(out, f'cifar10_train_{shard}{SUFFIX}'))
    write(paths[-1], *load(shard))
  if heldout:
    if heldout_shard in train_shards:
      raise ValueError(f'the held-out shard {heldout_shard} is also a training shard')
    images, labels = load(heldout_shard)
    index = np.sort(np.random.default_rng(seed).choice(len(labels), heldout, replace=False))
    paths.append(os.path.join(out, f'cifar10_heldout{heldout_shard}_{heldout}{SUFFIX}'))
    write(paths[-1], images[index], labels[index])
  return paths


def unpack(src: str, out: str) -> list[str]:
  """Writes every packed file of `src` as NAME.npz (`image`, `label`) into `out`; their paths."""
  os.makedirs(out, exist_ok=True)
  paths = []
  for path in sorted(glob.glob(os.path.join(src, '*' + SUFFIX))):
    images, labels = read(path)
    paths.append(os.path.join(out, os.path.basename(path)[:-len(SUFFIX)] + '.npz'))
    np.savez(paths[-1], image=images, label=labels)
  if not paths:
    raise FileNotFoundError(f'no packed files (*{SUFFIX}) in {src!r}: run '
                            'experiments/accelerator/prepare.sh first')
  return paths


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog='python -m experiments.accelerator.pack',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('command', choices=('pack', 'unpack'))
  p.add_argument('--src', required=True)
  p.add_argument('--out', required=True)
  p.add_argument('--train_shards', default='0,1')
  p.add_argument('--heldout_shard', type=int, default=4)
  p.add_argument('--heldout', type=int, default=2000)
  args = p.parse_args(argv)
  if args.command == 'pack':
    shards = tuple(int(s) for s in args.train_shards.split(',') if s.strip())
    paths = pack(args.src, args.out, shards, args.heldout_shard, args.heldout)
  else:
    paths = unpack(args.src, args.out)
  for path in paths:
    print(f'{path}: {os.path.getsize(path) / 2**20:.1f} MiB')


if __name__ == '__main__':
  main()
