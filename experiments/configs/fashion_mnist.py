"""Fashion-MNIST (tfds): the MNIST recipe on Fashion-MNIST."""

from experiments.configs import mnist


def get_config():
  config = mnist.get_config()
  config.data.dataset = 'fashion_mnist'
  config.train.epochs = 30
  return config
