"""CIFAR-10, VGG-13 CRNN, symmetric EP + local error signals + knowledge distillation.

Teacher first: python -m experiments.train_teacher --config=experiments/configs/cifar10_vgg13_les_kd.py
    --workdir=runs/teacher_cifar10_vgg13
Then: python -m experiments.train --config=experiments/configs/cifar10_vgg13_les_kd.py
    --workdir=DIR --config.signals.kd.teacher_workdir=runs/teacher_cifar10_vgg13

Needs the tfds extra and a GPU-scale budget. Not yet run: no accuracy has been measured with
this config.
"""

from experiments.configs import cifar10_vgg13_kd


def get_config():
  config = cifar10_vgg13_kd.get_config()
  config.signals.les.enabled = True
  config.signals.les.head = 'fixed'
  config.signals.les.pool = 'gap'
  config.signals.les.loss = 'ce'
  return config
