r"""CIFAR-10, VGG-13 CRNN, symmetric EP + layer-wise and output knowledge distillation.

Train the teacher (the CRNN's feed-forward twin, by backprop) first:
  python -m experiments.train_teacher --config=experiments/configs/cifar10_vgg13_kd.py \
      --workdir=runs/teacher_cifar10_vgg13
Then EP + KD:
  python -m experiments.train --config=experiments/configs/cifar10_vgg13_kd.py --workdir=DIR \
      --config.signals.kd.teacher_workdir=runs/teacher_cifar10_vgg13
(or `--config.signals.kd.train_teacher=True` to train the teacher into DIR/teacher first).
Needs the tfds extra and a GPU-scale budget. Not yet run: no accuracy has been measured with
this config.
"""

from experiments.configs import cifar10_vgg13


def get_config():
  config = cifar10_vgg13.get_config()
  config.signals.kd.enabled = True
  config.signals.kd.teacher_workdir = 'runs/teacher_cifar10_vgg13'
  config.signals.kd.layers = ()  # every hidden layer
  config.signals.kd.output = True
  config.signals.kd.alpha = 0.5
  config.signals.kd.temperature = 4.0
  config.signals.kappa.schedule = 'cos'
  config.signals.kappa.init = 1.0
  config.teacher.epochs = 60
  config.teacher.batch_size = 128
  config.teacher.learning_rate = 0.05
  return config
