"""Digits-scale twin of cifar10_vgg13_les_kd (teacher first, as for digits_kd)."""

from experiments.configs import digits_kd


def get_config():
  config = digits_kd.get_config()
  config.signals.les.enabled = True
  config.signals.les.head = 'fixed'
  config.signals.les.pool = 'gap'
  config.signals.les.loss = 'ce'
  return config
