"""CIFAR-10, the reference recipe of Laborieux et al. (2021) (METHOD.md §4).

vgg5 (128-256-512-512, max pools), softmax readout, symmetric EP, β = 1, T1 = 250, T2 = 25,
batch 128, SGD momentum 0.9, per-layer rates 0.25/0.15/0.1/0.08/0.05, weight decay 3e-4,
cosine annealing to 1e-5, 120 epochs, random crop + flip.
"""

from ep_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'cifar10'
  config.data.augment = True
  config.model.layout = 'vgg5'
  config.ep.estimator = 'symmetric'
  config.ep.beta = 1.0
  config.ep.free_steps = 250
  config.ep.nudged_steps = 25
  config.optim.learning_rates = (0.25, 0.15, 0.1, 0.08, 0.05)
  config.optim.momentum = 0.9
  config.optim.weight_decay = 3e-4
  config.optim.schedule = 'cosine'
  config.optim.eta_min = 1e-5
  config.train.epochs = 120
  config.train.batch_size = 128
  config.train.eval_batch_size = 500
  return config
