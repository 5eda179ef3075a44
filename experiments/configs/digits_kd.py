"""The 4-conv digits CRNN of `digits_deep` with layer-wise and output KD (its own settings, not
the VGG recipe). Teacher first:
  python -m experiments.train_teacher --config=experiments/configs/digits_kd.py --workdir=runs/teacher_digits
Then: python -m experiments.train --config=experiments/configs/digits_kd.py
    --config.signals.kd.teacher_workdir=runs/teacher_digits --workdir=DIR

Not yet run: no accuracy has been measured with this config (`digits_skip` is the 8-conv
network that EP + KD trains on digits: 97.2%).
"""

from experiments.configs import digits_deep


def get_config():
  config = digits_deep.get_config()
  config.signals.kd.enabled = True
  config.signals.kd.teacher_workdir = 'runs/teacher_digits'
  config.signals.kd.alpha = 0.5
  config.signals.kd.temperature = 4.0
  config.signals.kappa.schedule = 'cos'
  config.signals.kappa.init = 1.0
  return config
