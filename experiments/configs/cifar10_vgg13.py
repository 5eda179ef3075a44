"""CIFAR-10 on a VGG-13 CRNN with standard symmetric EP (no learning signals).

    python -m experiments.train --config=experiments/configs/cifar10_vgg13.py --workdir=DIR

Needs the tfds extra and a GPU-scale budget. Not yet run: no accuracy has been measured with
this config.
"""

from experiments.configs import cifar10_vgg5


def get_config():
  config = cifar10_vgg5.get_config()
  config.model.layout = 'vgg13'
  # 10 conv layers + readout: rates decay with depth like the reference's.
  config.optim.learning_rates = (0.25, 0.2, 0.15, 0.15, 0.1, 0.1, 0.08, 0.08, 0.06, 0.06, 0.05)
  config.train.epochs = 100
  return config
