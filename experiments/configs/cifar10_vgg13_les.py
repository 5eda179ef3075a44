"""CIFAR-10, VGG-13 CRNN, symmetric EP + local error signals (fixed random heads, GAP, CE).

    python -m experiments.train --config=experiments/configs/cifar10_vgg13_les.py --workdir=DIR

Needs the tfds extra and a GPU-scale budget. Not yet run: no accuracy has been measured with
this config.
"""

from experiments.configs import cifar10_vgg13


def get_config():
  config = cifar10_vgg13.get_config()
  config.signals.les.enabled = True
  config.signals.les.head = 'fixed'
  config.signals.les.pool = 'gap'
  config.signals.les.loss = 'ce'
  config.signals.les.layers = ()  # every hidden layer
  config.signals.kappa.schedule = 'cos'
  config.signals.kappa.init = 1.0
  config.signals.kappa.min = 0.0
  return config
