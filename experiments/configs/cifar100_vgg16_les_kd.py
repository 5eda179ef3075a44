r"""CIFAR-100, VGG-16 CRNN, symmetric EP + local error signals + knowledge distillation.

Teacher first: python -m experiments.train_teacher --config=experiments/configs/cifar100_vgg16_les_kd.py
    --workdir=runs/teacher_cifar100_vgg16
    python -m experiments.train --config=experiments/configs/cifar100_vgg16_les_kd.py \
        --workdir=DIR --config.signals.kd.teacher_workdir=runs/teacher_cifar100_vgg16

Needs the tfds extra and a GPU-scale budget. Not yet run: no accuracy has been measured with
this config.
"""

from experiments.configs import cifar100_vgg16


def get_config():
  config = cifar100_vgg16.get_config()
  config.signals.les.enabled = True
  config.signals.les.head = 'fixed'
  config.signals.les.pool = 'gap'
  config.signals.kd.enabled = True
  config.signals.kd.teacher_workdir = 'runs/teacher_cifar100_vgg16'
  config.signals.kd.alpha = 0.5
  config.signals.kd.temperature = 4.0
  config.signals.kappa.schedule = 'cos'
  config.signals.kappa.init = 1.0
  config.teacher.epochs = 60
  config.teacher.batch_size = 128
  return config
