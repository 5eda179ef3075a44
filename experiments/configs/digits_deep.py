"""Digits-scale twin of the deep configs: a 4-conv CRNN on the embedded 8x8 digits, plain EP.

    python -m experiments.train --config=experiments/configs/digits_deep.py --workdir=DIR

Measured for 4 epochs only (`--config.train.epochs=4`): 95.6% (docs/RESULTS.md, "Depth and
initialisation"); the config's 20 epochs not yet run.
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.layout = '32,32,M,64,64,M'
  config.model.init_scale = 2.0  # at 1.0 the deep layers start silent and nothing learns
  config.optim.learning_rates = (0.2, 0.15, 0.1, 0.08, 0.05)
  config.ep.free_steps = 40
  config.ep.nudged_steps = 12
  config.train.epochs = 20
  config.teacher.epochs = 20
  return config
