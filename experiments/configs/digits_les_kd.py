r"""The 4-conv digits CRNN of `digits_deep` + LES + KD (teacher first, as for digits_kd).

    python -m experiments.train --config=experiments/configs/digits_les_kd.py \
        --config.signals.kd.teacher_workdir=runs/teacher_digits --workdir=DIR

Not yet run: no accuracy has been measured with this config.
"""

from experiments.configs import digits_kd


def get_config():
  config = digits_kd.get_config()
  config.signals.les.enabled = True
  config.signals.les.head = 'fixed'
  config.signals.les.pool = 'gap'
  config.signals.les.loss = 'ce'
  return config
