"""The reference recipe on the offline CIFAR-10 shards (train 0-3, evaluate on shard 4).

Pass the folder: --config.data.dataset=npz:/path/to/cifar10 (default ../shared/data/cifar10).
"""

from ep_jax.configs import cifar10_vgg5


def get_config():
  config = cifar10_vgg5.get_config()
  config.data.dataset = 'npz:../shared/data/cifar10'
  config.data.train_files = ('cifar10_train_[0-3].npz',)
  config.data.test_files = ('cifar10_train_4.npz',)
  return config
