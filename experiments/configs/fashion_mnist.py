"""Fashion-MNIST (tfds): the MNIST recipe on Fashion-MNIST.

    python -m experiments.train --config=experiments/configs/fashion_mnist.py --workdir=DIR

Needs the tfds extra and a download. Not yet run: no accuracy has been measured with this
config.
"""

from experiments.configs import mnist


def get_config():
  config = mnist.get_config()
  config.data.dataset = 'fashion_mnist'
  config.train.epochs = 30
  return config
