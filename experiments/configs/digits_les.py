"""The 4-conv digits CRNN of `digits_deep` + local error signals (its own settings).

    python -m experiments.train --config=experiments/configs/digits_les.py --workdir=DIR

Not yet run: no accuracy has been measured with this config.
"""

from experiments.configs import digits_deep


def get_config():
  config = digits_deep.get_config()
  config.signals.les.enabled = True
  config.signals.les.head = 'fixed'
  config.signals.les.pool = 'gap'
  config.signals.les.loss = 'ce'
  config.signals.kappa.schedule = 'cos'
  config.signals.kappa.init = 1.0
  return config
