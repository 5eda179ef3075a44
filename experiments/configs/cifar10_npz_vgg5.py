"""The reference recipe (`cifar10_vgg5`) on the offline CIFAR-10 shards: train on shards 0-3
(40,000 images), evaluate on shard 4 (10,000 images of the training set, not the official test
set). The shards hold JPEG-decoded CIFAR-10 images, so pixels differ slightly from the original
PNG data; the normalisation is the reference's fixed statistics, not the shards' own.

Pass the folder: --config.data.dataset=npz:/path/to/cifar10 (default ../shared/data/cifar10).

    python -m experiments.train --config=experiments/configs/cifar10_npz_vgg5.py --workdir=DIR

Not yet run: no accuracy has been measured with this config. The accelerator run
(`experiments/accelerator/device.sh`, docs/BENCHMARKS.md §6) trains it for a few minutes on
shards 0-1, evaluated on 2,000 held-out images of shard 4.
"""

from experiments.configs import cifar10_vgg5


def get_config():
  config = cifar10_vgg5.get_config()
  config.data.dataset = 'npz:../shared/data/cifar10'
  config.data.train_files = ('cifar10_train_[0-3].npz',)
  config.data.test_files = ('cifar10_train_4.npz',)
  return config
