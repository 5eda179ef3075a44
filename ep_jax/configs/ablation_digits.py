"""The digits-scale twin of `ablation_deep`: 8 conv layers on the embedded 8x8 digits.

A fast smoke run of `experiments.ablation` (no download):

    python -m experiments.ablation --config=ep_jax/configs/ablation_digits.py --workdir=DIR
"""

from ep_jax.configs import ablation_deep


def get_config():
  config = ablation_deep.get_config()
  config.data.dataset = 'digits'
  config.data.train_files = ()
  config.data.test_files = ()
  config.data.train_subset = 0
  config.data.test_subset = 0
  # 8x8 input: three pools (8 -> 4 -> 2 -> 1), 8 conv layers.
  config.model.layout = '8,8,M,16,16,M,16,16,M,16,16'
  config.ep.free_steps = 40
  config.ep.nudged_steps = 15
  config.train.epochs = 3
  config.train.batch_size = 32
  config.train.eval_batch_size = 128
  config.train.log_every_seconds = 30.0
  config.teacher.epochs = 10
  config.teacher.batch_size = 32
  return config
